"""Conversion stage: a supported checkpoint -> a TensorRT-LLM checkpoint.

Public API (see ``convert`` for the details)::

    convert(source_dir, source_format, out_dir, *, tp=1, pp=1, dtype="float16", overrides=None,
            quantization=None, kv_cache=None, progress=None) -> CheckpointConfig

``source_format`` is ``"hf"``, ``"megatron"`` or ``"trtllm-checkpoint"``; every failure caused by
the input raises ``CheckpointError`` (a ``ValueError``) whose message names the tensor or field.
``progress(message, fraction)`` receives fractions rising from 0.0 to 1.0 (``ProgressFn``).

How it works: a source reader (``hf``, ``megatron``, ``trtllm``) yields the model's canonical
full tensors one layer at a time (``source.ModelSource``); ``writer`` splits each layer for every
TP rank (``sharding``) and streams the pieces into pre-declared ``rank{N}.safetensors`` files
(``safetensors_stream``), so peak memory is about one layer plus one rank's shard, however large
the model or the TP/PP. ``config.json`` is written last: its presence marks a complete checkpoint.

Megatron model config comes from the saved training ``args`` (legacy rank files; for torch_dist
``common.pt`` up to megatron-core 0.18, the ``common_state`` item of the .distcp files from 0.19);
structural facts in ``ModelOverrides.fields`` and explicit
``ModelOverrides.megatron_args`` take precedence, and bias flags missing from the args are read
off the weights.

Quantization: int8/int4 weight-only keep float weights and set ``quant_algo`` W8A16/W4A16 (TRT-LLM
quantizes at build time). ``fp8`` writes float8_e4m3fn weights with per-tensor weight and
activation scales, and FP8/INT8 KV cache adds a kv_cache_scaling_factor per attention, all from
max calibration over ``calibration`` (``quantize``; the scales agree with NVIDIA Model Optimizer).
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
