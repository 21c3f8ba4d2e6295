from pathlib import Path

import pytest

from pitcrew.api.v1alpha1 import Backend
from pitcrew.settings import (
    DEFAULT_BUILDER_IMAGE,
    DEFAULT_RTX_BUILDER_IMAGE,
    ENV_VARS,
    Settings,
    SettingsError,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.builder_image(Backend.TENSORRT_LLM) == DEFAULT_BUILDER_IMAGE
    assert s.builder_image(Backend.CHECKPOINT) == DEFAULT_BUILDER_IMAGE
    assert s.builder_image(Backend.TENSORRT_RTX) == DEFAULT_RTX_BUILDER_IMAGE
    assert s.namespaces == ()
    assert s.s3_endpoint is None
    assert s.metrics_port == 8080


def test_parses_values() -> None:
    s = Settings.from_env(
        {
            "PITCREW_NAMESPACES": "a, b ,,team-*",
            "PITCREW_S3_ENDPOINT": "http://127.0.0.1:9000",
            "PITCREW_RTX_BUILDER_IMAGE": "reg/x@sha256:" + "0" * 64,
            "PITCREW_POLL_SECONDS": "2.5",
            "PITCREW_JOB_TTL_SECONDS": "0",
            "PITCREW_MAX_ACTIVE_GPUS": "16",
            "PITCREW_MAX_ACTIVE_BUILDS_PER_NAMESPACE": "2",
            "PITCREW_MAX_ACTIVE_GPUS_PER_NAMESPACE": "4",
        }
    )
    assert (s.max_active_gpus, s.max_active_builds_per_namespace, s.max_active_gpus_per_namespace) == (
        16,
        2,
        4,
    )
    assert s.namespaces == ("a", "b", "team-*")
    assert s.s3_endpoint == "http://127.0.0.1:9000"
    assert s.builder_image(Backend.TENSORRT_RTX).startswith("reg/x@sha256:")
    assert s.poll_seconds == 2.5
    assert s.job_ttl_seconds == 0


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("PITCREW_POLL_SECONDS", "soon", "give a number"),
        ("PITCREW_METRICS_PORT", "70000", "between 0 and 65535"),
        ("PITCREW_JOB_TTL_SECONDS", "-1", "at least 0"),
        ("PITCREW_MAX_ACTIVE_GPUS", "-2", "at least 0"),
        ("PITCREW_MAX_ACTIVE_GPUS_PER_NAMESPACE", "eight", "whole number"),
        ("PITCREW_S3_ENDPOINT", "minio:9000", "http://"),
        ("PITCREW_IMAGE_PULL_POLICY", "Sometimes", "IfNotPresent"),
        ("PITCREW_BUILDER_IMAGE", "has space", "image reference"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as e:
        Settings.from_env({name: value})
    assert name in str(e.value) and fragment in str(e.value)


def test_docs_table_lists_every_variable_with_its_default() -> None:
    text = DOCS.read_text()
    for var in ENV_VARS:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{var.name}`")), None)
        assert row is not None, f"{var.name} missing from docs/configuration.md"
        assert f"`{var.default}`" in row or (not var.default and "(empty)" in row), row
