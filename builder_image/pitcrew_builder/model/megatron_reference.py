"""A forward pass over a Megatron-core GPT checkpoint's own tensors (float32, CPU, small models).

The validate stage compares the converted checkpoint with it. It is written from Megatron-core's
modules, not from the converter: it reads Megatron's names (``decoder.layers.N.self_attention.
linear_qkv.weight``, ...) through the checkpoint readers (which only merge tensor-parallel shards)
and interprets the training args itself:

- fused QKV rows per query group ``[q x heads_per_group, k, v]``
  (``SelfAttention.get_query_key_value_tensors``);
- rotary (``RotaryEmbedding``): non-interleaved halves, ``inv_freq = 1 / base^(2i/d)``, positions
  divided by ``rotary_seq_len_interpolation_factor``, llama3 scaling with Megatron's fixed factors;
- MLP: ``swiglu`` = ``silu(first half) * second half`` of ``linear_fc1``; otherwise GELU, the tanh
  form when Megatron fuses it with the bias (``bias_gelu_fusion`` and ``add_bias_linear``: its
  ``bias_gelu_impl``), the erf form (``F.gelu``) when it does not; ``squared_relu``;
- LayerNorm / RMSNorm with ``layernorm_epsilon``, ``apply_layernorm_1p`` (zero-centred gamma);
- output layer, or the word embeddings when they are tied.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from pitcrew_builder.checkpoint import CheckpointError
from pitcrew_builder.convert.megatron_readers import MegatronReader


def _arg(args: dict[str, Any], name: str, default: Any) -> Any:
    value = args.get(name)
    return default if value is None else value


class MegatronForward:
    """``forward(ids: int64[1, seq]) -> float32 logits[1, seq, padded vocab]``."""

    def __init__(self, reader: MegatronReader) -> None:
        self.r = reader
        a = reader.args
        self.hidden = int(a["hidden_size"])
        self.heads = int(a["num_attention_heads"])
        self.layers = int(a["num_layers"])
        self.groups = (
            int(_arg(a, "num_query_groups", self.heads)) if a.get("group_query_attention") else self.heads
        )
        self.head_dim = int(_arg(a, "kv_channels", self.hidden // self.heads))
        self.rms = _arg(a, "normalization", "LayerNorm") == "RMSNorm"
        self.eps = float(_arg(a, "layernorm_epsilon", _arg(a, "norm_epsilon", 1e-5)))
        self.one_p = bool(a.get("apply_layernorm_1p") or a.get("layernorm_zero_centered_gamma"))
        self.pos = str(_arg(a, "position_embedding_type", "learned_absolute"))
        self.swiglu = bool(a.get("swiglu"))
        self.squared_relu = bool(a.get("squared_relu"))
        bias = bool(_arg(a, "add_bias_linear", True))
        self.tanh_gelu = bool(a.get("openai_gelu")) or (bool(_arg(a, "bias_gelu_fusion", True)) and bias)
        self.tied = not a.get("untie_embeddings_and_output_weights")
        if float(_arg(a, "rotary_percent", 1.0)) != 1.0 or a.get("rotary_interleaved"):
            raise CheckpointError("no reference for partial or interleaved rotary embeddings")
        self.args = a

    def _t(self, *names: str) -> torch.Tensor | None:
        for name in names:
            t = self.r.get(name)
            if t is not None:
                return t.float()
        return None

    def _need(self, *names: str) -> torch.Tensor:
        t = self._t(*names)
        if t is None:
            raise CheckpointError(f"missing tensor {' or '.join(names)}")
        return t

    def _norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        w = weight + 1.0 if self.one_p else weight
        if self.rms:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w
        return F.layer_norm(x, (x.shape[-1],), w, bias, self.eps)

    def _rotary(self, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        d, a = self.head_dim, self.args
        inv = 1.0 / (float(_arg(a, "rotary_base", 10000)) ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        if a.get("use_rope_scaling"):
            factor, low, high, old = float(_arg(a, "rope_scaling_factor", 8.0)), 1.0, 4.0, 8192.0
            wavelen = 2 * math.pi / inv
            smooth = (old / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * inv / factor + smooth * inv
            out = torch.where(wavelen > old / low, inv / factor, inv)
            mid = (wavelen <= old / low) & (wavelen >= old / high)
            inv = torch.where(mid, smoothed, out)
        seq = torch.arange(s, dtype=torch.float32)
        interp = a.get("rotary_seq_len_interpolation_factor")
        if interp:
            seq = seq / float(interp)
        freqs = torch.outer(seq, inv)
        emb = torch.cat([freqs, freqs], dim=-1)  # [s, d]
        return emb.cos(), emb.sin()

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            a, b = x.chunk(2, dim=-1)
            return F.silu(a) * b
        if self.squared_relu:
            return F.relu(x).pow(2)
        return F.gelu(x, approximate="tanh" if self.tanh_gelu else "none")

    def _layer(self, i: int, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        p = f"decoder.layers.{i}."
        s = x.shape[0]
        ln1 = self._norm(
            x,
            self._need(p + "self_attention.linear_qkv.layer_norm_weight", p + "input_layernorm.weight"),
            self._t(p + "self_attention.linear_qkv.layer_norm_bias", p + "input_layernorm.bias"),
        )
        qkv = F.linear(
            ln1,
            self._need(p + "self_attention.linear_qkv.weight"),
            self._t(p + "self_attention.linear_qkv.bias"),
        )
        per = self.heads // self.groups
        qkv = qkv.reshape(s, self.groups, per + 2, self.head_dim)
        q = qkv[:, :, :per].reshape(s, self.heads, self.head_dim)
        k = qkv[:, :, per].repeat_interleave(per, dim=1)
        v = qkv[:, :, per + 1].repeat_interleave(per, dim=1)
        if rope is not None:
            cos, sin = (t[:, None, :] for t in rope)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
        ctx = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(s, self.heads * self.head_dim)
        x = x + F.linear(
            ctx,
            self._need(p + "self_attention.linear_proj.weight"),
            self._t(p + "self_attention.linear_proj.bias"),
        )
        ln2 = self._norm(
            x,
            self._need(p + "mlp.linear_fc1.layer_norm_weight", p + "pre_mlp_layernorm.weight"),
            self._t(p + "mlp.linear_fc1.layer_norm_bias", p + "pre_mlp_layernorm.bias"),
        )
        h = self._act(
            F.linear(ln2, self._need(p + "mlp.linear_fc1.weight"), self._t(p + "mlp.linear_fc1.bias"))
        )
        return x + F.linear(h, self._need(p + "mlp.linear_fc2.weight"), self._t(p + "mlp.linear_fc2.bias"))

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[0] != 1:
            raise ValueError("one sequence at a time")
        s = ids.shape[1]
        emb = self._need("embedding.word_embeddings.weight")
        x = F.embedding(ids[0], emb)
        rope = None
        if self.pos == "learned_absolute":
            x = x + self._need("embedding.position_embeddings.weight")[:s]
        elif self.pos == "rope":
            rope = self._rotary(s)
        else:
            raise CheckpointError(f"no reference for position_embedding_type {self.pos!r}")
        for i in range(self.layers):
            x = self._layer(i, x, rope)
            self.r.release()
        x = self._norm(
            x, self._need("decoder.final_layernorm.weight"), self._t("decoder.final_layernorm.bias")
        )
        head = self._t("output_layer.weight")
        if head is None and self.tied:
            head = emb
        if head is None:
            raise CheckpointError("missing tensor output_layer.weight (embeddings are untied)")
        return F.linear(x, head)[None]
