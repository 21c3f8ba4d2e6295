"""Makes a tiny random Hugging Face LLaMA checkpoint and uploads it to S3, for the demo.

Real checkpoints cannot be downloaded here; this one has the real layout (config.json +
model.safetensors) at a size that builds in seconds. Usage:
    python examples/make_tiny_model.py s3://pitcrew/models/tiny-llama
S3 endpoint and credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import boto3
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def make_model(directory: Path) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)


def upload(directory: Path, uri: str) -> list[str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")
    keys = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        key = f"{prefix.rstrip('/')}/{path.relative_to(directory)}"
        s3.upload_file(str(path), bucket, key)
        keys.append(key)
    return keys


def main() -> int:
    if len(sys.argv) != 2 or not sys.argv[1].startswith("s3://"):
        print("usage: make_tiny_model.py s3://bucket/prefix", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        make_model(Path(tmp))
        for key in upload(Path(tmp), sys.argv[1]):
            print(f"uploaded s3://{sys.argv[1].removeprefix('s3://').split('/')[0]}/{key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
