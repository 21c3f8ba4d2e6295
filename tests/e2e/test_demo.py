"""`make demo` end to end: hack/demo.sh in a state dir of its own, then what it claims, read back from
the cluster; then `down`, and nothing of the node is left on the host.

It claims: a node that is a real kubelet (a released version) on containerd; the operator as a
ready Deployment installed by the chart (its ServiceAccount, securityContext, resources) from the
operator image built here; the demo's EngineBuild Succeeded by a builder pod that ran the builder
image built here (imageID a digest, no registry); the same build under another name a cache hit
with no Job of its own. The first run builds the images (~10 min cold); then they are cached.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.harness import ROOT
from e2e.realnode_support import host_problem
from pitcrew_devcluster import ClusterInfo, down, load
from pitcrew_devcluster.realnode import Layout


def _problem() -> str | None:
    missing = [t for t in ("mmdebstrap", "podman") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} missing (Debian packages: make node-deps, as root)"
    return host_problem()


pytestmark = [
    pytest.mark.skipif(_problem() is not None, reason=str(_problem())),
    pytest.mark.cluster,
    pytest.mark.slow,
]

RELEASE, RELEASE_NS = "pitcrew", "pitcrew-system"
RELEASED_KUBELET = re.compile(r"^v1\.\d+\.\d+$")  # no -alpha/-dirty/+build suffix
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def _mounts_under(base: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(base) + "/")]


def _containerd_pids(state_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(state_dir).encode() in cmdline and (b"containerd" in cmdline or b"kubelet" in cmdline):
                pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClusterInfo, str]]:
    sd = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "PITCREW_STATE_DIR": str(sd)}
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "demo.sh")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000, check=False,
    )  # fmt: skip
    info = load(sd)
    try:
        assert proc.returncode == 0, f"demo.sh failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
        assert info is not None, "demo.sh left no running cluster"
        yield info, proc.stdout
    finally:
        down(sd)


def test_node_is_a_released_kubelet_on_containerd(demo: tuple[ClusterInfo, str]) -> None:
    info, out = demo
    (node,) = info.kubectl_json("get", "nodes")["items"]
    ni = node["status"]["nodeInfo"]
    assert ni["containerRuntimeVersion"].startswith("containerd://"), ni
    assert RELEASED_KUBELET.match(ni["kubeletVersion"]), ni
    # The demo printed the same evidence.
    assert ni["containerRuntimeVersion"] in out and ni["kubeletVersion"] in out


def test_operator_is_the_charts_ready_deployment(demo: tuple[ClusterInfo, str]) -> None:
    info, _ = demo
    deploy = info.kubectl_json("-n", RELEASE_NS, "get", "deployment", RELEASE)
    assert deploy["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE  # helm made it
    assert deploy["status"].get("readyReplicas") == 1, deploy["status"]
    info.kubectl("-n", RELEASE_NS, "get", "serviceaccount", RELEASE)
    (pod,) = info.kubectl_json("-n", RELEASE_NS, "get", "pods")["items"]
    spec = pod["spec"]
    assert spec["serviceAccountName"] == RELEASE
    assert spec["securityContext"]["runAsNonRoot"] is True
    (c,) = spec["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["resources"]["limits"]["memory"], c["resources"]
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["ready"] is True and cs["image"].startswith("pitcrew.local/operator:"), cs
    assert DIGEST.match(cs["imageID"]), cs
    # RBAC: the ServiceAccount may watch EngineBuilds and create Jobs, and nothing cluster-admin-like.
    sa = f"system:serviceaccount:{RELEASE_NS}:{RELEASE}"
    can = lambda *a: info.kubectl("auth", "can-i", *a, "--as", sa, check=False).stdout.strip()  # noqa: E731
    assert can("watch", "enginebuilds.pitcrew.dev") == "yes"
    assert can("create", "jobs", "-n", "default") == "yes"
    assert can("delete", "nodes") == "no"


def _builds(info: ClusterInfo) -> dict[str, dict[str, Any]]:
    return {eb["metadata"]["name"]: eb for eb in info.kubectl_json("get", "eb")["items"]}


def test_build_ran_the_local_builder_image_and_the_second_is_a_cache_hit(
    demo: tuple[ClusterInfo, str],
) -> None:
    info, _ = demo
    builds = _builds(info)
    first, again = builds["tiny-llama-rtx"]["status"], builds["tiny-llama-rtx-again"]["status"]
    assert first["phase"] == "Succeeded" and first.get("cacheHit") is not True, first
    assert first["engine"]["backend"] == "tensorrt-rtx" and first["engine"]["sizeBytes"] > 0
    assert again["phase"] == "Succeeded" and again["cacheHit"] is True, again
    assert again["engine"]["uri"] == first["engine"]["uri"]
    assert "job" not in again, again  # served from the cache: no Job, no pod
    # The first build's pod ran the builder image built here.
    job = first["job"]["name"]
    (pod,) = info.kubectl_json("get", "pods", "-n", "default", "-l", f"job-name={job}")["items"]
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["image"] == first["builderImage"] and cs["image"].startswith("pitcrew.local/builder:"), cs
    assert DIGEST.match(cs["imageID"]), cs
    assert cs["state"]["terminated"]["exitCode"] == 0, cs


def test_down_leaves_nothing_of_the_node(demo: tuple[ClusterInfo, str]) -> None:
    info, _ = demo
    sd = info.state_dir
    bridge = f"pcbr{info.pod_host.split('.')[2]}"
    assert _containerd_pids(sd), "the demo's containerd and kubelet should be running before down"
    down(sd)
    assert _containerd_pids(sd) == []
    assert _mounts_under(Layout.of(sd).base) == []
    assert not Path("/sys/class/net", bridge).exists()
    assert load(sd) is None
