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

MegatronSource.activation_amax reads them (both checkpoint layouts: legacy rank files keep one
state per TP rank, of which the largest amax is taken; torch_dist keeps TP rank 0's as a
``ShardedObject`` item per layer), so the writer uses them instead of calibrated input ranges for
the layers that have them, as Megatron's own exporter takes TE's scales. Nothing in a state is
executed: the pickle is read by an unpickler that only rebuilds tensors (weights_only loads).
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any

import torch

from pitcrew_builder.checkpoint import CheckpointError
from pitcrew_builder.convert.torch_load import OpaqueObject, bytesio_value, load_pt_bytes, stub_class

FP8_E4M3_MAX = 448.0
GEMM1_INPUT = 0
# Megatron-core TE module name -> the TRT-LLM linears fed by its input.
TE_MODULES: dict[str, tuple[str, ...]] = {
    "self_attention.linear_qkv": ("attention.qkv",),
    "self_attention.linear_proj": ("attention.dense",),
    "mlp.linear_fc1": ("mlp.fc", "mlp.gate"),  # fc1 holds both halves of a gated MLP
    "mlp.linear_fc2": ("mlp.proj",),
}


def _tensor_from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class _StateUnpickler(pickle.Unpickler):
    """Unpickles TE's state dict without running code from it: tensors are rebuilt (weights_only
    loads); any other class (TE's ``recipe``, its enums) becomes an inert stub."""

    ALLOWED: dict[tuple[str, str], Any] = {
        ("torch.storage", "_load_from_bytes"): _tensor_from_bytes,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def find_class(self, module: str, name: str) -> Any:
        return self.ALLOWED.get((module, name)) or stub_class(f"{module}.{name}")


def decode_extra_state(value: Any) -> dict[str, Any] | None:
    """The dict a TE module saved as ``_extra_state``; None when it saved nothing (no FP8)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    if isinstance(value, list) and len(value) == 1:  # a torch_dist ShardedObject item: [state]
        value = value[0]
    if isinstance(value, io.BytesIO):
        value.seek(0)
        raw = value.read()
    elif isinstance(value, OpaqueObject) and (inner := bytesio_value(value)) is not None:  # via torch_load
        raw = inner
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
    state: Any = None
    pickled = raw[:1] == b"\x80"
    if pickled:
        try:
            state = _StateUnpickler(io.BytesIO(raw)).load()
        except Exception:
            pickled = False
        pickled = pickled and isinstance(state, dict)  # else maybe a legacy torch.save (magic number)
    if not pickled:  # older TE: a torch.save blob
        try:
            state = load_pt_bytes(raw, "Transformer Engine extra state")
        except CheckpointError as exc:
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
