"""Shared fixtures-as-functions for the controller's unit tests."""

from __future__ import annotations

from typing import Any

from pitcrew.api.v1alpha1 import EngineBuildSpec

KEY = "ab" * 32


def spec(**overrides: Any) -> EngineBuildSpec:
    raw: dict[str, Any] = {
        "source": {"uri": "s3://models/llama/", "format": "hf"},
        "target": {"gpuProduct": "NVIDIA-A100-SXM4-80GB"},
        "output": {"uri": "s3://engines/out"},
    }
    for path, value in overrides.items():
        node = raw
        parts = path.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return EngineBuildSpec.model_validate(raw)
