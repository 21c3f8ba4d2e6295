"""checkpoint backend: no compile; the converted TRT-LLM checkpoint is what gets published."""

from __future__ import annotations

from pitcrew.api.plan import BuildPlan
from pitcrew_builder.backends.base import CompileContext, CompileResult


class CheckpointBackend:
    name = "checkpoint"

    def check(self, plan: BuildPlan) -> None:
        return None

    def compile(self, ctx: CompileContext) -> CompileResult:
        ctx.progress("checkpoint is the artifact", 1.0)
        cfg = ctx.checkpoint_config
        return CompileResult(
            engine_dir=ctx.checkpoint_dir,
            build_options={
                "dtype": cfg.dtype,
                "tp": cfg.tp,
                "pp": cfg.pp,
                "quant_algo": cfg.quantization.quant_algo,
            },
        )


BACKEND = CheckpointBackend()
