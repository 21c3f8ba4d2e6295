import pytest

from pitcrew.api import gpus
from pitcrew.api.v1alpha1 import Backend


@pytest.mark.parametrize(
    ("product", "sm"),
    [
        ("NVIDIA-A100-SXM4-80GB", "8.0"),
        ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "8.0"),
        ("NVIDIA-A10G", "8.6"),
        ("NVIDIA-A10", "8.6"),
        ("NVIDIA-L4", "8.9"),
        ("NVIDIA-L40S", "8.9"),
        ("NVIDIA-H100-80GB-HBM3", "9.0"),
        ("NVIDIA-H100-PCIe", "9.0"),
        ("NVIDIA-H200", "9.0"),
        ("NVIDIA-GH200-480GB", "9.0"),
        ("NVIDIA-B200", "10.0"),
        ("NVIDIA-GeForce-RTX-4090", "8.9"),
        ("NVIDIA GeForce RTX 5090", "12.0"),
        ("NVIDIA-RTX-6000-Ada-Generation", "8.9"),
        ("NVIDIA-RTX-A6000", "8.6"),
        ("Tesla-T4", "7.5"),
        ("Tesla-V100-SXM2-16GB", "7.0"),
    ],
)
def test_known_products(product: str, sm: str) -> None:
    assert gpus.compute_capability(product) == sm


@pytest.mark.parametrize("product", ["NVIDIA-A1000", "Imaginary-GPU", "", "NVIDIA-"])
def test_unknown_products(product: str) -> None:
    assert gpus.compute_capability(product) is None


def test_rtx_backend_has_no_hopper_or_datacenter_blackwell() -> None:
    assert not gpus.backend_supports(Backend.TENSORRT_RTX, "9.0")
    assert not gpus.backend_supports(Backend.TENSORRT_RTX, "10.0")
    assert gpus.backend_supports(Backend.TENSORRT_RTX, "8.9")
    assert gpus.backend_supports(Backend.TENSORRT_RTX, "12.0")
    assert gpus.backend_supports(Backend.TENSORRT_LLM, "9.0")
