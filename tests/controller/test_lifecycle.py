"""The controller on the real control plane and S3, with the FAKE builder (tests/controller/fake_builder.py).

One operator process (least-privilege RBAC) serves the module; each test has its own namespace and
output prefix. Deadline and restart tests take about a minute each and are marked slow.
"""

from __future__ import annotations

import hashlib
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pitcrew_devcluster import ClusterInfo

from .harness import (
    Operator,
    apply,
    engine_build,
    get_eb,
    install,
    new_namespace,
    owned,
    seed_checkpoint,
    wait_for,
    wait_phase,
)


@pytest.fixture(scope="module")
def operator(cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    install(cluster)
    seed_checkpoint(cluster)
    op = Operator(cluster, tmp_path_factory.mktemp("operator")).start()
    yield op
    op.stop()
    print(op.tail(200))


@pytest.fixture
def ns(cluster: ClusterInfo) -> Iterator[str]:
    name = new_namespace(cluster)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def s3_bytes(cluster: ClusterInfo, uri: str) -> bytes | None:
    bucket, _, key = uri[len("s3://") :].partition("/")
    try:
        body: bytes = cluster.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body
    except Exception:
        return None


def events(cluster: ClusterInfo, ns: str, name: str) -> list[str]:
    items = cluster.kubectl_json(
        "-n", ns, "get", "events", "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return [e["reason"] for e in items]


def test_success_lifecycle(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    apply(cluster, engine_build(cluster, "llama", ns))
    # kstatus: `kubectl wait --for=condition=Ready` is how users and CI wait for an engine.
    cluster.kubectl("-n", ns, "wait", "--for=condition=Ready", "eb/llama", "--timeout=90s", timeout=100)
    eb = get_eb(cluster, ns, "llama")
    assert eb is not None
    st = eb["status"]
    assert st["phase"] == "Succeeded" and st["cacheHit"] is False, st
    assert st["observedGeneration"] == eb["metadata"]["generation"]
    engine = st["engine"]
    assert engine["uri"] == f"s3://{cluster.s3.bucket}/engines/{ns}/{st['cacheKey']}/"  # type: ignore[union-attr]
    manifest = s3_bytes(cluster, engine["manifestUri"])
    assert manifest is not None and hashlib.sha256(manifest).hexdigest() == engine["manifestSha256"]
    assert engine["fileCount"] == 2 and engine["computeCapability"] == "8.0"
    assert st["progress"] == {"stage": "publish", "percent": 100}
    assert st["job"]["attempts"] == 1 and st["startTime"] and st["completionTime"]
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    (job,) = owned(cluster, "jobs", ns, eb["metadata"]["uid"])
    assert job["metadata"]["ownerReferences"][0]["uid"] == eb["metadata"]["uid"]
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    # kopf's bookkeeping lives under our prefix; no finalizer for the default Retain policy.
    annotations = eb["metadata"].get("annotations", {})
    assert "pitcrew.dev/last-handled-configuration" in annotations
    assert not any(k.startswith("kopf.zalando.org") for k in annotations)
    assert not eb["metadata"].get("finalizers")
    reasons = wait_for("events", lambda: (r := events(cluster, ns, "llama")) and "Succeeded" in r and r)
    assert "JobCreated" in reasons
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics").read().decode()
    assert "pitcrew_builds{" in metrics and "pitcrew_build_duration_seconds_bucket" in metrics


def test_cache_hit_creates_no_pod(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    apply(cluster, engine_build(cluster, "first", ns))
    first = wait_phase(cluster, ns, "first", {"Succeeded"}, op=operator)
    pods_before = len(cluster.kubectl_json("-n", ns, "get", "pods")["items"])
    # Same engine under another name (and other scheduling details): served from S3.
    apply(cluster, engine_build(cluster, "second", ns, **{"timeoutSeconds": 999, "build.workers": 2}))
    second = wait_phase(cluster, ns, "second", {"Succeeded", "Failed"}, op=operator)
    st = second["status"]
    assert st["phase"] == "Succeeded" and st["cacheHit"] is True and st["reason"] == "CacheHit", st
    assert st["cacheKey"] == first["status"]["cacheKey"]
    assert st["engine"]["manifestSha256"] == first["status"]["engine"]["manifestSha256"]
    assert owned(cluster, "jobs", ns, second["metadata"]["uid"]) == []
    assert owned(cluster, "pods", ns, second["metadata"]["uid"]) == []
    assert len(cluster.kubectl_json("-n", ns, "get", "pods")["items"]) == pods_before


def test_spec_change_mid_build_replaces_the_job(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    apply(cluster, engine_build(cluster, "x", ns, mode="sleep-60"))
    eb = wait_phase(cluster, ns, "x", {"Building"}, op=operator)
    uid = eb["metadata"]["uid"]
    (old,) = owned(cluster, "jobs", ns, uid)
    apply(cluster, engine_build(cluster, "x", ns, mode="ok", **{"build.maxBatchSize": 8}))

    def new_job_only() -> bool:
        names = {
            j["metadata"]["name"]
            for j in owned(cluster, "jobs", ns, uid)
            if not j["metadata"].get("deletionTimestamp")
        }
        return bool(names) and old["metadata"]["name"] not in names

    wait_for("the old Job to go and a new one to appear", new_job_only, op=operator)
    done = wait_phase(cluster, ns, "x", {"Succeeded"}, op=operator)
    assert done["status"]["observedGeneration"] == 2
    assert done["status"]["cacheKey"] != old["metadata"]["annotations"]["pitcrew.dev/cache-key"]
    old_name = old["metadata"]["name"]

    def old_pods_gone() -> bool:
        return all(
            p["metadata"]["labels"].get("job-name") != old_name for p in owned(cluster, "pods", ns, uid)
        )

    wait_for("the old Job's pods to go", old_pods_gone, timeout=30)


def test_deletion_mid_build_removes_jobs_and_pods(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    apply(cluster, engine_build(cluster, "gone", ns, mode="sleep-60"))
    eb = wait_phase(cluster, ns, "gone", {"Building"}, op=operator)
    uid = eb["metadata"]["uid"]
    assert owned(cluster, "pods", ns, uid)
    cluster.kubectl("-n", ns, "delete", "eb", "gone", "--timeout=30s")
    wait_for("Jobs and Pods to be garbage-collected", lambda: not owned(cluster, "jobs", ns, uid)
             and not owned(cluster, "pods", ns, uid), timeout=60)  # fmt: skip


def test_deletion_policy_delete_removes_the_engine(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    apply(
        cluster,
        engine_build(cluster, "tmp", ns, **{"output.deletionPolicy": "Delete", "build.maxBatchSize": 3}),
    )
    eb = wait_phase(cluster, ns, "tmp", {"Succeeded"}, op=operator)
    assert eb["metadata"].get("finalizers") == ["pitcrew.dev/finalizer"]
    manifest_uri = eb["status"]["engine"]["manifestUri"]
    assert s3_bytes(cluster, manifest_uri) is not None
    cluster.kubectl("-n", ns, "delete", "eb", "tmp", "--timeout=60s", timeout=70)
    assert s3_bytes(cluster, manifest_uri) is None


@pytest.mark.parametrize(
    ("mode", "reason", "words"),
    [
        ("invalid", "InvalidCheckpoint", "missing hidden_size"),
        ("oom", "OOMKilled", "memory"),
        ("crash", "BuilderError", "crashed on purpose"),
        ("badsha", "VerificationFailed", "sha256"),
    ],
)
def test_builder_failures(
    cluster: ClusterInfo, operator: Operator, ns: str, mode: str, reason: str, words: str
) -> None:
    apply(cluster, engine_build(cluster, "bad", ns, mode=mode, retryLimit=0))
    eb = wait_phase(cluster, ns, "bad", {"Failed", "Succeeded"}, op=operator)
    st = eb["status"]
    assert (st["phase"], st["reason"]) == ("Failed", reason), st
    assert words in st["message"], st["message"]
    stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == reason


def test_unschedulable_gpu(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    apply(cluster, engine_build(cluster, "h100", ns, **{"target.gpuProduct": "NVIDIA-H100-80GB-HBM3"}))
    queued = wait_phase(cluster, ns, "h100", {"Queued", "Failed"}, op=operator)
    assert queued["status"]["phase"] == "Queued", queued["status"]
    failed = wait_phase(cluster, ns, "h100", {"Failed"}, timeout=30, op=operator)
    st = failed["status"]
    assert st["reason"] == "Unschedulable" and "nvidia.com/gpu.product" in st["message"], st
    wait_for("the stuck Job to be deleted", lambda: not owned(cluster, "jobs", ns, failed["metadata"]["uid"]))


def test_image_that_cannot_run(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    # The local node reports an image it cannot map as a kubelet reports a failed pull
    # (ErrImagePull, then ImagePullBackOff); the controller stops the Job at the first one.
    apply(cluster, engine_build(cluster, "img", ns, retryLimit=0, builderImage="registry.invalid/nope:1"))
    eb = wait_phase(cluster, ns, "img", {"Failed", "Succeeded"}, op=operator)
    st = eb["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "ImagePullError"), st
    assert "registry.invalid/nope:1" in st["message"] and "no local mapping" in st["message"], st
    assert "spec.builderImage" in st["message"]
    wait_for("the stuck Job to be deleted", lambda: not owned(cluster, "jobs", ns, eb["metadata"]["uid"]))


def test_controller_validation_is_visible(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    apply(cluster, engine_build(cluster, "acme", ns, **{"target.gpuProduct": "ACME-9000"}))
    st = wait_phase(cluster, ns, "acme", {"Failed"}, op=operator)["status"]
    assert st["reason"] == "InvalidSpec" and "spec.target.gpuProduct" in st["message"], st
    # The fix named in the message works.
    apply(
        cluster,
        engine_build(
            cluster, "acme", ns, **{"target.gpuProduct": "ACME-9000", "target.computeCapability": "8.0"}
        ),
    )
    wait_phase(cluster, ns, "acme", {"Queued", "Building", "Succeeded"}, op=operator)


@pytest.mark.slow
def test_deadline_exceeded(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    apply(cluster, engine_build(cluster, "slow", ns, mode="sleep-300", timeoutSeconds=60, retryLimit=0))
    st = wait_phase(cluster, ns, "slow", {"Failed", "Succeeded"}, timeout=120, op=operator)["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "DeadlineExceeded"), st
    assert "timeoutSeconds" in st["message"]


@pytest.mark.slow
def test_operator_restart_mid_build(
    cluster: ClusterInfo, operator: Operator, ns: str, tmp_path: Path
) -> None:
    apply(cluster, engine_build(cluster, "r", ns, mode="sleep-8"))
    eb = wait_phase(cluster, ns, "r", {"Building"}, op=operator)
    uid = eb["metadata"]["uid"]
    operator.stop(signal.SIGKILL)  # a crash, not a graceful stop
    try:
        operator.start()
        done = wait_phase(cluster, ns, "r", {"Succeeded", "Failed"}, timeout=60, op=operator)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert len(owned(cluster, "jobs", ns, uid)) == 1  # no second Job
    finally:
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()
