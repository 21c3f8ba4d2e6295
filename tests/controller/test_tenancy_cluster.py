"""Tenant isolation on the real control plane and S3 (MinIO), with the FAKE builder.

The operator runs as in `make demo`: with its own S3 identity in its environment (MinIO's root
key). A namespace that names no Secret must not be served with that identity unless the admin
granted the prefix (PITCREW_TENANT_POLICY); a Job that merely carries our labels must not count.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from pitcrew_devcluster import ClusterInfo

from .harness import (
    FAKE,
    TEST_POLICY,
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

GRANTED_OUT = "engines/granted-shared"


@pytest.fixture(scope="module")
def operator(cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    assert cluster.s3 is not None
    install(cluster)
    seed_checkpoint(cluster)
    bucket = cluster.s3.bucket
    policy = {
        "grant-*": {
            **TEST_POLICY["*"],
            "s3Prefixes": [f"s3://{bucket}/ckpt/tiny", f"s3://{bucket}/{GRANTED_OUT}"],
        },
        **TEST_POLICY,
    }
    op = Operator(
        cluster,
        tmp_path_factory.mktemp("tenancy-operator"),
        # The operator's own S3 identity, as the demo and the chart's s3CredentialsSecret give it.
        AWS_ACCESS_KEY_ID=cluster.s3.access_key,
        AWS_SECRET_ACCESS_KEY=cluster.s3.secret_key,
        PITCREW_TENANT_POLICY=json.dumps(policy),
        PITCREW_MAX_ACTIVE_BUILDS="1",
    ).start()
    yield op
    op.stop()
    print(op.tail(200))


@pytest.fixture
def namespaces(cluster: ClusterInfo) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for ns in made:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _without_credentials(body: dict[str, Any]) -> dict[str, Any]:
    body["spec"]["source"].pop("credentialsSecretRef", None)
    body["spec"]["output"].pop("credentialsSecretRef", None)
    return body


def test_tenant_without_credentials_is_refused_not_served_from_the_cache(
    cluster: ClusterInfo, operator: Operator, namespaces: list[str]
) -> None:
    """The confused deputy: another namespace's copy of a built spec, without a Secret."""
    owner, intruder = new_namespace(cluster, "owner"), new_namespace(cluster, "intruder")
    namespaces += [owner, intruder]
    built = engine_build(cluster, "model", owner)
    apply(cluster, built)
    eb = wait_phase(cluster, owner, "model", {"Succeeded", "Failed"}, op=operator)
    assert eb["status"]["phase"] == "Succeeded", eb["status"]

    copy = _without_credentials(engine_build(cluster, "model", intruder))
    copy["spec"]["output"]["uri"] = built["spec"]["output"]["uri"]  # the owner's engine prefix
    apply(cluster, copy)
    st = wait_phase(cluster, intruder, "model", {"Succeeded", "Failed"}, op=operator)["status"]
    assert st["phase"] == "Failed" and st["reason"] == "PolicyViolation", st
    assert "engine" not in st and not st.get("cacheHit")
    assert st["message"].startswith("spec.source.credentialsSecretRef: ")
    assert "name a Secret of this namespace" in st["message"]
    assert owned(cluster, "jobs", intruder, get_eb(cluster, intruder, "model")["metadata"]["uid"]) == []


def test_granted_prefix_is_served_with_the_operator_identity(
    cluster: ClusterInfo, operator: Operator, namespaces: list[str]
) -> None:
    assert cluster.s3 is not None
    owner, granted = new_namespace(cluster, "owner"), new_namespace(cluster, "grant")
    namespaces += [owner, granted]
    out = f"s3://{cluster.s3.bucket}/{GRANTED_OUT}"
    apply(cluster, engine_build(cluster, "model", owner, **{"output.uri": out}))
    first = wait_phase(cluster, owner, "model", {"Succeeded", "Failed"}, op=operator)["status"]
    assert first["phase"] == "Succeeded", first

    apply(cluster, _without_credentials(engine_build(cluster, "model", granted, **{"output.uri": out})))
    st = wait_phase(cluster, granted, "model", {"Succeeded", "Failed"}, op=operator)["status"]
    assert st["phase"] == "Succeeded" and st["reason"] == "CacheHit", st
    assert st["engine"]["uri"] == first["engine"]["uri"]


