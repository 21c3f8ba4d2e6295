"""The operator installed by its Helm chart on the real node: the operator image built here
(hack/build-images.sh), `helm install` of helm/pitcrew (the chart's Deployment, ServiceAccount,
RBAC, securityContext and resources), running as a pod that reconciles EngineBuilds.

No kube-proxy runs, so the `kubernetes` Service IP does not route: the chart's `env` points
KUBERNETES_SERVICE_HOST/PORT at the API server on the node's bridge (ClusterInfo.pod_api_env()).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.harness import ROOT, apply, engine_build, seed_checkpoint, wait_for, wait_phase
from e2e.realnode_support import GPU_PRODUCT
from e2e.test_real_node_images import _problem, build_images
from pitcrew_devcluster import ClusterInfo
from pitcrew_devcluster.cluster import load_images

pytestmark = [
    pytest.mark.skipif(_problem() is not None, reason=str(_problem())),
    pytest.mark.cluster,
    pytest.mark.slow,
]

RELEASE = "pitcrew-chart"
BUILDS_NS = "chart-builds"
UNPULLABLE = "registry.invalid/pitcrew/builder:0.0.0"


def helm_binary() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-tools.sh"), "--print", "helm"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    binary = Path(out.strip().partition("=")[2]) / "helm"
    if not binary.is_file():
        pytest.fail(f"no helm at {binary}: run `bash hack/build-tools.sh helm` (make test does)")
    return binary


@pytest.fixture(scope="module")
def chart_operator(cluster: ClusterInfo) -> Iterator[str]:
    built, _ = build_images("operator")
    ((image, archive),) = built.items()
    load_images([archive], cluster.state_dir)
    repo, _, tag = image.rpartition(":")
    env = {
        **cluster.pod_api_env(),
        "PITCREW_S3_ENDPOINT": cluster.pod_s3_endpoint(),
        "PITCREW_NAMESPACES": BUILDS_NS,
    }
    values: dict[str, Any] = {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        "env": env,
        "tenancy": {BUILDS_NS: {"builderImages": ["registry.invalid/*"]}},
    }
    cluster.kubectl("create", "namespace", BUILDS_NS)
    seed_checkpoint(cluster)
    assert cluster.s3 is not None
    cluster.kubectl(
        "-n", BUILDS_NS, "create", "secret", "generic", "s3",
        f"--from-literal=AWS_ACCESS_KEY_ID={cluster.s3.access_key}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={cluster.s3.secret_key}",
    )  # fmt: skip
    helm = [str(helm_binary()), "--kubeconfig", str(cluster.kubeconfig)]
    proc = subprocess.run(
        [*helm, "install", RELEASE, str(ROOT / "helm" / "pitcrew"), "--namespace", RELEASE,
         "--create-namespace", "--values", "-", "--wait", "--timeout", "180s"],
        input=json.dumps(values), capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pods = cluster.kubectl("-n", RELEASE, "get", "pods", "-o", "yaml", check=False).stdout
        pytest.fail(f"helm install failed: {proc.stderr}\n{pods[-3000:]}")
    yield image
    subprocess.run([*helm, "uninstall", RELEASE, "--namespace", RELEASE], capture_output=True, check=False)


def test_chart_runs_the_operator_image_as_a_ready_deployment(
    cluster: ClusterInfo, chart_operator: str
) -> None:
    deploy = cluster.kubectl_json("-n", RELEASE, "get", "deployment", RELEASE)
    assert deploy["status"].get("readyReplicas") == 1, deploy["status"]
    (pod,) = cluster.kubectl_json("-n", RELEASE, "get", "pods")["items"]
    assert pod["spec"]["serviceAccountName"] == RELEASE
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["ready"] is True and cs["image"] == chart_operator
    assert cs["imageID"].startswith("sha256:")
    # Up and watching, not crash-looping behind a passing probe.
    wait_for(
        "the operator to start",
        lambda: (
            "pitcrew operator starting" in cluster.kubectl("-n", RELEASE, "logs", f"deploy/{RELEASE}").stdout
        ),
    )
    (pod,) = cluster.kubectl_json("-n", RELEASE, "get", "pods")["items"]
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


def test_in_cluster_operator_reports_an_unpullable_builder(cluster: ClusterInfo, chart_operator: str) -> None:
    body = engine_build(
        cluster, "pull", BUILDS_NS, retryLimit=0, builderImage=UNPULLABLE,
        **{"target.gpuProduct": GPU_PRODUCT},
    )  # fmt: skip
    apply(cluster, body)
    try:
        eb = wait_phase(cluster, BUILDS_NS, "pull", {"Failed", "Succeeded"}, timeout=180)
    except AssertionError as e:
        logs = cluster.kubectl("-n", RELEASE, "logs", f"deploy/{RELEASE}", check=False)
        raise AssertionError(f"{e}\n--- operator pod log ---\n{logs.stdout[-4000:]}{logs.stderr}") from None
    st = eb["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "ImagePullError"), st
    assert UNPULLABLE in st["message"], st["message"]
    wait_for(
        "the operator's log line about it",
        lambda: "pull" in cluster.kubectl("-n", RELEASE, "logs", f"deploy/{RELEASE}").stdout,
    )
