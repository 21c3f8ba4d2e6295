"""Megatron-LM (core) GPT and LLaMA-style checkpoints as a ModelSource.

Model config comes from the checkpoint's saved training ``args`` (legacy: the rank files;
torch_dist: ``common.pt`` up to megatron-core 0.18, the ``common_state`` item of the .distcp files
from 0.19), with ``ModelOverrides.megatron_args`` (``spec.model.megatronArgs``) filling gaps or
correcting them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pitcrew_builder.checkpoint import CheckpointError
from pitcrew_builder.convert.megatron_config import MegatronModel, megatron_model, missing_args
from pitcrew_builder.convert.megatron_readers import LegacyReader, MegatronReader, TorchDistReader
from pitcrew_builder.convert.source import ModelSource, Tensors, check_layer, expect_shape
from pitcrew_builder.convert.te_fp8 import TE_MODULES, layer_activation_amax

_TRACKER = "latest_checkpointed_iteration.txt"


def resolve_megatron_dir(path: Path) -> Path:
    """The iteration directory: ``path`` itself, or the one its tracker file points at."""
    tracker = path / _TRACKER
    if tracker.is_file():
        it = tracker.read_text().strip()
        sub = path / ("release" if it == "release" else f"iter_{int(it):07d}")
        if not sub.is_dir():
            raise CheckpointError(f"{_TRACKER} points at {sub.name}, which does not exist")
        return sub
    return path


def open_megatron(path: Path, overrides: dict[str, Any] | None = None) -> MegatronSource:
    ckpt = resolve_megatron_dir(path)
    reader: MegatronReader
    if (ckpt / ".metadata").is_file():
        reader = TorchDistReader(ckpt, overrides)
    elif any(ckpt.glob("mp_rank_*")):
        reader = LegacyReader(ckpt)
    else:
        raise CheckpointError(
            f"{ckpt} is neither a legacy (mp_rank_*) nor a torch_dist (.metadata) checkpoint"
        )
    return MegatronSource(reader, overrides or {})


class MegatronSource(ModelSource):
    def __init__(self, reader: MegatronReader, overrides: dict[str, Any]) -> None:
        self.reader = reader
        reader.args = {**reader.args, **overrides}
        missing = missing_args(reader.args, reader.saved_args)
        if missing:
            held = (
                "saved training args lack"
                if reader.saved_args
                else "holds no training args (neither common.pt nor a common_state item in the .distcp "
                "files, nor args in the rank files), so it needs"
            )
            raise CheckpointError(
                f"Megatron checkpoint {reader.dir} {held} {', '.join(missing)}: give them in "
                f"spec.model.megatronArgs, e.g. megatronArgs: {{{', '.join(f'{m}: ...' for m in missing)}}}"
            )
        if isinstance(reader, LegacyReader):
            reader.swiglu = bool(reader.args.get("swiglu", False))
        # Args some checkpoints (or spec-only configs) leave out: read them off the weights.
        if "add_bias_linear" not in reader.args:
            reader.args["add_bias_linear"] = (
                reader.get("decoder.layers.0.self_attention.linear_proj.bias") is not None
            )
        if "add_qkv_bias" not in reader.args:
            reader.args["add_qkv_bias"] = (
                reader.get("decoder.layers.0.self_attention.linear_qkv.bias") is not None
            )
        self._emb_name = "embedding.word_embeddings.weight"
        emb = reader.get(self._emb_name)
        if emb is None:
            raise CheckpointError(f"missing tensor {self._emb_name}")
        self.model: MegatronModel = megatron_model(reader.args, int(emb.shape[0]))
        self.config = self.model.config
        del emb
        reader.release()

    def close(self) -> None:
        self.reader.close()

    def _need(self, name: str) -> torch.Tensor:
        t = self.reader.get(name)
        if t is None:
            raise CheckpointError(f"missing tensor {name}")
        return t

    def _first(self, *names: str) -> tuple[str, torch.Tensor]:
        """The first of ``names`` present (plain vs. Transformer Engine fused norm names)."""
        for name in names:
            t = self.reader.get(name)
            if t is not None:
                return name, t
        raise CheckpointError(f"missing tensor {' or '.join(names)}")

    def _gamma(self, t: torch.Tensor) -> torch.Tensor:
        # Zero-centred gamma LayerNorm stores weight-1.
        return t.float() + 1.0 if self.model.zero_centered_gamma else t

    def embeddings(self) -> Tensors:
        try:
            return self._embeddings()
        finally:
            self.reader.release()

    def final(self) -> Tensors:
        try:
            return self._final()
        finally:
            self.reader.release()

    def layer(self, index: int) -> Tensors:
        try:
            return self._layer(index)
        finally:
            self.reader.release()

    def activation_amax(self, index: int) -> dict[str, float]:
        """Input ranges Transformer Engine recorded while training in FP8 (``te_fp8``); a legacy
        checkpoint keeps one state per TP rank: the largest amax over the ranks is taken. The
        writer asks before reading the layer, which then reuses the files opened here."""
        out: dict[str, float] = {}
        for module in TE_MODULES:
            key = f"{module}._extra_state"
            for value in self.reader.extra_states(f"decoder.layers.{index}.{key}"):
                for linear, amax in layer_activation_amax({key: value}).items():
                    out[linear] = max(out.get(linear, 0.0), amax)
        return out

    def _embeddings(self) -> Tensors:
        c = self.config
        out = {"transformer.vocab_embedding.weight": self._need(self._emb_name)[: c.vocab_size]}
        if c.position_embedding_type == "learned_absolute":
            name = "embedding.position_embeddings.weight"
            out["transformer.position_embedding.weight"] = expect_shape(
                name, self._need(name), (c.max_position_embeddings, c.hidden_size)
            )
        return out

    def _final(self) -> Tensors:
        c = self.config
        out = {"transformer.ln_f.weight": self._gamma(self._need("decoder.final_layernorm.weight"))}
        if c.norm_has_bias:
            out["transformer.ln_f.bias"] = self._need("decoder.final_layernorm.bias")
        head = self.reader.get("output_layer.weight")
        if head is None:
            if not self.model.tied_embeddings:
                raise CheckpointError("missing tensor output_layer.weight (embeddings are untied)")
            head = self._need(self._emb_name)
        out["lm_head.weight"] = expect_shape(
            "output_layer.weight", head[: c.vocab_size], (c.vocab_size, c.hidden_size)
        )
        return out

    def _layer(self, index: int) -> Tensors:
        c = self.config
        pre = f"decoder.layers.{index}."
        names: dict[str, str] = {}
        out: Tensors = {}

        def take(canon: str, *candidates: str, gamma: bool = False) -> None:
            name, t = self._first(*(pre + s for s in candidates))
            out[canon], names[canon] = (self._gamma(t) if gamma else t), name

        take(
            "input_layernorm.weight",
            "self_attention.linear_qkv.layer_norm_weight",
            "input_layernorm.weight",
            gamma=True,
        )
        take(
            "post_layernorm.weight",
            "mlp.linear_fc1.layer_norm_weight",
            "pre_mlp_layernorm.weight",
            gamma=True,
        )
        if c.norm_has_bias:
            take("input_layernorm.bias", "self_attention.linear_qkv.layer_norm_bias", "input_layernorm.bias")
            take("post_layernorm.bias", "mlp.linear_fc1.layer_norm_bias", "pre_mlp_layernorm.bias")
        for kind in ("weight", "bias") if c.qkv_bias else ("weight",):
            name = pre + f"self_attention.linear_qkv.{kind}"
            q, k, v = self._split_qkv(name, self._need(name))
            out[f"attention.q.{kind}"], out[f"attention.k.{kind}"], out[f"attention.v.{kind}"] = q, k, v
        take("attention.dense.weight", "self_attention.linear_proj.weight")
        if c.dense_bias:
            take("attention.dense.bias", "self_attention.linear_proj.bias")
        for kind in ("weight", "bias") if c.mlp_bias else ("weight",):
            name = pre + f"mlp.linear_fc1.{kind}"
            fc1 = self._need(name)
            if c.gated_mlp:
                if fc1.shape[0] != 2 * c.intermediate_size:
                    raise CheckpointError(
                        f"tensor {name} has {fc1.shape[0]} rows, expected "
                        f"{2 * c.intermediate_size} (2 x ffn_hidden_size for swiglu)"
                    )
                # [activated half ; gate half] -> mlp.fc, mlp.gate
                out[f"mlp.fc.{kind}"], out[f"mlp.gate.{kind}"] = torch.chunk(fc1, 2, dim=0)
            else:
                out[f"mlp.fc.{kind}"] = fc1
            names[f"mlp.fc.{kind}"] = name
        take("mlp.proj.weight", "mlp.linear_fc2.weight")
        if c.mlp_bias:
            take("mlp.proj.bias", "mlp.linear_fc2.bias")
        return check_layer(c, index, out, names)

    def _split_qkv(self, name: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Megatron orders rows per query group as [q x heads_per_group, k, v]; regroup to Q, K, V."""
        c = self.config
        groups, hd = self.model.num_query_groups, c.head_size
        per_group = c.num_attention_heads // groups
        rows = groups * (per_group + 2) * hd
        if t.shape[0] != rows or (t.dim() == 2 and t.shape[1] != c.hidden_size):
            want = (rows, c.hidden_size) if t.dim() == 2 else (rows,)
            raise CheckpointError(f"tensor {name} has shape {tuple(t.shape)}, expected {want}")
        g = t.reshape(groups, per_group + 2, hd, *t.shape[1:])
        tail = t.shape[1:]
        q = g[:, :per_group].reshape(groups * per_group * hd, *tail)
        k = g[:, per_group].reshape(groups * hd, *tail)
        v = g[:, per_group + 1].reshape(groups * hd, *tail)
        return q, k, v
