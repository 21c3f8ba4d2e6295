"""Bad input fails fast with a clear message, the right BuildResult.reason and exit code."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from builder_plans import make_plan
from builder_run import builder_argv, run_builder, subprocess_env

from pitcrew_builder.errors import EXIT_BUILD_ERROR, EXIT_INVALID_INPUT, EXIT_SOURCE_UNAVAILABLE
from pitcrew_devcluster.s3server import S3Info


def _run(
    tmp_path: Path, plan_text: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, object], str]:
    plan = tmp_path / "plan.json"
    plan.write_text(plan_text)
    run = run_builder(plan, tmp_path / "work", tmp_path / "term.json", env or {}, timeout=300)
    return run.code, run.result, run.stderr


def test_rtx_for_hopper_is_invalid_spec_before_any_work(tmp_path: Path, tiny_llama: Path) -> None:
    plan = make_plan(
        source_uri=tiny_llama.as_uri(), output_uri="s3://unused-bucket/x", compute_capability="9.0"
    )
    code, result, _ = _run(tmp_path, plan.model_dump_json(by_alias=True))
    assert code == EXIT_INVALID_INPUT
    assert result["ok"] is False and result["reason"] == "InvalidSpec"
    assert "target.computeCapability 9.0" in str(result["message"]) and "tensorrt-llm" in str(
        result["message"]
    )
    assert not (tmp_path / "work").exists()  # refused before fetching anything


def test_missing_source_is_source_unavailable(tmp_path: Path) -> None:
    plan = make_plan(source_uri="file:///nonexistent/model", output_uri="pvc://out/engines")
    code, result, _ = _run(
        tmp_path, plan.model_dump_json(by_alias=True), {"PITCREW_PVC_ROOT": str(tmp_path / "pvc")}
    )
    assert code == EXIT_SOURCE_UNAVAILABLE
    assert result["reason"] == "SourceUnavailable" and "file:///nonexistent/model" in str(result["message"])


def test_missing_s3_source_is_source_unavailable(
    s3: S3Info, s3_prefix: str, tmp_path: Path, builder_env: dict[str, str]
) -> None:
    plan = make_plan(
        source_uri=f"s3://{s3.bucket}/{s3_prefix}/nothing-here",
        output_uri=f"s3://{s3.bucket}/{s3_prefix}/out",
    )
    code, result, _ = _run(tmp_path, plan.model_dump_json(by_alias=True), builder_env)
    assert code == EXIT_SOURCE_UNAVAILABLE
    assert result["reason"] == "SourceUnavailable" and "no objects under" in str(result["message"])


def test_broken_checkpoint_is_invalid_checkpoint(tmp_path: Path, tiny_llama: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    cfg = json.loads((tiny_llama / "config.json").read_text())
    cfg["architectures"] = ["MambaForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "model.safetensors").write_bytes((tiny_llama / "model.safetensors").read_bytes())
    plan = make_plan(source_uri=src.as_uri(), output_uri="pvc://out/engines", backend="checkpoint")
    code, result, _ = _run(
        tmp_path, plan.model_dump_json(by_alias=True), {"PITCREW_PVC_ROOT": str(tmp_path / "pvc")}
    )
    assert code == EXIT_INVALID_INPUT
    assert result["reason"] == "InvalidCheckpoint" and "Mamba" in str(result["message"])


def test_truncated_safetensors_shard_is_invalid_checkpoint_naming_the_file(
    tmp_path: Path, tiny_llama: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text((tiny_llama / "config.json").read_text())
    data = (tiny_llama / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])  # an interrupted copy
    plan = make_plan(source_uri=src.as_uri(), output_uri="pvc://out/engines", backend="checkpoint")
    code, result, stderr = _run(
        tmp_path, plan.model_dump_json(by_alias=True), {"PITCREW_PVC_ROOT": str(tmp_path / "pvc")}
    )
    assert code == EXIT_INVALID_INPUT, stderr[-2000:]
    assert result["reason"] == "InvalidCheckpoint"
    assert "model.safetensors" in str(result["message"]) and "truncated" in str(result["message"])
    assert "Traceback" not in stderr


def test_malformed_plan_is_invalid_spec(tmp_path: Path) -> None:
    code, result, _ = _run(tmp_path, '{"kind": "BuildPlan"}')
    assert code == EXIT_INVALID_INPUT and result["reason"] == "InvalidSpec"
    assert "cacheKey" in str(result["message"]) or "cache_key" in str(result["message"])


@pytest.mark.slow
def test_sigterm_mid_upload_reports_and_commits_nothing(tmp_path: Path, tiny_llama: Path) -> None:
    pvc = tmp_path / "pvc"
    plan = make_plan(
        source_uri=tiny_llama.as_uri(),
        output_uri="pvc://out/engines",
        backend="checkpoint",
        cache_key="term",
        tp=2,
    )
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.model_dump_json(by_alias=True))
    term = tmp_path / "term.json"
    env = subprocess_env({"PITCREW_PVC_ROOT": str(pvc), "PITCREW_TEST_UPLOAD_DELAY": "1"})
    proc = subprocess.Popen(
        builder_argv(plan_file, tmp_path / "work", term),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"event":"uploaded"' in line:
            proc.send_signal(signal.SIGTERM)
            break
    proc.stdout.read()
    assert proc.wait(30) == EXIT_BUILD_ERROR
    result = json.loads(term.read_text())
    assert result["ok"] is False and result["reason"] == "BuildError"
    assert "terminated by signal 15" in result["message"]
    published = {p.name for p in (pvc / "out/engines/term").iterdir()}
    assert "manifest.json" not in published and len(published - {".pitcrew-progress.json"}) < 3
