"""Where things are: s3://bucket/key, file:///path and pvc://claim/path. Pure parsing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pitcrew_builder.errors import InvalidSpec

DEFAULT_PVC_ROOT = "/mnt/pvc"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # no leading slash; "" or ends without slash

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def uri(self, relative: str = "") -> str:
        key = self.key(relative) if relative else self.prefix
        return f"s3://{self.bucket}/{key}"


@dataclass(frozen=True)
class LocalLocation:
    path: Path

    def uri(self, relative: str = "") -> str:
        return (self.path / relative).as_uri() if relative else self.path.as_uri()


Location = S3Location | LocalLocation


def pvc_root() -> Path:
    # The Job mounts each referenced claim at <root>/<claim>; tests point the root elsewhere.
    return Path(os.environ.get("PITCREW_PVC_ROOT", DEFAULT_PVC_ROOT))


def parse_location(uri: str) -> Location:
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise InvalidSpec(f"{uri!r}: s3:// URI has no bucket")
        return S3Location(parts.netloc, parts.path.strip("/"))
    if parts.scheme == "file":
        if not parts.path.startswith("/"):
            raise InvalidSpec(f"{uri!r}: file:// URI needs an absolute path")
        return LocalLocation(Path(parts.path))
    if parts.scheme == "pvc":
        if not parts.netloc:
            raise InvalidSpec(f"{uri!r}: pvc:// URI has no claim name")
        rel = parts.path.strip("/")
        if ".." in Path(rel).parts:
            raise InvalidSpec(f"{uri!r}: pvc:// path must not contain '..'")
        return LocalLocation(pvc_root() / parts.netloc / rel)
    raise InvalidSpec(f"{uri!r}: unsupported scheme (use s3://, pvc:// or file://)")
