"""Hugging Face checkpoints: LLaMA family (Llama, Mistral, Qwen2) and GPT-2.

Tensors are read one at a time: safetensors through ``safe_open`` (opened per read so no file
mapping outlives the tensor it served), ``pytorch_model*.bin`` through ``torch.load(mmap=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from pitcrew_builder.checkpoint import CheckpointConfig, CheckpointError
from pitcrew_builder.convert.source import ModelSource, Tensors, check_layer, expect_shape

_LLAMA_ARCHS = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
# GPT-2's activations; TRT-LLM's "gelu" is the tanh approximation GPT-2 uses.
_GPT2_ACTS = {
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "gelu": "gelu",
    "relu": "relu",
}
_TORCH_DTYPE_NAMES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}


class TensorStore:
    """Name -> tensor lookup over the weight files of a HF model directory."""

    def __init__(self, model_dir: Path) -> None:
        self._files: dict[str, Path] = {}
        self._bins: dict[str, dict[str, torch.Tensor]] = {}
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            # The index names the shard files; other *.safetensors (e.g. Mistral's
            # consolidated.safetensors, a second copy in another layout) are ignored.
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            st_files = sorted({model_dir / f for f in weight_map.values()})
            for path in st_files:
                if not path.is_file():
                    raise CheckpointError(f"{index.name} names {path.name}, which is missing")
        else:
            st_files = sorted(model_dir.glob("*.safetensors"))
        if st_files:
            for path in st_files:
                with _safe_open(path) as f:
                    for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                        self._files[key] = path
            return
        bin_files = sorted(model_dir.glob("pytorch_model*.bin"))
        if not bin_files:
            raise CheckpointError(f"{model_dir} holds no *.safetensors or pytorch_model*.bin weights")
        for path in bin_files:
            try:
                sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as exc:
                raise CheckpointError(f"{path.name} cannot be loaded: {exc}") from exc
            self._bins[str(path)] = sd
            for key in sd:
                self._files[key] = path

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def names(self) -> set[str]:
        return set(self._files)

    def get(self, name: str) -> torch.Tensor:
        path = self._files.get(name)
        if path is None:
            raise CheckpointError(f"missing tensor {name}")
        if str(path) in self._bins:
            return self._bins[str(path)][name]
        with _safe_open(path) as f:
            tensor: torch.Tensor = f.get_tensor(name)
        return tensor

    def close(self) -> None:
        self._bins.clear()


@contextmanager
def _safe_open(path: Path) -> Iterator[Any]:
    """``safe_open`` whose failures (truncated or corrupt file) are CheckpointErrors naming the file."""
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as exc:  # safetensors raises SafetensorError (not an OSError) for a bad header
        size = path.stat().st_size if path.is_file() else 0
        raise CheckpointError(
            f"{path.name} ({size:,} bytes) is not a readable safetensors file (truncated or corrupt?): {exc}"
        ) from exc
    with handle as f:
        try:
            yield f
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"{path.name}: reading a tensor failed (truncated or corrupt?): {exc}"
            ) from exc


def read_hf_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def hf_architecture(hf: dict[str, Any]) -> str:
    archs = hf.get("architectures") or []
    if archs:
        return str(archs[0])
    model_type = str(hf.get("model_type", ""))
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    raise CheckpointError(f"config.json names no architectures and an unknown model_type {model_type!r}")


def _field(hf: dict[str, Any], name: str) -> Any:
    if hf.get(name) is None:
        raise CheckpointError(f"config.json lacks field {name!r}")
    return hf[name]


def _rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and rope scaling, from transformers 4 (rope_theta/rope_scaling) or 5 (rope_parameters)."""
    params = hf.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if not scaling:
        return theta, None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return theta, None
    out = {k: v for k, v in scaling.items() if k not in ("rope_type", "type", "rope_theta")}
    out["type"] = kind
    return theta, out


def _dtype(hf: dict[str, Any]) -> str:
    name = str(hf.get("dtype") or hf.get("torch_dtype") or "float32")
    return _TORCH_DTYPE_NAMES.get(name, "float32")


