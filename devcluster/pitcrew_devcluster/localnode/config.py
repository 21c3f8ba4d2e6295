"""The local node's configuration file (JSON, written by devcluster `up`)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .podspec import ImageRule

# Host variables pods inherit (everything else a container sees comes from its spec), so host
# secrets such as AWS credentials do not leak into pods and make tests pass by accident.
DEFAULT_PASSTHROUGH_ENV = (
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "USER",
    "TERM",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "XDG_CACHE_HOME",
    "CUDA_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
)


# Images the node "has" without an image rule (fnmatch patterns); with the rules' prefixes they are
# all a pod may use. Any other image fails as a kubelet's pull would: ErrImagePull, ImagePullBackOff.
DEFAULT_LOCAL_IMAGES = (
    "python:*",
    "docker.io/python:*",
    "docker.io/library/python:*",
    "busybox",
    "busybox:*",
    "docker.io/busybox*",
    "docker.io/library/busybox*",
)


def default_image_rules() -> list[dict[str, Any]]:
    """Python images default to `python3`. Project images (the builder's ENTRYPOINT, the controller
    tests' fake builder) are the caller's to pass: UpOptions.image_rules / --image-rule."""
    return [
        {"prefix": "python:", "cmd": ["python3"]},
        {"prefix": "docker.io/library/python:", "cmd": ["python3"]},
        {"prefix": "docker.io/python:", "cmd": ["python3"]},
    ]


@dataclass
class LocalNodeConfig:
    kubeconfig: Path
    node_name: str = "pitcrew-local"
    gpus: int = 8
    gpu_product: str = "NVIDIA-A100-SXM4-80GB"
    compute_capability: str = "8.0"
    gpu_memory_mib: int = 81920
    cpu: str = "32"
    memory: str = "256Gi"
    pods: int = 110
    labels: dict[str, str] = field(default_factory=dict)
    work_dir: Path = Path(".pitcrew/devcluster/pods")
    pvc_dir: Path = Path(".pitcrew/devcluster/pvcs")
    venv_bin: str = ""
    image_rules: list[ImageRule] = field(default_factory=list)
    passthrough_env: tuple[str, ...] = DEFAULT_PASSTHROUGH_ENV
    local_images: tuple[str, ...] = DEFAULT_LOCAL_IMAGES
    lease_seconds: int = 40
    heartbeat_seconds: float = 10.0
    # The HTTPS endpoint serving /containerLogs for `kubectl logs` (0: none) and its certificate.
    log_port: int = 0
    tls_cert: str = ""
    tls_key: str = ""
    # CrashLoopBackOff for restartPolicy OnFailure/Always: first delay, doubled up to the cap.
    # (A kubelet uses 10 s .. 300 s; tests want short ones.)
    restart_backoff_seconds: float = 1.0
    restart_backoff_max_seconds: float = 10.0

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LocalNodeConfig:
        raw = dict(raw)
        rules = [
            ImageRule(prefix=r["prefix"], entrypoint=r.get("entrypoint"), cmd=r.get("cmd"))
            for r in raw.pop("image_rules", [])
        ]
        cfg = cls(kubeconfig=Path(raw.pop("kubeconfig")), image_rules=rules)
        for key, value in raw.items():
            if not hasattr(cfg, key):
                raise ValueError(f"unknown localnode config key {key!r}")
            if key in ("work_dir", "pvc_dir"):
                value = Path(value)
            elif key in ("passthrough_env", "local_images"):
                value = tuple(value)
            setattr(cfg, key, value)
        if not cfg.venv_bin:
            cfg.venv_bin = os.path.dirname(os.path.abspath(sys.executable))
        return cfg

    @classmethod
    def load(cls, path: Path) -> LocalNodeConfig:
        return cls.from_json(json.loads(path.read_text()))

    def node_labels(self) -> dict[str, str]:
        major, _, minor = self.compute_capability.partition(".")
        return {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node-role.kubernetes.io/localnode": "",
            "pitcrew.dev/localnode": "true",
            # The labels NVIDIA GPU feature discovery sets on real GPU nodes.
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": self.gpu_product,
            "nvidia.com/gpu.count": str(self.gpus),
            "nvidia.com/gpu.memory": str(self.gpu_memory_mib),
            "nvidia.com/gpu.compute.major": major,
            "nvidia.com/gpu.compute.minor": minor or "0",
            "pitcrew.dev/compute-capability": self.compute_capability,
            **self.labels,
        }
