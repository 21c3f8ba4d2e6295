"""End to end with the real builder: kubectl apply an EngineBuild, get a TensorRT-RTX engine in S3.

Everything is real here except the GPU: the control plane, MinIO, the operator (under its chart's
RBAC), and the builder image (builder_image/Dockerfile built by hack/build-images.sh) run by the
real node's kubelet. TensorRT-RTX compiles the engine ahead of time on this CPU for the target's
compute capability.

The builder image (Debian's CPU-only torch, ~1.5 GB) is built once per machine and cached by
content; `make test` builds it for the demo test anyway.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from controller.harness import ROOT, Operator, apply, get_eb, install, new_namespace, owned, wait_phase
from pitcrew_devcluster import ClusterInfo
from pitcrew_devcluster.cluster import load_images

# The first run builds the builder image (minutes, and it may wait for another build's lock).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def builder_image(cluster: ClusterInfo) -> str:
    """The builder image (hack/build-images.sh, cached by content), loaded into the node."""
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-images.sh"), "builder"],
        capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    name, _, archive = proc.stdout.strip().splitlines()[-1].partition("=")
    load_images([Path(archive)], cluster.state_dir)
    return name


@pytest.fixture(scope="module")
def operator(
    cluster: ClusterInfo, builder_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    install(cluster)
    # The real builder image (the harness defaults the others to the fake builder).
    op = Operator(
        cluster,
        tmp_path_factory.mktemp("e2e-operator"),
        PITCREW_RTX_BUILDER_IMAGE=builder_image,
        PITCREW_CHECKPOINT_BUILDER_IMAGE=builder_image,
        PITCREW_IMAGE_PULL_POLICY="Never",
    ).start()
    yield op
    op.stop()
    print(op.tail(100))


@pytest.fixture(scope="module")
def checkpoint(cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random LLaMA (GQA) in S3, in Hugging Face layout."""
    assert cluster.s3 is not None
    directory = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    s3 = cluster.s3_client()
    for path in directory.iterdir():
        s3.upload_file(str(path), cluster.s3.bucket, f"e2e/tiny-llama/{path.name}")
    return f"s3://{cluster.s3.bucket}/e2e/tiny-llama"


def engine_build(cluster: ClusterInfo, name: str, ns: str, source: str, backend: str) -> dict[str, object]:
    assert cluster.s3 is not None
    return {
        "apiVersion": "pitcrew.dev/v1alpha1",
        "kind": "EngineBuild",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "source": {"uri": source, "format": "hf", "credentialsSecretRef": {"name": "s3"}},
            "backend": backend,
            "build": {"maxInputLen": 32, "maxOutputLen": 32, "maxBatchSize": 2},
            "target": {"gpuProduct": "NVIDIA-A100-SXM4-80GB"},
            "output": {
                "uri": f"s3://{cluster.s3.bucket}/e2e-engines/{ns}",
                "credentialsSecretRef": {"name": "s3"},
            },
        },
    }


def s3_object(cluster: ClusterInfo, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body: bytes = cluster.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def test_rtx_engine_reaches_ready_with_engine_in_s3(
    cluster: ClusterInfo, operator: Operator, checkpoint: str, tmp_path: Path
) -> None:
    ns = new_namespace(cluster, "e2e")
    apply(cluster, engine_build(cluster, "tiny-rtx", ns, checkpoint, "tensorrt-rtx"))
    cluster.kubectl("-n", ns, "wait", "--for=condition=Ready", "eb/tiny-rtx", "--timeout=420s", timeout=440)

    eb = get_eb(cluster, ns, "tiny-rtx")
    assert eb is not None
    status = eb["status"]
    assert status["phase"] == "Succeeded" and status["cacheHit"] is False
    engine = status["engine"]
    assert engine["uri"].endswith(f"/{status['cacheKey']}/")
    assert engine["computeCapability"] == "8.0" and engine["tensorrtVersion"].startswith("1.")

    manifest_bytes = s3_object(cluster, engine["manifestUri"])
    assert hashlib.sha256(manifest_bytes).hexdigest() == engine["manifestSha256"]
    manifest = json.loads(manifest_bytes)
    assert manifest["cacheKey"] == status["cacheKey"] and manifest["backend"] == "tensorrt-rtx"
    files = {f["path"]: f for f in manifest["files"]}
    engines = [p for p in files if p.endswith(".engine")]
    assert engines, f"no engine file published: {sorted(files)}"
    assert engine["fileCount"] == len(files) and engine["sizeBytes"] == sum(f["size"] for f in files.values())
    # Every published file is there, whole: what the manifest promises is what a server downloads.
    for path, entry in files.items():
        data = s3_object(cluster, engine["uri"] + path)
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"], path
    assert files[engines[0]]["size"] > 10_000

    # The same build under another name is a cache hit: Ready at once, and no pod is started.
    apply(cluster, engine_build(cluster, "tiny-rtx-again", ns, checkpoint, "tensorrt-rtx"))
    again = wait_phase(cluster, ns, "tiny-rtx-again", {"Succeeded", "Failed"}, timeout=60, op=operator)
    assert again["status"]["cacheHit"] is True and again["status"]["engine"] == engine
    assert owned(cluster, "pods", ns, again["metadata"]["uid"]) == []
