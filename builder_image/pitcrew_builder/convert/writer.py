"""Stream a ModelSource into a TRT-LLM checkpoint directory.

Peak memory: every rank file is opened up front with its full header (shapes come from the
config), then the source is read one layer at a time; each layer is split into its TP shards,
cast to the output dtype and written immediately, and dropped before the next layer is read.
So the live set is one full layer plus one rank's cast shard (or the embedding / lm_head,
whichever is larger), independent of the number of layers, TP or PP.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch

from pitcrew_builder.checkpoint import (
    CONFIG_FILE,
    CheckpointConfig,
    CheckpointError,
    expected_rank_tensors,
    rank_file,
    rank_of,
    tensor_dtype,
    write_config,
)
from pitcrew_builder.convert.quantize import (
    CalibrationSet,
    LayerCalibrator,
    layer_scales,
    needs_calibration,
    quantize_shard,
)
from pitcrew_builder.convert.safetensors_stream import StreamingSafetensorsWriter
from pitcrew_builder.convert.sharding import shard_embeddings, shard_final, shard_layer
from pitcrew_builder.convert.source import ModelSource

ProgressFn = Callable[[str, float], None]
"""``progress(message, fraction)``: fraction runs from 0.0 to 1.0 over the whole conversion."""

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "fp8": torch.float8_e4m3fn,
}


def clear_checkpoint_dir(out_dir: Path) -> None:
    """Remove what an earlier (maybe interrupted) conversion left: config.json and rank files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).unlink(missing_ok=True)
    for stale in out_dir.glob("rank*.safetensors"):
        stale.unlink()


def write_checkpoint(
    source: ModelSource,
    config: CheckpointConfig,
    out_dir: Path,
    progress: ProgressFn | None = None,
    calibration: CalibrationSet | None = None,
) -> CheckpointConfig:
    """Write ``source`` as ``config`` describes it (mapping, dtype, quantization) into ``out_dir``.

    FP8 weights and FP8/INT8 KV cache need ``calibration`` (see convert.quantize): the scales
    are measured layer by layer while the layers are written.
    """
    config.check()
    report = progress or (lambda _msg, _frac: None)
    dtype = TORCH_DTYPES[config.dtype]
    tp, pp = config.tp, config.pp
    calibrate = needs_calibration(config)
    if calibrate and calibration is None:
        raise CheckpointError(
            "FP8 weights and FP8/INT8 KV cache need calibration data (quantization.calibration)"
        )
    clear_checkpoint_dir(out_dir)
    with ExitStack() as stack:
        writers = []
        for r in range(config.mapping.world_size):
            layout = expected_rank_tensors(config, r)
            dtypes = {name: TORCH_DTYPES[tensor_dtype(config, name)] for name in layout}
            writers.append(
                stack.enter_context(StreamingSafetensorsWriter(rank_file(out_dir, r), layout, dtype, dtypes))
            )
        total = config.num_hidden_layers + 2
        report("embeddings", 0.0)
        emb = source.embeddings()
        calibrator = LayerCalibrator(config, calibration, emb) if calibrate and calibration else None
        for t in range(tp):
            for name, tensor in shard_embeddings(emb, config, t).items():
                writers[rank_of(config, t, 0)].write(name, tensor)
        del emb
        for p in range(pp):
            for local, layer in enumerate(config.layers_of_pp_rank(p)):
                report(f"layer {layer + 1}/{config.num_hidden_layers}", (layer + 1) / total)
                # Ranges the training run recorded (TE FP8 state) win over calibrated ones.
                recorded = source.activation_amax(layer) if calibrator else {}
                full = source.layer(layer)
                scales: dict[str, torch.Tensor] = {}
                if calibrator:
                    amax = {**calibrator.step(full), **recorded}
                    scales = layer_scales(config, full, amax)
                for t in range(tp):
                    prefix = f"transformer.layers.{local}."
                    shard = shard_layer(full, config, t)
                    if calibrator:
                        shard = quantize_shard(shard, scales, config)
                    for name, tensor in shard.items():
                        writers[rank_of(config, t, p)].write(prefix + name, tensor)
                    del shard  # its views keep `full` alive: drop them before the next layer is read
                del full
        report("lm_head", (total - 1) / total)
        fin = source.final()
        for t in range(tp):
            for name, tensor in shard_final(fin, config, t).items():
                writers[rank_of(config, t, pp - 1)].write(name, tensor)
        del fin
    write_config(config, out_dir)
    report("done", 1.0)
    return config
