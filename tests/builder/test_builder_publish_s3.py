"""Publishing to a real S3 server (MinIO): manifest last, a kill mid-upload, resume, re-run."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from builder_plans import make_plan, write_plan
from builder_run import builder_argv, parse_events, run_builder, subprocess_env

from pitcrew.api.plan import MANIFEST_FILE, PROGRESS_FILE, Manifest
from pitcrew_builder.s3 import TransferSettings
from pitcrew_builder.stages.publish import existing_engine, publish
from pitcrew_builder.store import S3Store
from pitcrew_builder.uris import S3Location
from pitcrew_devcluster.s3server import S3Info


def _keys(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return {o["Key"][len(prefix) + 1 :]: o["Size"] for o in resp.get("Contents", [])}


def _manifest(client: Any, bucket: str, prefix: str) -> Manifest:
    body = client.get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST_FILE}")["Body"].read()
    return Manifest.model_validate_json(body)


def test_publish_in_process_uploads_then_manifest_and_skips_on_rerun(
    s3: S3Info, s3_prefix: str, tmp_path: Path
) -> None:
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text('{"a": 1}')
    (engine / "rank0.engine").write_bytes(bytes(range(256)) * 40_000)  # ~10 MiB: multipart at 5 MiB parts
    settings = TransferSettings(concurrency=4, part_size=5 * 2**20)
    store = S3Store(S3Location(s3.bucket, s3_prefix), s3.client(), settings)
    calls: list[list[str]] = []

    def make(files: list[Any]) -> Manifest:
        calls.append(sorted(_keys(s3.client(), s3.bucket, s3_prefix)))  # what is there before the manifest
        return Manifest(
            cache_key="k",
            backend="tensorrt-rtx",
            compute_capability="8.6",
            files=files,
            versions={},
            created_at="now",
        )

    first = publish(engine, store, make)
    assert calls[0] == ["config.json", "rank0.engine"]  # every file was up before the manifest
    assert first.stats.uploaded == 2 and first.stats.skipped == 0
    m = _manifest(s3.client(), s3.bucket, s3_prefix)
    assert {f.path: f.size for f in m.files} == {"config.json": 8, "rank0.engine": 10_240_000}
    body = s3.client().get_object(Bucket=s3.bucket, Key=f"{s3_prefix}/rank0.engine")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == next(f.sha256 for f in m.files if f.path == "rank0.engine")

    second = publish(engine, store, make)
    assert second.stats.uploaded == 0 and second.stats.skipped == 2
    hit = existing_engine(store, "k")
    assert hit is not None and hit[1] == second.manifest_sha256
    assert existing_engine(store, "other-key") is None


@pytest.mark.slow
def test_kill_mid_upload_leaves_no_manifest_and_rerun_completes(
    s3: S3Info, s3_prefix: str, tiny_llama: Path, tmp_path: Path, builder_env: dict[str, str]
) -> None:
    out = f"s3://{s3.bucket}/{s3_prefix}"
    plan = make_plan(
        source_uri=tiny_llama.as_uri(), output_uri=out, cache_key="ckpt-tp2", backend="checkpoint", tp=2
    )
    plan_file = write_plan(plan, tmp_path / "plan.json")
    work, term = tmp_path / "work", tmp_path / "term.json"
    client = s3.client()
    prefix = f"{s3_prefix}/ckpt-tp2"

    # 1. Slow uploads (one file at a time, 2 s before each) and SIGKILL after the first file is up.
    env = subprocess_env(
        {**builder_env, "PITCREW_TEST_UPLOAD_DELAY": "2", "PITCREW_PROGRESS_INTERVAL": "0.2"}
    )
    proc = subprocess.Popen(
        builder_argv(plan_file, work, term),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if '"event":"uploaded"' in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "".join(lines[-5:])
    keys = _keys(client, s3.bucket, prefix)
    assert MANIFEST_FILE not in keys  # nothing a reader takes for an engine
    published_before = {k for k in keys if k != PROGRESS_FILE}
    assert 1 <= len(published_before) < 3
    progress = json.loads(client.get_object(Bucket=s3.bucket, Key=f"{prefix}/{PROGRESS_FILE}")["Body"].read())
    assert progress["stage"] == "publish" and 85 <= progress["percent"] <= 100
    assert not term.exists()  # killed: no report

    # 2. Re-run: converts nothing again, skips the uploaded file, writes the manifest.
    run = run_builder(plan_file, work, term, builder_env)
    assert run.code == 0, run.stderr[-3000:]
    assert run.find("convert", "skipped")
    end = run.find("publish", "end")[0]
    assert end["files_skipped"] == len(published_before) and end["files"] == 3
    m = _manifest(client, s3.bucket, prefix)
    assert sorted(f.path for f in m.files) == ["config.json", "rank0.safetensors", "rank1.safetensors"]
    for f in m.files:
        body = client.get_object(Bucket=s3.bucket, Key=f"{prefix}/{f.path}")["Body"].read()
        assert len(body) == f.size and hashlib.sha256(body).hexdigest() == f.sha256
    assert m.cache_key == "ckpt-tp2" and m.backend == "checkpoint"
    assert set(m.timings) >= {"fetch", "convert", "compile", "validate"}
    assert run.result["ok"] is True and run.result["fileCount"] == 3
    assert run.result["manifestUri"] == f"s3://{s3.bucket}/{prefix}/{MANIFEST_FILE}"

    # 3. Once more: the manifest matches, nothing is rebuilt or uploaded.
    started = time.monotonic()
    again = run_builder(plan_file, tmp_path / "work2", tmp_path / "term2.json", builder_env)
    assert again.code == 0 and again.find("publish", "already-published")
    assert not again.find("convert", "start")
    assert again.result["manifestSha256"] == run.result["manifestSha256"]
    assert time.monotonic() - started < 60


def test_progress_lines_are_structured(tmp_path: Path) -> None:
    events = parse_events('{"stage":"fetch","event":"progress","percent":3}\nnot json\n')
    assert events == [{"stage": "fetch", "event": "progress", "percent": 3}]
