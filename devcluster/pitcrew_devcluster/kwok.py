"""kwok fake nodes for scale tests: many GPU nodes whose pods kwok's default stages run to completion.

Fake nodes carry the annotation kwok manages (`kwok.x-k8s.io/node=fake`), the label
`type=kwok`, and the taint `kwok.x-k8s.io/node=fake:NoSchedule`, so only pods that opt in (a
toleration plus e.g. nodeSelector `type: kwok`) land there and real work stays on the local node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .binaries import Binaries
from .errors import DevclusterError
from .ports import LOOPBACK

ANNOTATION = "kwok.x-k8s.io/node"
LABEL = "type"
LABEL_VALUE = "kwok"
TAINT = {"key": ANNOTATION, "value": "fake", "effect": "NoSchedule"}
TOLERATION = {"key": ANNOTATION, "operator": "Exists", "effect": "NoSchedule"}


def write_config(directory: Path, bins: Binaries) -> Path:
    """kwok's release "fast" stages, kept beside the binary by hack/build-tools.sh, as one -c file."""
    stages = sorted((bins.path("kwok").parent / "stages").glob("*.yaml"))
    if not stages:
        raise DevclusterError(
            f"no kwok stages beside {bins.path('kwok')}: rebuild kwok with `hack/build-tools.sh kwok`",
            component="kwok",
        )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "stages.yaml"
    path.write_text("\n---\n".join(stage.read_text() for stage in stages))
    return path


def argv(bins: Binaries, kubeconfig: Path, port: int, config: Path) -> list[str]:
    return [
        str(bins.path("kwok")),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={ANNOTATION}=fake",
        f"--server-address={LOOPBACK}:{port}",
        "--cidr=10.64.0.1/16",
        f"--node-ip={LOOPBACK}",
    ]


def node_manifest(
    name: str, *, gpus: int, gpu_product: str, compute_capability: str, cpu: str = "32", memory: str = "256Gi"
) -> dict[str, Any]:
    major, _, minor = compute_capability.partition(".")
    resources = {"cpu": cpu, "memory": memory, "pods": "110", "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                LABEL: LABEL_VALUE,
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/agent": "",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": gpu_product,
                "nvidia.com/gpu.count": str(gpus),
                "nvidia.com/gpu.compute.major": major,
                "nvidia.com/gpu.compute.minor": minor or "0",
                "pitcrew.dev/compute-capability": compute_capability,
            },
        },
        "spec": {"taints": [TAINT]},
        "status": {"allocatable": resources, "capacity": resources},
    }
