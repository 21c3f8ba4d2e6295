"""Split canonical (full) tensors into one TP rank's TRT-LLM tensors, and join them back.

Column-parallel (qkv, mlp.fc, mlp.gate, lm_head) split the output dim; row-parallel
(attention.dense, mlp.proj) split the input dim; norms and row-parallel biases are replicated.
"""

from __future__ import annotations

import torch

from pitcrew_builder.checkpoint import CheckpointConfig
from pitcrew_builder.convert.source import Tensors

_ROW_PARALLEL = ("attention.dense", "mlp.proj")
_COLUMN_PARALLEL = ("mlp.fc", "mlp.gate")


def _chunk(t: torch.Tensor, tp: int, rank: int, dim: int) -> torch.Tensor:
    return torch.chunk(t, tp, dim=dim)[rank]


def _kv_rows(t: torch.Tensor, config: CheckpointConfig, rank: int) -> torch.Tensor:
    tp, kv = config.tp, config.num_key_value_heads
    if kv >= tp:
        return _chunk(t, tp, rank, 0)
    # Fewer KV heads than ranks: consecutive ranks share (a copy of) one KV head.
    head = rank // (tp // kv)
    return t[head * config.head_size : (head + 1) * config.head_size]


def shard_layer(full: Tensors, config: CheckpointConfig, rank: int) -> Tensors:
    """TP rank ``rank``'s tensors for one layer, named relative to ``transformer.layers.{i}.``."""
    tp = config.tp
    out: Tensors = {}
    for name, t in full.items():
        module, _, kind = name.rpartition(".")
        if module in ("attention.q", "attention.k", "attention.v"):
            continue
        if module in _ROW_PARALLEL:
            out[name] = _chunk(t, tp, rank, 1) if kind == "weight" else t
        elif module in _COLUMN_PARALLEL:
            out[name] = _chunk(t, tp, rank, 0)
        else:  # norms
            out[name] = t
    for kind in ("weight", "bias"):
        if f"attention.q.{kind}" not in full:
            continue
        q = _chunk(full[f"attention.q.{kind}"], tp, rank, 0)
        k = _kv_rows(full[f"attention.k.{kind}"], config, rank)
        v = _kv_rows(full[f"attention.v.{kind}"], config, rank)
        out[f"attention.qkv.{kind}"] = torch.cat([q, k, v], dim=0)
    return out


def pad_vocab(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))], dim=0)


def shard_embeddings(full: Tensors, config: CheckpointConfig, rank: int) -> Tensors:
    out = dict(full)
    name = "transformer.vocab_embedding.weight"
    if config.use_parallel_embedding:
        if config.embedding_sharding_dim == 0:
            out[name] = _chunk(pad_vocab(full[name], config.vocab_size_padded()), config.tp, rank, 0)
        else:
            out[name] = _chunk(full[name], config.tp, rank, 1)
    return out


def shard_final(full: Tensors, config: CheckpointConfig, rank: int) -> Tensors:
    out = dict(full)
    # lm_head is always padded to a multiple of TP (Megatron's exporter forgets this).
    out["lm_head.weight"] = _chunk(
        pad_vocab(full["lm_head.weight"], config.vocab_size_padded()), config.tp, rank, 0
    )
    return out


# ---- the inverse ---------------------------------------------------------------------------------


def unshard_layer(ranks: list[Tensors], config: CheckpointConfig) -> Tensors:
    """Join the per-TP-rank tensors of one layer back into canonical full tensors."""
    tp, hd, kv = config.tp, config.head_size, config.num_key_value_heads
    first = ranks[0]
    out: Tensors = {}
    for name, t in first.items():
        module, _, kind = name.rpartition(".")
        if module == "attention.qkv":
            continue
        if module in _ROW_PARALLEL:
            out[name] = torch.cat([r[name] for r in ranks], dim=1) if kind == "weight" else t
        elif module in _COLUMN_PARALLEL:
            out[name] = torch.cat([r[name] for r in ranks], dim=0)
        else:
            out[name] = t
    q_rows = config.num_attention_heads // tp * hd
    kv_rows = config.kv_heads_per_rank() * hd
    # With duplicated KV heads, keep one copy: the first rank of each group sharing a head.
    kv_ranks = list(range(tp)) if kv >= tp else list(range(0, tp, tp // kv))
    for kind in ("weight", "bias"):
        key = f"attention.qkv.{kind}"
        if key not in first:
            continue
        parts = [torch.split(r[key], [q_rows, kv_rows, kv_rows], dim=0) for r in ranks]
        out[f"attention.q.{kind}"] = torch.cat([p[0] for p in parts], dim=0)
        out[f"attention.k.{kind}"] = torch.cat([parts[i][1] for i in kv_ranks], dim=0)
        out[f"attention.v.{kind}"] = torch.cat([parts[i][2] for i in kv_ranks], dim=0)
    return out


def unshard_embeddings(ranks: list[Tensors], config: CheckpointConfig) -> Tensors:
    out = dict(ranks[0])
    name = "transformer.vocab_embedding.weight"
    if config.use_parallel_embedding:
        dim = config.embedding_sharding_dim
        out[name] = torch.cat([r[name] for r in ranks], dim=dim)[: config.vocab_size]
    return out


def unshard_final(ranks: list[Tensors], config: CheckpointConfig) -> Tensors:
    out = dict(ranks[0])
    out["lm_head.weight"] = torch.cat([r["lm_head.weight"] for r in ranks], dim=0)[: config.vocab_size]
    return out
