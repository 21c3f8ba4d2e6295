"""FP8 weights/activations and FP8/INT8 KV-cache scales by max calibration, as TRT-LLM 1.2 loads them.

What TensorRT-LLM 1.2 expects (tensorrt_llm/quantization/layers.py FP8Linear / FP8RowLinear,
tensorrt_llm/quantization/quantize.py fp8_quantize / kv_cache_quantize): each quantized linear
holds an ``fp8`` (float8_e4m3fn) weight and two float32 ``(1,)`` scales, ``weights_scaling_factor``
and ``activation_scaling_factor``; each attention holds a float32 ``(1,)``
``kv_cache_scaling_factor``. All are *dequantization* scales: ``x ~= q * scale``.

How the numbers are made follows NVIDIA Model Optimizer's max calibration and its TRT-LLM export
(modelopt/torch/export/quant_utils.py get_scaling_factor, get_kv_cache_scaling_factor;
model_config_utils.py merges K and V into kv_cache_scaling_factor = max(k, v)):
- weight scale = max|W| / 448 over the whole (unsharded) tensor; for the fused QKV the max over
  Q, K and V (ModelOpt exports the fused QKV with the largest of the three scales);
- activation scale = max|x| / 448 over every token of the calibration set, x the linear's input;
- KV scale = max(max|K|, max|V|) / 448 (FP8) or / 127 (INT8), K after rotary (what the attention
  plugin writes to the cache); FP8 KV scales are clamped to at least 1.0 as ModelOpt does.
The calibration forward is the float model (reference.py semantics), streamed one layer at a time:
the hidden states of all samples are carried from layer to layer, so only one layer's weights are
held, as in the rest of the writer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pitcrew_builder.checkpoint import FP8_LINEARS, CheckpointConfig, CheckpointError
from pitcrew_builder.convert.source import Tensors

FP8_E4M3_MAX = 448.0
INT8_MAX = 127.0


@dataclass(frozen=True)
class CalibrationSet:
    """Token ids of the calibration samples (each a 1-D int64 tensor) and where they came from."""

    samples: tuple[torch.Tensor, ...]
    origin: str

    def check(self, vocab_size: int) -> None:
        if not self.samples:
            raise CheckpointError(f"quantization.calibration: {self.origin} gave no samples")
        for i, s in enumerate(self.samples):
            if s.ndim != 1 or s.numel() == 0:
                raise CheckpointError(f"quantization.calibration: sample {i} of {self.origin} is empty")
            top = int(s.max())
            if top >= vocab_size or int(s.min()) < 0:
                raise CheckpointError(
                    f"quantization.calibration: sample {i} of {self.origin} holds token id {top} outside "
                    f"the model's vocabulary (size {vocab_size}): use the source's tokenizer"
                )


def needs_calibration(config: CheckpointConfig) -> bool:
    q = config.quantization
    return q.quant_algo == "FP8" or q.kv_cache_quant_algo is not None


def scale_from_amax(amax: float, bound: float) -> torch.Tensor:
    # An all-zero tensor would give scale 0 (x / 0); ModelOpt's weight path uses 1.0 then.
    return torch.tensor([amax / bound if amax > 0 else 1.0], dtype=torch.float32)


def quantize_fp8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    q = (weight.float() / scale.float()).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    return q.to(torch.float8_e4m3fn)


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return weight.float() * scale.float()


def _amax(t: torch.Tensor) -> float:
    return float(t.detach().abs().max()) if t.numel() else 0.0


class LayerCalibrator:
    """Max calibration through the float model, one layer at a time (call ``step`` in layer order)."""

    def __init__(self, config: CheckpointConfig, calibration: CalibrationSet, embeddings: Tensors) -> None:
        from pitcrew_builder.model.reference import rotary_inv_freq

        calibration.check(config.vocab_size)
        self.config = config
        emb = embeddings["transformer.vocab_embedding.weight"].float()
        pos = embeddings.get("transformer.position_embedding.weight")
        self.hidden: list[torch.Tensor] = []
        self.rotary: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        inv_freq = rotary_inv_freq(config)
        for sample in calibration.samples:
            ids = sample[: config.max_position_embeddings]  # positions the model has
            x = F.embedding(ids[None], emb)
            s = ids.numel()
            if pos is not None:
                x = x + pos.float()[:s][None]
                self.rotary.append(None)
            else:
                freqs = torch.arange(s).float()[:, None] * inv_freq[None, :]
                both = torch.cat([freqs, freqs], dim=-1)
                self.rotary.append((both.cos(), both.sin()))
            self.hidden.append(x)

    def step(self, full: Tensors) -> dict[str, float]:
        """Run every sample through one layer; returns max|input| per linear and max|K|, max|V|."""
        from pitcrew_builder.model.reference import _Layer, _rotate_half

        c = self.config
        layer = _Layer(c, {k: v.float() for k, v in full.items()}).eval()
        amax: dict[str, float] = {}
        current: list[tuple[torch.Tensor, torch.Tensor] | None] = [None]

        def record(name: str, value: float) -> None:
            amax[name] = max(amax.get(name, 0.0), value)

        def on_input(name: str):  # type: ignore[no-untyped-def]
            def hook(_mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                record(name, _amax(args[0]))

            return hook

        def on_qkv(_mod: torch.nn.Module, _args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_size
            _, k, v = torch.split(out, [nh * hd, nkv * hd, nkv * hd], dim=-1)
            k = k.reshape(*k.shape[:-1], nkv, hd)
            rot = current[0]
            if rot is not None:
                cos, sin = rot[0][:, None, :], rot[1][:, None, :]
                k = k * cos + _rotate_half(k) * sin
            record("k", _amax(k))
            record("v", _amax(v))

        modules = {"attention.qkv": layer.qkv, "attention.dense": layer.dense, "mlp.fc": layer.fc}
        modules["mlp.proj"] = layer.proj
        if layer.gate is not None:
            modules["mlp.gate"] = layer.gate
        handles = [m.register_forward_pre_hook(on_input(n)) for n, m in modules.items()]
        handles.append(layer.qkv.register_forward_hook(on_qkv))
        try:
            with torch.no_grad():
                for i, x in enumerate(self.hidden):
                    s = x.shape[1]
                    rot = self.rotary[i]
                    current[0] = rot
                    mask = torch.zeros(s, s).masked_fill(
                        torch.arange(s)[None, :] > torch.arange(s)[:, None], float("-inf")
                    )
                    cos, sin = (rot[0], rot[1]) if rot is not None else (None, None)
                    self.hidden[i] = layer(x, cos, sin, mask)
        finally:
            for h in handles:
                h.remove()
        return amax


def layer_scales(config: CheckpointConfig, full: Tensors, amax: dict[str, float]) -> Tensors:
    """The scale tensors of one layer (names relative to ``transformer.layers.{i}.``)."""
    q = config.quantization
    out: Tensors = {}
    if q.quant_algo == "FP8":
        for linear in FP8_LINEARS:
            if linear == "attention.qkv":
                w_amax = max(_amax(full[f"attention.{p}.weight"]) for p in "qkv")
            elif f"{linear}.weight" in full:
                w_amax = _amax(full[f"{linear}.weight"])
            else:
                continue
            out[f"{linear}.weights_scaling_factor"] = scale_from_amax(w_amax, FP8_E4M3_MAX)
            out[f"{linear}.activation_scaling_factor"] = scale_from_amax(amax[linear], FP8_E4M3_MAX)
    if q.kv_cache_quant_algo == "FP8":
        kv = max(amax["k"], amax["v"]) / FP8_E4M3_MAX
        out["attention.kv_cache_scaling_factor"] = torch.tensor([max(kv, 1.0)], dtype=torch.float32)
    elif q.kv_cache_quant_algo == "INT8":
        out["attention.kv_cache_scaling_factor"] = scale_from_amax(max(amax["k"], amax["v"]), INT8_MAX)
    return out


def quantize_shard(shard: Tensors, scales: Tensors, config: CheckpointConfig) -> Tensors:
    """One rank's layer tensors with FP8 weights (global per-tensor scales) and the scales added."""
    out = dict(shard)
    if config.quantization.quant_algo == "FP8":
        for linear in FP8_LINEARS:
            name = f"{linear}.weight"
            if name in out:
                out[name] = quantize_fp8(out[name], scales[f"{linear}.weights_scaling_factor"])
    out.update(scales)
    return out
