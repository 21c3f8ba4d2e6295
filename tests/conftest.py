"""Session fixtures shared by every test directory.

`cluster` brings up the devcluster (etcd, kube-apiserver, controller-manager, scheduler, MinIO and
the local GPU node) in a temporary state dir once per session and stops it afterwards. With
PITCREW_REUSE_CLUSTER=1 it uses the cluster running in $PITCREW_STATE_DIR (default
.pitcrew/devcluster), starting one there if none runs, and leaves it running for the next session.
Tests using it are marked `cluster` automatically (deselect with `-m "not cluster"`).

The local node runs `pitcrew.test/fake-builder:*` images as tests/controller/fake_builder.py and
`ghcr.io/pitcrew/builder*` as the venv's `pitcrew-builder`: the fixture passes those image rules
(the package knows nothing about tests or the builder). A reused cluster must have been started
with them too (`--image-rule pitcrew.test/fake-builder=".venv/bin/python
tests/controller/fake_builder.py" --image-rule ghcr.io/pitcrew/builder=.venv/bin/pitcrew-builder`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.harness import BUILD_TOOLS, builder_image_rule, fake_builder_rule
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


def _options(state_dir: Path) -> UpOptions:
    return UpOptions(
        state_dir=state_dir,
        build=False,
        build_tools=BUILD_TOOLS,
        image_rules=[fake_builder_rule(), builder_image_rule()],
    )


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    """A running devcluster: .kubeconfig, .server, .token, .ca_file, .node_name, .s3 (endpoint,
    access_key, secret_key, bucket, region), .env(), .kubectl(*args), .kubectl_json(*args),
    .client() (a small REST client) and .s3_client() (boto3)."""
    # Binaries are never built inside a test run (a cold build takes ~20 min): run
    # hack/build-tools.sh first; the error says so.
    if os.environ.get("PITCREW_REUSE_CLUSTER") == "1":
        state_dir = default_state_dir()
        info = load(state_dir)
        if info is None:
            try:
                info = up(_options(state_dir))
            except DevclusterError as e:
                pytest.fail(f"devcluster could not start: {e}", pytrace=False)
        yield info
        return
    state_dir = tmp_path_factory.mktemp("devcluster")
    try:
        info = up(_options(state_dir))
    except DevclusterError as e:
        pytest.fail(f"devcluster could not start: {e}", pytrace=False)
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
