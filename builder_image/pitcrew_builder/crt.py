"""S3 transfers through the AWS Common Runtime (awscrt): native (C) connections, signing, part
splitting and, for whole files, file I/O, so the builder's Python threads do not carry the bytes.

Used by fetch (GET of whole files, or of byte ranges written into a file at their offset) and by
publish (PUT of a file, multipart above the upload part size, optionally with a per-part CRC32
trailer the server checks). Listing, HEAD and small requests stay on boto3 (s3.make_client).

Settings (env, read once per client):
- PITCREW_S3_CRT_PART_SIZE (bytes, default 8 MiB): size of the GET parts the CRT splits into.
- PITCREW_S3_CRT_UPLOAD_PART_SIZE (bytes, default 32 MiB; at most 16 MiB with PITCREW_S3_UPLOAD_CRC32
  on MinIO, which refuses larger aws-chunked chunks): multipart upload part size.
- PITCREW_S3_UPLOAD_CRC32 (default off): a CRC32 trailer on every uploaded part.
- PITCREW_S3_CRT_THROUGHPUT_GBPS (default 10): the CRT sizes its connection pool from it.
- PITCREW_S3_CRT_MEMORY_LIMIT (bytes, default 1 GiB, the CRT's minimum): cap of its part buffers.
- PITCREW_S3_CRT_THREADS (default max(8, CPUs); 0 = one per CPU): the CRT's event-loop threads.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from awscrt.auth import AwsCredentialsProvider
from awscrt.exceptions import AwsCrtError
from awscrt.http import HttpHeaders, HttpRequest
from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup
from awscrt.s3 import (
    S3ChecksumAlgorithm,
    S3ChecksumConfig,
    S3ChecksumLocation,
    S3Client,
    S3FileIoOptions,
    S3RequestTlsMode,
    S3RequestType,
    S3ResponseError,
)

from pitcrew_builder.s3 import Role, credentials_for, region, resolve_endpoint

MiB = 1024 * 1024
# Writes into the file in pieces of this size (the CRT hands over whole parts, 8 MiB by default):
# measured faster than one pwrite per part (docs/benchmarks.md, Builder).
WRITE_PIECE = 256 * 1024

BytesFn = Callable[[int], None]


@dataclass(frozen=True)
class CrtSettings:
    part_size: int = 8 * MiB
    # Uploads stream from the file, so larger parts cost no buffers and save MinIO per-part work.
    upload_part_size: int = 32 * MiB
    # Off by default: MinIO spent ~40% more CPU per upload checking the trailers (docs/benchmarks.md);
    # every file's sha256 is in its metadata and in the manifest either way.
    upload_crc32: bool = False
    throughput_gbps: float = 10.0
    memory_limit: int = 1024 * MiB
    # Event-loop threads (the CRT's default is one per CPU). A loop thread also runs the Python body
    # callback and its O_DIRECT write, during which its connections are not read: with more loops than
    # cores the others keep the sockets drained (docs/benchmarks.md, measured on 2 cores).
    event_loop_threads: int = max(8, os.cpu_count() or 1)

    @classmethod
    def from_env(cls) -> CrtSettings:
        return cls(
            part_size=int(os.environ.get("PITCREW_S3_CRT_PART_SIZE", cls.part_size)),
            upload_part_size=int(os.environ.get("PITCREW_S3_CRT_UPLOAD_PART_SIZE", cls.upload_part_size)),
            upload_crc32=os.environ.get("PITCREW_S3_UPLOAD_CRC32", "") not in ("", "0", "false"),
            throughput_gbps=float(os.environ.get("PITCREW_S3_CRT_THROUGHPUT_GBPS", cls.throughput_gbps)),
            memory_limit=int(os.environ.get("PITCREW_S3_CRT_MEMORY_LIMIT", cls.memory_limit)),
            event_loop_threads=int(os.environ.get("PITCREW_S3_CRT_THREADS", cls.event_loop_threads)),
        )


@dataclass(frozen=True)
class Target:
    """Where requests go: (host header, path prefix, TLS) for a bucket."""

    host: str
    path_prefix: str
    tls: bool

    def path(self, key: str) -> str:
        return self.path_prefix + "/" + quote(key, safe="/~")


def target_for(bucket: str, endpoint: str | None, region_name: str) -> Target:
    """Path style against an explicit endpoint (MinIO and other S3-compatible servers), virtual-host
    style against AWS."""
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"S3 endpoint {endpoint!r} is not an http(s):// URL")
        base = parts.path.rstrip("/")
        return Target(parts.netloc, f"{base}/{quote(bucket)}", parts.scheme == "https")
    return Target(f"{bucket}.s3.{region_name}.amazonaws.com", "", True)


def status_of(exc: BaseException) -> int | None:
    return int(exc.status_code) if isinstance(exc, S3ResponseError) and exc.status_code else None


def describe_crt(exc: BaseException) -> str:
    """A short, credential-free description of a CRT failure (S3's error code when it sent one)."""
    if isinstance(exc, S3ResponseError):
        body = (exc.body or b"").decode("utf-8", "replace")
        code = body.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in body else ""
        message = body.split("<Message>", 1)[1].split("</Message>", 1)[0] if "<Message>" in body else ""
        return f"HTTP {exc.status_code} {code}: {message}".strip().rstrip(":")
    if isinstance(exc, AwsCrtError):
        return f"{exc.name}: {exc.message}"
    return str(exc)


ALIGN = 4096


class Bounce:
    """A page-aligned buffer for O_DIRECT writes and its address (for a copy without the GIL)."""

    def __init__(self, size: int) -> None:
        self.buf = mmap.mmap(-1, size)
        self._anchor = ctypes.c_char.from_buffer(self.buf)  # pins the mapping while we use its address
        self.address = ctypes.addressof(self._anchor)

    def __len__(self) -> int:
        return len(self.buf)

    def close(self) -> None:
        del self._anchor
        self.buf.close()


# Reused (the CRT's event-loop threads are not Python threads, so a thread-local would be gone after
# each callback; fresh buffers cost page faults).
_free: list[Bounce] = []
_free_lock = threading.Lock()


def _take_buffer(size: int) -> Bounce:
    with _free_lock:
        for i, buf in enumerate(_free):
            if len(buf) >= size:
                return _free.pop(i)
    return Bounce(max(size, 8 * MiB))


def _give_buffer(buf: Bounce) -> None:
    with _free_lock:
        if len(_free) < 16:
            _free.append(buf)
            return
    buf.close()


def write_chunk(fd: int, direct_fd: int | None, data: bytes | memoryview, offset: int) -> None:
    """Write a received chunk at its offset: through `direct_fd` (O_DIRECT: no page-cache copy and
    writeback, measured ~5x less kernel time) when offset and length are block-aligned, else `fd`."""
    view = memoryview(data).cast("B")
    n = len(view)
    if direct_fd is not None and offset % ALIGN == 0 and n % ALIGN == 0 and n:
        buf = _take_buffer(n)
        try:
            if isinstance(data, bytes):
                # ctypes releases the GIL for the copy: the CRT's other event-loop threads keep
                # delivering (and awscrt's own copy of each chunk into `data` holds it already).
                ctypes.memmove(buf.address, data, n)
            else:
                with memoryview(buf.buf) as whole, whole[:n] as bounce:
                    bounce[:] = view
            with memoryview(buf.buf) as whole:
                pos = 0
                while pos < n:
                    with whole[pos:n] as rest:
                        pos += os.pwrite(direct_fd, rest, offset + pos)
        finally:
            _give_buffer(buf)
        return
    pwrite_pieces(fd, view, offset)


def direct_io_enabled() -> bool:
    return bool(getattr(os, "O_DIRECT", 0)) and os.environ.get("PITCREW_S3_DIRECT_IO", "1") not in (
        "0",
        "false",
    )


def open_direct(path: Path) -> int | None:
    """An O_DIRECT write fd for `path`, or None where the filesystem does not support it (tmpfs)."""
    if not direct_io_enabled():
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT)
    except OSError:
        return None


