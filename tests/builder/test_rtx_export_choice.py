"""Which ONNX exporter the tensorrt-rtx backend uses for a torch version (rtx.use_dynamo_export)."""

from __future__ import annotations

import pytest

from pitcrew_builder.backends.rtx import use_dynamo_export


@pytest.mark.parametrize(
    ("version", "dynamo"),
    [
        ("2.6.0+debian", False),  # Debian trixie's CPU build: the dynamo exporter fails on linear
        ("2.6.1", False),
        ("2.4.0", False),
        ("2.7.0", True),
        ("2.15.0+cu132", True),  # PyPI's, in .venv
        ("3.0.0a0", True),
        ("unknown", False),
    ],
)
def test_exporter_by_torch_version(version: str, dynamo: bool) -> None:
    assert use_dynamo_export(version) is dynamo
