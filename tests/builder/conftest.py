"""Fixtures of the builder tests: a real S3 server (MinIO on loopback) and tiny source models."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pitcrew.devcluster.s3server import S3Info, credentials, ensure_bucket, env, live

MINIO_GLOB = str(Path.home() / ".cache/pitcrew/bin/minio-*/minio")


def _minio_binary() -> str | None:
    found = os.environ.get("PITCREW_MINIO") or next(iter(sorted(glob.glob(MINIO_GLOB))), None)
    return found if found and os.access(found, os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Info]:
    """A MinIO server of its own for the builder tests (the devcluster's S3 helpers, our own process)."""
    binary = _minio_binary()
    if binary is None:
        pytest.skip(f"MinIO binary not found ({MINIO_GLOB}); run hack/build-tools.sh")
    data = tmp_path_factory.mktemp("minio")
    port, console = _free_port(), _free_port()
    info = credentials("pitcrew-builder-test", port)
    log = (data.parent / "minio.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            "server",
            str(data / "data"),
            "--address",
            f"127.0.0.1:{port}",
            "--console-address",
            f"127.0.0.1:{console}",
            "--quiet",
        ],
        env={**os.environ, **env(info)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not live(info):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"MinIO did not start (see {log.name})")
            time.sleep(0.2)
        ensure_bucket(info)
        yield info
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def s3_prefix() -> str:
    """A fresh key prefix per test, so tests share the server but never each other's objects."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def builder_env(s3: S3Info) -> dict[str, str]:
    """Environment a builder subprocess gets: output and source credentials as the controller sets them."""
    return {
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_REGION": s3.region,
        "PITCREW_OUTPUT_ACCESS_KEY_ID": s3.access_key,
        "PITCREW_OUTPUT_SECRET_ACCESS_KEY": s3.secret_key,
        "PITCREW_SOURCE_ACCESS_KEY_ID": s3.access_key,
        "PITCREW_SOURCE_SECRET_ACCESS_KEY": s3.secret_key,
    }


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_llama

    path = tmp_path_factory.mktemp("tiny-llama")
    make_llama(path)
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, builder_env: dict[str, str]) -> None:
    for key, value in builder_env.items():
        monkeypatch.setenv(key, value)


def copy_tree(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest
