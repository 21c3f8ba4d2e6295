"""A plain PyTorch forward pass over a TRT-LLM checkpoint, for checking logits and ONNX export.

It re-assembles TP/PP shards into full weights and computes ``logits = model(input_ids)`` with no
KV cache. Everything depends only on tensor shapes (positions and the causal mask come from
``arange``), so ``torch.onnx.export`` traces it without data-dependent branches.

Semantics follow TRT-LLM: LLaMA family = RMSNorm, GPT-NeoX rotary, GQA, gated MLP with
``act(fc(x)) * gate(x)``; GPT = LayerNorm, learned absolute positions (or rotary), ``gelu`` is
the tanh approximation.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pitcrew_builder.checkpoint import CheckpointConfig, CheckpointError
from pitcrew_builder.convert.source import Tensors
from pitcrew_builder.convert.trtllm import load_full_weights


def _activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name in ("silu", "swiglu"):
        return F.silu(x)
    if name in ("gelu", "gelu_new", "gelu_pytorch_tanh", "geglu", "openai-gelu"):
        return F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu(x)
    if name in ("squared-relu", "relu2"):
        return F.relu(x) ** 2
    raise CheckpointError(f"hidden_act {name!r} is not supported by the reference model")


def rotary_inv_freq(config: CheckpointConfig) -> torch.Tensor:
    """Inverse frequencies of GPT-NeoX style rotary embeddings, with linear or llama3 scaling."""
    hd = config.head_size
    inv = 1.0 / (config.rotary_base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    scaling = config.rotary_scaling
    if not scaling:
        return inv.float()
    kind = scaling.get("type")
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        return (inv / factor).float()
    if kind == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_ctx / low, inv / factor, inv)
        mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        blended = (1 - smooth) * inv / factor + smooth * inv
        return torch.where(mid, blended, scaled).float()
    raise CheckpointError(f"rotary_scaling type {kind!r} is not supported by the reference model")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class _Norm(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, rms: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.eps = eps
        self.rms = rms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        if self.rms:
            out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        else:
            b = self.bias.float() if self.bias is not None else None
            out = F.layer_norm(xf, (xf.shape[-1],), self.weight.float(), b, self.eps)
        return out.to(x.dtype)


class _Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _Layer(nn.Module):
    def __init__(self, config: CheckpointConfig, w: Tensors) -> None:
        super().__init__()
        self.config = config
        rms = config.is_llama_family
        self.input_layernorm = _Norm(
            w["input_layernorm.weight"], w.get("input_layernorm.bias"), config.norm_epsilon, rms
        )
        self.post_layernorm = _Norm(
            w["post_layernorm.weight"], w.get("post_layernorm.bias"), config.norm_epsilon, rms
        )
        qkv_w = torch.cat([w["attention.q.weight"], w["attention.k.weight"], w["attention.v.weight"]])
        qkv_b = (
            torch.cat([w["attention.q.bias"], w["attention.k.bias"], w["attention.v.bias"]])
            if "attention.q.bias" in w
            else None
        )
        self.qkv = _Linear(qkv_w, qkv_b)
        self.dense = _Linear(w["attention.dense.weight"], w.get("attention.dense.bias"))
        self.fc = _Linear(w["mlp.fc.weight"], w.get("mlp.fc.bias"))
        self.gate = _Linear(w["mlp.gate.weight"], w.get("mlp.gate.bias")) if config.gated_mlp else None
        self.proj = _Linear(w["mlp.proj.weight"], w.get("mlp.proj.bias"))

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, mask: torch.Tensor
    ) -> torch.Tensor:
        c = self.config
        b, s = x.shape[0], x.shape[1]
        nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_size
        q, k, v = self.qkv(self.input_layernorm(x)).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        q = q.reshape(b, s, nh, hd).transpose(1, 2)
        k = k.reshape(b, s, nkv, hd).transpose(1, 2)
        v = v.reshape(b, s, nkv, hd).transpose(1, 2)
        if cos is not None and sin is not None:
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        if nkv != nh:  # grouped-query attention: each KV head serves nh/nkv query heads
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(hd) + mask
        attn = (scores.softmax(dim=-1) @ v.float()).to(x.dtype)
        x = x + self.dense(attn.transpose(1, 2).reshape(b, s, nh * hd))
        h = self.post_layernorm(x)
        inter = _activation(c.hidden_act, self.fc(h))
        if self.gate is not None:
            inter = inter * self.gate(h)
        out: torch.Tensor = x + self.proj(inter)
        return out


class ReferenceModel(nn.Module):
    """``forward(input_ids: int64[batch, seq]) -> float32 logits[batch, seq, vocab_size]``."""

    def __init__(
        self, config: CheckpointConfig, weights: Tensors, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        self.config = config
        w = {k: v.to(dtype) for k, v in weights.items()}
        self.vocab_embedding = nn.Parameter(w["transformer.vocab_embedding.weight"], requires_grad=False)
        self.position_embedding = (
            nn.Parameter(w["transformer.position_embedding.weight"], requires_grad=False)
            if config.position_embedding_type == "learned_absolute"
            else None
        )
        self.layers = nn.ModuleList(
            _Layer(
                config,
                {k.split(".", 3)[3]: v for k, v in w.items() if k.startswith(f"transformer.layers.{i}.")},
            )
            for i in range(config.num_hidden_layers)
        )
        self.ln_f = _Norm(
            w["transformer.ln_f.weight"],
            w.get("transformer.ln_f.bias"),
            config.norm_epsilon,
            config.is_llama_family,
        )
        self.lm_head = nn.Parameter(w["lm_head.weight"], requires_grad=False)
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", rotary_inv_freq(config), persistent=False)

    @classmethod
    def from_checkpoint(cls, ckpt_dir: Path, dtype: torch.dtype = torch.float32) -> ReferenceModel:
        config, weights = load_full_weights(ckpt_dir)
        return cls(config, weights, dtype).eval()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        s = input_ids.shape[1]
        x = F.embedding(input_ids, self.vocab_embedding)
        positions = torch.arange(s, device=input_ids.device)
        cos = sin = None
        if self.position_embedding is not None:
            x = x + F.embedding(positions, self.position_embedding)[None]
        else:
            freqs = positions[:, None].float() * self.inv_freq[None, :]
            emb = torch.cat([freqs, freqs], dim=-1)
            cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        # Causal mask from shapes only: key j is visible to query i when j <= i.
        future = positions[None, :] > positions[:, None]
        mask = torch.zeros(s, s, device=input_ids.device).masked_fill(future, float("-inf"))
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return F.linear(self.ln_f(x), self.lm_head).float()
