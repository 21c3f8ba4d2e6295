"""convert: the source checkpoint -> a TensorRT-LLM checkpoint, through the converter package."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pitcrew.api.plan import BuildPlan
from pitcrew_builder.backends.base import ProgressFn
from pitcrew_builder.checkpoint import CheckpointConfig, CheckpointError
from pitcrew_builder.convert.quantize import CalibrationSet
from pitcrew_builder.errors import InvalidCheckpoint, InvalidSpec
from pitcrew_builder.uris import LocalLocation, parse_location

FetchFn = Callable[[str], bytes | None]
"""Reads one object URI (s3://) with the source's credentials; None when it does not exist."""


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
        "calibration": q.calibration.model_dump(mode="json") if q.calibrated() else None,
        "megatron_args": dict(model.megatron_args) if model and model.megatron_args else {},
    }


def calibration_for(
    plan: BuildPlan, source_dir: Path, work_dir: Path, fetch: FetchFn | None
) -> CalibrationSet | None:
    """The plan's calibration set as token ids; None when the quantization measures no scales."""
    from pitcrew_builder.convert.calibration import BUILTIN, FIELD, load_calibration

    q = plan.quantization
    if not q.calibrated():
        return None
    c = q.calibration
    local: Path | None = None
    if c.dataset != BUILTIN:
        loc = parse_location(c.dataset)
        if isinstance(loc, LocalLocation):
            local = loc.path
        else:
            if fetch is None:
                raise InvalidSpec(f"{FIELD}: {c.dataset} cannot be read here")
            data = fetch(c.dataset)
            if data is None:
                raise InvalidSpec(f"{FIELD}: {c.dataset} does not exist")
            local = work_dir / ("calibration" + Path(c.dataset).suffix)
            local.write_bytes(data)
    return load_calibration(c.dataset, local, source_dir, samples=c.samples, seq_len=c.seq_len)


def run_convert(
    plan: BuildPlan, source_dir: Path, out_dir: Path, progress: ProgressFn, fetch: FetchFn | None = None
) -> CheckpointConfig:
    from pitcrew_builder.convert.api import ModelOverrides, convert

    args = convert_arguments(plan)
    # An HF config names its own architecture; the spec's matters for Megatron checkpoints.
    fields = {k: v for k, v in args["fields"].items() if k != "architecture" or args["source_format"] != "hf"}
    overrides = ModelOverrides(fields=fields, megatron_args=args["megatron_args"])
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        calibration = calibration_for(plan, source_dir, out_dir.parent, fetch)
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
            calibration=calibration,
        )
    except CheckpointError as exc:
        raise InvalidCheckpoint(str(exc), stage="convert") from exc
