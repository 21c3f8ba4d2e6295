"""Megatron-LM training arguments -> CheckpointConfig (and the facts the weight mapping needs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pitcrew_builder.checkpoint import CheckpointConfig, CheckpointError


@dataclass(frozen=True)
class MegatronModel:
    """What the weight mapping needs beyond the output config."""

    config: CheckpointConfig
    num_query_groups: int
    swiglu: bool
    zero_centered_gamma: bool
    tied_embeddings: bool


def _get(args: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if args.get(name) is not None:
            return args[name]
    return default


# Args without which the model cannot be read at all, and (when the checkpoint saved no args) the
# ones whose defaults would silently describe another model.
ALWAYS_NEEDED = ("num_layers", "hidden_size", "num_attention_heads")
NEEDED_WITHOUT_SAVED_ARGS = (
    "ffn_hidden_size",
    "normalization",
    "swiglu",
    "position_embedding_type",
    "layernorm_epsilon",
)


def missing_args(args: dict[str, Any], saved: bool) -> list[str]:
    """Names of the Megatron args a plan must give (empty when the model is fully described)."""
    need = list(ALWAYS_NEEDED) + ([] if saved else list(NEEDED_WITHOUT_SAVED_ARGS))
    if not saved and args.get("position_embedding_type") == "learned_absolute":
        need.append("max_position_embeddings")
    aliases = {"layernorm_epsilon": ("layernorm_epsilon", "norm_epsilon")}
    return [n for n in need if all(args.get(a) is None for a in aliases.get(n, (n,)))]


def _required(args: dict[str, Any], name: str) -> Any:
    if args.get(name) is None:
        raise CheckpointError(f"Megatron args lack field {name!r}")
    return args[name]


def rotary_scaling(args: dict[str, Any]) -> dict[str, Any] | None:
    """TRT-LLM's ``rotary_scaling`` for Megatron's rope options.

    ``--rotary-seq-len-interpolation-factor F`` divides positions by F (Megatron's RotaryEmbedding),
    which is TRT-LLM's linear scaling with factor F; ``--use-rope-scaling`` is llama3 scaling with
    Megatron's fixed low/high frequency factors 1 and 4 and original context 8192.
    """
    interp = args.get("rotary_seq_len_interpolation_factor")
    llama3 = bool(args.get("use_rope_scaling") or args.get("rope_scaling"))
    if interp not in (None, 1) and llama3:
        raise CheckpointError(
            "Megatron use_rope_scaling together with rotary_seq_len_interpolation_factor is not "
            "supported (TensorRT-LLM applies one rotary scaling)"
        )
    if interp not in (None, 1):
        return {"type": "linear", "factor": float(interp)}
    if llama3:
        return {
            "type": "llama3",
            "factor": float(_get(args, "rope_scaling_factor", default=8.0)),
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    return None


def megatron_model(args: dict[str, Any], vocab_rows: int) -> MegatronModel:
    """Interpret Megatron args; ``vocab_rows`` is the (padded) embedding row count in the weights."""
    hidden = int(_required(args, "hidden_size"))
    heads = int(_required(args, "num_attention_heads"))
    layers = int(_required(args, "num_layers"))
    groups = (
        int(_get(args, "num_query_groups", default=heads)) if args.get("group_query_attention") else heads
    )
    swiglu = bool(args.get("swiglu", False))
    norm = str(_get(args, "normalization", default="LayerNorm"))
    if norm not in ("LayerNorm", "RMSNorm"):
        raise CheckpointError(f"Megatron normalization {norm!r} is not supported")
    pos = str(_get(args, "position_embedding_type", default="learned_absolute"))
    pos_types = {"learned_absolute": "learned_absolute", "rope": "rope_gpt_neox"}
    if pos not in pos_types:
        raise CheckpointError(f"Megatron position_embedding_type {pos!r} is not supported")
    if float(_get(args, "rotary_percent", default=1.0)) != 1.0:
        raise CheckpointError("Megatron rotary_percent other than 1.0 is not supported")
    if args.get("num_experts"):
        raise CheckpointError("Megatron num_experts (MoE) is not supported")
    if bool(args.get("rotary_interleaved", False)):
        raise CheckpointError("Megatron rotary_interleaved=True is not supported")
    if norm == "RMSNorm":
        if not swiglu:
            raise CheckpointError("Megatron normalization RMSNorm needs swiglu for a LLaMA-style model")
        arch, act = "LlamaForCausalLM", "silu"
    else:
        arch = "GPTForCausalLM"
        if swiglu:
            act = "swiglu"
        elif args.get("squared_relu"):
            act = "squared-relu"
        else:
            # TRT-LLM's gelu is the tanh form, which is what Megatron computes by default (its fused
            # bias_gelu_impl, used with bias_gelu_fusion and add_bias_linear); unfused, Megatron
            # uses erf GELU and the engine differs slightly (validate's logits check measures it).
            act = "gelu"
    bias_linear = bool(_get(args, "add_bias_linear", default=True))
    scaling = rotary_scaling(args)
    vocab = int(_get(args, "padded_vocab_size", default=vocab_rows))
    config = CheckpointConfig(
        architecture=arch,
        dtype="bfloat16" if args.get("bf16") else "float16" if args.get("fp16") else "float32",
        vocab_size=min(vocab, vocab_rows),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=groups,
        head_size=int(_get(args, "kv_channels", default=hidden // heads)),
        intermediate_size=int(_get(args, "ffn_hidden_size", default=4 * hidden)),
        hidden_act=act,
        norm_epsilon=float(_get(args, "norm_epsilon", "layernorm_epsilon", default=1e-5)),
        position_embedding_type=pos_types[pos],
        max_position_embeddings=int(_get(args, "max_position_embeddings", "seq_length", default=2048)),
        rotary_base=float(_get(args, "rotary_base", default=10000)),
        rotary_scaling=scaling,
        qkv_bias=bias_linear or bool(args.get("add_qkv_bias", False)),
        dense_bias=bias_linear,
        mlp_bias=bias_linear,
    )
    return MegatronModel(
        config=config,
        num_query_groups=groups,
        swiglu=swiglu,
        zero_centered_gamma=bool(
            _get(args, "apply_layernorm_1p", "layernorm_zero_centered_gamma", default=False)
        ),
        tied_embeddings=not bool(args.get("untie_embeddings_and_output_weights", False)),
    )
