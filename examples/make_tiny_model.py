"""Makes a tiny random Hugging Face LLaMA checkpoint and uploads it to S3, for the demo.

Real checkpoints cannot be downloaded here; this one has the real layout (config.json +
model.safetensors) at a size that builds in seconds. Usage:
    python examples/make_tiny_model.py s3://pitcrew/models/tiny-llama [--seed N] [--if-missing]
--if-missing does nothing when the checkpoint is already there (before importing torch and
transformers, which take long to import on a busy machine).
S3 endpoint and credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import boto3

FILES = ("config.json", "model.safetensors")


def make_model(directory: Path, seed: int = 0) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
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


def present(uri: str) -> bool:
    """Whether the checkpoint's files are all at `uri`."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
    names = {o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", [])}
    return all(f in names for f in FILES)


def main() -> int:
    parser = argparse.ArgumentParser(description="Upload a tiny random LLaMA checkpoint to S3.")
    parser.add_argument("uri", help="s3://bucket/prefix")
    parser.add_argument("--seed", type=int, default=0, help="another seed, other weights, another engine")
    parser.add_argument("--if-missing", action="store_true", help="keep a checkpoint already at uri")
    args = parser.parse_args()
    if not args.uri.startswith("s3://"):
        parser.error(f"uri {args.uri!r}: give an s3://bucket/prefix")
    if args.if_missing and present(args.uri):
        print(f"already there: {args.uri}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        make_model(Path(tmp), args.seed)
        bucket = args.uri.removeprefix("s3://").split("/")[0]
        for key in upload(Path(tmp), args.uri):
            print(f"uploaded s3://{bucket}/{key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
