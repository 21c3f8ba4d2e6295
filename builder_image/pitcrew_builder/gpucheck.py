"""Refuse to build a TensorRT-LLM engine on a GPU other than the one the plan (and its cache key) names.

A TensorRT-LLM engine is compiled for the GPU it is built on. The controller selects nodes by GPU
product or compute capability labels; if a pod lands on another GPU anyway (labels wrong, a node
selector overridden), the engine would be filed under a key that claims another SM. `mismatch` is
pure; `visible_capabilities` asks torch (no GPU: nothing to check, e.g. the CPU test doubles).
"""

from __future__ import annotations

from collections.abc import Sequence

from pitcrew.api.plan import BuildPlan
from pitcrew.api.v1alpha1 import Backend
from pitcrew_builder.errors import InvalidSpec


def mismatch(planned: str, visible: Sequence[tuple[int, int]]) -> str | None:
    """A message when a visible GPU's compute capability is not the planned one, else None."""
    wrong = sorted({f"{major}.{minor}" for major, minor in visible} - {planned})
    if not wrong:
        return None
    return (
        f"target.computeCapability is {planned} but this pod sees a GPU of compute capability "
        f"{', '.join(wrong)}: the engine would not match its cache key. Fix the node labels "
        "(nvidia.com/gpu.product, nvidia.com/gpu.compute.major/minor) or spec.target"
    )


def visible_capabilities() -> list[tuple[int, int]]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [tuple(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())]  # type: ignore[misc]


def check(plan: BuildPlan) -> None:
    """Raises InvalidSpec (exit 2, not retried) for a tensorrt-llm build on the wrong GPU."""
    if plan.backend != Backend.TENSORRT_LLM or not plan.target.compute_capability:
        return
    problem = mismatch(plan.target.compute_capability, visible_capabilities())
    if problem:
        raise InvalidSpec(problem)
