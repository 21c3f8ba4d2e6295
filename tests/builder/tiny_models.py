"""Tiny random models for the conversion tests, and Megatron-layout writers built from them.

The Megatron writers implement Megatron-core's layout independently of the converter (QKV
interleaved per query group, swiglu fc1 = [gate ; up], TP/PP sharding, TE fused norm names), so
a conversion that matches Hugging Face's logits checks the whole Megatron mapping. Checkpoints
Megatron itself can write here come from megatron-core (megatron_save.py); these writers are kept
only for the cases it cannot produce on this machine (listed in test_convert_megatron.py).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 101


def _init(model: PreTrainedModel) -> PreTrainedModel:
    # Norm weights start at exactly 1 and biases at 0: randomise them so mapping mistakes show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    torch.nn.Module.eval(model)
    return model


def make_llama(path: Path, *, kv_heads: int = 2, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = _init(LlamaForCausalLM(cfg))
    model.save_pretrained(path)
    return model  # type: ignore[return-value]


def make_qwen2(path: Path, seed: int = 1) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = _init(Qwen2ForCausalLM(cfg))
    model.save_pretrained(path)
    return model  # type: ignore[return-value]


def make_gpt2(path: Path, seed: int = 2) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=32)
    model = _init(GPT2LMHeadModel(cfg))
    model.save_pretrained(path)
    return model  # type: ignore[return-value]


def hf_logits(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()  # type: ignore[no-any-return]


# ---- Megatron-core layout ------------------------------------------------------------------------


def _interleave_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int) -> torch.Tensor:
    """Megatron's fused QKV: per query group [its query heads, one key head, one value head]."""
    tail = q.shape[1:]
    qg = q.reshape(groups, -1, *tail)
    kg = k.reshape(groups, -1, *tail)
    vg = v.reshape(groups, -1, *tail)
    return torch.cat([qg, kg, vg], dim=1).reshape(-1, *tail)