def llama_config(hf: dict[str, Any], arch: str) -> CheckpointConfig:
    heads = int(_field(hf, "num_attention_heads"))
    hidden = int(_field(hf, "hidden_size"))
    act = str(hf.get("hidden_act", "silu"))
    if act != "silu":
        raise CheckpointError(f"hidden_act {act!r} is not supported for {arch} (expected 'silu')")
    theta, scaling = _rope(hf)
    qwen = arch == "Qwen2ForCausalLM"
    attn_bias = True if qwen else bool(hf.get("attention_bias", False))
    return CheckpointConfig(
        architecture=arch,
        dtype=_dtype(hf),
        vocab_size=int(_field(hf, "vocab_size")),
        hidden_size=hidden,
        num_hidden_layers=int(_field(hf, "num_hidden_layers")),
        num_attention_heads=heads,
        num_key_value_heads=int(hf.get("num_key_value_heads") or heads),
        head_size=int(hf.get("head_dim") or hidden // heads),
        intermediate_size=int(_field(hf, "intermediate_size")),
        hidden_act="silu",
        norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        position_embedding_type="rope_gpt_neox",
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        rotary_base=theta,
        rotary_scaling=scaling,
        qkv_bias=attn_bias,
        dense_bias=False if qwen else attn_bias,
        mlp_bias=False if qwen else bool(hf.get("mlp_bias", False)),
        extra={"qwen_type": "qwen2"} if qwen else {},
    )


def gpt2_config(hf: dict[str, Any]) -> CheckpointConfig:
    hidden = int(_field(hf, "n_embd"))
    act = str(hf.get("activation_function", "gelu_new"))
    if act not in _GPT2_ACTS:
        raise CheckpointError(f"activation_function {act!r} is not supported for GPT2LMHeadModel")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
        raise CheckpointError("scale_attn_by_inverse_layer_idx / scale_attn_weights=false are not supported")
    return CheckpointConfig(
        architecture="GPTForCausalLM",
        dtype=_dtype(hf),
        vocab_size=int(_field(hf, "vocab_size")),
        hidden_size=hidden,
        num_hidden_layers=int(_field(hf, "n_layer")),
        num_attention_heads=int(_field(hf, "n_head")),
        num_key_value_heads=int(_field(hf, "n_head")),
        head_size=hidden // int(_field(hf, "n_head")),
        intermediate_size=int(hf.get("n_inner") or 4 * hidden),
        hidden_act=_GPT2_ACTS[act],
        norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
        position_embedding_type="learned_absolute",
        max_position_embeddings=int(_field(hf, "n_positions")),
        qkv_bias=True,
        dense_bias=True,
        mlp_bias=True,
    )


class HFSource(ModelSource):
    def __init__(self, model_dir: Path) -> None:
        hf = read_hf_config(model_dir)
        arch = hf_architecture(hf)
        if arch in _LLAMA_ARCHS:
            self.config = llama_config(hf, arch)
            self._gpt2 = False
        elif arch == "GPT2LMHeadModel":
            self.config = gpt2_config(hf)
            self._gpt2 = True
        else:
            raise CheckpointError(
                f"architecture {arch!r} is not supported (supported: "
                f"{', '.join(sorted(_LLAMA_ARCHS | {'GPT2LMHeadModel'}))})"
            )
        self._tied = bool(hf.get("tie_word_embeddings", self._gpt2))
        self.store = TensorStore(model_dir)
        names = self.store.names()
        if self._gpt2:
            self._prefix = "transformer." if "transformer.wte.weight" in names else ""
        else:
            self._prefix = "model." if "model.embed_tokens.weight" in names else ""

    def close(self) -> None:
        self.store.close()

    def _get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return expect_shape(name, self.store.get(name), shape)

    def embeddings(self) -> Tensors:
        c, p = self.config, self._prefix
        if self._gpt2:
            return {
                "transformer.vocab_embedding.weight": self._get(
                    p + "wte.weight", (c.vocab_size, c.hidden_size)
                ),
                "transformer.position_embedding.weight": self._get(
                    p + "wpe.weight", (c.max_position_embeddings, c.hidden_size)
                ),
            }
        return {
            "transformer.vocab_embedding.weight": self._get(
                p + "embed_tokens.weight", (c.vocab_size, c.hidden_size)
            )
        }

    def final(self) -> Tensors:
        c, p = self.config, self._prefix
        shape = (c.vocab_size, c.hidden_size)
        emb_name = p + ("wte.weight" if self._gpt2 else "embed_tokens.weight")
        head = "lm_head.weight"
        lm_head = (
            self._get(emb_name, shape) if self._tied or head not in self.store else self._get(head, shape)
        )
        out = {"lm_head.weight": lm_head}
        if self._gpt2:
            out["transformer.ln_f.weight"] = self.store.get(p + "ln_f.weight")
            out["transformer.ln_f.bias"] = self.store.get(p + "ln_f.bias")
        else:
            out["transformer.ln_f.weight"] = self.store.get(p + "norm.weight")
        for name in ("transformer.ln_f.weight", "transformer.ln_f.bias"):
            if name in out:
                expect_shape(name, out[name], (c.hidden_size,))
        return out

    def layer(self, index: int) -> Tensors:
        return self._gpt2_layer(index) if self._gpt2 else self._llama_layer(index)

    def _llama_layer(self, i: int) -> Tensors:
        pre = f"{self._prefix}layers.{i}."
        names = {
            "input_layernorm.weight": "input_layernorm.weight",
            "post_layernorm.weight": "post_attention_layernorm.weight",
            "attention.q.weight": "self_attn.q_proj.weight",
            "attention.k.weight": "self_attn.k_proj.weight",
            "attention.v.weight": "self_attn.v_proj.weight",
            "attention.dense.weight": "self_attn.o_proj.weight",
            "mlp.fc.weight": "mlp.gate_proj.weight",  # the activated branch
            "mlp.gate.weight": "mlp.up_proj.weight",
            "mlp.proj.weight": "mlp.down_proj.weight",
        }
        c = self.config
        if c.qkv_bias:
            names |= {
                "attention.q.bias": "self_attn.q_proj.bias",
                "attention.k.bias": "self_attn.k_proj.bias",
                "attention.v.bias": "self_attn.v_proj.bias",
            }
        if c.dense_bias:
            names["attention.dense.bias"] = "self_attn.o_proj.bias"
        if c.mlp_bias:
            names |= {
                "mlp.fc.bias": "mlp.gate_proj.bias",
                "mlp.gate.bias": "mlp.up_proj.bias",
                "mlp.proj.bias": "mlp.down_proj.bias",
            }
        full_names = {k: pre + v for k, v in names.items()}
        tensors = {k: self.store.get(v) for k, v in full_names.items()}
        return check_layer(c, i, tensors, full_names)

    def _gpt2_layer(self, i: int) -> Tensors:
        c = self.config
        pre = f"{self._prefix}h.{i}."
        h = c.hidden_size

        def conv1d(name: str, shape: tuple[int, int]) -> torch.Tensor:
            # GPT-2's Conv1D stores (in, out); TRT-LLM wants (out, in).
            return self._get(pre + name, shape).t()

        qkv_w = conv1d("attn.c_attn.weight", (h, 3 * h))
        qkv_b = self._get(pre + "attn.c_attn.bias", (3 * h,))
        q_w, k_w, v_w = torch.split(qkv_w, h, dim=0)
        q_b, k_b, v_b = torch.split(qkv_b, h, dim=0)
        ffn = c.intermediate_size
        tensors = {
            "input_layernorm.weight": self.store.get(pre + "ln_1.weight"),
            "input_layernorm.bias": self.store.get(pre + "ln_1.bias"),
            "attention.q.weight": q_w,
            "attention.k.weight": k_w,
            "attention.v.weight": v_w,
            "attention.q.bias": q_b,
            "attention.k.bias": k_b,
            "attention.v.bias": v_b,
            "attention.dense.weight": conv1d("attn.c_proj.weight", (h, h)),
            "attention.dense.bias": self.store.get(pre + "attn.c_proj.bias"),
            "post_layernorm.weight": self.store.get(pre + "ln_2.weight"),
            "post_layernorm.bias": self.store.get(pre + "ln_2.bias"),
            "mlp.fc.weight": conv1d("mlp.c_fc.weight", (h, ffn)),
            "mlp.fc.bias": self.store.get(pre + "mlp.c_fc.bias"),
            "mlp.proj.weight": conv1d("mlp.c_proj.weight", (ffn, h)),
            "mlp.proj.bias": self.store.get(pre + "mlp.c_proj.bias"),
        }
        src = {
            "input_layernorm.weight": "ln_1.weight",
            "input_layernorm.bias": "ln_1.bias",
            "post_layernorm.weight": "ln_2.weight",
            "post_layernorm.bias": "ln_2.bias",
            "attention.dense.bias": "attn.c_proj.bias",
            "mlp.fc.bias": "mlp.c_fc.bias",
            "mlp.proj.bias": "mlp.c_proj.bias",
        }
        return check_layer(c, i, tensors, {k: pre + v for k, v in src.items()})
