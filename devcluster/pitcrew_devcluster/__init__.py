"""A local Kubernetes control plane for tests and demos: etcd, kube-apiserver, controller-manager,
scheduler, MinIO as S3, a real node (kubelet + containerd + runc), and optional kwok fake nodes.

    python -m pitcrew_devcluster up|down|env|status        (or the `pitcrew-devcluster` script)

From Python::

    from pitcrew_devcluster import UpOptions, up, down
    info = up(UpOptions(state_dir=tmp))      # ClusterInfo: kubeconfig, server, token, s3, kubectl()
    down(tmp)
"""

from .cluster import UpOptions, add_kwok_nodes, down, load, start_kwok, status, up
from .errors import DevclusterError
from .info import ClusterInfo
from .s3server import S3Info
from .state import default_state_dir

__all__ = [
    "ClusterInfo",
    "DevclusterError",
    "S3Info",
    "UpOptions",
    "add_kwok_nodes",
    "default_state_dir",
    "down",
    "load",
    "start_kwok",
    "status",
    "up",
]
