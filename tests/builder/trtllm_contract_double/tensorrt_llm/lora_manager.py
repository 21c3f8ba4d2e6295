"""CONTRACT DOUBLE of tensorrt_llm.lora_manager.LoraConfig."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tensorrt_llm._contract import ContractViolation


@dataclass
class LoraConfig:
    lora_dir: list[str] = field(default_factory=list)
    lora_ckpt_source: str = "hf"
    max_lora_rank: int = 64
    lora_target_modules: list[str] = field(default_factory=list)
    trtllm_modules_to_hf_modules: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lora_ckpt_source not in ("hf", "nemo"):
            raise ContractViolation(f"lora_ckpt_source {self.lora_ckpt_source!r} must be hf or nemo")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
