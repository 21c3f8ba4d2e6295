"""Records of what the builder passed to the double (the test asserts on these)."""

from __future__ import annotations

from typing import Any

CALLS: list[dict[str, Any]] = []


class ContractViolation(TypeError):
    """The builder called the API in a way TensorRT-LLM 1.2 would reject."""
