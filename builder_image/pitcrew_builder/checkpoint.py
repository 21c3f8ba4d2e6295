"""The TensorRT-LLM checkpoint format: ``config.json`` plus ``rank{N}.safetensors`` per rank.

This module owns the config dataclass, its JSON round trip, and the per-rank tensor layout
(names and shapes) implied by a config. The same layout drives the streaming writer (which
needs every shape up front) and the validator for checkpoints we did not write ourselves.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"

# Architectures the converters emit and the reference model runs.
LLAMA_FAMILY = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"})
GPT_FAMILY = frozenset({"GPTForCausalLM"})
SUPPORTED_ARCHITECTURES = LLAMA_FAMILY | GPT_FAMILY

DTYPES = ("float16", "bfloat16", "float32")
QUANT_ALGOS = (None, "W8A16", "W4A16", "FP8")
KV_CACHE_QUANT_ALGOS = (None, "FP8", "INT8")
GATED_ACTIVATIONS = frozenset({"swiglu", "geglu"})


class CheckpointError(ValueError):
    """A source or TRT-LLM checkpoint is unusable; the message names the tensor or field."""


@dataclass
class MappingConfig:
    """How the checkpoint is split: ``world_size == tp_size * pp_size``."""

    world_size: int = 1
    tp_size: int = 1
    pp_size: int = 1


@dataclass
class QuantConfig:
    quant_algo: str | None = None
    kv_cache_quant_algo: str | None = None
    group_size: int = 128


@dataclass
class CheckpointConfig:
    """The fields of a TRT-LLM checkpoint ``config.json`` that Pitcrew reads and writes.

    ``qkv_bias``, ``dense_bias`` and ``mlp_bias`` are Pitcrew's explicit bias flags; they are also
    written under TRT-LLM's own names (``bias`` for GPT, ``attn_bias``/``mlp_bias`` for LLaMA).
    ``extra`` carries other architecture-specific keys (e.g. ``qwen_type``) verbatim.
    """

    architecture: str
    dtype: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_size: int
    intermediate_size: int
    hidden_act: str
    norm_epsilon: float = 1e-5
    position_embedding_type: str = "rope_gpt_neox"
    max_position_embeddings: int = 2048
    rotary_base: float = 10000.0
    rotary_scaling: dict[str, Any] | None = None
    use_parallel_embedding: bool = False
    embedding_sharding_dim: int = 0
    share_embedding_table: bool = False
    logits_dtype: str = "float32"
    mapping: MappingConfig = field(default_factory=MappingConfig)
    quantization: QuantConfig = field(default_factory=QuantConfig)
    qkv_bias: bool = False
    dense_bias: bool = False
    mlp_bias: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- derived facts -------------------------------------------------------------------
    @property
    def is_llama_family(self) -> bool:
        return self.architecture in LLAMA_FAMILY

    @property
    def norm_has_bias(self) -> bool:
        """LayerNorm (GPT) has a bias, RMSNorm (LLaMA family) has none."""
        return not self.is_llama_family

    @property
    def gated_mlp(self) -> bool:
        # TRT-LLM's LLaMA always uses a gated MLP; GPT only for gated activations.
        return self.is_llama_family or self.hidden_act in GATED_ACTIVATIONS

    @property
    def tp(self) -> int:
        return self.mapping.tp_size

    @property
    def pp(self) -> int:
        return self.mapping.pp_size

    def vocab_size_padded(self) -> int:
        """Vocabulary rounded up to a multiple of TP (lm_head always, embedding when parallel)."""
        tp = self.tp
        return (self.vocab_size + tp - 1) // tp * tp

    def layers_of_pp_rank(self, pp_rank: int) -> range:
        per = self.num_hidden_layers // self.pp
        return range(pp_rank * per, (pp_rank + 1) * per)

    def kv_heads_per_rank(self) -> int:
        # With fewer KV heads than TP ranks each rank holds one (duplicated) KV head.
        return max(self.num_key_value_heads // self.tp, 1)

    # ---- checks ----------------------------------------------------------------------------
    def check(self) -> None:
        """Raise CheckpointError naming the first inconsistent field."""
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise CheckpointError(
                f"architecture {self.architecture!r} is not supported "
                f"(supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))})"
            )
        if self.dtype not in DTYPES:
            raise CheckpointError(f"dtype {self.dtype!r} is not one of {DTYPES}")
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_size",
            "intermediate_size",
        ):
            if getattr(self, name) <= 0:
                raise CheckpointError(f"{name} must be positive, got {getattr(self, name)}")
        m = self.mapping
        if m.tp_size < 1 or m.pp_size < 1 or m.world_size != m.tp_size * m.pp_size:
            raise CheckpointError(
                f"mapping world_size={m.world_size} must equal tp_size={m.tp_size} * pp_size={m.pp_size}"
            )
        tp = m.tp_size
        if self.num_attention_heads % tp:
            raise CheckpointError(
                f"num_attention_heads={self.num_attention_heads} is not divisible by tp={tp}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        kv = self.num_key_value_heads
        if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
            raise CheckpointError(
                f"num_key_value_heads={kv} cannot be split over tp={tp}: "
                "tp must divide the KV heads or be a multiple of them"
            )
        if self.intermediate_size % tp:
            raise CheckpointError(f"intermediate_size={self.intermediate_size} is not divisible by tp={tp}")
        if self.num_hidden_layers % m.pp_size:
            raise CheckpointError(
                f"num_hidden_layers={self.num_hidden_layers} is not divisible by pp={m.pp_size}"
            )
        if self.position_embedding_type not in ("learned_absolute", "rope_gpt_neox"):
            raise CheckpointError(
                f"position_embedding_type {self.position_embedding_type!r} is not supported"
            )
        if self.is_llama_family and self.position_embedding_type != "rope_gpt_neox":
            raise CheckpointError(f"{self.architecture} needs position_embedding_type rope_gpt_neox")
        if self.quantization.quant_algo not in QUANT_ALGOS:
            raise CheckpointError(
                f"quantization.quant_algo {self.quantization.quant_algo!r} is not supported"
            )
        if self.quantization.kv_cache_quant_algo not in KV_CACHE_QUANT_ALGOS:
            raise CheckpointError(
                f"quantization.kv_cache_quant_algo {self.quantization.kv_cache_quant_algo!r} is not supported"
            )
        if self.use_parallel_embedding and self.embedding_sharding_dim not in (0, 1):
            raise CheckpointError(f"embedding_sharding_dim={self.embedding_sharding_dim} must be 0 or 1")

    # ---- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["mapping"] = dataclasses.asdict(self.mapping)
        data["quantization"] = dataclasses.asdict(self.quantization)
        extra = data.pop("extra")
        # TRT-LLM's own names for the bias switches.
        if self.is_llama_family:
            data["attn_bias"] = self.qkv_bias
        else:
            data["bias"] = self.qkv_bias or self.dense_bias or self.mlp_bias
        data.update(extra)
        if self.architecture == "Qwen2ForCausalLM":
            # TRT-LLM 1.2 models/qwen/model.py QWenDecoderLayer reads config.seq_length
            # (max_seqlen_for_logn_scaling) and sizes the MLP by qwen_type ('qwen' halves
            # intermediate_size); QWenConfig does not derive either from a checkpoint.
            data.setdefault("qwen_type", "qwen2")
            data.setdefault("seq_length", self.max_position_embeddings)
        return data

    def trtllm_biases(self) -> tuple[bool, bool, bool]:
        """(qkv, dense, mlp) bias flags as TRT-LLM 1.2's model class for this architecture sets them.

        - Qwen2 (models/qwen/model.py QWenDecoderLayer): Attention(bias=attn_bias, dense_bias=False),
          GatedMLP(bias=mlp_bias).
        - LLaMA/Mistral (models/llama/model.py LLaMADecoderLayer): Attention(bias=attn_bias) with no
          dense_bias, so layers/attention.py Attention makes dense_bias = bias; GatedMLP(bias=mlp_bias).
        - GPT (models/gpt/model.py GPTDecoderLayer): one ``bias`` for QKV, dense and MLP.
        A flag set here that the source lacks is written as zeros (exact: adding 0 changes nothing).
        """
        q, d, m = self.qkv_bias, self.dense_bias, self.mlp_bias
        if self.architecture == "Qwen2ForCausalLM":
            if d:
                raise CheckpointError(
                    "Qwen2 with a bias on attention.dense cannot be built: TensorRT-LLM's QWen model "
                    "has dense_bias=False"
                )
            return q, False, m
        if self.is_llama_family:
            return q or d, q or d, m
        return (q or d or m,) * 3

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointConfig:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "mapping", "quantization"}
        missing = [
            n
            for n in (
                "architecture",
                "dtype",
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
            )
            if n not in data
        ]
        if missing:
            raise CheckpointError(f"config.json lacks field {missing[0]!r}")
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        arch = str(data["architecture"])
        heads = int(data["num_attention_heads"])
        kwargs.setdefault("num_key_value_heads", heads)
        if kwargs.get("num_key_value_heads") is None:
            kwargs["num_key_value_heads"] = heads
        kwargs.setdefault("head_size", int(data["hidden_size"]) // heads)
        kwargs.setdefault("intermediate_size", 4 * int(data["hidden_size"]))
        kwargs.setdefault("hidden_act", "silu" if arch in LLAMA_FAMILY else "gelu")
        # Bias flags: ours if present, otherwise TRT-LLM's conventions per architecture.
        if arch in GPT_FAMILY:
            bias = bool(data.get("bias", True))
            defaults = {"qkv_bias": bias, "dense_bias": bias, "mlp_bias": bias}
        elif arch == "Qwen2ForCausalLM":
            defaults = {"qkv_bias": True, "dense_bias": False, "mlp_bias": False}
        else:
            attn = bool(data.get("attn_bias", False))
            defaults = {"qkv_bias": attn, "dense_bias": attn, "mlp_bias": bool(data.get("mlp_bias", False))}
        for k, v in defaults.items():
            kwargs.setdefault(k, v)
        mapping = dict(data.get("mapping") or {})
        tp, pp = int(mapping.get("tp_size", 1)), int(mapping.get("pp_size", 1))
        kwargs["mapping"] = MappingConfig(
            world_size=int(mapping.get("world_size", tp * pp)), tp_size=tp, pp_size=pp
        )
        quant = dict(data.get("quantization") or {})
        kwargs["quantization"] = QuantConfig(
            quant_algo=quant.get("quant_algo"),
            kv_cache_quant_algo=quant.get("kv_cache_quant_algo"),
            group_size=int(quant.get("group_size", 128)),
        )
        trtllm_only = {"attn_bias", "bias", "mapping", "quantization"}
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known and k not in trtllm_only}
        try:
            return cls(**kwargs)
        except TypeError as exc:  # e.g. a required field left out
            raise CheckpointError(f"config.json is incomplete: {exc}") from exc


def write_config(config: CheckpointConfig, out_dir: Path) -> Path:
    path = out_dir / CONFIG_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)  # config.json appears last and whole: it marks a finished checkpoint
    return path


def read_config(ckpt_dir: Path) -> CheckpointConfig:
    path = ckpt_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return CheckpointConfig.from_dict(data)


def rank_file(ckpt_dir: Path, rank: int) -> Path:
    return ckpt_dir / f"rank{rank}.safetensors"


def rank_of(config: CheckpointConfig, tp_rank: int, pp_rank: int) -> int:
    return pp_rank * config.tp + tp_rank


# ---- per-rank layout -----------------------------------------------------------------------------

Shape = tuple[int, ...]


def layer_shapes(config: CheckpointConfig) -> dict[str, Shape]:
    """Names (relative to ``transformer.layers.{i}.``) and per-rank shapes of one layer."""
    tp, h, hd = config.tp, config.hidden_size, config.head_size
    q_out = config.num_attention_heads // tp * hd
    qkv_out = q_out + 2 * config.kv_heads_per_rank() * hd
    ffn = config.intermediate_size // tp
    shapes: dict[str, Shape] = {"input_layernorm.weight": (h,)}
    if config.norm_has_bias:
        shapes["input_layernorm.bias"] = (h,)
    shapes["attention.qkv.weight"] = (qkv_out, h)
    if config.qkv_bias:
        shapes["attention.qkv.bias"] = (qkv_out,)
    shapes["attention.dense.weight"] = (h, q_out)
    if config.dense_bias:
        shapes["attention.dense.bias"] = (h,)
    shapes["post_layernorm.weight"] = (h,)
    if config.norm_has_bias:
        shapes["post_layernorm.bias"] = (h,)
    shapes["mlp.fc.weight"] = (ffn, h)
    if config.mlp_bias:
        shapes["mlp.fc.bias"] = (ffn,)
    if config.gated_mlp:
        shapes["mlp.gate.weight"] = (ffn, h)
        if config.mlp_bias:
            shapes["mlp.gate.bias"] = (ffn,)
    shapes["mlp.proj.weight"] = (h, ffn)
    if config.mlp_bias:
        shapes["mlp.proj.bias"] = (h,)
    shapes.update(scale_shapes(config))
    return shapes


# TensorRT-LLM 1.2 tensorrt_llm/quantization/quantize.py:fp8_quantize swaps every ColumnLinear /
# RowLinear outside exclude_modules (lm_head, vocab/position embeddings) for FP8Linear /
# FP8RowLinear (tensorrt_llm/quantization/layers.py), whose weight is 'fp8' and which add two
# float32 parameters of shape (1,): weights_scaling_factor and activation_scaling_factor.
# kv_cache_quantize (same file) gives every Attention a float32 (1,) kv_cache_scaling_factor.
# PretrainedModel.load (models/modeling_utils.py) raises "Required but not provided tensors" for
# any of them left out.
FP8_LINEARS = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")
SCALE_SUFFIXES = ("weights_scaling_factor", "activation_scaling_factor", "kv_cache_scaling_factor")


def scale_shapes(config: CheckpointConfig) -> dict[str, Shape]:
    """The quantization scales of one layer (relative names), all float32 of shape (1,)."""
    shapes: dict[str, Shape] = {}
    if config.quantization.quant_algo == "FP8":
        for linear in FP8_LINEARS:
            if linear == "mlp.gate" and not config.gated_mlp:
                continue
            shapes[f"{linear}.weights_scaling_factor"] = (1,)
            shapes[f"{linear}.activation_scaling_factor"] = (1,)
    if config.quantization.kv_cache_quant_algo is not None:
        shapes["attention.kv_cache_scaling_factor"] = (1,)
    return shapes


def is_scale(name: str) -> bool:
    return name.rpartition(".")[2] in SCALE_SUFFIXES


def tensor_dtype(config: CheckpointConfig, name: str) -> str:
    """'fp8', 'float32' or the model dtype: how TRT-LLM 1.2 declares the parameter ``name``."""
    if is_scale(name):
        return "float32"
    module, _, kind = name.rpartition(".")
    local = module.split(".", 3)[3] if module.startswith("transformer.layers.") else module
    if config.quantization.quant_algo == "FP8" and kind == "weight" and local in FP8_LINEARS:
        return "fp8"
    return config.dtype


def embedding_shapes(config: CheckpointConfig) -> dict[str, Shape]:
    """Tensors held by the first PP rank, besides its layers."""
    h = config.hidden_size
    vocab = config.vocab_size
    if config.use_parallel_embedding:
        if config.embedding_sharding_dim == 0:
            emb: Shape = (config.vocab_size_padded() // config.tp, h)
        else:
            emb = (vocab, h // config.tp)
    else:
        emb = (vocab, h)
    shapes: dict[str, Shape] = {"transformer.vocab_embedding.weight": emb}
    if config.position_embedding_type == "learned_absolute":
        shapes["transformer.position_embedding.weight"] = (config.max_position_embeddings, h)
    return shapes


def final_shapes(config: CheckpointConfig) -> dict[str, Shape]:
    """Tensors held by the last PP rank, besides its layers."""
    h = config.hidden_size
    shapes: dict[str, Shape] = {"transformer.ln_f.weight": (h,)}
    if config.norm_has_bias:
        shapes["transformer.ln_f.bias"] = (h,)
    shapes["lm_head.weight"] = (config.vocab_size_padded() // config.tp, h)
    return shapes


def expected_rank_tensors(config: CheckpointConfig, rank: int) -> dict[str, Shape]:
    """Every tensor rank ``rank`` must hold, in the order the converters write them."""
    pp_rank = rank // config.tp
    out: dict[str, Shape] = {}
    if pp_rank == 0:
        out.update(embedding_shapes(config))
    per_layer = layer_shapes(config)
    for local in range(len(config.layers_of_pp_rank(pp_rank))):
        for name, shape in per_layer.items():
            out[f"transformer.layers.{local}.{name}"] = shape
    if pp_rank == config.pp - 1:
        out.update(final_shapes(config))
    return out


def validate_checkpoint(ckpt_dir: Path) -> CheckpointConfig:
    """Check an existing TRT-LLM checkpoint: config fields, every rank file, every tensor and shape.

    Extra tensors (e.g. quantization scales) are allowed. Shapes are only compared for floating
    point tensors, because pre-quantized integer weights are packed differently.
    """
    from safetensors import safe_open  # heavy import kept local: the config helpers need none

    config = read_config(ckpt_dir)
    config.check()
    for rank in range(config.mapping.world_size):
        path = rank_file(ckpt_dir, rank)
        if not path.is_file():
            raise CheckpointError(f"rank file {path.name} is missing from {ckpt_dir}")
        try:
            with safe_open(str(path), framework="pt") as f:
                present = set(f.keys())
                for name, shape in expected_rank_tensors(config, rank).items():
                    if name not in present:
                        raise CheckpointError(f"{path.name} lacks tensor {name}")
                    sl = f.get_slice(name)
                    actual = tuple(sl.get_shape())
                    if sl.get_dtype() in ("F16", "BF16", "F32", "F64", "F8_E4M3") and actual != shape:
                        raise CheckpointError(
                            f"{path.name}: tensor {name} has shape {actual}, expected {shape}"
                        )
        except CheckpointError:
            raise
        except Exception as exc:  # corrupt header, truncated file, ...
            raise CheckpointError(f"{path.name} cannot be read: {exc}") from exc
    return config
