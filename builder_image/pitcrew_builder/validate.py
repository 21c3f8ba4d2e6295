"""validate: is what we are about to publish complete, consistent with the plan and numerically right?

- engine (or checkpoint) files present and non-empty, config.json consistent with the plan;
- for the converted checkpoint, logits against the source model on a few tokens where the model is
  small enough for the builder's CPU, for every source format (see source_logits).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pitcrew.api.plan import BuildPlan
from pitcrew.api.v1alpha1 import Backend, SourceFormat
from pitcrew_builder.checkpoint import CheckpointConfig
from pitcrew_builder.logging import log_event

MAX_CHECK_PARAMS = 100_000_000
# Max |logit difference| allowed, relative to the largest |logit| of the source (at least 1).
TOLERANCE = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 1e-1}
CHECK_TOKENS = 8
FP8_TOLERANCE = 0.1


@dataclass(frozen=True)
class LogitsCheck:
    status: str  # passed | failed | skipped
    reason: str = ""
    max_abs_diff: float | None = None
    tolerance: float | None = None


# ---- pure checks ------------------------------------------------------------------------------


def expected_files(backend: Backend, world_size: int) -> list[str]:
    if backend == Backend.CHECKPOINT:
        return ["config.json", *[f"rank{r}.safetensors" for r in range(world_size)]]
    return ["config.json", *[f"rank{r}.engine" for r in range(world_size)]]


def file_problems(engine_dir: Path, names: list[str]) -> list[str]:
    problems = []
    for name in names:
        path = engine_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size == 0:
            problems.append(f"{name} is empty")
    return problems


def _get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def config_problems(engine_config: dict[str, Any], plan: BuildPlan, ckpt: CheckpointConfig) -> list[str]:
    """Fields of the written config.json that disagree with the plan."""
    problems: list[str] = []

    def expect(what: str, actual: Any, wanted: Any) -> None:
        if actual != wanted:
            problems.append(f"{what} is {actual!r}, the plan asks for {wanted!r}")

    want_dtype = plan.model.dtype if plan.model and plan.model.dtype else ckpt.dtype
    if plan.backend == Backend.CHECKPOINT:
        expect("mapping.tp_size", _get(engine_config, "mapping", "tp_size"), plan.parallelism.tensor)
        expect("mapping.pp_size", _get(engine_config, "mapping", "pp_size"), plan.parallelism.pipeline)
        expect("dtype", engine_config.get("dtype"), want_dtype)
        return problems
    pretrained = engine_config.get("pretrained_config") or {}
    build = engine_config.get("build_config") or {}
    expect("pretrained_config.dtype", pretrained.get("dtype"), want_dtype)
    if plan.backend == Backend.TENSORRT_LLM:
        expect(
            "pretrained_config.mapping.tp_size",
            _get(pretrained, "mapping", "tp_size"),
            plan.parallelism.tensor,
        )
        expect(
            "pretrained_config.mapping.pp_size",
            _get(pretrained, "mapping", "pp_size"),
            plan.parallelism.pipeline,
        )
    for name in ("max_batch_size", "max_input_len", "max_seq_len"):
        expect(f"build_config.{name}", build.get(name), getattr(plan.sizes, name))
    if plan.backend == Backend.TENSORRT_LLM:
        expect("build_config.max_beam_width", build.get("max_beam_width"), plan.sizes.max_beam_width)
        expect("build_config.max_num_tokens", build.get("max_num_tokens"), plan.sizes.max_num_tokens)
    return problems


def parameter_count(cfg: CheckpointConfig) -> int:
    h, layers = cfg.hidden_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * cfg.head_size
    attn = h * (cfg.num_attention_heads * cfg.head_size) * 2 + h * kv * 2
    mlp = h * cfg.intermediate_size * (3 if cfg.gated_mlp else 2)
    emb = cfg.vocab_size * h * (1 if cfg.share_embedding_table else 2)
    return layers * (attn + mlp) + emb


def logits_tolerance(dtype: str) -> float:
    return TOLERANCE.get(dtype, 1e-1)


def logits_check_skip_reason(plan: BuildPlan, cfg: CheckpointConfig) -> str | None:
    params = parameter_count(cfg)
    if params >= MAX_CHECK_PARAMS:
        return f"model has ~{params:,} parameters, above the CPU check limit of {MAX_CHECK_PARAMS:,}"
    # W8A16/W4A16 checkpoints hold float weights; FP8 ones are dequantized by the reference loader.
    if cfg.quantization.quant_algo not in (None, "W8A16", "W4A16", "FP8"):
        return f"quantized checkpoint ({cfg.quantization.quant_algo})"
    return None


# ---- I/O --------------------------------------------------------------------------------------


def source_logits(
    source_dir: Path, ids: Any, source_format: SourceFormat, megatron_args: dict[str, Any] | None
) -> Any:
    """float32 logits of the source model, computed without the converter's weight mapping.

    hf: transformers' own model; megatron: MegatronForward over Megatron's tensor names and args;
    trtllm-checkpoint: the reference forward of the source checkpoint as stored (the conversion
    only re-shards and casts it).
    """
    import torch

    with torch.no_grad():
        if source_format == SourceFormat.HF:
            import transformers

            model = transformers.AutoModelForCausalLM.from_pretrained(str(source_dir), dtype=torch.float32)
            return model(ids).logits.float()
        if source_format == SourceFormat.MEGATRON:
            from pitcrew_builder.convert.megatron import open_megatron
            from pitcrew_builder.model.megatron_reference import MegatronForward

            with open_megatron(source_dir, megatron_args or None) as source:
                return MegatronForward(source.reader)(ids)
        from pitcrew_builder.model.reference import ReferenceModel

        return ReferenceModel.from_checkpoint(source_dir)(ids).float()


def check_logits(
    source_dir: Path,
    ckpt_dir: Path,
    cfg: CheckpointConfig,
    source_format: SourceFormat = SourceFormat.HF,
    megatron_args: dict[str, Any] | None = None,
) -> LogitsCheck:
    """Source model (float32, see source_logits) vs. the converted checkpoint (reference forward pass)."""
    import torch

    from pitcrew_builder.model.reference import ReferenceModel

    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.dtype]
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, cfg.vocab_size, (1, CHECK_TOKENS), generator=gen)
    expected = source_logits(source_dir, ids, source_format, megatron_args)
    with torch.no_grad():
        ref = ReferenceModel.from_checkpoint(ckpt_dir, dtype=dtype)
        actual = ref(ids).float()
    # Megatron pads the vocabulary; a plan may cut the padding off (or TP pad it further).
    vocab = min(expected.shape[-1], actual.shape[-1])
    expected, actual = expected[..., :vocab], actual[..., :vocab]
    scale = max(float(expected.abs().max()), 1.0)
    diff = float((actual - expected).abs().max())
    tol = logits_tolerance(cfg.dtype) * scale
    if cfg.quantization.quant_algo == "FP8":
        # E4M3 weights carry up to 2^-4 relative rounding each; tiny LLaMA/Qwen2/GPT-2 measure
        # 0.3-2.1% of the largest logit (fp32 and bf16), so 10% leaves a 5x margin.
        tol = max(tol, FP8_TOLERANCE * scale)
    return LogitsCheck(
        "passed" if diff <= tol else "failed",
        max_abs_diff=diff,
        tolerance=tol,
        reason="" if diff <= tol else f"max |logit diff| {diff:.4g} above {tol:.4g}",
    )


def megatron_source_args(plan: BuildPlan) -> dict[str, Any]:
    """The Megatron args the convert stage applied on top of the saved ones (same precedence)."""
    from pitcrew_builder.convert.api import megatron_args_from_fields
    from pitcrew_builder.stages.convert import convert_arguments

    args = convert_arguments(plan)
    out = megatron_args_from_fields(args["fields"])
    out.update(args["megatron_args"])
    return out


def validate(
    plan: BuildPlan, engine_dir: Path, source_dir: Path, ckpt_dir: Path, cfg: CheckpointConfig
) -> tuple[list[str], LogitsCheck]:
    """Returns (problems, logits check). The caller fails the build on any problem."""
    problems = file_problems(
        engine_dir,
        expected_files(plan.backend, 1 if plan.backend == Backend.TENSORRT_RTX else cfg.mapping.world_size),
    )
    config_path = engine_dir / "config.json"
    if config_path.is_file():
        try:
            problems += config_problems(json.loads(config_path.read_text()), plan, cfg)
        except ValueError as exc:
            problems.append(f"config.json is not valid JSON: {exc}")
    skip = logits_check_skip_reason(plan, cfg)
    if skip:
        check = LogitsCheck("skipped", reason=skip)
    else:
        try:
            check = check_logits(source_dir, ckpt_dir, cfg, plan.source.format, megatron_source_args(plan))
        except Exception as exc:  # the source may need remote code or a newer transformers
            check = LogitsCheck(
                "skipped", reason=f"source model could not be run: {type(exc).__name__}: {str(exc)[:300]}"
            )
    log_event(
        "validate",
        "logits-check",
        status=check.status,
        reason=check.reason or None,
        max_abs_diff=check.max_abs_diff,
        tolerance=check.tolerance,
    )
    if check.status == "failed":
        problems.append(f"logits of the converted checkpoint do not match the source: {check.reason}")
    return problems, check
