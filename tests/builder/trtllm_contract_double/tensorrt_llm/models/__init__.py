"""CONTRACT DOUBLE of tensorrt_llm.models: the model classes the builder looks up by name.

Each class declares the parameters TensorRT-LLM 1.2's model declares for a checkpoint config, after
``quantize()``, with per-rank shapes and dtypes; ``from_checkpoint`` reads ``rank{N}.safetensors``
and ``load`` fails the way TensorRT-LLM's does. Every rule names the TRT-LLM 1.2 source it copies
(see docs/trtllm-contract.md):

- models/modeling_utils.py PretrainedModel.from_checkpoint / load: missing parameters raise
  ``RuntimeError("Required but not provided tensors:{...}")``; extra tensors only warn; a value
  whose shape differs raises ``RuntimeError("Encounter error '...' for parameter '...'")``
  (parameter.py Parameter.value asserts the shape). ``lm_head.weight`` may be left out when the
  embedding is shared.
- models/llama/model.py LLaMADecoderLayer: Attention(bias=attn_bias) (layers/attention.py then sets
  dense_bias = bias), GatedMLP(bias=mlp_bias); RmsNorm without bias.
- models/qwen/model.py QWenDecoderLayer: reads config.seq_length; Attention(bias=attn_bias,
  dense_bias=False); MLP width intermediate_size // 2 when qwen_type == 'qwen' (QWenConfig default).
- models/gpt/model.py GPTDecoderLayer: LayerNorm with bias; one ``bias`` for Attention and MLP;
  gated MLP only for gated activations; position_embedding for learned_absolute.
- quantization/quantize.py fp8_quantize: ColumnLinear/RowLinear -> FP8Linear/FP8RowLinear (weight
  'fp8', weights_scaling_factor and activation_scaling_factor float32 (1,)), lm_head and embeddings
  excluded; kv_cache_quantize: every Attention gets kv_cache_scaling_factor float32 (1,).
- Weight-only W8A16/W4A16: the checkpoint holds float weights; from_checkpoint's
  preprocess_weights quantizes them, so float weights are what is required.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tensorrt_llm._contract import CALLS, ContractViolation

Param = tuple[tuple[int, ...], str]  # (per-rank shape, dtype: 'model' | 'fp8' | 'float32')

FP8_LINEARS = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")
_ST_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F8_E4M3": "fp8"}


class ModelConfig:
    """The attributes of a PretrainedConfig the model classes read; missing ones fail like TRT-LLM."""

    def __init__(self, data: dict[str, Any], rank: int) -> None:
        self._data = dict(data)
        self.rank = rank

    def __getattr__(self, name: str) -> Any:
        data = self.__dict__.get("_data", {})
        if name in data:
            return data[name]
        raise AttributeError(
            f"'{data.get('architecture', 'PretrainedConfig')}Config' object has no attribute '{name}'"
        )

    def get(self, name: str, default: Any = None) -> Any:
        return self._data.get(name, default)


class PretrainedModel:
    # Defaults PretrainedConfig / the family's config class apply when config.json omits a key.
    DEFAULTS: dict[str, Any] = {
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "share_embedding_table": False,
        "position_embedding_type": "learned_absolute",
        "quantization": {},
    }

    def __init__(self, config: dict[str, Any], rank: int, tensor_names: list[str]) -> None:
        self.config = config
        self.rank = rank
        self.tensor_names = tensor_names

    # ---- what the model declares ------------------------------------------------------------
    @classmethod
    def layer_params(cls, c: ModelConfig, tp: int) -> dict[str, Param]:
        raise NotImplementedError

    @classmethod
    def parameters(cls, c: ModelConfig) -> dict[str, Param]:
        """Every parameter of rank ``c.rank`` after quantize(), name -> (shape, dtype)."""
        m = c.mapping
        tp, pp = int(m.get("tp_size", 1)), int(m.get("pp_size", 1))
        tp_rank, pp_rank = c.rank % tp, c.rank // tp
        h, vocab = c.hidden_size, c.vocab_size
        padded = (vocab + tp - 1) // tp * tp
        out: dict[str, Param] = {}
        if pp_rank == 0:
            if c.use_parallel_embedding:
                emb = (padded // tp, h) if c.embedding_sharding_dim == 0 else (vocab, h // tp)
            else:
                emb = (vocab, h)
            out["transformer.vocab_embedding.weight"] = (emb, "model")
            if c.position_embedding_type == "learned_absolute":
                out["transformer.position_embedding.weight"] = ((c.max_position_embeddings, h), "model")
        per = c.num_hidden_layers // pp
        layer = cls.layer_params(c, tp)
        quant = c.quantization or {}
        if quant.get("quant_algo") == "FP8":
            for lin in FP8_LINEARS:
                if f"{lin}.weight" in layer:
                    layer[f"{lin}.weight"] = (layer[f"{lin}.weight"][0], "fp8")
                    layer[f"{lin}.weights_scaling_factor"] = ((1,), "float32")
                    layer[f"{lin}.activation_scaling_factor"] = ((1,), "float32")
        if quant.get("kv_cache_quant_algo") in ("FP8", "INT8"):
            layer["attention.kv_cache_scaling_factor"] = ((1,), "float32")
        for i in range(per):
            for name, p in layer.items():
                out[f"transformer.layers.{i}.{name}"] = p
        if pp_rank == pp - 1:
            out.update(cls.final_params(c))
            out["lm_head.weight"] = ((padded // tp, h), "model")
        del tp_rank
        return out

    @classmethod
    def final_params(cls, c: ModelConfig) -> dict[str, Param]:
        return {"transformer.ln_f.weight": ((c.hidden_size,), "model")}

    @staticmethod
    def attention(c: ModelConfig, tp: int, qkv_bias: bool, dense_bias: bool) -> dict[str, Param]:
        h, hd = c.hidden_size, c.head_size
        kv_heads = max(c.num_key_value_heads // tp, 1)
        q = c.num_attention_heads // tp * hd
        out: dict[str, Param] = {"attention.qkv.weight": ((q + 2 * kv_heads * hd, h), "model")}
        if qkv_bias:
            out["attention.qkv.bias"] = ((q + 2 * kv_heads * hd,), "model")
        out["attention.dense.weight"] = ((h, q), "model")
        if dense_bias:
            out["attention.dense.bias"] = ((h,), "model")
        return out

    @staticmethod
    def mlp(c: ModelConfig, tp: int, ffn: int, gated: bool, bias: bool) -> dict[str, Param]:
        h = c.hidden_size
        out: dict[str, Param] = {"mlp.fc.weight": ((ffn // tp, h), "model")}
        if bias:
            out["mlp.fc.bias"] = ((ffn // tp,), "model")
        if gated:
            out["mlp.gate.weight"] = ((ffn // tp, h), "model")
            if bias:
                out["mlp.gate.bias"] = ((ffn // tp,), "model")
        out["mlp.proj.weight"] = ((h, ffn // tp), "model")
        if bias:
            out["mlp.proj.bias"] = ((h,), "model")
        return out

    # ---- TRT-LLM's entry points --------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        ckpt_dir: str,
        rank: int | None = None,
        config: Any = None,
        *,
        preprocess_weights_hook: Any = None,
    ) -> PretrainedModel:
        if not isinstance(ckpt_dir, str):
            raise ContractViolation("from_checkpoint takes ckpt_dir as str")
        with open(os.path.join(ckpt_dir, "config.json")) as f:
            data = {**cls.DEFAULTS, **json.load(f)}
        world = data.get("mapping", {}).get("world_size", 1)
        rank = 0 if rank is None else rank
        if not 0 <= rank < world:
            raise ContractViolation(f"rank {rank} outside the checkpoint's world_size {world}")
        weights = os.path.join(ckpt_dir, f"rank{rank}.safetensors")
        assert os.path.isfile(weights)  # modeling_utils.from_checkpoint asserts the same
        from safetensors import safe_open

        with safe_open(weights, "pt") as f:
            provided = {
                name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype())
                for name in f.keys()  # noqa: SIM118 - safe_open has no __iter__
            }
        model = cls(data, rank, sorted(provided))
        model.load(provided)
        data["mapping"] = {**data.get("mapping", {}), "rank": rank}
        CALLS.append({"call": "from_checkpoint", "class": cls.__name__, "ckpt_dir": ckpt_dir, "rank": rank})
        return model

    def load(self, provided: dict[str, tuple[tuple[int, ...], str]]) -> None:
        c = ModelConfig(self.config, self.rank)
        required = self.parameters(c)
        names = set(required)
        if self.config.get("share_embedding_table") or (
            "lm_head.weight" not in provided and "transformer.vocab_embedding.weight" in provided
        ):
            names.discard("lm_head.weight")  # load(): exemption for embedding sharing
        missing = names - set(provided)
        if missing:
            raise RuntimeError(f"Required but not provided tensors:{missing}")
        extra = set(provided) - names
        if extra:
            CALLS.append({"call": "warning", "message": f"Provided but not required tensors: {extra}"})
        model_dtype = self.config["dtype"]
        for name in sorted(names):
            shape, kind = required[name]
            got_shape, got_dtype = provided[name]
            if got_shape != shape:
                raise RuntimeError(
                    f"Encounter error 'The value updated is not the same shape as the original. "
                    f"Updated: {got_shape}, original: {shape}' for parameter '{name}'"
                )
            want = model_dtype if kind == "model" else kind
            if _ST_DTYPES.get(got_dtype) != want and (kind != "model" or self.strict_dtypes()):
                # TRT-LLM only warns here, but an FP8Linear fed a non-fp8 weight (or a float32 scale
                # given as another type) breaks the strongly typed FP8 network build() makes.
                raise ContractViolation(f"parameter {name} is {got_dtype}, TRT-LLM declares {want}")

    def strict_dtypes(self) -> bool:
        return False


class LLaMAForCausalLM(PretrainedModel):
    DEFAULTS = {
        **PretrainedModel.DEFAULTS,
        "position_embedding_type": "rope_gpt_neox",
        "attn_bias": False,
        "mlp_bias": False,
    }

    @classmethod
    def layer_params(cls, c: ModelConfig, tp: int) -> dict[str, Param]:
        h = c.hidden_size
        out: dict[str, Param] = {"input_layernorm.weight": ((h,), "model")}
        out.update(cls.attention(c, tp, qkv_bias=c.attn_bias, dense_bias=c.attn_bias))
        out["post_layernorm.weight"] = ((h,), "model")
        out.update(cls.mlp(c, tp, c.intermediate_size, gated=True, bias=c.mlp_bias))
        return out


class QWenForCausalLM(PretrainedModel):
    DEFAULTS = {
        **PretrainedModel.DEFAULTS,
        "position_embedding_type": "rope_gpt_neox",
        "qwen_type": "qwen",
        "attn_bias": False,
        "mlp_bias": False,
    }

    @classmethod
    def layer_params(cls, c: ModelConfig, tp: int) -> dict[str, Param]:
        h = c.hidden_size
        _ = c.seq_length  # Attention(max_seqlen_for_logn_scaling=config.seq_length)
        out: dict[str, Param] = {"input_layernorm.weight": ((h,), "model")}
        out.update(cls.attention(c, tp, qkv_bias=c.attn_bias, dense_bias=False))
        out["post_layernorm.weight"] = ((h,), "model")
        ffn = c.intermediate_size // 2 if c.qwen_type == "qwen" else c.intermediate_size
        out.update(cls.mlp(c, tp, ffn, gated=True, bias=c.mlp_bias))
        return out


class GPTForCausalLM(PretrainedModel):
    DEFAULTS = {**PretrainedModel.DEFAULTS, "bias": True}

    @classmethod
    def layer_params(cls, c: ModelConfig, tp: int) -> dict[str, Param]:
        h = c.hidden_size
        out: dict[str, Param] = {
            "input_layernorm.weight": ((h,), "model"),
            "input_layernorm.bias": ((h,), "model"),
        }
        out.update(cls.attention(c, tp, qkv_bias=c.bias, dense_bias=c.bias))
        out["post_layernorm.weight"] = ((h,), "model")
        out["post_layernorm.bias"] = ((h,), "model")
        gated = c.hidden_act in ("swiglu", "geglu")
        out.update(cls.mlp(c, tp, c.intermediate_size, gated=gated, bias=c.bias))
        return out

    @classmethod
    def final_params(cls, c: ModelConfig) -> dict[str, Param]:
        h = c.hidden_size
        return {"transformer.ln_f.weight": ((h,), "model"), "transformer.ln_f.bias": ((h,), "model")}


class GemmaForCausalLM(PretrainedModel):
    pass


class FalconForCausalLM(PretrainedModel):
    pass


class DeciLMForCausalLM(PretrainedModel):
    pass
