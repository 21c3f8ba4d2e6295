"""The conversion stage's single entry point: ``convert``."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pitcrew_builder.checkpoint import (
    CheckpointConfig,
    CheckpointError,
    MappingConfig,
    QuantConfig,
    rank_file,
    validate_checkpoint,
    write_config,
)
from pitcrew_builder.convert.quantize import CalibrationSet
from pitcrew_builder.convert.source import ModelSource
from pitcrew_builder.convert.writer import TORCH_DTYPES, ProgressFn, clear_checkpoint_dir, write_checkpoint

SourceFormat = Literal["hf", "megatron", "trtllm-checkpoint"]

_QUANT_ALIASES: dict[str, tuple[str | None, str | None]] = {
    "none": (None, None),
    "int8": ("W8A16", None),
    "w8a16": ("W8A16", None),
    "int8_weight_only": ("W8A16", None),
    "int4": ("W4A16", None),
    "w4a16": ("W4A16", None),
    "int4_weight_only": ("W4A16", None),
    "fp8": ("FP8", "FP8"),
}
_DTYPE_ALIASES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


@dataclass
class ModelOverrides:
    """Corrections applied on top of what the source says about the model.

    ``fields`` overrides CheckpointConfig fields by name (e.g. ``{"vocab_size": 32000,
    "use_parallel_embedding": True, "max_position_embeddings": 4096}``; ``vocab_size`` below the
    source's row count truncates Megatron's padded vocabulary). ``megatron_args`` fills in or
    replaces Megatron training arguments (``num_layers``, ``hidden_size``, ...) when a checkpoint's
    saved ``args`` are missing or wrong.
    """

    fields: dict[str, Any] = field(default_factory=dict)
    megatron_args: dict[str, Any] = field(default_factory=dict)


_KV_ALIASES: dict[str, str | None] = {"none": None, "fp8": "FP8", "int8": "INT8"}


def quant_config(quantization: str | None, kv_cache: str | None = None) -> QuantConfig:
    """Map build-spec quantization names to TRT-LLM's quant_algo / kv_cache_quant_algo.

    ``kv_cache`` None means "the default for the weights" (FP8 with fp8 weights, else none);
    "none", "fp8" or "int8" set it explicitly. Weight-only int8/int4 keep float weights: TRT-LLM
    quantizes them at build time. FP8 only marks the config: real FP8 engines need calibrated
    scales from TRT-LLM's quantize (ModelOpt) path, which this converter does not run.
    """
    key = (quantization or "none").lower()
    if key not in _QUANT_ALIASES:
        raise CheckpointError(f"quantization {quantization!r} is not one of {sorted(_QUANT_ALIASES)}")
    algo, kv = _QUANT_ALIASES[key]
    if kv_cache is not None:
        if kv_cache.lower() not in _KV_ALIASES:
            raise CheckpointError(f"kv_cache {kv_cache!r} is not one of {sorted(_KV_ALIASES)}")
        kv = _KV_ALIASES[kv_cache.lower()]
    return QuantConfig(quant_algo=algo, kv_cache_quant_algo=kv)


# Fields that describe the weights' shapes: an override may only confirm them (Megatron excepted,
# where they are translated into training args before the weights are read).
_STRUCTURAL = (
    "architecture",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_size",
    "intermediate_size",
)
_ARCH_ALIASES = {"GPT2LMHeadModel": "GPTForCausalLM"}


def megatron_args_from_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Megatron training args implied by structural config overrides (spec facts)."""
    out: dict[str, Any] = {}
    simple = {
        "hidden_size": "hidden_size",
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_attention_heads",
        "head_size": "kv_channels",
        "intermediate_size": "ffn_hidden_size",
        "max_position_embeddings": "max_position_embeddings",
        "rotary_base": "rotary_base",
        "norm_epsilon": "norm_epsilon",
    }
    for name, arg in simple.items():
        if fields.get(name) is not None:
            out[arg] = fields[name]
    if fields.get("num_key_value_heads") is not None:
        out["group_query_attention"] = True
        out["num_query_groups"] = fields["num_key_value_heads"]
    arch = _ARCH_ALIASES.get(str(fields.get("architecture")), fields.get("architecture"))
    if arch in ("LlamaForCausalLM", "MistralForCausalLM"):
        out.update(normalization="RMSNorm", swiglu=True, position_embedding_type="rope")
    elif arch == "GPTForCausalLM":
        out.setdefault("normalization", "LayerNorm")
    return out


