"""convert: the source checkpoint -> a TensorRT-LLM checkpoint, through the converter package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pitcrew.api.plan import BuildPlan
from pitcrew_builder.backends.base import ProgressFn
from pitcrew_builder.checkpoint import CheckpointConfig, CheckpointError
from pitcrew_builder.errors import InvalidCheckpoint


def convert_arguments(plan: BuildPlan) -> dict[str, Any]:
    """Keyword arguments of convert() for this plan (pure; also hashed to decide on a resume)."""
    model = plan.model
    fields: dict[str, Any] = {}
    if model is not None:
        # Facts the spec states override what the checkpoint says (Megatron torch_dist lacks them).
        for name in ("num_attention_heads", "num_key_value_heads", "vocab_size"):
            value = getattr(model, name)
            if value is not None:
                fields[name] = value
        if model.architecture == "GPT2LMHeadModel":
            fields["architecture"] = "GPTForCausalLM"
        elif model.architecture is not None:
            fields["architecture"] = model.architecture
    q = plan.quantization
    return {
        "source_format": plan.source.format.value,
        "tp": plan.parallelism.tensor,
        "pp": plan.parallelism.pipeline,
        "dtype": (model.dtype if model and model.dtype else "auto"),
        "fields": fields,
        "quantization": None if q.weights == "none" else q.weights,
        "kv_cache": q.kv_cache,
    }


def run_convert(plan: BuildPlan, source_dir: Path, out_dir: Path, progress: ProgressFn) -> CheckpointConfig:
    from pitcrew_builder.convert.api import ModelOverrides, convert

    args = convert_arguments(plan)
    # An HF config names its own architecture; the spec's matters for Megatron checkpoints.
    fields = {k: v for k, v in args["fields"].items() if k != "architecture" or args["source_format"] != "hf"}
    overrides = ModelOverrides(fields=fields)
    try:
        return convert(
            source_dir,
            args["source_format"],
            out_dir,
            tp=args["tp"],
            pp=args["pp"],
            dtype=args["dtype"],
            overrides=overrides,
            quantization=args["quantization"],
            kv_cache=args["kv_cache"],
            progress=progress,
        )
    except CheckpointError as exc:
        raise InvalidCheckpoint(str(exc), stage="convert") from exc
