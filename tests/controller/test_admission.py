"""Nonsense is refused by the API server at apply time (CEL and schema), with a message that says why."""

from __future__ import annotations

import pytest
import yaml

from pitcrew_devcluster import ClusterInfo

from .harness import engine_build, install


@pytest.fixture(scope="module")
def crd(cluster: ClusterInfo) -> None:
    install(cluster)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"model.numAttentionHeads": 10, "parallelism.tensor": 4},
            "parallelism.tensor must divide model.numAttentionHeads",
        ),
        (
            {"build.maxInputLen": 4096, "build.maxSeqLen": 1024},
            "build.maxSeqLen must be at least build.maxInputLen",
        ),
        ({"output.uri": "https://bucket/engines"}, "spec.output.uri"),
        (
            {"backend": "tensorrt-rtx", "target.computeCapability": "9.0"},
            "TensorRT-RTX cannot build for Hopper",
        ),
        ({"source.uri": "s3://a/x,s3://b/y"}, "source.uri names exactly one location"),
        (
            {"target.computeCapability": "8.0", "quantization.weights": "fp8"},
            "quantization fp8 (weights or kvCache) needs compute capability 8.9",
        ),
        ({"quantization.calibration.dataset": "https://x/y.txt"}, "spec.quantization.calibration.dataset"),
        ({"build.lora.enabled": True}, "build.lora is not supported yet"),
    ],
)
def test_refused_at_apply(cluster: ClusterInfo, crd: None, spec: dict[str, object], message: str) -> None:
    body = engine_build(cluster, "nonsense", "default", **spec)
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(body), check=False)
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stderr, proc.stderr
