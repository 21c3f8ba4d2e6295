"""The controller on the real control plane, S3 and node, with the FAKE builder (fake_builder.py).

The builder pods run on the real node (kubelet + containerd): the kernel OOM-kills, the kubelet
injects the Secret's credentials, reads the termination message and kills the pods of a superseded
or deleted build. One operator process (least-privilege RBAC) serves the module; each test has its
own namespace and output prefix. Deadline and restart tests take about a minute each and are
marked slow.
"""

from __future__ import annotations

import hashlib
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pitcrew.storage import UNIFORM
from pitcrew_devcluster import ClusterInfo

from .harness import (
    DEAD_ENDPOINT,
    Operator,
    StatusRecorder,
    apply,
    container_id,
    engine_build,
    free_port,
    get_eb,
    install,
    new_namespace,
    owned,
    running_containers,
    seed_checkpoint,
    wait_for,
    wait_phase,
)


@pytest.fixture(scope="module")
def operator(cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    install(cluster)
    seed_checkpoint(cluster)
    # A generous unschedulable grace: Queued must be stored before it ends, even on a busy machine.
    op = Operator(
        cluster, tmp_path_factory.mktemp("operator"), PITCREW_UNSCHEDULABLE_GRACE_SECONDS="10"
    ).start()
    yield op
    op.stop()
    print(op.tail(200))


@pytest.fixture
def ns(cluster: ClusterInfo) -> Iterator[str]:
    name = new_namespace(cluster)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def s3_get(cluster: ClusterInfo, uri: str) -> bytes:
    """An object's bytes; any S3 error (missing object included) propagates."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    body: bytes = cluster.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def s3_keys(cluster: ClusterInfo, uri: str) -> list[str]:
    """Every key under a prefix (all pages); S3 errors propagate."""
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    pages = cluster.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", ()))


def running_pod(cluster: ClusterInfo, ns: str, uid: str) -> dict[str, Any]:
    """The build's pod once its container runs."""

    def running() -> dict[str, Any] | None:
        for pod in owned(cluster, "pods", ns, uid):
            statuses = pod.get("status", {}).get("containerStatuses") or []
            if statuses and "running" in statuses[0].get("state", {}):
                return pod
        return None

    pod: dict[str, Any] = wait_for("the builder container to run", running, timeout=60)
    return pod


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
    manifest = s3_get(cluster, engine["manifestUri"])
    assert hashlib.sha256(manifest).hexdigest() == engine["manifestSha256"]
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
    old_container = container_id(running_pod(cluster, ns, uid))
    assert old_container in running_containers(cluster)
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
    # The kubelet killed the superseded builder's container (not just the API object).
    assert old_container not in running_containers(cluster)


def test_scheduling_change_reaches_a_job_that_waits_to_retry(
    cluster: ClusterInfo, operator: Operator, ns: str
) -> None:
    """timeoutSeconds is not in the cache key: a spec change of it keeps the engine, and used to
    never reach the Job. A Job no pod of which runs (here: waiting to retry) is replaced."""
    apply(cluster, engine_build(cluster, "resched", ns, mode="crash", retryLimit=3))
    eb = wait_for(
        "the first attempt to fail and the Job to wait for its retry",
        lambda: (
            (x := get_eb(cluster, ns, "resched"))
            and (x.get("status") or {}).get("reason") == "Retrying"
            and x
        ),
        timeout=90,
        op=operator,
    )
    uid = eb["metadata"]["uid"]
    (old,) = owned(cluster, "jobs", ns, uid)
    apply(cluster, engine_build(cluster, "resched", ns, mode="crash", retryLimit=3, timeoutSeconds=4321))

    def replaced() -> dict[str, Any] | None:
        live = [j for j in owned(cluster, "jobs", ns, uid) if not j["metadata"].get("deletionTimestamp")]
        new = [j for j in live if j["metadata"]["name"] != old["metadata"]["name"]]
        return new[0] if len(live) == 1 and new else None

    job = wait_for("the Job to be replaced", replaced, timeout=90, op=operator)
    assert job["spec"]["activeDeadlineSeconds"] == 4321
    assert job["metadata"]["annotations"]["pitcrew.dev/generation"] == "2"
    assert (
        job["metadata"]["annotations"]["pitcrew.dev/cache-key"]
        == old["metadata"]["annotations"]["pitcrew.dev/cache-key"]
    )
    wait_for("a JobReplaced event", lambda: "JobReplaced" in events(cluster, ns, "resched"), op=operator)
    st = get_eb(cluster, ns, "resched")["status"]  # type: ignore[index]
    assert st["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in st["conditions"]), st["conditions"]


def test_deletion_mid_build_removes_jobs_and_pods(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    apply(cluster, engine_build(cluster, "gone", ns, mode="sleep-60"))
    eb = wait_phase(cluster, ns, "gone", {"Building"}, op=operator)
    uid = eb["metadata"]["uid"]
    container = container_id(running_pod(cluster, ns, uid))
    cluster.kubectl("-n", ns, "delete", "eb", "gone", "--timeout=30s")
    wait_for("Jobs and Pods to be garbage-collected", lambda: not owned(cluster, "jobs", ns, uid)
             and not owned(cluster, "pods", ns, uid), timeout=60)  # fmt: skip
    assert container not in running_containers(cluster)


def test_deletion_policy_delete_removes_the_engine(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    apply(
        cluster,
        engine_build(cluster, "tmp", ns, **{"output.deletionPolicy": "Delete", "build.maxBatchSize": 3}),
    )
    eb = wait_phase(cluster, ns, "tmp", {"Succeeded"}, op=operator)
    assert eb["metadata"].get("finalizers") == ["pitcrew.dev/finalizer"]
    engine_uri = eb["status"]["engine"]["uri"]
    published = [k.rsplit("/", 1)[1] for k in s3_keys(cluster, engine_uri)]
    assert {"manifest.json", "config.json", "rank0.engine"} <= set(published), published
    # A sibling prefix sharing the key's first characters is not touched.
    sibling = engine_uri.rstrip("/") + "-other/keep.txt"
    bucket, _, key = sibling[len("s3://") :].partition("/")
    cluster.s3_client().put_object(Bucket=bucket, Key=key, Body=b"keep")
    cluster.kubectl("-n", ns, "delete", "eb", "tmp", "--timeout=60s", timeout=70)
    assert s3_keys(cluster, engine_uri) == []
    assert s3_get(cluster, sibling) == b"keep"


def test_deletion_removes_every_engine_the_object_published(
    cluster: ClusterInfo, operator: Operator, ns: str
) -> None:
    body = engine_build(cluster, "twice", ns, **{"output.deletionPolicy": "Delete", "build.maxBatchSize": 5})
    apply(cluster, body)
    first = wait_phase(cluster, ns, "twice", {"Succeeded"}, op=operator)["status"]["engine"]["uri"]
    body["spec"]["build"]["maxBatchSize"] = 6  # a spec change: another key, another engine
    apply(cluster, body)
    wait_for(
        "the second engine",
        lambda: (
            ((get_eb(cluster, ns, "twice") or {}).get("status") or {}).get("engine", {}).get("uri")
            not in (None, first)
        ),
        timeout=90,
        op=operator,
    )
    status = wait_phase(cluster, ns, "twice", {"Succeeded"}, op=operator)["status"]
    second = status["engine"]["uri"]
    assert [e["uri"] for e in status["publishedEngines"]] == [first, second]
    assert s3_keys(cluster, first) and s3_keys(cluster, second)
    cluster.kubectl("-n", ns, "delete", "eb", "twice", "--timeout=60s", timeout=70)
    assert s3_keys(cluster, first) == [] and s3_keys(cluster, second) == []


@pytest.mark.parametrize(
    ("mode", "reason", "words"),
    [
        ("invalid", "InvalidCheckpoint", "missing hidden_size"),
        ("oom", "OOMKilled", "raise spec.target.resources.limits.memory"),
        ("crash", "BuilderError", "crashed on purpose"),
        ("badsha", "VerificationFailed", "sha256"),
        ("nomanifest", "VerificationFailed", "manifest.json is missing or unreadable"),
        ("foreign", "VerificationFailed", "manifest.json is missing or unreadable"),
    ],
)
def test_builder_failures(
    cluster: ClusterInfo, operator: Operator, ns: str, mode: str, reason: str, words: str
) -> None:
    # The oom mode allocates until the kernel kills it at the limit (a real OOM kill).
    limits = {"target.resources": {"limits": {"memory": "128Mi"}}} if mode == "oom" else {}
    apply(cluster, engine_build(cluster, "bad", ns, mode=mode, retryLimit=0, **limits))
    eb = wait_phase(cluster, ns, "bad", {"Failed", "Succeeded"}, op=operator)
    st = eb["status"]
    assert (st["phase"], st["reason"]) == ("Failed", reason), st
    assert words in st["message"], st["message"]
    stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == reason
    if mode == "oom":
        # The kubelet's record of it: exit code 137 from the kernel's SIGKILL, reason OOMKilled.
        (pod,) = owned(cluster, "pods", ns, eb["metadata"]["uid"])
        t = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (t["reason"], t["exitCode"]) == ("OOMKilled", 137), t
    if mode in ("nomanifest", "foreign"):
        # Missing means missing; foreign means a manifest is there but names another cache key.
        keys = s3_keys(cluster, f"s3://{cluster.s3.bucket}/engines/{ns}/{st['cacheKey']}/")  # type: ignore[union-attr]
        assert any(k.endswith("/manifest.json") for k in keys) == (mode == "foreign"), keys


def test_retry_after_a_failed_attempt_succeeds(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    # The first pod crashes, the Job starts a second (backoffLimit = retryLimit), which succeeds.
    with StatusRecorder(cluster, ns, "flaky") as seen:
        apply(cluster, engine_build(cluster, "flaky", ns, mode="failonce", retryLimit=1))
        eb = wait_phase(cluster, ns, "flaky", {"Succeeded", "Failed"}, timeout=120, op=operator)
    st = eb["status"]
    assert (st["phase"], st["reason"], st["job"]["attempts"]) == ("Succeeded", "Succeeded", 2), st
    # The second attempt's statuses say why it is running again.
    retried = [x for x in seen.statuses if "attempt 2; previous: BuilderError" in x.get("message", "")]
    assert retried, f"no status named the retry: {[x.get('message') for x in seen.statuses]}"
    assert "crashed on purpose" in retried[0]["message"], retried[0]
    assert "Failed" not in seen.phases()
    keys = s3_keys(cluster, st["engine"]["uri"])
    assert not any(k.endswith(".fake-failed-once") for k in keys), keys  # the second attempt ran
    (job,) = owned(cluster, "jobs", ns, eb["metadata"]["uid"])
    assert job["status"]["failed"] == 1 and job["status"]["succeeded"] == 1, job["status"]


def test_source_missing_then_uploaded(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    assert cluster.s3 is not None
    source = f"s3://{cluster.s3.bucket}/ckpt/{ns}/"
    apply(cluster, engine_build(cluster, "nosrc", ns, **{"source.uri": source}))
    st = wait_phase(cluster, ns, "nosrc", {"Failed", "Succeeded"}, op=operator)["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "SourceUnavailable"), st
    assert st["message"] == (
        f"spec.source.uri: no objects under {source}: upload the checkpoint or fix the URI"
    ), st
    # The controller retries: once the checkpoint is there, the build goes through.
    s3 = cluster.s3_client()
    s3.put_object(Bucket=cluster.s3.bucket, Key=f"ckpt/{ns}/config.json", Body=b'{"hidden_size": 64}')
    done = wait_phase(cluster, ns, "nosrc", {"Succeeded"}, timeout=90, op=operator)
    assert done["status"]["cacheHit"] is False


def test_invalid_input_is_not_retried(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    """Builder exit 2 (invalid input) ends the Job at once (podFailurePolicy), retries or not."""
    apply(cluster, engine_build(cluster, "invalid", ns, mode="invalid", retryLimit=3))
    st = wait_phase(cluster, ns, "invalid", {"Failed", "Succeeded"}, op=operator)["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidCheckpoint"), st
    uid = get_eb(cluster, ns, "invalid")["metadata"]["uid"]  # type: ignore[index]
    (job,) = owned(cluster, "jobs", ns, uid)
    assert job["status"].get("failed") == 1 and st["job"]["attempts"] == 1, (job["status"], st)


def test_storage_unreachable(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    dead = DEAD_ENDPOINT  # allowed by the tests' tenancy policy; nothing listens there
    apply(cluster, engine_build(cluster, "src", ns, **{"source.endpoint": dead}))
    apply(cluster, engine_build(cluster, "out", ns, **{"output.endpoint": dead}))
    # Unreachable is transient: Pending (retried), not Failed.
    st = wait_phase(cluster, ns, "src", {"Pending", "Failed", "Succeeded"}, op=operator)["status"]
    assert (st["phase"], st["reason"]) == ("Pending", "StorageUnavailable"), st
    assert st["message"].startswith("spec.source.uri: cannot list the checkpoint: listing s3://"), st
    assert dead in st["message"], st
    # An endpoint the namespace was not granted is never called (SSRF): refused up front.
    other = f"http://127.0.0.1:{free_port()}"
    apply(cluster, engine_build(cluster, "ssrf", ns, **{"source.endpoint": other}))
    st = wait_phase(cluster, ns, "ssrf", {"Failed", "Succeeded"}, op=operator)["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "PolicyViolation"), st
    assert st["message"].startswith(f"spec.source.endpoint: {other} is not an endpoint"), st
    st = wait_phase(cluster, ns, "out", {"Pending", "Failed", "Succeeded"}, op=operator)["status"]
    assert (st["phase"], st["reason"]) == ("Pending", "StorageUnavailable"), st
    assert st["message"].startswith("spec.output.uri: cannot look for a published engine: reading s3://"), st
    for name in ("src", "out"):
        assert owned(cluster, "jobs", ns, get_eb(cluster, ns, name)["metadata"]["uid"]) == []  # type: ignore[index]


def test_source_bucket_missing(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    # A refusal (the bucket does not exist) is not transient: Failed, in words that do not tell an
    # absent bucket from a forbidden one.
    nobucket = f"s3://no-such-bucket-{ns}/ckpt/"
    apply(cluster, engine_build(cluster, "nobucket", ns, **{"source.uri": nobucket}))
    st = wait_phase(cluster, ns, "nobucket", {"Pending", "Failed", "Succeeded"}, op=operator)["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "SourceUnavailable"), st
    assert st["message"] == f"spec.source.uri: cannot list the checkpoint: listing {nobucket}: {UNIFORM}", st
    assert owned(cluster, "jobs", ns, get_eb(cluster, ns, "nobucket")["metadata"]["uid"]) == []  # type: ignore[index]


def test_unschedulable_gpu(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    with StatusRecorder(cluster, ns, "h100") as seen:
        apply(cluster, engine_build(cluster, "h100", ns, **{"target.gpuProduct": "NVIDIA-H100-80GB-HBM3"}))
        failed = wait_phase(cluster, ns, "h100", {"Failed"}, timeout=90, op=operator)
    st = failed["status"]
    assert st["reason"] == "Unschedulable" and "nvidia.com/gpu.product" in st["message"], st
    # Queued (with the scheduler's reason) was stored before the grace ran out.
    assert seen.phases() == ["Queued", "Failed"], seen.statuses
    reasons = [x.get("reason") for x in seen.statuses if x.get("phase") == "Queued"]
    assert "Unschedulable" in reasons, reasons
    wait_for("the stuck Job to be deleted", lambda: not owned(cluster, "jobs", ns, failed["metadata"]["uid"]))


def test_image_that_cannot_be_pulled(cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    # containerd's pull fails (no registry answers for registry.invalid) and the kubelet reports
    # ErrImagePull; the controller stops the Job at the first one.
    apply(cluster, engine_build(cluster, "img", ns, retryLimit=0, builderImage="registry.invalid/nope:1"))
    eb = wait_phase(cluster, ns, "img", {"Failed", "Succeeded"}, timeout=120, op=operator)
    st = eb["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "ImagePullError"), st
    assert "registry.invalid/nope:1" in st["message"] and "spec.builderImage" in st["message"], st
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


def _progress(cluster: ClusterInfo, ns: str, name: str) -> dict[str, Any] | None:
    st = (get_eb(cluster, ns, name) or {}).get("status") or {}
    progress: dict[str, Any] | None = st.get("progress") if st.get("phase") == "Building" else None
    return progress


@pytest.mark.slow
def test_operator_restart_mid_build(
    cluster: ClusterInfo, operator: Operator, ns: str, tmp_path: Path
) -> None:
    # 45 s of build: long enough to outlive a restart on a busy machine (checked, not assumed).
    apply(cluster, engine_build(cluster, "r", ns, mode="sleep-45"))
    eb = wait_phase(cluster, ns, "r", {"Building"}, op=operator)
    uid = eb["metadata"]["uid"]
    # Progress read from the builder's report while it builds (not the final publish/100).
    before = wait_for(
        "compile progress from the builder",
        lambda: (p := _progress(cluster, ns, "r")) and p["stage"] == "compile" and p,
        op=operator,
    )
    assert 20 <= before["percent"] < 100, before
    operator.stop(signal.SIGKILL)  # a crash, not a graceful stop
    try:
        operator.start()
        st = get_eb(cluster, ns, "r")["status"]  # type: ignore[index]
        (job,) = owned(cluster, "jobs", ns, uid)
        assert not job["status"].get("succeeded") and not job["status"].get("failed"), (
            f"the build ended before the operator was back; make it longer: {job['status']}"
        )
        assert st["phase"] == "Building", st
        # The new process follows the running build: the progress it writes keeps rising.
        after = wait_for(
            "progress written by the restarted operator",
            lambda: (p := _progress(cluster, ns, "r")) and p["percent"] > before["percent"] and p,
            op=operator,
        )
        assert after["stage"] == "compile", after
        done = wait_phase(cluster, ns, "r", {"Succeeded", "Failed"}, timeout=90, op=operator)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert done["status"]["job"]["attempts"] == 1, done["status"]
        assert len(owned(cluster, "jobs", ns, uid)) == 1  # no second Job
    finally:
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()