def pwrite_pieces(fd: int, data: memoryview, offset: int, piece: int = WRITE_PIECE) -> None:
    """Write `data` at `offset` in pieces of `piece` bytes (os.pwrite releases the GIL per call)."""
    view = data.cast("B") if data.format != "B" else data
    pos = 0
    while pos < len(view):
        n = os.pwrite(fd, view[pos : pos + piece], offset + pos)
        pos += n


class CrtTransfer:
    """One CRT S3 client for one role (its credentials) and endpoint."""

    def __init__(
        self,
        endpoint: str | None,
        region_name: str,
        credentials: dict[str, str],
        settings: CrtSettings | None = None,
    ) -> None:
        """`credentials`: boto3-style {aws_access_key_id, aws_secret_access_key}, or {} for the
        default chain (env, profile, web identity / IRSA, instance metadata)."""
        self.settings = settings or CrtSettings.from_env()
        self.endpoint = endpoint
        self.region = region_name
        elg = EventLoopGroup(max(self.settings.event_loop_threads, 0))
        self._bootstrap = ClientBootstrap(elg, DefaultHostResolver(elg))
        if credentials:
            provider = AwsCredentialsProvider.new_static(
                credentials["aws_access_key_id"], credentials["aws_secret_access_key"]
            )
        else:
            provider = AwsCredentialsProvider.new_default_chain(self._bootstrap)
        tls = endpoint is None or endpoint.startswith("https://")
        self.client = S3Client(
            bootstrap=self._bootstrap,
            region=region_name,
            credential_provider=provider,
            tls_mode=S3RequestTlsMode.ENABLED if tls else S3RequestTlsMode.DISABLED,
            part_size=self.settings.part_size,
            throughput_target_gbps=self.settings.throughput_gbps,
            memory_limit=self.settings.memory_limit,
        )

    @classmethod
    def for_role(cls, role: Role, endpoint: str | None) -> CrtTransfer:
        """The role's credentials (plan.CREDENTIAL_ENV) and the plan's endpoint, as s3.make_client."""
        return cls(resolve_endpoint(endpoint), region(), credentials_for(role))

    def _request(self, method: str, bucket: str, key: str, headers: list[tuple[str, str]]) -> HttpRequest:
        t = target_for(bucket, self.endpoint, self.region)
        return HttpRequest(method, t.path(key), HttpHeaders([("Host", t.host), *headers]))

    def get(
        self,
        bucket: str,
        key: str,
        *,
        recv_filepath: Path | None = None,
        fd: int | None = None,
        direct_fd: int | None = None,
        byte_range: tuple[int, int] | None = None,
        if_match: str | None = None,
        progress: BytesFn | None = None,
        expected_sha256_b64: str | None = None,
    ) -> Future[None]:
        """GET an object (or the inclusive `byte_range` of it) into `recv_filepath` (the CRT writes
        the file), or into the open `fd` at the bytes' offsets in the object. The future fails with
        the CRT's error; `expected_sha256_b64` makes the CRT check the bytes against that digest as
        they arrive."""
        headers: list[tuple[str, str]] = []
        if byte_range is not None:
            headers.append(("Range", f"bytes={byte_range[0]}-{byte_range[1]}"))
        if if_match:
            headers.append(("If-Match", f'"{if_match}"'))
        checksum = None
        if expected_sha256_b64:
            checksum = S3ChecksumConfig(
                expected_checksum=expected_sha256_b64, expected_checksum_algorithm=S3ChecksumAlgorithm.SHA256
            )
        on_body = None
        if recv_filepath is None:
            if fd is None:
                raise ValueError("get needs recv_filepath or fd")
            target_fd = fd

            def on_body(chunk: bytes, offset: int, **_: Any) -> None:
                # `offset` is the chunk's offset in the object (also for a ranged GET): the file's.
                write_chunk(target_fd, direct_fd, chunk, offset)

        def on_progress(progress_bytes: int, **_: Any) -> None:
            if progress:
                progress(progress_bytes)

        request = self.client.make_request(
            type=S3RequestType.GET_OBJECT,
            request=self._request("GET", bucket, key, headers),
            recv_filepath=str(recv_filepath) if recv_filepath is not None else None,
            # Best effort in the CRT: buffered I/O where O_DIRECT fails.
            fio_options=S3FileIoOptions(direct_io=direct_io_enabled()) if recv_filepath is not None else None,
            checksum_config=checksum,
            on_body=on_body,
            on_progress=on_progress if progress else None,
        )
        return keep_alive(request)

    def put_file(
        self,
        bucket: str,
        key: str,
        path: Path,
        *,
        metadata: dict[str, str],
        content_type: str,
        progress: BytesFn | None = None,
    ) -> Future[None]:
        """PUT a file (multipart above the upload part size); with `upload_crc32` each part carries a
        CRC32 trailer the server checks."""
        headers = [
            ("Content-Length", str(path.stat().st_size)),
            ("Content-Type", content_type),
            *((f"x-amz-meta-{k}", v) for k, v in metadata.items()),
        ]

        def on_progress(progress_bytes: int, **_: Any) -> None:
            if progress:
                progress(progress_bytes)

        request = self.client.make_request(
            type=S3RequestType.PUT_OBJECT,
            request=self._request("PUT", bucket, key, headers),
            send_filepath=str(path),
            checksum_config=S3ChecksumConfig(
                algorithm=S3ChecksumAlgorithm.CRC32, location=S3ChecksumLocation.TRAILER
            )
            if self.settings.upload_crc32
            else None,
            part_size=self.settings.upload_part_size,
            on_progress=on_progress if progress else None,
        )
        return keep_alive(request)


_alive: set[Any] = set()
_alive_lock = threading.Lock()


def keep_alive(request: Any) -> Future[None]:
    """The S3Request must outlive its future's completion; hold it until then."""
    future: Future[None] = request.finished_future
    with _alive_lock:
        _alive.add(request)

    def drop(_: Future[None]) -> None:
        with _alive_lock:
            _alive.discard(request)

    future.add_done_callback(drop)
    return future
