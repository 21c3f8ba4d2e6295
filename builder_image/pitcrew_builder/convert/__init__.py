"""Conversion stage: any supported checkpoint -> TensorRT-LLM checkpoint.

Public API: ``convert``, ``ModelOverrides``, ``ProgressFn``, ``quant_config`` and the
``CheckpointError`` raised for unusable inputs.
"""

from pitcrew_builder.checkpoint import CheckpointConfig, CheckpointError
from pitcrew_builder.convert.api import ModelOverrides, SourceFormat, convert, quant_config
from pitcrew_builder.convert.writer import ProgressFn

__all__ = [
    "CheckpointConfig",
    "CheckpointError",
    "ModelOverrides",
    "ProgressFn",
    "SourceFormat",
    "convert",
    "quant_config",
]
