"""CONTRACT DOUBLE of tensorrt_llm.builder: BuildConfig (constructed with keyword fields), EngineConfig,
Engine.save."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from tensorrt_llm._contract import ContractViolation
from tensorrt_llm.lora_manager import LoraConfig
from tensorrt_llm.plugin import PluginConfig

# Popped without a default by the real from_dict: a missing one is a KeyError there.
REQUIRED = (
    "max_input_len",
    "max_seq_len",
    "max_batch_size",
    "max_beam_width",
    "max_num_tokens",
    "opt_num_tokens",
)
OPTIONAL: dict[str, Any] = {
    "max_prompt_embedding_table_size": 0,
    "gather_context_logits": False,
    "gather_generation_logits": False,
    "strongly_typed": True,
    "use_refit": False,
    "input_timing_cache": None,
    "output_timing_cache": "model.cache",
    "max_draft_len": 0,
    "weight_streaming": False,
    "use_strip_plan": False,
}
_BOOLS = {
    "gather_context_logits",
    "gather_generation_logits",
    "strongly_typed",
    "use_refit",
    "weight_streaming",
    "use_strip_plan",
}


@dataclass
class BuildConfig:
    max_input_len: int = 1024
    max_seq_len: int | None = None
    max_batch_size: int = 2048
    max_beam_width: int = 1
    max_num_tokens: int = 8192
    opt_num_tokens: int | None = None
    max_prompt_embedding_table_size: int = 0
    gather_context_logits: bool = False
    gather_generation_logits: bool = False
    strongly_typed: bool = True
    use_refit: bool = False
    input_timing_cache: str | None = None
    output_timing_cache: str = "model.cache"
    max_draft_len: int = 0
    weight_streaming: bool = False
    use_strip_plan: bool = False
    lora_config: LoraConfig = field(default_factory=LoraConfig)
    plugin_config: PluginConfig = field(default_factory=PluginConfig)

    def __post_init__(self) -> None:
        # What 1.2.x's pydantic BuildConfig validates at construction (types and ranges).
        for k in ("max_input_len", "max_seq_len", "max_batch_size", "max_beam_width", "max_num_tokens"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ContractViolation(f"{k}={v!r}: expected a positive int")
        if self.opt_num_tokens is not None and not (
            isinstance(self.opt_num_tokens, int) and self.opt_num_tokens > 0
        ):
            raise ContractViolation(
                f"opt_num_tokens={self.opt_num_tokens!r}: expected a positive int or None"
            )
        if self.max_seq_len < self.max_input_len:
            raise ContractViolation("max_seq_len < max_input_len")
        for k in _BOOLS:
            if not isinstance(getattr(self, k), bool):
                raise ContractViolation(f"{k}={getattr(self, k)!r}: expected bool")
        if not isinstance(self.plugin_config, PluginConfig):
            raise ContractViolation("plugin_config must be a PluginConfig")
        if self.output_timing_cache is None:
            raise ContractViolation("output_timing_cache=None: the build would write ./model.cache")

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in (*REQUIRED, *OPTIONAL)}
        out["plugin_config"] = self.plugin_config.to_dict()
        out["lora_config"] = self.lora_config.to_dict()
        return out


class EngineConfig:
    def __init__(self, pretrained_config: dict[str, Any], build_config: BuildConfig, version: str) -> None:
        self.pretrained_config = pretrained_config
        self.build_config = build_config
        self.version = version

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "pretrained_config": self.pretrained_config,
            "build_config": self.build_config.to_dict(),
        }


class Engine:
    def __init__(self, config: EngineConfig, engine: bytes, rank: int) -> None:
        self.config = config
        self.engine = engine
        self.rank = rank

    def save(self, engine_dir: str) -> None:
        if not isinstance(engine_dir, str):
            raise ContractViolation("Engine.save takes the directory as str")
        os.makedirs(engine_dir, exist_ok=True)
        if self.rank == 0:  # like the real one: rank 0 writes the shared config
            with open(os.path.join(engine_dir, "config.json"), "w") as f:
                json.dump(self.config.to_dict(), f, indent=2)
        with open(os.path.join(engine_dir, f"rank{self.rank}.engine"), "wb") as f:
            f.write(self.engine)
