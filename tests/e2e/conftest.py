"""The real node cluster (kubelet + containerd), shared by the e2e modules that need it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.harness import BUILD_TOOLS
from e2e.realnode_support import GPU_PRODUCT, host_problem
from pitcrew_devcluster import ClusterInfo, UpOptions, down, up


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    """A devcluster whose node is a real kubelet on containerd, with 4 (advertised) H100s."""
    problem = host_problem()
    if problem:
        pytest.skip(problem)
    sd = tmp_path_factory.mktemp("real")
    info = up(
        UpOptions(
            state_dir=sd,
            node="real",
            build=False,
            build_tools=BUILD_TOOLS,
            gpus=4,
            gpu_product=GPU_PRODUCT,
            compute_capability="9.0",
            timeout=120,
        )
    )
    try:
        yield info
    finally:
        down(sd)