def llama_to_megatron(
    model: LlamaForCausalLM, padded_vocab: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full (tp=1) Megatron-core state dict of a LLaMA model with Transformer Engine norm names."""
    sd = model.state_dict()
    cfg = model.config
    groups = int(cfg.num_key_value_heads or cfg.num_attention_heads)
    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.num_hidden_layers):
        h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        out[m + "self_attention.linear_qkv.layer_norm_weight"] = sd[h + "input_layernorm.weight"]
        out[m + "self_attention.linear_qkv.weight"] = _interleave_qkv(
            sd[h + "self_attn.q_proj.weight"],
            sd[h + "self_attn.k_proj.weight"],
            sd[h + "self_attn.v_proj.weight"],
            groups,
        )
        out[m + "self_attention.linear_proj.weight"] = sd[h + "self_attn.o_proj.weight"]
        out[m + "mlp.linear_fc1.layer_norm_weight"] = sd[h + "post_attention_layernorm.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat(
            [sd[h + "mlp.gate_proj.weight"], sd[h + "mlp.up_proj.weight"]]
        )
        out[m + "mlp.linear_fc2.weight"] = sd[h + "mlp.down_proj.weight"]
    out["decoder.final_layernorm.weight"] = sd["model.norm.weight"]
    out["embedding.word_embeddings.weight"] = _pad(sd["model.embed_tokens.weight"], padded_vocab)
    out["output_layer.weight"] = _pad(sd["lm_head.weight"], padded_vocab)
    args = dict(
        num_layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        group_query_attention=True,
        num_query_groups=groups,
        ffn_hidden_size=cfg.intermediate_size,
        swiglu=True,
        normalization="RMSNorm",
        position_embedding_type="rope",
        rotary_base=10000,
        rotary_percent=1.0,
        max_position_embeddings=cfg.max_position_embeddings,
        padded_vocab_size=padded_vocab,
        norm_epsilon=cfg.rms_norm_eps,
        add_bias_linear=False,
        untie_embeddings_and_output_weights=True,
        kv_channels=cfg.hidden_size // cfg.num_attention_heads,
        bf16=False,
        fp16=False,
    )
    return out, args


def gpt2_to_megatron(
    model: GPT2LMHeadModel, padded_vocab: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full Megatron-core state dict of a GPT-2 model (local spec norm names, tied embeddings)."""
    sd = model.state_dict()
    cfg = model.config
    hid, heads = cfg.n_embd, cfg.n_head
    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.n_layer):
        h, m = f"transformer.h.{i}.", f"decoder.layers.{i}."
        out[m + "input_layernorm.weight"] = sd[h + "ln_1.weight"]
        out[m + "input_layernorm.bias"] = sd[h + "ln_1.bias"]
        q, k, v = sd[h + "attn.c_attn.weight"].t().split(hid)
        out[m + "self_attention.linear_qkv.weight"] = _interleave_qkv(q, k, v, heads)
        qb, kb, vb = sd[h + "attn.c_attn.bias"].split(hid)
        out[m + "self_attention.linear_qkv.bias"] = _interleave_qkv(qb, kb, vb, heads)
        out[m + "self_attention.linear_proj.weight"] = sd[h + "attn.c_proj.weight"].t()
        out[m + "self_attention.linear_proj.bias"] = sd[h + "attn.c_proj.bias"]
        out[m + "pre_mlp_layernorm.weight"] = sd[h + "ln_2.weight"]
        out[m + "pre_mlp_layernorm.bias"] = sd[h + "ln_2.bias"]
        out[m + "mlp.linear_fc1.weight"] = sd[h + "mlp.c_fc.weight"].t()
        out[m + "mlp.linear_fc1.bias"] = sd[h + "mlp.c_fc.bias"]
        out[m + "mlp.linear_fc2.weight"] = sd[h + "mlp.c_proj.weight"].t()
        out[m + "mlp.linear_fc2.bias"] = sd[h + "mlp.c_proj.bias"]
    out["decoder.final_layernorm.weight"] = sd["transformer.ln_f.weight"]
    out["decoder.final_layernorm.bias"] = sd["transformer.ln_f.bias"]
    out["embedding.word_embeddings.weight"] = _pad(sd["transformer.wte.weight"], padded_vocab)
    out["embedding.position_embeddings.weight"] = sd["transformer.wpe.weight"]
    args = dict(
        num_layers=cfg.n_layer,
        hidden_size=hid,
        num_attention_heads=heads,
        group_query_attention=False,
        ffn_hidden_size=4 * hid,
        swiglu=False,
        normalization="LayerNorm",
        position_embedding_type="learned_absolute",
        max_position_embeddings=cfg.n_positions,
        padded_vocab_size=padded_vocab,
        layernorm_epsilon=cfg.layer_norm_epsilon,
        add_bias_linear=True,
        untie_embeddings_and_output_weights=False,
    )
    return out, args


def _pad(t: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([t, torch.zeros(rows - t.shape[0], *t.shape[1:])]) if rows > t.shape[0] else t


def _shard(name: str, t: torch.Tensor, tp: int, rank: int, swiglu: bool) -> torch.Tensor:
    if tp == 1 or "norm" in name or "position_embeddings" in name:
        return t
    if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return t.chunk(tp, dim=1)[rank]
    if name.endswith(("linear_proj.bias", "linear_fc2.bias")):
        return t
    if "linear_fc1" in name and swiglu:
        gate, up = t.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp)[rank], up.chunk(tp)[rank]])
    return t.chunk(tp, dim=0)[rank]


def _namespace(args: dict[str, Any], tp: int, pp: int) -> argparse.Namespace:
    return argparse.Namespace(
        **args, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, params_dtype=torch.float32
    )


def _no_fp8_state() -> io.BytesIO:
    """What older TE's get_extra_state saves for a module not trained in FP8: torch.save(None)."""
    buf = io.BytesIO()
    torch.save(None, buf)
    return buf