def test_granted_build_gives_its_pod_no_credentials(
    cluster: ClusterInfo, operator: Operator, namespaces: list[str]
) -> None:
    """The grant lets the operator use its own S3 identity, never hands it to a pod: a build that
    names no Secret runs a builder pod with no S3 credentials (the kubelet injects only what the
    spec names), whose write is refused. Here no node identity exists to fall back on."""
    assert cluster.s3 is not None
    ns = new_namespace(cluster, "grant")  # also has a Secret `s3`, which the build does not name
    namespaces.append(ns)
    body = engine_build(
        cluster, "fresh", ns, retryLimit=0,
        **{"output.uri": f"s3://{cluster.s3.bucket}/{GRANTED_OUT}", "build.maxBatchSize": 77},
    )  # fmt: skip
    apply(cluster, _without_credentials(body))
    eb = wait_phase(cluster, ns, "fresh", {"Succeeded", "Failed"}, timeout=120, op=operator)
    st = eb["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "BuilderError"), st
    assert "Unable to locate credentials" in st["message"], st
    (pod,) = owned(cluster, "pods", ns, eb["metadata"]["uid"])
    env = pod["spec"]["containers"][0]["env"]
    assert not [e for e in env if "valueFrom" in e or e["name"].startswith("AWS_")], env


def test_a_job_with_our_labels_takes_no_slot(
    cluster: ClusterInfo, operator: Operator, namespaces: list[str]
) -> None:
    """PITCREW_MAX_ACTIVE_BUILDS=1 and a forged, never-finishing Job labelled like ours."""
    ns = new_namespace(cluster, "forged")
    namespaces.append(ns)
    labels = {
        "app.kubernetes.io/managed-by": "pitcrew",
        "app.kubernetes.io/component": "builder",
        "pitcrew.dev/enginebuild-uid": "00000000-forged",
    }
    forged = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "forged",
            "namespace": ns,
            "labels": labels,
            "annotations": {"pitcrew.dev/enginebuild": "model", "pitcrew.dev/generation": "99"},
        },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"pitcrew.test/no-such-node": "x"},  # stays Pending: active
                    "containers": [{"name": "c", "image": f"{FAKE}:sleep-600"}],
                },
            },
        },
    }
    apply(cluster, forged)
    apply(cluster, engine_build(cluster, "model", ns))
    st = wait_phase(cluster, ns, "model", {"Succeeded", "Failed"}, timeout=90, op=operator)["status"]
    assert st["phase"] == "Succeeded", st


def test_identical_builds_share_one_job(
    cluster: ClusterInfo, operator: Operator, namespaces: list[str]
) -> None:
    """Two EngineBuilds with one key and one output: one Job; the other takes its manifest."""
    ns = new_namespace(cluster, "shared")
    namespaces.append(ns)
    bodies = [engine_build(cluster, name, ns, mode="sleep-3") for name in ("first", "second")]
    cluster.kubectl("apply", "-f", "-", input="---\n".join(yaml.safe_dump(b) for b in bodies))
    waited = wait_for(
        "one of them waiting for the shared build",
        lambda: any(
            ((get_eb(cluster, ns, n) or {}).get("status") or {}).get("reason") == "WaitingForSharedBuild"
            for n in ("first", "second")
        ),
        timeout=60,
        op=operator,
    )
    assert waited
    done = {
        n: wait_phase(cluster, ns, n, {"Succeeded", "Failed"}, op=operator)["status"]
        for n in ("first", "second")
    }
    assert all(st["phase"] == "Succeeded" for st in done.values()), done
    assert sorted(bool(st.get("cacheHit")) for st in done.values()) == [False, True]
    assert done["first"]["engine"]["uri"] == done["second"]["engine"]["uri"]
    all_jobs = cluster.client().get(f"/apis/batch/v1/namespaces/{ns}/jobs")["items"]
    assert len(all_jobs) == 1, [j["metadata"]["name"] for j in all_jobs]


def test_a_secret_that_appears_later_is_picked_up(
    cluster: ClusterInfo, operator: Operator, namespaces: list[str]
) -> None:
    """external-secrets style: the build waits for its Secret, then starts without a spec change."""
    assert cluster.s3 is not None
    ns = new_namespace(cluster, "late")
    namespaces.append(ns)
    ref = {"name": "late-s3"}
    apply(
        cluster,
        engine_build(
            cluster, "model", ns, **{"source.credentialsSecretRef": ref, "output.credentialsSecretRef": ref}
        ),
    )
    st = wait_phase(cluster, ns, "model", {"Pending", "Failed", "Succeeded"}, op=operator)["status"]
    assert (st["phase"], st["reason"]) == ("Pending", "SecretNotFound"), st
    assert st["message"].startswith("spec.source.credentialsSecretRef: Secret 'late-s3' not found"), st
    cluster.kubectl(
        "-n", ns, "create", "secret", "generic", "late-s3",
        f"--from-literal=AWS_ACCESS_KEY_ID={cluster.s3.access_key}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={cluster.s3.secret_key}",
    )  # fmt: skip
    done = wait_phase(cluster, ns, "model", {"Succeeded", "Failed"}, timeout=90, op=operator)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["metadata"]["generation"] == 1  # no spec change was needed


def test_output_move_after_success_publishes_at_the_new_place(
    cluster: ClusterInfo, operator: Operator, namespaces: list[str]
) -> None:
    """The key ignores the output location, but a moved output must get the engine, not keep the old URI."""
    assert cluster.s3 is not None
    ns = new_namespace(cluster, "move")
    namespaces.append(ns)
    body = engine_build(cluster, "model", ns)
    apply(cluster, body)
    first = wait_phase(cluster, ns, "model", {"Succeeded", "Failed"}, op=operator)["status"]
    assert first["phase"] == "Succeeded", first
    moved = f"s3://{cluster.s3.bucket}/engines/{ns}-moved"
    body["spec"]["output"]["uri"] = moved
    apply(cluster, body)

    def republished() -> dict[str, Any] | None:
        st: dict[str, Any] = (get_eb(cluster, ns, "model") or {}).get("status") or {}
        if st.get("observedGeneration") != 2:
            return None
        if st.get("phase") == "Failed" or (st.get("engine") or {}).get("uri", "").startswith(moved):
            return st
        return None

    st = wait_for("the engine at the new output", republished, timeout=90, op=operator)
    assert st["phase"] == "Succeeded" and st["engine"]["uri"] == f"{moved}/{st['cacheKey']}/", st
    assert st["cacheKey"] == first["cacheKey"]
    key = f"engines/{ns}-moved/{st['cacheKey']}/manifest.json"
    assert cluster.s3_client().get_object(Bucket=cluster.s3.bucket, Key=key)["ContentLength"] > 0
