"""Where a build publishes: an S3 prefix or a local directory (pvc:// outputs), behind one interface.

Each published object records its sha256 (S3 user metadata, or a sidecar-free check of the local file)
so a re-run can skip what is already there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pitcrew_builder.crt import CrtTransfer
from pitcrew_builder.hashing import sha256_file
from pitcrew_builder.s3 import error_code, is_not_found
from pitcrew_builder.uris import LocalLocation, S3Location

SHA256_METADATA = "sha256"

# S3 answers a conditional put (If-None-Match: *) with 412 PreconditionFailed when the key exists,
# and with 409 ConditionalRequestConflict while a concurrent write of the same key is in flight.
PRECONDITION_FAILED = frozenset({"PreconditionFailed", "412"})
CONDITIONAL_CONFLICT = frozenset({"ConditionalRequestConflict", "409"})

BytesCallback = Callable[[int], None]


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    sha256: str | None


class ObjectStore(Protocol):
    def uri(self, relative: str = "") -> str: ...

    def head(self, relative: str) -> ObjectInfo | None: ...

    def upload_file(self, relative: str, path: Path, sha256: str, progress: BytesCallback | None) -> None: ...

    def put_bytes(self, relative: str, data: bytes, content_type: str) -> None: ...

    def put_bytes_if_absent(self, relative: str, data: bytes, content_type: str) -> bool:
        """Write only if nothing is at `relative` (atomically); False, writing nothing, if something is."""
        ...

    def get_bytes(self, relative: str) -> bytes | None: ...


class S3Store:
    """boto3 for HEAD and small objects, the CRT (multipart, per-part CRC32 checked by S3) for files."""

    def __init__(self, location: S3Location, client: Any, transfer: CrtTransfer | None = None) -> None:
        """Without `transfer` the store only reads (HEAD, small objects)."""
        self.location = location
        self.client = client
        self.transfer = transfer

    def uri(self, relative: str = "") -> str:
        return self.location.uri(relative)

    def head(self, relative: str) -> ObjectInfo | None:
        try:
            resp = self.client.head_object(Bucket=self.location.bucket, Key=self.location.key(relative))
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise
        meta = resp.get("Metadata") or {}
        return ObjectInfo(size=int(resp["ContentLength"]), sha256=meta.get(SHA256_METADATA))

    def upload_file(self, relative: str, path: Path, sha256: str, progress: BytesCallback | None) -> None:
        if self.transfer is None:
            raise RuntimeError(f"{self.uri()} was opened read-only (no CRT transfer): cannot upload files")
        self.transfer.put_file(
            self.location.bucket,
            self.location.key(relative),
            path,
            metadata={SHA256_METADATA: sha256},
            content_type="application/octet-stream",
            progress=progress,
        ).result()

    def put_bytes(self, relative: str, data: bytes, content_type: str) -> None:
        self.client.put_object(
            Bucket=self.location.bucket, Key=self.location.key(relative), Body=data, ContentType=content_type
        )

    def put_bytes_if_absent(self, relative: str, data: bytes, content_type: str) -> bool:
        for attempt in range(5):
            try:
                self.client.put_object(
                    Bucket=self.location.bucket,
                    Key=self.location.key(relative),
                    Body=data,
                    ContentType=content_type,
                    IfNoneMatch="*",
                )
                return True
            except Exception as exc:
                code = error_code(exc)
                if code in PRECONDITION_FAILED:
                    return False
                if code in CONDITIONAL_CONFLICT and attempt < 4:
                    time.sleep(0.2 * 2**attempt)  # another writer is mid-put: its outcome decides
                    continue
                raise
        raise AssertionError("unreachable")

    def get_bytes(self, relative: str) -> bytes | None:
        try:
            resp = self.client.get_object(Bucket=self.location.bucket, Key=self.location.key(relative))
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise
        body: bytes = resp["Body"].read()
        return body


class LocalStore:
    """A directory (a mounted PVC). Files are written to a temp name and renamed: never half-visible."""

    def __init__(self, location: LocalLocation) -> None:
        self.root = location.path

    def uri(self, relative: str = "") -> str:
        return (self.root / relative).as_uri() if relative else self.root.as_uri() + "/"

    def head(self, relative: str) -> ObjectInfo | None:
        path = self.root / relative
        if not path.is_file():
            return None
        return ObjectInfo(size=path.stat().st_size, sha256=sha256_file(path))

    def upload_file(self, relative: str, path: Path, sha256: str, progress: BytesCallback | None) -> None:
        dest = self.root / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".pitcrew-tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
        if progress:
            progress(dest.stat().st_size)

    def put_bytes(self, relative: str, data: bytes, content_type: str) -> None:
        dest = self.root / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".pitcrew-tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    def put_bytes_if_absent(self, relative: str, data: bytes, content_type: str) -> bool:
        dest = self.root / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".pitcrew-tmp", dir=dest.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.chmod(0o644)  # as write_bytes would leave it: readable by the pods that serve the engine
        try:
            os.link(tmp, dest)  # fails if dest exists: the file system's own compare-and-set
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def get_bytes(self, relative: str) -> bytes | None:
        path = self.root / relative
        return path.read_bytes() if path.is_file() else None
