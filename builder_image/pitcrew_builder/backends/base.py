"""The compile-stage interface: one backend per EngineBuild `backend` value."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pitcrew.api.plan import BuildPlan
from pitcrew.api.v1alpha1 import Backend
from pitcrew_builder.checkpoint import CheckpointConfig
from pitcrew_builder.errors import InvalidSpec

ProgressFn = Callable[[str, float], None]


@dataclass
class CompileContext:
    plan: BuildPlan
    checkpoint_dir: Path
    checkpoint_config: CheckpointConfig
    engine_dir: Path
    work_dir: Path
    progress: ProgressFn


@dataclass
class CompileResult:
    engine_dir: Path
    # Versions of the compiler stack that made the engine (part of its identity).
    tensorrt_llm_version: str | None = None
    tensorrt_version: str | None = None
    # Options the engine was built with, recorded in manifest.json under "build".
    build_options: dict[str, Any] = field(default_factory=dict)


class EngineBackend(Protocol):
    name: str

    def check(self, plan: BuildPlan) -> None:
        """Refuse a plan this backend cannot build, before any download (raises InvalidSpec)."""

    def compile(self, ctx: CompileContext) -> CompileResult: ...


_MODULES = {
    Backend.TENSORRT_LLM: "pitcrew_builder.backends.trtllm",
    Backend.TENSORRT_RTX: "pitcrew_builder.backends.rtx",
    Backend.CHECKPOINT: "pitcrew_builder.backends.checkpoint",
}


def get_backend(name: Backend | str) -> EngineBackend:
    """Import lazily: the TRT-LLM image has no tensorrt_rtx and vice versa."""
    try:
        module = importlib.import_module(_MODULES[Backend(name)])
    except (KeyError, ValueError) as exc:
        raise InvalidSpec(f"backend {name!r} is not one of {', '.join(b.value for b in Backend)}") from exc
    backend: EngineBackend = module.BACKEND
    return backend
