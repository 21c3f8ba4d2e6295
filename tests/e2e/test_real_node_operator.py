"""The operator against the real node: failures the kubelet and the kernel report, not simulations.

The operator runs as a host process (as in the controller tests); its Jobs run on the real node.
- OOMKilled: the builder container gets a 64 MiB limit (spec.target.resources) and allocates
  400 MiB; the kernel kills it. The image is a FAKE builder made here from busybox (it only
  allocates memory; the real builder image is not needed to make the kernel kill a container).
- ImagePullError: an image no registry serves; containerd's pull fails and the kubelet reports
  ErrImagePull.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from controller.harness import (
    Operator,
    apply,
    engine_build,
    install,
    new_namespace,
    owned,
    seed_checkpoint,
    wait_for,
    wait_phase,
)
from e2e.realnode_support import GPU_PRODUCT, host_problem, load_image
from pitcrew_devcluster import ClusterInfo
from pitcrew_devcluster.images import ImageSpec, busybox_layer

pytestmark = [
    pytest.mark.skipif(host_problem() is not None, reason=str(host_problem())),
    pytest.mark.cluster,
    pytest.mark.slow,
]

# FAKE builder: ignores its plan and allocates 400 MiB, as a builder loading too big a model would.
FAKE_OOM_IMAGE = "pitcrew.local/fake-builder-oom:1"
UNPULLABLE = "registry.invalid/pitcrew/builder:0.0.0"
POLICY = {
    "*": {"builderImages": ["pitcrew.local/*", "registry.invalid/*"], "maxResources": {"memory": "1Gi"}}
}


@pytest.fixture(scope="module")
def operator(real_cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    load_image(
        real_cluster,
        ImageSpec(
            name=FAKE_OOM_IMAGE,
            layer=busybox_layer(),
            entrypoint=["/bin/sh", "-c", "dd if=/dev/zero of=/dev/null bs=400M count=1", "fake-builder"],
            user="10001:10001",  # as builder_image/Dockerfile
        ),
    )
    install(real_cluster)
    seed_checkpoint(real_cluster)
    op = Operator(
        real_cluster, tmp_path_factory.mktemp("operator"), PITCREW_TENANT_POLICY=json.dumps(POLICY)
    ).start()
    yield op
    op.stop()
    print(op.tail(200))


@pytest.fixture
def ns(real_cluster: ClusterInfo) -> Iterator[str]:
    name = new_namespace(real_cluster, prefix=f"rn{uuid.uuid4().hex[:2]}")
    wait_for(
        "default ServiceAccount",
        lambda: real_cluster.client().get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
    )
    yield name
    real_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_real_oom_kill_is_failed_oomkilled(real_cluster: ClusterInfo, operator: Operator, ns: str) -> None:
    body = engine_build(
        real_cluster,
        "oom",
        ns,
        retryLimit=0,
        builderImage=FAKE_OOM_IMAGE,
        **{"target.gpuProduct": GPU_PRODUCT, "target.resources": {"limits": {"memory": "64Mi"}}},
    )
    apply(real_cluster, body)
    eb = wait_phase(real_cluster, ns, "oom", {"Failed", "Succeeded"}, timeout=180, op=operator)
    st = eb["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "OOMKilled"), st
    assert "memory" in st["message"], st["message"]
    # The kubelet's record of it: exit code 137 from the kernel's SIGKILL.
    pods = real_cluster.kubectl_json("get", "pods", "-n", ns)["items"]
    states = [s["state"].get("terminated") or s.get("lastState", {}).get("terminated") for p in pods
              for s in p["status"].get("containerStatuses", [])]  # fmt: skip
    assert any(t and (t["reason"], t["exitCode"]) == ("OOMKilled", 137) for t in states), states


def test_unpullable_image_is_failed_image_pull_error(
    real_cluster: ClusterInfo, operator: Operator, ns: str
) -> None:
    body = engine_build(
        real_cluster, "pull", ns, retryLimit=0, builderImage=UNPULLABLE, **{"target.gpuProduct": GPU_PRODUCT}
    )
    apply(real_cluster, body)
    eb = wait_phase(real_cluster, ns, "pull", {"Failed", "Succeeded"}, timeout=180, op=operator)
    st = eb["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "ImagePullError"), st
    assert UNPULLABLE in st["message"] and "spec.builderImage" in st["message"], st["message"]
    wait_for(
        "the stuck Job to be deleted", lambda: not owned(real_cluster, "jobs", ns, eb["metadata"]["uid"])
    )
