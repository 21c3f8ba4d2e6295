"""An existing TRT-LLM checkpoint as a source: validated, then re-read layer by layer.

Used to pass a checkpoint through (possibly re-sharded to another TP/PP or cast to another
dtype) and by the reference model to re-assemble full weights from rank files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors import safe_open

from pitcrew_builder.checkpoint import (
    CheckpointConfig,
    CheckpointError,
    MappingConfig,
    QuantConfig,
    embedding_shapes,
    final_shapes,
    is_scale,
    layer_shapes,
    rank_file,
    rank_of,
    validate_checkpoint,
)
from pitcrew_builder.convert.quantize import dequantize_fp8
from pitcrew_builder.convert.sharding import unshard_embeddings, unshard_final, unshard_layer
from pitcrew_builder.convert.source import ModelSource, Tensors

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class TrtllmSource(ModelSource):
    def __init__(self, ckpt_dir: Path, *, validate: bool = True) -> None:
        self.dir = ckpt_dir
        self.stored = validate_checkpoint(ckpt_dir) if validate else _read_checked(ckpt_dir)
        # As a source it describes the full, unsharded, float model (FP8 weights are dequantized).
        self.config = dataclasses.replace(self.stored, mapping=MappingConfig(), quantization=QuantConfig())

    def _read(self, rank: int, names: list[str]) -> Tensors:
        path = rank_file(self.dir, rank)
        out: Tensors = {}
        with safe_open(str(path), framework="pt") as f:
            present = set(f.keys())
            for name in names:
                if is_scale(name):
                    continue
                t = f.get_tensor(name)
                scale_name = name.rpartition(".")[0] + ".weights_scaling_factor"
                if t.dtype == torch.float8_e4m3fn and scale_name in present:
                    # FP8Linear weight: x = q * weights_scaling_factor (TRT-LLM dequantize).
                    t = dequantize_fp8(t, f.get_tensor(scale_name))
                elif t.dtype not in _FLOAT_DTYPES:
                    raise CheckpointError(
                        f"{path.name}: tensor {name} is {t.dtype}; pre-quantized checkpoints can only be "
                        "passed through unchanged (same tp, pp and dtype)"
                    )
                out[name] = t
        return out

    def _tp_ranks(self, pp_rank: int, names: list[str], prefix: str = "") -> list[Tensors]:
        cfg = self.stored
        ranks = []
        for t in range(cfg.tp):
            got = self._read(rank_of(cfg, t, pp_rank), [prefix + n for n in names if not is_scale(n)])
            ranks.append({n[len(prefix) :]: v for n, v in got.items()})
        return ranks

    def embeddings(self) -> Tensors:
        ranks = self._tp_ranks(0, list(embedding_shapes(self.stored)))
        return unshard_embeddings(ranks, self.stored)

    def layer(self, index: int) -> Tensors:
        cfg = self.stored
        per = cfg.num_hidden_layers // cfg.pp
        pp_rank, local = divmod(index, per)
        ranks = self._tp_ranks(pp_rank, list(layer_shapes(cfg)), f"transformer.layers.{local}.")
        return unshard_layer(ranks, cfg)

    def final(self) -> Tensors:
        ranks = self._tp_ranks(self.stored.pp - 1, list(final_shapes(self.stored)))
        return unshard_final(ranks, self.stored)


def _read_checked(ckpt_dir: Path) -> CheckpointConfig:
    from pitcrew_builder.checkpoint import read_config

    config = read_config(ckpt_dir)
    config.check()
    return config


def load_full_weights(ckpt_dir: Path) -> tuple[CheckpointConfig, Tensors]:
    """All weights of a checkpoint re-assembled to canonical full tensors.

    Keys: ``transformer.vocab_embedding.weight``, ``transformer.position_embedding.weight``,
    ``transformer.layers.{i}.<canonical name>`` with global ``i``, ``transformer.ln_f.*``,
    ``lm_head.weight`` (unpadded). The config returned is the stored one (real mapping).
    """
    with TrtllmSource(ckpt_dir) as src:
        weights: Tensors = dict(src.embeddings())
        for i in range(src.stored.num_hidden_layers):
            weights.update({f"transformer.layers.{i}.{k}": v for k, v in src.layer(i).items()})
        weights.update(src.final())
        return src.stored, weights
