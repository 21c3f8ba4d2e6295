"""A real TensorRT-RTX engine built end to end from a tiny HF LLaMA, published to a real S3 server."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from builder_plans import make_plan, write_plan
from builder_run import run_builder

from pitcrew.api.plan import MANIFEST_FILE, Manifest
from pitcrew_devcluster.s3server import S3Info

ENGINE_MAGIC = b"vtrt"  # TensorRT(-RTX) serialized plan header


@pytest.mark.slow
def test_rtx_engine_end_to_end(
    s3: S3Info, s3_prefix: str, tiny_llama: Path, tmp_path: Path, builder_env: dict[str, str]
) -> None:
    out = f"s3://{s3.bucket}/{s3_prefix}"
    plan = make_plan(
        source_uri=tiny_llama.as_uri(),
        output_uri=out,
        cache_key="rtx-sm89",
        backend="tensorrt-rtx",
        compute_capability="8.9",
        build={"maxInputLen": 32, "maxOutputLen": 32, "maxBatchSize": 2},
    )
    run = run_builder(
        write_plan(plan, tmp_path / "plan.json"), tmp_path / "work", tmp_path / "term.json", builder_env
    )
    assert run.code == 0, run.stderr[-3000:]
    assert run.result["ok"] is True and run.result["computeCapability"] == "8.9"
    assert run.result["versions"]["tensorrt"].startswith("1.7")

    built = run.find("compile", "engine-built")[0]
    assert built["sm"] == "SM89"
    export = run.find("compile", "onnx-exported")[0]
    print(f"\nRTX engine build {built['seconds']} s, ONNX export {export['seconds']} s")
    check = run.find("validate", "logits-check")[0]
    assert check["status"] == "passed" and check["max_abs_diff"] <= check["tolerance"]
    stages = [e["stage"] for e in run.events if e.get("event") == "end" and e["stage"] != "build"]
    assert stages == ["fetch", "convert", "compile", "validate", "publish"]
    assert all("seconds" in e for e in run.events if e.get("event") == "end")

    client = s3.client()
    prefix = f"{s3_prefix}/rtx-sm89"
    manifest = Manifest.model_validate_json(
        client.get_object(Bucket=s3.bucket, Key=f"{prefix}/{MANIFEST_FILE}")["Body"].read()
    )
    assert sorted(f.path for f in manifest.files) == ["config.json", "rank0.engine"]
    engine = client.get_object(Bucket=s3.bucket, Key=f"{prefix}/rank0.engine")["Body"].read()
    entry = next(f for f in manifest.files if f.path == "rank0.engine")
    assert len(engine) == entry.size > 100_000 and hashlib.sha256(engine).hexdigest() == entry.sha256
    # Without a GPU the engine cannot be deserialized; its header names the format and its own size.
    assert engine[:4] == ENGINE_MAGIC
    assert struct.unpack_from("<Q", engine, 16)[0] == len(engine)
    config = json.loads(client.get_object(Bucket=s3.bucket, Key=f"{prefix}/config.json")["Body"].read())
    assert config["build_config"]["tensorrt_compute_capability"] == "SM89"
    assert config["build_config"]["profile"]["input_ids"] == {"min": [1, 1], "opt": [2, 32], "max": [2, 64]}
    assert config["pretrained_config"]["dtype"] == "float16"
    assert manifest.versions.tensorrt == config["tensorrt_rtx_version"]
    assert manifest.build["logits_check"]["status"] == "passed"
    assert set(manifest.timings) == {"fetch", "convert", "compile", "validate"}

    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        import tensorrt_rtx as trt

        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        assert runtime.deserialize_cuda_engine(engine) is not None
