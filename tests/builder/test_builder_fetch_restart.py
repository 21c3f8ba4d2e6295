"""Fetch resumes after a real restart: the builder CLI is SIGKILLed in the middle of downloading a
large file from S3 and run again with the same work dir; the second run downloads only the parts
that were not on disk yet and ends with the exact source bytes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from builder_plans import make_plan, write_plan
from builder_run import builder_argv, run_builder, subprocess_env
from safetensors import safe_open

from pitcrew_devcluster.s3server import S3Info

MiB = 1024 * 1024
BIG = "consolidated.safetensors"
BIG_SIZE = 256 * MiB
PART = 16 * MiB  # 16 ranged parts
KILL_AFTER_PARTS = 4


def safetensors_blob(size: int) -> bytes:
    """A valid safetensors file of about `size` bytes: one uint8 tensor of random bytes."""
    header = json.dumps({"blob": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}})
    n = size - 8 - len(header) - 64
    header = json.dumps({"blob": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + os.urandom(n)


def upload_source(s3: S3Info, prefix: str, model_dir: Path) -> bytes:
    """The tiny HF model, an index naming its shard, and a large second copy the index leaves out
    (as Mistral ships consolidated.safetensors): the build converts only the tiny model."""
    client = s3.client()
    for path in sorted(p for p in model_dir.iterdir() if p.is_file()):
        client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        weight_map = {k: "model.safetensors" for k in f.keys()}  # noqa: SIM118
    index = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/model.safetensors.index.json", Body=index)
    big = safetensors_blob(BIG_SIZE)
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{BIG}", Body=big)  # one part: ETag = MD5
    return big


@pytest.mark.slow
def test_sigkill_mid_download_then_rerun_fetches_only_the_missing_parts(
    s3: S3Info, s3_prefix: str, tiny_llama: Path, tmp_path: Path, builder_env: dict[str, str]
) -> None:
    big = upload_source(s3, f"{s3_prefix}/src", tiny_llama)
    plan = make_plan(
        source_uri=f"s3://{s3.bucket}/{s3_prefix}/src",
        output_uri=f"s3://{s3.bucket}/{s3_prefix}/out",
        cache_key="restart",
        backend="checkpoint",
    )
    plan_file = write_plan(plan, tmp_path / "plan.json")
    work, term = tmp_path / "work", tmp_path / "term.json"
    # The Job's settings are the same on every attempt (a different part size would discard the parts).
    env = {
        **builder_env,
        "PITCREW_S3_PART_SIZE": str(PART),
        "PITCREW_S3_CONCURRENCY": "2",
        # Part-level resume is off by default (pods restart on an empty disk); this is the CLI on a
        # work dir that outlives the process.
        "PITCREW_S3_RESUMABLE_THRESHOLD": str(PART),
    }

    # 1. The builder stops after KILL_AFTER_PARTS ranged parts are recorded in the sidecar (the parts
    #    in flight then end too) and signals through a file; SIGKILL it there.
    log1, hold = tmp_path / "run1.log", tmp_path / "holding"
    hook = {"PITCREW_TEST_FETCH_HOLD_AFTER_PARTS": str(KILL_AFTER_PARTS), "PITCREW_TEST_HOLD_FILE": str(hold)}
    with log1.open("w") as out:
        proc = subprocess.Popen(
            builder_argv(plan_file, work, term),
            env=subprocess_env({**env, **hook}),
            stdout=out,
            stderr=subprocess.STDOUT,
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
    assert not term.exists()  # killed: no report
    source_dir = next(work.glob("*/source"))
    assert not (source_dir / BIG).exists()
    state = json.loads((source_dir / f"{BIG}.partial.json").read_text())  # final: the process is gone
    parts_on_disk = len(state["done"])
    assert KILL_AFTER_PARTS <= parts_on_disk < -(-len(big) // PART)  # some parts, not all
    already = parts_on_disk * PART

    # 2. Rerun with the same work dir and settings (no hold): only the missing parts come down.
    run = run_builder(plan_file, work, term, {**env, "PITCREW_KEEP_WORK": "1"})  # keep the file to hash
    assert run.code == 0, run.stderr[-3000:]
    small = len(list(tiny_llama.iterdir())) + 1  # the model's files and the index
    assert run.find("fetch", "resume")[0]["files_skipped"] == small
    resumed = run.find("fetch", "resume-file")
    assert len(resumed) == 1 and resumed[0]["file"] == BIG and resumed[0]["bytes"] == already
    end = run.find("fetch", "end")[0]
    total = end["bytes"]
    assert end["bytes_resumed"] == already
    assert end["bytes_downloaded"] == len(big) - already  # the remainder of the big file, nothing else
    assert end["bytes_downloaded"] < total - already
    assert any(e.get("file") == BIG and e.get("checksum") == "md5" for e in run.find("fetch", "verified"))
    digest = hashlib.sha256()
    with (source_dir / BIG).open("rb") as f:
        while block := f.read(8 * MiB):
            digest.update(block)
    assert digest.hexdigest() == hashlib.sha256(big).hexdigest()
    assert not (source_dir / f"{BIG}.partial").exists()
    assert not (source_dir / f"{BIG}.partial.json").exists()
    # The rest of the pipeline ran on the fetched source (the big copy is not part of the model).
    assert run.result["ok"] is True
