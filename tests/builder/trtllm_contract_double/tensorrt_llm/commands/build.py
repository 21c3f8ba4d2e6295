"""CONTRACT DOUBLE of tensorrt_llm.commands.build.build (exported as tensorrt_llm.build)."""

from __future__ import annotations

import os

from tensorrt_llm._contract import CALLS, ContractViolation
from tensorrt_llm.builder import BuildConfig, Engine, EngineConfig
from tensorrt_llm.models import PretrainedModel


def build(model: PretrainedModel, build_config: BuildConfig) -> Engine:
    if not isinstance(model, PretrainedModel):
        raise ContractViolation("build() takes a model from <Class>.from_checkpoint")
    if not isinstance(build_config, BuildConfig):
        raise ContractViolation("build() takes a BuildConfig")
    arch = model.config.get("architecture")
    tp = int(model.config.get("mapping", {}).get("tp_size", 1))
    plugin = build_config.plugin_config
    # tensorrt_llm/builder.py build(): reduce_fusion survives only for tp > 1 on these architectures.
    if plugin.reduce_fusion and (
        tp == 1 or arch not in ("LlamaForCausalLM", "Gemma2ForCausalLM", "MedusaForCausalLM")
    ):
        CALLS.append({"call": "warning", "message": "Overriding reduce_fusion to False"})
        plugin.reduce_fusion = False
    # ...and FP8 checkpoints are always built strongly typed.
    if (model.config.get("quantization") or {}).get("quant_algo") == "FP8":
        build_config.strongly_typed = True
    cache = build_config.output_timing_cache
    # The real build writes the timing cache here; a relative path lands in the CWD.
    with open(cache, "wb") as f:
        f.write(b"timing-cache")
    CALLS.append(
        {
            "call": "build",
            "rank": model.rank,
            "class": type(model).__name__,
            "build_config": build_config.to_dict(),
            "cwd": os.getcwd(),
        }
    )
    from tensorrt_llm import __version__

    blob = f"CONTRACT-DOUBLE engine rank {model.rank} tensors {len(model.tensor_names)}".encode()
    return Engine(EngineConfig(model.config, build_config, __version__), blob, model.rank)
