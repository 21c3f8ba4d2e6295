"""Activation ranges recorded by Transformer Engine during FP8 training, from Megatron checkpoints.

Megatron-core's TE layers (TELayerNormColumnParallelLinear ``linear_qkv``, TERowParallelLinear
``linear_proj``, ``linear_fc1``, ``linear_fc2``) save their FP8 meta as ``<module>._extra_state``:
transformer_engine/pytorch/module/base.py ``TransformerEngineBaseModule.get_extra_state`` pickles a
dict (TE >= 1.6: ``torch.frombuffer(pickle.dumps(state), dtype=torch.uint8)``; older releases a
``torch.save``d ``io.BytesIO``) holding, for delayed scaling, ``scale_fwd`` (one entry per FP8
tensor of the forward pass), ``amax_history_fwd`` (``[history_len, n]``) and, in some releases,
``scale_inv_fwd``. For a single-GEMM module the forward tensors are ordered input, weight, output
(``tex.FP8FwdTensors.GEMM1_INPUT/WEIGHT/OUTPUT`` = 0, 1, 2).

The input's amax is the largest value in its history column (what TE's "max" amax_compute_algo
would use); without a history it is recovered from ``scale_fwd`` (``scale = 448 / amax`` with no
margin). Pitcrew turns it into TRT-LLM's ``activation_scaling_factor = amax / 448`` exactly as for
calibrated amaxes. Weights are re-measured from the exported weights themselves (the history holds
past iterations' weights). TE keeps no K/V ranges for the KV cache: those still come from the
calibration set.

Not wired into the Megatron reader yet: a ModelSource offers these through ``activation_amax``.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch

from pitcrew_builder.checkpoint import CheckpointError

FP8_E4M3_MAX = 448.0
GEMM1_INPUT = 0
# Megatron-core TE module name -> the TRT-LLM linears fed by its input.
TE_MODULES: dict[str, tuple[str, ...]] = {
    "self_attention.linear_qkv": ("attention.qkv",),
    "self_attention.linear_proj": ("attention.dense",),
    "mlp.linear_fc1": ("mlp.fc", "mlp.gate"),  # fc1 holds both halves of a gated MLP
    "mlp.linear_fc2": ("mlp.proj",),
}


def decode_extra_state(value: Any) -> dict[str, Any] | None:
    """The dict a TE module saved as ``_extra_state``; None when it saved nothing (no FP8)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    if isinstance(value, io.BytesIO):
        value.seek(0)
        raw = value.read()
    elif isinstance(value, torch.Tensor):
        if value.numel() == 0:
            return None
        raw = value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    else:
        raise CheckpointError(
            f"Transformer Engine extra state of type {type(value).__name__} is not understood"
        )
    if not raw:
        return None
    try:
        state = pickle.loads(raw) if raw[:1] == b"\x80" else None
    except Exception:
        state = None
    if state is None:
        try:
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise CheckpointError(f"Transformer Engine extra state cannot be read: {exc}") from exc
    if state is not None and not isinstance(state, dict):
        raise CheckpointError(f"Transformer Engine extra state is a {type(state).__name__}, expected a dict")
    return state


def input_amax(state: dict[str, Any] | None, index: int = GEMM1_INPUT) -> float | None:
    """max|input| TE recorded for forward FP8 tensor ``index``; None without delayed-scaling state."""
    if not state:
        return None
    history = state.get("amax_history_fwd")
    if isinstance(history, torch.Tensor) and history.numel():
        column = history.reshape(history.shape[0], -1)[:, index]
        amax = float(column.float().max())
        if amax > 0:
            return amax
    scale = state.get("scale_fwd")
    if isinstance(scale, torch.Tensor) and scale.numel() > index:
        s = float(scale.reshape(-1)[index])
        if s > 0 and s != 1.0:  # 1.0 is TE's initial scale: nothing was recorded
            return FP8_E4M3_MAX / s
    return None


def layer_activation_amax(extra_states: dict[str, Any]) -> dict[str, float]:
    """TRT-LLM linear name -> activation amax, from one layer's ``<module>._extra_state`` values
    (keys relative to the layer, e.g. ``self_attention.linear_qkv._extra_state``)."""
    out: dict[str, float] = {}
    for module, linears in TE_MODULES.items():
        amax = input_amax(decode_extra_state(extra_states.get(f"{module}._extra_state")))
        if amax is not None:
            for linear in linears:
                out[linear] = amax
    return out