def output_config(
    source: CheckpointConfig,
    *,
    tp: int,
    pp: int,
    dtype: str,
    quant: QuantConfig,
    overrides: ModelOverrides | None,
) -> CheckpointConfig:
    """The config of the checkpoint to write: the source's model with the requested layout."""
    name = _DTYPE_ALIASES.get(dtype.lower(), dtype) if dtype != "auto" else source.dtype
    if name not in TORCH_DTYPES or name == "fp8":
        raise CheckpointError(f"dtype {dtype!r} is not one of float16, bfloat16, float32, auto")
    config = dataclasses.replace(
        source,
        dtype=name,
        mapping=MappingConfig(world_size=tp * pp, tp_size=tp, pp_size=pp),
        quantization=quant,
        extra=dict(source.extra),
    )
    known = {f.name for f in dataclasses.fields(CheckpointConfig)} - {"mapping", "quantization", "dtype"}
    for key, value in (overrides.fields if overrides else {}).items():
        if key not in known:
            raise CheckpointError(f"override field {key!r} is not a checkpoint config field")
        if key == "architecture":
            value = _ARCH_ALIASES.get(value, value)
        if key in _STRUCTURAL and value != getattr(source, key):
            raise CheckpointError(
                f"override {key}={value!r} contradicts the source checkpoint ({getattr(source, key)!r})"
            )
        if key == "vocab_size" and value > source.vocab_size:
            raise CheckpointError(
                f"override vocab_size={value} exceeds the source's {source.vocab_size} embedding rows"
            )
        setattr(config, key, value)
    if tp < 1 or pp < 1:
        raise CheckpointError(f"tp={tp} and pp={pp} must be at least 1")
    config.qkv_bias, config.dense_bias, config.mlp_bias = config.trtllm_biases()
    config.check()
    return config


def _open_source(
    source_dir: Path, source_format: SourceFormat, overrides: ModelOverrides | None
) -> ModelSource:
    if source_format == "hf":
        from pitcrew_builder.convert.hf import HFSource

        return HFSource(source_dir)
    if source_format == "megatron":
        from pitcrew_builder.convert.megatron import open_megatron

        args = megatron_args_from_fields(overrides.fields) if overrides else {}
        args.update(overrides.megatron_args if overrides else {})
        return open_megatron(source_dir, args or None)
    if source_format == "trtllm-checkpoint":
        from pitcrew_builder.convert.trtllm import TrtllmSource

        return TrtllmSource(source_dir)
    raise CheckpointError(f"source_format {source_format!r} is not one of hf, megatron, trtllm-checkpoint")


class _TruncatedVocab(ModelSource):
    """Drops padded vocabulary rows when the overrides ask for a smaller vocab_size."""

    def __init__(self, inner: ModelSource, vocab_size: int) -> None:
        self.inner, self.config = inner, dataclasses.replace(inner.config, vocab_size=vocab_size)

    def embeddings(self) -> dict[str, Any]:
        out = self.inner.embeddings()
        name = "transformer.vocab_embedding.weight"
        out[name] = out[name][: self.config.vocab_size]
        return out

    def layer(self, index: int) -> dict[str, Any]:
        return self.inner.layer(index)

    def final(self) -> dict[str, Any]:
        out = self.inner.final()
        out["lm_head.weight"] = out["lm_head.weight"][: self.config.vocab_size]
        return out

    def activation_amax(self, index: int) -> dict[str, float]:
        return self.inner.activation_amax(index)

    def close(self) -> None:
        self.inner.close()


class _ZeroBiases(ModelSource):
    """Adds zero biases TRT-LLM's model declares but the source has none of (e.g. Megatron
    add_qkv_bias without add_bias_linear on LLaMA: TRT-LLM then also requires attention.dense.bias)."""

    def __init__(self, inner: ModelSource, config: CheckpointConfig) -> None:
        self.inner = inner
        self.config = dataclasses.replace(
            inner.config, qkv_bias=config.qkv_bias, dense_bias=config.dense_bias, mlp_bias=config.mlp_bias
        )

    def embeddings(self) -> dict[str, Any]:
        return self.inner.embeddings()

    def layer(self, index: int) -> dict[str, Any]:
        from pitcrew_builder.convert.source import canonical_layer_shapes

        out = dict(self.inner.layer(index))
        like = out["attention.q.weight"]
        for name, shape in canonical_layer_shapes(self.config).items():
            if name.endswith(".bias") and name not in out:
                out[name] = like.new_zeros(shape)
        return out

    def final(self) -> dict[str, Any]:
        return self.inner.final()

    def activation_amax(self, index: int) -> dict[str, float]:
        return self.inner.activation_amax(index)

    def close(self) -> None:
        self.inner.close()


