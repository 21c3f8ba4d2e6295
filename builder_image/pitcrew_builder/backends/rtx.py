"""tensorrt-rtx backend: the converted checkpoint -> ONNX (torch) -> a TensorRT-RTX engine.

TensorRT for RTX compiles ahead of time for a list of compute capabilities without a GPU, so this
runs on the builder's CPU. The network is the reference forward pass (no KV cache):
`logits[batch, seq, vocab] = f(input_ids[batch, seq])`, one optimization profile up to
(maxBatchSize, maxSeqLen).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pitcrew.api.plan import BuildPlan
from pitcrew_builder.backends.base import CompileContext, CompileResult
from pitcrew_builder.errors import BuildFailed, InvalidSpec
from pitcrew_builder.logging import log_event

ENGINE_FILE = "rank0.engine"
CONFIG_FILE = "config.json"
ONNX_FILE = "model.onnx"
INPUT_NAME = "input_ids"
OUTPUT_NAME = "logits"

# Compute capability -> tensorrt_rtx.ComputeCapability member (what TensorRT-RTX 1.7 can target).
SUPPORTED_SM = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121"}
_UNSUPPORTED_FAMILIES = {"9": "Hopper", "10": "Blackwell datacenter", "11": "Blackwell (Thor)"}


def rtx_compute_capability(cc: str) -> str:
    """The ComputeCapability member name for a target, or InvalidSpec naming the field."""
    if cc in SUPPORTED_SM:
        return SUPPORTED_SM[cc]
    family = _UNSUPPORTED_FAMILIES.get(cc.split(".")[0])
    what = f" ({family})" if family else ""
    raise InvalidSpec(
        f"target.computeCapability {cc}{what} is not supported by TensorRT-RTX (it builds for "
        f"{', '.join(SUPPORTED_SM)}); use backend tensorrt-llm for this GPU"
    )


@dataclass(frozen=True)
class Profile:
    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]


def rtx_profile(max_batch_size: int, max_input_len: int, max_seq_len: int) -> Profile:
    """input_ids shapes: anything from one token up to a full batch of max_seq_len; tuned for a
    full batch of prompts (the prefill shape)."""
    opt_seq = min(max_input_len, max_seq_len)
    return Profile(min=(1, 1), opt=(max_batch_size, opt_seq), max=(max_batch_size, max_seq_len))


class RtxBackend:
    name = "tensorrt-rtx"

    def check(self, plan: BuildPlan) -> None:
        rtx_compute_capability(plan.target.compute_capability)
        if plan.parallelism.tensor != 1 or plan.parallelism.pipeline != 1:
            raise InvalidSpec(
                "tensorrt-rtx builds single-GPU engines: set parallelism.tensor and parallelism.pipeline to 1"
            )
        if plan.quantization.weights != "none" or plan.quantization.kv_cache != "none":
            raise InvalidSpec(
                "tensorrt-rtx builds float16/bfloat16/float32 engines: quantization.weights and "
                "quantization.kvCache must be none (use backend tensorrt-llm)"
            )

    def compile(self, ctx: CompileContext) -> CompileResult:
        import tensorrt_rtx as trt
        import torch

        from pitcrew_builder.model.reference import ReferenceModel

        plan, cfg = ctx.plan, ctx.checkpoint_config
        sm = rtx_compute_capability(plan.target.compute_capability)
        sizes = plan.sizes
        if sizes.max_seq_len > cfg.max_position_embeddings:
            log_event(
                "compile",
                "seq-len-above-model",
                level="warning",
                max_seq_len=sizes.max_seq_len,
                max_position_embeddings=cfg.max_position_embeddings,
            )
        profile = rtx_profile(sizes.max_batch_size, sizes.max_input_len, sizes.max_seq_len)
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.dtype]

        ctx.progress("exporting ONNX", 0.05)
        onnx_dir = ctx.work_dir / "onnx"
        onnx_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = onnx_dir / ONNX_FILE
        started = time.monotonic()
        model = ReferenceModel.from_checkpoint(ctx.checkpoint_dir, dtype=dtype)
        export_onnx(model, onnx_path, profile)
        del model
        export_seconds = time.monotonic() - started
        log_event("compile", "onnx-exported", seconds=export_seconds, bytes=_tree_size(onnx_dir))

        ctx.progress("building TensorRT-RTX engine", 0.5)
        started = time.monotonic()
        engine = build_engine(trt, onnx_path, sm, profile)
        build_seconds = time.monotonic() - started
        log_event("compile", "engine-built", seconds=build_seconds, bytes=len(engine), sm=sm)

        ctx.engine_dir.mkdir(parents=True, exist_ok=True)
        (ctx.engine_dir / ENGINE_FILE).write_bytes(engine)
        build_options = {
            "compute_capability": plan.target.compute_capability,
            "tensorrt_compute_capability": sm,
            "dtype": cfg.dtype,
            "strongly_typed": True,
            "profile": {
                INPUT_NAME: {"min": list(profile.min), "opt": list(profile.opt), "max": list(profile.max)}
            },
            "max_batch_size": sizes.max_batch_size,
            "max_input_len": sizes.max_input_len,
            "max_seq_len": sizes.max_seq_len,
        }
        engine_config: dict[str, Any] = {
            "backend": "tensorrt-rtx",
            "tensorrt_rtx_version": trt.__version__,
            "engine": ENGINE_FILE,
            "inputs": {INPUT_NAME: {"dtype": "int64", "shape": ["batch", "seq"]}},
            "outputs": {OUTPUT_NAME: {"dtype": "float32", "shape": ["batch", "seq", cfg.vocab_size]}},
            "pretrained_config": cfg.to_dict(),
            "build_config": build_options,
            "timings": {"onnx_export": round(export_seconds, 3), "engine_build": round(build_seconds, 3)},
        }
        (ctx.engine_dir / CONFIG_FILE).write_text(json.dumps(engine_config, indent=2) + "\n")
        ctx.progress("engine written", 1.0)
        return CompileResult(
            engine_dir=ctx.engine_dir, tensorrt_version=trt.__version__, build_options=build_options
        )


# torch.onnx's dynamo exporter needs torch >= 2.7 for this model: torch 2.6 (Debian's CPU-only build,
# in the image hack/build-images.sh makes) fails to decompose aten.linear with symbolic shapes
# ("Cannot call numel() on tensor with symbolic sizes/strides"), and only after retrying three more
# capture strategies (minutes on 2 cores). 2.15 works; versions in between were not tried.
DYNAMO_EXPORT_MIN_TORCH = (2, 7)


def use_dynamo_export(torch_version: str) -> bool:
    """Whether to export with the dynamo exporter (else TorchScript) for this torch version."""
    m = re.match(r"(\d+)\.(\d+)", torch_version)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= DYNAMO_EXPORT_MIN_TORCH


def export_onnx(model: Any, path: Path, profile: Profile) -> None:
    import torch

    if not use_dynamo_export(torch.__version__):
        log_event("compile", "torchscript-export", torch=torch.__version__)
        with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
            _export_torchscript(torch, model, path)
        return
    # Example sizes of 2 and 8, never 1: torch.export would specialise a dimension of size 1. The
    # export bounds only need to cover the profile, which TensorRT then enforces.
    example = torch.zeros((2, 8), dtype=torch.int64)
    batch = torch.export.Dim("batch", min=1, max=max(profile.max[0], 2))
    seq = torch.export.Dim("seq", min=1, max=max(profile.max[1], 8))
    # The exporter prints progress to stdout, which is our JSON log stream: send it to stderr.
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"input_ids": {0: batch, 1: seq}},
                optimize=True,
            )
        except Exception as exc:  # fall back to the TorchScript exporter
            log_event("compile", "dynamo-export-failed", level="warning", error=str(exc)[:500])
            _export_torchscript(torch, model, path)


def _export_torchscript(torch: Any, model: Any, path: Path) -> None:
    example = torch.zeros((2, 8), dtype=torch.int64)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=17,
        dynamic_axes={INPUT_NAME: {0: "batch", 1: "seq"}, OUTPUT_NAME: {0: "batch", 1: "seq"}},
    )


def json_logger(trt: Any) -> Any:
    """A TensorRT logger that writes warnings and errors into our JSON log instead of raw stdout."""

    class JsonLogger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                log_event("compile", "tensorrt", level="error", message=msg)
            elif severity <= trt.ILogger.Severity.WARNING:
                log_event("compile", "tensorrt", level="warning", message=msg)

    return JsonLogger()


def build_engine(trt: Any, onnx_path: Path, sm: str, profile: Profile) -> bytes:
    logger = json_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise BuildFailed(f"TensorRT-RTX could not parse the exported ONNX: {errors}", stage="compile")
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    if not config.set_compute_capability(getattr(trt.ComputeCapability, sm), 0):
        raise BuildFailed(f"TensorRT-RTX refused compute capability {sm}", stage="compile")
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildFailed("TensorRT-RTX engine build failed (see the TensorRT log above)", stage="compile")
    return bytes(memoryview(serialized))


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


BACKEND = RtxBackend()
