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
from builder_run import builder_argv, run_builder, subprocess_env

from pitcrew.api.plan import MANIFEST_FILE, PROGRESS_FILE, Manifest
from pitcrew_builder.crt import CrtSettings, CrtTransfer
from pitcrew_builder.stages.publish import existing_engine, publish
from pitcrew_builder.store import S3Store
from pitcrew_builder.uris import S3Location
from pitcrew_devcluster.s3server import S3Info


def _keys(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return {o["Key"][len(prefix) + 1 :]: o["Size"] for o in resp.get("Contents", [])}


def _objects(client: Any, bucket: str, prefix: str) -> dict[str, tuple[str, Any]]:
    """(ETag, LastModified) of every object under the prefix: changes when anything is written."""
    resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in resp.get("Contents", [])}


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
    creds = {"aws_access_key_id": s3.access_key, "aws_secret_access_key": s3.secret_key}
    settings = CrtSettings(upload_part_size=5 * 2**20, upload_crc32=True)
    transfer = CrtTransfer(s3.endpoint, s3.region, creds, settings)
    store = S3Store(S3Location(s3.bucket, s3_prefix), s3.client(), transfer)
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
    client = s3.client()
    head = client.head_object(Bucket=s3.bucket, Key=f"{s3_prefix}/rank0.engine", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-2")  # multipart: 5 MiB + the rest
    assert "ChecksumCRC32" in head  # every part went up with a CRC32 trailer the server checked
    assert head["Metadata"]["sha256"] == next(f.sha256 for f in m.files if f.path == "rank0.engine")
    body = client.get_object(Bucket=s3.bucket, Key=f"{s3_prefix}/rank0.engine")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == head["Metadata"]["sha256"]

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

    # 1. One file at a time; the builder stops after the first is uploaded and signals through a
    #    file; SIGKILL it there.
    hold = tmp_path / "holding"
    env = subprocess_env(
        {
            **builder_env,
            "PITCREW_TEST_PUBLISH_HOLD_AFTER_FILES": "1",
            "PITCREW_TEST_HOLD_FILE": str(hold),
        }
    )
    log1 = tmp_path / "run1.log"
    with log1.open("w") as out:
        proc = subprocess.Popen(
            builder_argv(plan_file, work, term), env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 300
            while not hold.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert hold.exists(), f"the builder did not reach the hold point: {log1.read_text()[-3000:]}"
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, log1.read_text()[-3000:]
    keys = _keys(client, s3.bucket, prefix)
    assert MANIFEST_FILE not in keys  # nothing a reader takes for an engine
    published_before = {k for k in keys if k != PROGRESS_FILE}
    assert len(published_before) == 1  # the hold point: one file up, two to go
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
    before = _objects(client, s3.bucket, prefix)
    again = run_builder(plan_file, tmp_path / "work2", tmp_path / "term2.json", builder_env)
    assert again.code == 0 and again.find("publish", "already-published")
    assert again.result["manifestSha256"] == run.result["manifestSha256"]
    assert _objects(client, s3.bucket, prefix) == before  # no object written again
    assert not (tmp_path / "work2").exists()  # it never got as far as a work dir (fetch, convert)
