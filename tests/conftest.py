"""Session fixtures shared by every test directory.

`cluster` brings up the devcluster (etcd, kube-apiserver, controller-manager, scheduler, MinIO and
a real node: kubelet + containerd + runc, advertising 8 A100s) in a temporary state dir once per
session and stops it afterwards. The node gets the operator image (hack/build-images.sh, cached by
content) and the FAKE builder image derived from it (tests/controller/fake_image.py). With
PITCREW_REUSE_CLUSTER=1 it uses the cluster running in $PITCREW_STATE_DIR (default
.pitcrew/devcluster), starting one there if none runs, and leaves it running for the next session.
Tests using it are marked `cluster` automatically (deselect with `-m "not cluster"`); they are
skipped only where the real node cannot run (not root, Debian packages missing: see
tests/e2e/realnode_support.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.fake_image import build_operator_image, fake_builder_archive
from controller.harness import BUILD_TOOLS
from e2e.realnode_support import host_problem
from pitcrew_devcluster import (
    ClusterInfo,
    DevclusterError,
    UpOptions,
    default_state_dir,
    down,
    load,
    start_kwok,
    up,
)
from pitcrew_devcluster.cluster import load_images


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


def _images() -> list[Path]:
    _, operator = build_operator_image()
    return [operator, fake_builder_archive(operator)]


def _up(state_dir: Path, images: list[Path]) -> ClusterInfo:
    try:
        return up(
            UpOptions(
                state_dir=state_dir,
                node="real",
                build=False,
                build_tools=BUILD_TOOLS,
                images=images,
                timeout=180,
            )
        )
    except DevclusterError as e:
        pytest.fail(f"devcluster could not start: {e}", pytrace=False)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    """A running devcluster: .kubeconfig, .server, .token, .ca_file, .node_name, .s3 (endpoint,
    access_key, secret_key, bucket, region), .env(), .kubectl(*args), .kubectl_json(*args),
    .client() (a small REST client), .s3_client() (boto3) and .pod_s3_endpoint() (MinIO as pods
    reach it)."""
    problem = host_problem()
    if problem:
        pytest.skip(problem)
    # Binaries are never built inside a test run (a cold build takes ~20 min): run
    # hack/build-tools.sh first; the error says so. Images are (cached by content).
    images = _images()
    if os.environ.get("PITCREW_REUSE_CLUSTER") == "1":
        state_dir = default_state_dir()
        info = load(state_dir)
        if info is None:
            info = _up(state_dir, images)
        elif info.node != "real":
            pytest.fail(f"the cluster in {state_dir} has no real node: `down` it first", pytrace=False)
        else:
            load_images(images, state_dir)
        yield info
        return
    # A short path: the kubelet's unix sockets live under it (107 characters at most).
    state_dir = tmp_path_factory.mktemp("dc")
    info = _up(state_dir, images)
    try:
        yield info
    finally:
        down(state_dir)


@pytest.fixture(scope="session")
def fake_gpu_nodes(cluster: ClusterInfo) -> Callable[[int], list[str]]:
    """`fake_gpu_nodes(n)` adds n kwok GPU nodes (label type=kwok, taint kwok.x-k8s.io/node=fake:NoSchedule)
    and returns their names; pods need the toleration `pitcrew_devcluster.kwok.TOLERATION`."""

    def add(count: int) -> list[str]:
        return start_kwok(count, cluster.state_dir, build=False, build_tools=BUILD_TOOLS)

    return add


@pytest.fixture
def short_state_dir() -> Iterator[Path]:
    """An empty state dir for a cluster of a test's own, short enough for the kubelet's unix sockets
    (107 characters; pytest's tmp_path can be too long)."""
    path = Path(tempfile.mkdtemp(prefix="pc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
