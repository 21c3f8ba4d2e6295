"""What every source reader hands to the writer: full (unsharded) tensors, one layer at a time.

Canonical layer names are the TRT-LLM names with the fused QKV kept apart as
``attention.q/k/v`` (all heads, KV heads not duplicated) so that sharding for any TP is one
generic step. Weights are (out, in). Embedding and lm_head hold exactly ``vocab_size`` rows.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self

import torch

from pitcrew_builder.checkpoint import CheckpointConfig, CheckpointError, Shape

Tensors = dict[str, torch.Tensor]


class ModelSource(abc.ABC):
    """A lazily read model. ``config`` has mapping tp=pp=1 and the source's own dtype."""

    config: CheckpointConfig

    @abc.abstractmethod
    def embeddings(self) -> Tensors:
        """``transformer.vocab_embedding.weight`` (+ ``transformer.position_embedding.weight``)."""

    @abc.abstractmethod
    def layer(self, index: int) -> Tensors:
        """Canonical tensors of global layer ``index``."""

    @abc.abstractmethod
    def final(self) -> Tensors:
        """``transformer.ln_f.*`` and ``lm_head.weight``."""

    def activation_amax(self, index: int) -> dict[str, float]:
        """Activation ranges recorded in the source for layer ``index`` (TRT-LLM linear name ->
        max|input|), e.g. Transformer Engine's FP8 state (``te_fp8``); they take precedence over
        calibrated ones. The default records none."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files; the default has nothing to release."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def canonical_layer_shapes(config: CheckpointConfig) -> dict[str, Shape]:
    """Full shapes of one layer's canonical tensors (for checking what a source read)."""
    h, hd = config.hidden_size, config.head_size
    q, kv, ffn = config.num_attention_heads * hd, config.num_key_value_heads * hd, config.intermediate_size
    shapes: dict[str, Shape] = {"input_layernorm.weight": (h,), "post_layernorm.weight": (h,)}
    if config.norm_has_bias:
        shapes["input_layernorm.bias"] = (h,)
        shapes["post_layernorm.bias"] = (h,)
    shapes.update(
        {
            "attention.q.weight": (q, h),
            "attention.k.weight": (kv, h),
            "attention.v.weight": (kv, h),
            "attention.dense.weight": (h, q),
        }
    )
    if config.qkv_bias:
        shapes.update({"attention.q.bias": (q,), "attention.k.bias": (kv,), "attention.v.bias": (kv,)})
    if config.dense_bias:
        shapes["attention.dense.bias"] = (h,)
    shapes["mlp.fc.weight"] = (ffn, h)
    shapes["mlp.proj.weight"] = (h, ffn)
    if config.gated_mlp:
        shapes["mlp.gate.weight"] = (ffn, h)
    if config.mlp_bias:
        shapes["mlp.fc.bias"] = (ffn,)
        shapes["mlp.proj.bias"] = (h,)
        if config.gated_mlp:
            shapes["mlp.gate.bias"] = (ffn,)
    return shapes


def check_layer(config: CheckpointConfig, index: int, tensors: Tensors, names: dict[str, str]) -> Tensors:
    """Verify a canonical layer is complete and well shaped.

    ``names`` maps canonical names to the source's own tensor names so errors name what the
    user can find in their checkpoint.
    """
    for name, shape in canonical_layer_shapes(config).items():
        src = names.get(name, f"layer {index} {name}")
        if name not in tensors:
            raise CheckpointError(f"missing tensor {src}")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(f"tensor {src} has shape {tuple(tensors[name].shape)}, expected {shape}")
    return tensors


def expect_shape(name: str, tensor: torch.Tensor, shape: Shape) -> torch.Tensor:
    if tuple(tensor.shape) != shape:
        raise CheckpointError(f"tensor {name} has shape {tuple(tensor.shape)}, expected {shape}")
    return tensor