def save_megatron_legacy(
    full: dict[str, torch.Tensor],
    args: dict[str, Any],
    root: Path,
    *,
    tp: int,
    pp: int,
    te_states: dict[str, list[Any]] | None = None,
) -> Path:
    """Write ``root/iter_0000010/mp_rank_XX[_YYY]/model_optim_rng.pt`` plus the tracker file.

    ``te_states``: ``decoder.layers.N.<module>._extra_state`` -> the value each TP rank saved
    (Transformer Engine's FP8 state, as TE encodes it)."""
    it = root / "iter_0000010"
    layers = args["num_layers"]
    per = layers // pp
    for p in range(pp):
        for r in range(tp):
            sd: dict[str, Any] = {}
            for name, t in full.items():
                if name.startswith("decoder.layers."):
                    idx = int(name.split(".")[2])
                    if not p * per <= idx < (p + 1) * per:
                        continue
                    local = name.replace(f"decoder.layers.{idx}.", f"decoder.layers.{idx - p * per}.", 1)
                    sd[local] = _shard(name, t, tp, r, args["swiglu"]).clone()
                    if local.endswith("linear_qkv.weight"):  # TE keeps extra state next to weights
                        sd[local.replace(".weight", "._extra_state")] = _no_fp8_state()
                elif (name.startswith("embedding.") and p == 0) or (
                    name.startswith(("decoder.final_layernorm", "output_layer")) and p == pp - 1
                ):
                    sd[name] = _shard(name, t, tp, r, args["swiglu"]).clone()
            for name, per_rank in (te_states or {}).items():
                idx = int(name.split(".")[2])
                if p * per <= idx < (p + 1) * per:
                    sd[name.replace(f"decoder.layers.{idx}.", f"decoder.layers.{idx - p * per}.", 1)] = (
                        per_rank[r]
                    )
            sub = f"mp_rank_{r:02d}" if pp == 1 else f"mp_rank_{r:02d}_{p:03d}"
            (it / sub).mkdir(parents=True)
            torch.save(
                {"model": sd, "args": _namespace(args, tp, pp), "iteration": 10, "checkpoint_version": 3.0},
                it / sub / "model_optim_rng.pt",
            )
    (root / "latest_checkpointed_iteration.txt").write_text("10")
    return root


def save_megatron_torch_dist(
    full: dict[str, torch.Tensor],
    args: dict[str, Any],
    path: Path,
    *,
    stacked: bool = True,
    te_states: dict[str, Any] | None = None,
) -> Path:
    """A torch_dist checkpoint: global tensors, decoder layers stacked on a leading axis.

    ``te_states``: ``decoder.layers.N.<module>._extra_state`` -> TE's state, saved as megatron-core's
    ShardedObject is (dist_checkpointing/strategies/torch.py): item ``<name>/shard_<offset>_<shape>``
    holding ``torch.save([state])``, the layer number as the offset when layers are stacked."""
    sd: dict[str, Any] = {}
    if stacked:
        suffixes = sorted({n.split(".", 3)[3] for n in full if n.startswith("decoder.layers.")})
        for s in suffixes:
            sd[f"decoder.layers.{s}"] = torch.stack(
                [full[f"decoder.layers.{i}.{s}"] for i in range(args["num_layers"])]
            )
        sd.update({n: t for n, t in full.items() if not n.startswith("decoder.layers.")})
    else:
        sd = dict(full)
    layers = args["num_layers"]
    for name, state in (te_states or {}).items():
        idx = int(name.split(".")[2])
        key = (
            f"decoder.layers.{name.split('.', 3)[3]}/shard_{idx}_{layers}" if stacked else f"{name}/shard_0_1"
        )
        buf = io.BytesIO()
        torch.save([state], buf)
        sd[key] = buf
    path.mkdir(parents=True)
    dcp_save(sd, storage_writer=FileSystemWriter(str(path)), no_dist=True)
    torch.save({"args": _namespace(args, 1, 1), "iteration": 10}, path / "common.pt")
    (path / "metadata.json").write_text('{"sharded_backend": "torch_dist", "sharded_backend_version": 1}')
    return path
