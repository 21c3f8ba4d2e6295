"""Helpers of the real-node tests: what the host lacks (the only reason to skip them), and loading
a test image into the node's containerd."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pitcrew_devcluster import ClusterInfo
from pitcrew_devcluster.images import ImageSpec, write_archives
from pitcrew_devcluster.realnode import CNI_BIN_DIR, HOST_TOOLS, Layout, import_archive

# The session cluster's node (UpOptions defaults): 8 advertised A100s, compute capability 8.0.
GPU_PRODUCT = "NVIDIA-A100-SXM4-80GB"


def host_problem() -> str | None:
    """Why this host cannot run the real node, or None."""
    if os.geteuid() != 0:
        return "the real node needs root (containerd, runc, network namespaces)"
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not (CNI_BIN_DIR / "bridge").is_file():
        missing.append("containernetworking-plugins")
    if not Path("/bin/busybox").is_file():
        missing.append("busybox-static")
    missing += [tool for tool in ("mmdebstrap", "podman") if shutil.which(tool) is None]
    if missing:
        return f"Debian packages missing: {', '.join(missing)} (run hack/install-node-deps.sh as root)"
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path("/sys/fs/cgroup/memory.max").exists():
        return "no memory cgroup controller on this host"
    return None


def load_image(cluster: ClusterInfo, spec: ImageSpec) -> None:
    """Imports an image made here into the real node's containerd (no registry involved)."""
    with tempfile.TemporaryDirectory() as tmp:
        (archive,) = write_archives(Path(tmp), [spec])
        import_archive(Layout.of(cluster.state_dir), archive)
