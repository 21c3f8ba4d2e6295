"""Fixtures of the builder tests: a real S3 server (MinIO on loopback) and tiny source models."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from builder_plans import TRTLLM_DOUBLE

from pitcrew_devcluster.s3server import S3Info, standalone

BUILD_TOOLS = Path(__file__).resolve().parents[2] / "hack" / "build-tools.sh"


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Info]:
    """A MinIO server of its own for the builder tests (lighter than the whole devcluster)."""
    with standalone(tmp_path_factory.mktemp("minio"), "pitcrew-builder-test", build_tools=BUILD_TOOLS) as (
        info,
        _pid,
    ):
        yield info


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


@pytest.fixture(scope="session")
def megatron_saved(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Any]:
    """Tiny GPT / LLaMA-style models saved by megatron-core itself (megatron_real.py), once per session."""
    from megatron_real import saved_checkpoints

    return saved_checkpoints(tmp_path_factory.mktemp("megatron-real"))


@pytest.fixture
def trtllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``tensorrt_llm`` = the CONTRACT DOUBLE, its call log empty; unimported again afterwards."""
    monkeypatch.syspath_prepend(str(TRTLLM_DOUBLE))
    import tensorrt_llm

    assert tensorrt_llm.IS_CONTRACT_DOUBLE
    from tensorrt_llm._contract import CALLS

    CALLS.clear()
    yield tensorrt_llm
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]
