"""CONTRACT DOUBLE of tensorrt_llm.plugin.PluginConfig (1.2 field names and defaults)."""

from __future__ import annotations

from typing import Any

from tensorrt_llm._contract import ContractViolation

_DTYPES = (None, "auto", "float16", "bfloat16", "float32")
# name -> (kind, default). Kinds: "dtype" (a plugin precision or None = off), bool, int.
FIELDS: dict[str, tuple[str, Any]] = {
    "gpt_attention_plugin": ("dtype", "auto"),
    "gemm_plugin": ("dtype", None),
    "lora_plugin": ("dtype", None),
    "nccl_plugin": ("dtype", "auto"),
    "context_fmha": ("bool", True),
    "remove_input_padding": ("bool", True),
    "paged_kv_cache": ("bool", True),
    "tokens_per_block": ("int", 32),
    "use_paged_context_fmha": ("bool", True),
    "use_fused_mlp": ("bool", True),
    "reduce_fusion": ("bool", False),
    "multiple_profiles": ("bool", False),
    "paged_state": ("bool", True),
}


class PluginConfig:
    def __init__(self) -> None:
        for name, (_, default) in FIELDS.items():
            object.__setattr__(self, name, default)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in FIELDS:
            raise ContractViolation(f"PluginConfig has no field {name!r}")
        kind = FIELDS[name][0]
        if kind == "dtype" and value not in _DTYPES:
            raise ContractViolation(f"PluginConfig.{name}={value!r}: expected one of {_DTYPES}")
        if kind == "bool" and not isinstance(value, bool):
            raise ContractViolation(f"PluginConfig.{name}={value!r}: expected bool")
        if kind == "int" and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ContractViolation(f"PluginConfig.{name}={value!r}: expected a positive int")
        object.__setattr__(self, name, value)

    def enable_paged_kv_cache(self, tokens_per_block: int = 32) -> PluginConfig:
        if tokens_per_block & (tokens_per_block - 1):
            raise ContractViolation(f"tokens_per_block={tokens_per_block} must be a power of 2")
        self.paged_kv_cache = True
        self.tokens_per_block = tokens_per_block
        return self

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}
