#!/usr/bin/env python3
"""FAKE builder for controller tests (never shipped): behaves like pitcrew-builder on the outside.

Reads the BuildPlan ($PITCREW_PLAN_JSON, as the controller passes it, or the file $PITCREW_PLAN),
writes progress, two small "engine" files and manifest.json (last) under the plan's engine URI in
S3, and the BuildResult on the termination-message path.
What it does is chosen by the image tag in plan.builderVersion, e.g. pitcrew.test/fake-builder:MODE:
  ok          build in about a second (default)
  sleep-N     take N seconds, reporting compile progress once a second (20% rising to 90%), then
              succeed
  failonce    crash like `crash` on the first attempt for this engine, succeed on the next (the
              marker of the first attempt is an object under the engine prefix, removed on success)
  invalid     fail with reason InvalidCheckpoint
  oom         allocate memory until the kernel kills it (needs a memory limit below 2 GiB: it
              refuses to run without one, so it never eats the machine's memory)
  fill-scratch  write 64 MiB to $PITCREW_SCRATCH (the Job's emptyDir), then take 60 s; with a
              smaller sizeLimit the write fails or the kubelet evicts the pod
  crash       print a traceback and exit 1 without a result (last words come from the log)
  badsha      succeed but report a wrong manifest sha256 (verification must catch it)
  nomanifest  succeed without publishing manifest.json (verification must catch it)
  foreign     publish the manifest of another cache key (verification must catch it)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import UTC, datetime

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from pitcrew.api.plan import (
    CREDENTIAL_ENV,
    MANIFEST_FILE,
    PROGRESS_FILE,
    BuildPlan,
    BuildResult,
    Manifest,
    ManifestFile,
    ProgressReport,
    Versions,
)

FAILED_ONCE = ".fake-failed-once"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def s3(endpoint: str | None) -> object:
    key_var, secret_var = CREDENTIAL_ENV["output"]
    creds = {}
    if os.environ.get(key_var):
        creds = {"aws_access_key_id": os.environ[key_var], "aws_secret_access_key": os.environ[secret_var]}
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}), **creds,
    )  # fmt: skip


def split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def write_result(result: BuildResult) -> None:
    path = os.environ.get("PITCREW_TERMINATION_LOG", "/dev/termination-log")
    with open(path, "w") as f:
        f.write(result.model_dump_json(by_alias=True, exclude_none=True))


MEMORY_LIMIT_FILES = ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max")
MAX_LIMIT = 2 << 30


def memory_limit() -> int | None:
    for path in MEMORY_LIMIT_FILES:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        return None if text == "max" or int(text) >= 1 << 60 else int(text)
    return None


def eat_memory() -> int:
    limit = memory_limit()
    if limit is None or limit > MAX_LIMIT:
        print(f"fake builder: mode oom needs a memory limit under {MAX_LIMIT} bytes, got {limit}", flush=True)
        return 1
    print(f"fake builder: allocating past the {limit} byte limit", flush=True)
    chunks = []
    while True:
        chunks.append(b"\x01" * (16 << 20))  # written, so the pages count against the cgroup


def fill_scratch() -> None:
    scratch = os.environ.get("PITCREW_SCRATCH", "/scratch")
    path = os.path.join(scratch, "filler")
    try:
        with open(path, "wb") as f:
            for _ in range(64):
                f.write(b"\x02" * (1 << 20))
                f.flush()
        print(f"fake builder: wrote 64 MiB to {path}", flush=True)
    except OSError as e:
        print(f"fake builder: writing {path} failed: {e}", flush=True)
        raise
    time.sleep(60)


def main() -> int:
    if os.environ.get("PITCREW_PLAN_JSON"):
        plan = BuildPlan.model_validate_json(os.environ["PITCREW_PLAN_JSON"])
    else:
        with open(os.environ["PITCREW_PLAN"]) as f:
            plan = BuildPlan.model_validate_json(f.read())
    mode = plan.builder_version.rsplit(":", 1)[-1] if ":" in plan.builder_version else "ok"
    print(f"fake builder: {plan.name} key={plan.cache_key[:12]} mode={mode}", flush=True)
    client = s3(plan.output.endpoint)
    bucket, prefix = split(plan.output.engine_uri)

    def progress(stage: str, percent: int) -> None:
        report = ProgressReport(stage=stage, percent=percent, updated_at=now())
        body = report.model_dump_json(by_alias=True)
        client.put_object(Bucket=bucket, Key=prefix + PROGRESS_FILE, Body=body)  # type: ignore[attr-defined]

    progress("fetch", 10)
    if mode == "invalid":
        write_result(BuildResult(ok=False, cache_key=plan.cache_key, reason="InvalidCheckpoint",
                                 message="config.json: missing hidden_size (fake)"))  # fmt: skip
        return 2
    if mode == "oom":
        return eat_memory()
    if mode == "fill-scratch":
        fill_scratch()
    marker = prefix + FAILED_ONCE
    if mode == "failonce":
        try:
            client.head_object(Bucket=bucket, Key=marker)  # type: ignore[attr-defined]
            client.delete_object(Bucket=bucket, Key=marker)  # type: ignore[attr-defined]
            print("fake builder: second attempt, succeeding", flush=True)
        except ClientError:
            client.put_object(Bucket=bucket, Key=marker, Body=b"failed once")  # type: ignore[attr-defined]
            mode = "crash"
    if mode == "crash":
        print("Traceback (most recent call last):\nRuntimeError: fake builder crashed on purpose", flush=True)
        return 1
    if mode.startswith("sleep-"):
        seconds = int(mode.split("-", 1)[1])
        for second in range(seconds):
            progress("compile", 20 + 70 * second // max(1, seconds - 1))
            time.sleep(1)
    else:
        progress("compile", 50)
        time.sleep(0.5)
    files = []
    for name, data in (("config.json", b'{"fake": true}'), ("rank0.engine", os.urandom(4096))):
        client.put_object(Bucket=bucket, Key=prefix + name, Body=data)  # type: ignore[attr-defined]
        files.append(ManifestFile(path=name, size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    key = plan.cache_key if mode != "foreign" else "f" * 64
    manifest = Manifest(
        cache_key=key, cache_key_inputs=plan.cache_key_inputs, backend=plan.backend,
        compute_capability=plan.target.compute_capability, files=files,
        versions=Versions(pitcrew="fake", tensorrt_llm="0.0-fake", tensorrt="0.0-fake"), created_at=now(),
    )  # fmt: skip
    body = manifest.model_dump_json(by_alias=True, exclude_none=True).encode()
    if mode != "nomanifest":
        client.put_object(Bucket=bucket, Key=prefix + MANIFEST_FILE, Body=body)  # type: ignore[attr-defined]
    digest = hashlib.sha256(body).hexdigest() if mode != "badsha" else "0" * 64
    progress("publish", 100)
    write_result(
        BuildResult(
            ok=True, cache_key=plan.cache_key, engine_uri=plan.output.engine_uri,
            manifest_uri=plan.output.engine_uri + MANIFEST_FILE, manifest_sha256=digest,
            size_bytes=manifest.size_bytes, file_count=len(files),
            compute_capability=plan.target.compute_capability, backend=str(plan.backend),
        )
    )  # fmt: skip
    print(json.dumps({"event": "done", "key": plan.cache_key}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
