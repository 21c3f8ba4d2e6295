"""CONTRACT DOUBLE of tensorrt_llm.models: the model classes the builder looks up by name."""

from __future__ import annotations

import json
import os
from typing import Any

from tensorrt_llm._contract import CALLS, ContractViolation


class PretrainedModel:
    def __init__(self, config: dict[str, Any], rank: int, tensor_names: list[str]) -> None:
        self.config = config
        self.rank = rank
        self.tensor_names = tensor_names

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
            cfg = json.load(f)
        world = cfg.get("mapping", {}).get("world_size", 1)
        rank = 0 if rank is None else rank
        if not 0 <= rank < world:
            raise ContractViolation(f"rank {rank} outside the checkpoint's world_size {world}")
        weights = os.path.join(ckpt_dir, f"rank{rank}.safetensors")
        if not os.path.isfile(weights):
            raise FileNotFoundError(weights)
        from safetensors import safe_open

        with safe_open(weights, "pt") as f:
            names = list(f.keys())
        if not names:
            raise ContractViolation(f"{weights} holds no tensors")
        cfg["mapping"] = {**cfg.get("mapping", {}), "rank": rank}
        CALLS.append({"call": "from_checkpoint", "class": cls.__name__, "ckpt_dir": ckpt_dir, "rank": rank})
        return cls(cfg, rank, names)


class LLaMAForCausalLM(PretrainedModel):
    pass


class GPTForCausalLM(PretrainedModel):
    pass


class QWenForCausalLM(PretrainedModel):
    pass


class GemmaForCausalLM(PretrainedModel):
    pass


class FalconForCausalLM(PretrainedModel):
    pass


class DeciLMForCausalLM(PretrainedModel):
    pass
