"""File digests, streamed in large blocks so multi-GB engines hash at disk speed."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

BLOCK = 8 * 1024 * 1024


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(BLOCK):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def md5_file(path: Path) -> str:
    return file_digest(path, "md5")


def b64_to_hex(value: str) -> str:
    """S3 reports ChecksumSHA256 as base64; we compare hex."""
    return base64.b64decode(value).hex()