def convert(
    source_dir: Path,
    source_format: SourceFormat,
    out_dir: Path,
    *,
    tp: int = 1,
    pp: int = 1,
    dtype: str = "float16",
    overrides: ModelOverrides | None = None,
    quantization: str | None = None,
    kv_cache: str | None = None,
    progress: ProgressFn | None = None,
    calibration: CalibrationSet | None = None,
) -> CheckpointConfig:
    """Convert a model to a TensorRT-LLM checkpoint (``config.json`` + ``rank{N}.safetensors``).

    ``source_format``: ``hf`` (LLaMA/Mistral/Qwen2/GPT-2 directory), ``megatron`` (legacy
    ``mp_rank_*`` or ``torch_dist`` directory, or their parent with
    ``latest_checkpointed_iteration.txt``) or ``trtllm-checkpoint`` (validated, then copied or
    re-sharded). ``tp``/``pp`` are the output layout, independent of the source's sharding.
    ``dtype``: float16, bfloat16, float32 or ``auto`` (the source's). ``quantization``: None,
    ``int8``/``w8a16``, ``int4``/``w4a16`` or ``fp8``; ``kv_cache``: None (default for the
    weights), ``none``, ``fp8`` or ``int8`` (see ``quant_config``). ``overrides.fields`` may
    correct non-structural config fields and confirm structural ones (for Megatron they become
    training args, which the saved args lack in some torch_dist checkpoints).
    ``progress(message, fraction)`` is called with fractions rising from 0.0 to 1.0.
    ``calibration``: token ids for FP8 weights / FP8 or INT8 KV cache (max calibration).
    Raises CheckpointError (a ValueError) naming the offending tensor or field.
    Returns the config written to ``out_dir/config.json``.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if not source_dir.is_dir():
        raise CheckpointError(f"source directory {source_dir} does not exist")
    if source_dir.resolve() == out_dir.resolve():
        raise CheckpointError("out_dir must differ from source_dir")
    if overrides and overrides.megatron_args and source_format != "megatron":
        raise CheckpointError(
            f"spec.model.megatronArgs applies to Megatron sources only (source.format is {source_format})"
        )
    quant = quant_config(quantization, kv_cache)
    if source_format == "trtllm-checkpoint":
        done = _pass_through(
            source_dir,
            out_dir,
            tp=tp,
            pp=pp,
            dtype=dtype,
            quant=quant,
            overrides=overrides,
            progress=progress,
        )
        if done is not None:
            return done
    with _open_source(source_dir, source_format, overrides) as source:
        wanted_vocab = overrides.fields.get("vocab_size") if overrides else None
        if wanted_vocab is not None and int(wanted_vocab) < source.config.vocab_size:
            source = _TruncatedVocab(source, int(wanted_vocab))
        config = output_config(source.config, tp=tp, pp=pp, dtype=dtype, quant=quant, overrides=overrides)
        if config.trtllm_biases() != (
            source.config.qkv_bias,
            source.config.dense_bias,
            source.config.mlp_bias,
        ):
            source = _ZeroBiases(source, config)
        return write_checkpoint(source, config, out_dir, progress, calibration)


def _pass_through(
    source_dir: Path,
    out_dir: Path,
    *,
    tp: int,
    pp: int,
    dtype: str,
    quant: QuantConfig,
    overrides: ModelOverrides | None,
    progress: ProgressFn | None,
) -> CheckpointConfig | None:
    """Copy a checkpoint whose layout already matches; None when it must be re-written."""
    stored = validate_checkpoint(source_dir)
    wanted = output_config(stored, tp=tp, pp=pp, dtype=dtype, quant=quant, overrides=overrides)
    if quant.quant_algo is None and quant.kv_cache_quant_algo is None:
        wanted.quantization = stored.quantization  # "no quantization asked" keeps what is there
    same_layout = (
        wanted.mapping == stored.mapping
        and wanted.dtype == stored.dtype
        and wanted.quantization == stored.quantization
    )
    if not same_layout:
        return None
    clear_checkpoint_dir(out_dir)
    world = stored.mapping.world_size
    for rank in range(world):
        if progress:
            progress(f"copy rank {rank}", rank / world)
        shutil.copyfile(rank_file(source_dir, rank), rank_file(out_dir, rank))
    write_config(wanted, out_dir)
    if progress:
        progress("done", 1.0)
    return wanted
