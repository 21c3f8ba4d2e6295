"""GPU product label -> CUDA compute capability (SM), and which backends can build for it.

The product is the value of the `nvidia.com/gpu.product` node label that NVIDIA's GPU feature
discovery sets (e.g. NVIDIA-A100-SXM4-80GB, NVIDIA-GeForce-RTX-4090, Tesla-T4). Pure.
"""

from __future__ import annotations

import re

from pitcrew.api.v1alpha1 import Backend

# Model name (after normalisation, see `normalize_product`) -> compute capability.
# Longest keys are tried first so that e.g. A10G wins over A10 and RTX-4090 over RTX-40.
COMPUTE_CAPABILITY: dict[str, str] = {
    # Volta / Turing
    "V100": "7.0", "TITAN-V": "7.0",
    "T4": "7.5", "RTX-2080-TI": "7.5", "RTX-2080": "7.5", "QUADRO-RTX-6000": "7.5", "QUADRO-RTX-8000": "7.5",
    # Ampere
    "A100": "8.0", "A800": "8.0", "A30": "8.0",
    "A10": "8.6", "A10G": "8.6", "A40": "8.6", "A16": "8.6", "A2": "8.6",
    "RTX-A6000": "8.6", "RTX-A5000": "8.6", "RTX-A4000": "8.6",
    "RTX-3090": "8.6", "RTX-3090-TI": "8.6", "RTX-3080": "8.6", "RTX-3070": "8.6",
    "JETSON-AGX-ORIN": "8.7", "ORIN": "8.7",
    # Ada Lovelace
    "L4": "8.9", "L40": "8.9", "L40S": "8.9", "L20": "8.9",
    "RTX-4090": "8.9", "RTX-4080": "8.9", "RTX-4070": "8.9", "RTX-4060": "8.9",
    "RTX-6000-ADA": "8.9", "RTX-5000-ADA": "8.9", "RTX-4000-ADA": "8.9", "RTX-2000-ADA": "8.9",
    # Hopper
    "H100": "9.0", "H200": "9.0", "H800": "9.0", "H20": "9.0", "GH200": "9.0",
    # Blackwell datacenter
    "B100": "10.0", "B200": "10.0", "GB200": "10.0", "B300": "10.3", "GB300": "10.3",
    # Blackwell consumer / workstation
    "RTX-5090": "12.0", "RTX-5080": "12.0", "RTX-5070": "12.0", "RTX-5070-TI": "12.0", "RTX-5060": "12.0",
    "RTX-PRO-6000": "12.0", "RTX-PRO-5000": "12.0", "RTX-PRO-4000": "12.0",
    "GB10": "12.1",
}  # fmt: skip

# What each backend can compile for (TensorRT-RTX 1.7: SM75-SM89 and SM120/121, no Hopper or B200).
SUPPORTED_SM: dict[Backend, frozenset[str]] = {
    Backend.TENSORRT_LLM: frozenset(
        {"7.0", "7.5", "8.0", "8.6", "8.7", "8.9", "9.0", "10.0", "10.3", "12.0", "12.1"}
    ),
    Backend.TENSORRT_RTX: frozenset({"7.5", "8.0", "8.6", "8.7", "8.9", "12.0", "12.1"}),
    # Converting a checkpoint runs on CPU; the SM only pins the cache key.
    Backend.CHECKPOINT: frozenset(COMPUTE_CAPABILITY.values()),
}

_PREFIXES = ("NVIDIA-", "TESLA-", "GEFORCE-")
_KEYS = sorted(COMPUTE_CAPABILITY, key=len, reverse=True)


def normalize_product(product: str) -> str:
    """'NVIDIA-GeForce-RTX-4090' -> 'RTX-4090'; 'nvidia a100 sxm4 80gb' -> 'A100-SXM4-80GB'."""
    text = re.sub(r"[\s_]+", "-", product.strip().upper())
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if text.startswith(prefix):
                text, changed = text[len(prefix) :], True
    return text


def compute_capability(product: str) -> str | None:
    """The SM of a GPU product label value, or None when the product is not in the table."""
    text = normalize_product(product)
    for key in _KEYS:
        # The key must end at a word boundary: A10 must not match A100 or A10G.
        if text == key or text.startswith(key + "-"):
            return COMPUTE_CAPABILITY[key]
    return None


def backend_supports(backend: Backend, sm: str) -> bool:
    return sm in SUPPORTED_SM[backend]


# FP8 (E4M3 tensor cores) starts with Ada (8.9). TensorRT-LLM's support matrix
# (docs/source/reference/support-matrix.md, 1.x "Precision") lists FP8 for Ada, Hopper and
# Blackwell and not for Ampere (SM80/SM86) or older; that covers FP8 GEMMs and the FP8 KV cache
# (the attention kernels of the TRT engine path read E4M3 only on SM >= 89).
FP8_MIN_SM = (8, 9)


def sm_tuple(sm: str) -> tuple[int, int]:
    major, _, minor = sm.partition(".")
    return int(major), int(minor or 0)


def supports_fp8(sm: str) -> bool:
    return sm_tuple(sm) >= FP8_MIN_SM
