"""fetch: make the source checkpoint a local directory.

- file:// and pvc:// sources are already local (a mounted volume): used in place, not copied.
- s3:// sources are downloaded with parallel transfers and resume after a restart: files recorded as
  complete (same ETag and size) are skipped, and large files continue from the ranged parts already
  on disk. Checksums are verified where S3 offers them (full-object ChecksumSHA256, else a
  single-part ETag, which is the MD5).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pitcrew.cachekey import ListedObject, listing_digest
from pitcrew_builder.errors import SourceUnavailable
from pitcrew_builder.hashing import b64_to_hex, md5_file, sha256_file
from pitcrew_builder.logging import log_event
from pitcrew_builder.parallel import run_all
from pitcrew_builder.s3 import DENIED_CODES, TransferSettings, describe, error_code, is_not_found
from pitcrew_builder.uris import LocalLocation, S3Location

STATE_FILE = ".pitcrew-fetch.json"
PARTIAL_SUFFIX = ".partial"
# Buffer of the ranged downloader (reused per part). Measured: 256 KiB beat 64 KiB and 1 MiB, and
# 1 MiB was on par with 4 MiB (docs/benchmarks.md, Builder).
READ_BLOCK = 256 * 1024

FractionFn = Callable[[float, int], None]


@dataclass(frozen=True)
class RemoteObject:
    key: str
    relative: str
    size: int
    etag: str


@dataclass
class FetchStats:
    files: int = 0
    skipped: int = 0
    bytes_total: int = 0
    bytes_downloaded: int = 0
    bytes_resumed: int = 0
    seconds: float = 0.0


@dataclass
class PartState:
    """Sidecar of a large file being downloaded in ranged parts."""

    etag: str
    size: int
    part_size: int
    done: set[int] = field(default_factory=set)

    def to_json(self) -> str:
        return json.dumps(
            {"etag": self.etag, "size": self.size, "part_size": self.part_size, "done": sorted(self.done)}
        )

    @classmethod
    def from_json(cls, text: str) -> PartState:
        d = json.loads(text)
        return cls(etag=d["etag"], size=int(d["size"]), part_size=int(d["part_size"]), done=set(d["done"]))


def raw_readinto(body: Any) -> Callable[[memoryview], int] | None:
    """`readinto` of the HTTP response under botocore's StreamingBody, or None.

    Reading into one reusable buffer instead of `body.read(n)` saves two allocations and a copy per
    block (http.client reads into a fresh bytearray and copies it into bytes); those allocations cost
    kernel time (fresh pages) that grows when the cores are contended. http.client still enforces
    Content-Length (a short body reads as 0 early: the caller checks the length it got). botocore
    asks urllib3 for the body undecoded, so the bytes are the same as `body.read()`'s. None when the
    internals differ: use `body.read`."""
    fp = getattr(getattr(body, "_raw_stream", None), "_fp", None)
    readinto = getattr(fp, "readinto", None)
    return readinto if callable(readinto) else None


def release_connection(body: Any) -> None:
    """Return the connection of a fully read body to urllib3's pool (it cannot tell when the
    body was read around it)."""
    raw = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    if raw is not None and fp is not None and fp.isclosed():
        raw.release_conn()
    else:
        body.close()


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def download_delay() -> float:
    # Test hook: slows each ranged part so a test can kill the builder in the middle of a download.
    return float(os.environ.get("PITCREW_TEST_DOWNLOAD_DELAY", "0") or 0)


# ---- pure decisions ---------------------------------------------------------------------------


def relative_name(key: str, prefix: str) -> str:
    return key[len(prefix) :].lstrip("/") if prefix else key


def plan_fetch(
    objects: Iterable[RemoteObject],
    completed: dict[str, dict[str, Any]],
    local_size: Callable[[str], int | None],
) -> tuple[list[RemoteObject], list[RemoteObject]]:
    """Split objects into (already complete, to download). Complete = recorded with the same ETag
    and size, and the local file still has that size."""
    skip, todo = [], []
    for obj in objects:
        rec = completed.get(obj.relative)
        if (
            rec
            and rec.get("etag") == obj.etag
            and rec.get("size") == obj.size
            and local_size(obj.relative) == obj.size
        ):
            skip.append(obj)
        else:
            todo.append(obj)
    return skip, todo


def part_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """Inclusive byte ranges covering `size` bytes."""
    return [(start, min(start + part_size, size) - 1) for start in range(0, size, part_size)] or [(0, -1)]


def resumable_parts(previous: PartState | None, etag: str, size: int, part_size: int) -> PartState:
    """Keep finished parts only when the object and the part layout are unchanged."""
    if previous and previous.etag == etag and previous.size == size and previous.part_size == part_size:
        return previous
    return PartState(etag=etag, size=size, part_size=part_size)


def checksum_to_verify(head: dict[str, Any]) -> tuple[str, str] | None:
    """(algorithm, expected hex digest) the source offers for a whole object, if any."""
    sha = head.get("ChecksumSHA256")
    # Multipart uploads report a composite checksum ("...-N"): not a digest of the object.
    if sha and "-" not in sha and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
        return "sha256", b64_to_hex(sha)
    etag = str(head.get("ETag", "")).strip('"')
    kms = head.get("ServerSideEncryption") == "aws:kms" or head.get("SSECustomerAlgorithm")
    if etag and "-" not in etag and len(etag) == 32 and not kms:
        return "md5", etag
    return None


# ---- local sources ----------------------------------------------------------------------------


def fetch_local(location: LocalLocation) -> tuple[Path, FetchStats]:
    path = location.path
    if not path.exists():
        raise SourceUnavailable(f"source {location.uri()} does not exist", stage="fetch")
    if not path.is_dir():
        raise SourceUnavailable(f"source {location.uri()} is not a directory", stage="fetch")
    files = [p for p in path.rglob("*") if p.is_file()]
    stats = FetchStats(files=len(files), skipped=len(files), bytes_total=sum(p.stat().st_size for p in files))
    if not files:
        raise SourceUnavailable(f"source {location.uri()} is empty", stage="fetch")
    return path, stats


# ---- S3 sources -------------------------------------------------------------------------------


class S3Fetcher:
    def __init__(
        self,
        client: Any,
        location: S3Location,
        dest: Path,
        settings: TransferSettings,
        progress: FractionFn | None = None,
        expected_identity: str | None = None,
    ) -> None:
        self.client = client
        # The controller's digest of the listing the cache key was computed from ("listing:sha256:…").
        self.expected_identity = expected_identity
        self.listing: list[ListedObject] = []
        self.location = location
        self.dest = dest
        self.settings = settings
        self.progress = progress
        self._lock = threading.Lock()
        self._done_bytes = 0
        self._total = 0
        self.stats = FetchStats()

    # -- listing and state --
    def list_objects(self) -> list[RemoteObject]:
        prefix = self.location.prefix + "/" if self.location.prefix else ""
        objects: list[RemoteObject] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    self.listing.append(
                        ListedObject(item["Key"], int(item["Size"]), str(item.get("ETag", "")))
                    )
                    rel = relative_name(item["Key"], prefix)
                    if not rel or rel.endswith("/"):
                        continue  # "directory" placeholder objects
                    objects.append(RemoteObject(item["Key"], rel, int(item["Size"]), item["ETag"].strip('"')))
        except Exception as exc:
            if is_not_found(exc) or error_code(exc) in DENIED_CODES:
                raise SourceUnavailable(
                    f"cannot list {self.location.uri()}: {describe(exc)}", stage="fetch"
                ) from exc
            raise SourceUnavailable(
                f"listing {self.location.uri()} failed: {describe(exc)}", stage="fetch"
            ) from exc
        if not objects:
            raise SourceUnavailable(f"no objects under {self.location.uri()}/", stage="fetch")
        return objects

    def _check_identity(self) -> None:
        """Refuse to build from objects other than those the cache key names (the source changed
        between planning and fetching); a revision-pinned or unpinned source is not checked here."""
        expected = self.expected_identity
        if not expected or not expected.startswith("listing:"):
            return
        actual = listing_digest(self.listing, self.location.prefix)
        if actual != expected:
            raise SourceUnavailable(
                f"{self.location.uri()}/ changed after the build was planned (listing digest {actual}, "
                f"planned {expected}); the build must be planned again",
                stage="fetch",
            )

    def _state_path(self) -> Path:
        return self.dest / STATE_FILE

    def _load_state(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._state_path().read_text())
            return dict(data.get("completed", {}))
        except (OSError, ValueError):
            return {}

    def _save_state(self, completed: dict[str, dict[str, Any]]) -> None:
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps({"completed": completed}))
        os.replace(tmp, self._state_path())

    def _local_size(self, rel: str) -> int | None:
        p = self.dest / rel
        return p.stat().st_size if p.is_file() else None

    # -- progress --
    def _add_bytes(self, n: int) -> None:
        with self._lock:
            self._done_bytes += n
            done = self._done_bytes
        if self.progress and self._total:
            self.progress(done / self._total, done)

    # -- main --
    def run(self) -> tuple[Path, FetchStats]:
        started = time.monotonic()
        self.dest.mkdir(parents=True, exist_ok=True)
        objects = self.list_objects()
        self._check_identity()
        completed = self._load_state()
        skip, todo = plan_fetch(objects, completed, self._local_size)
        self._total = sum(o.size for o in objects)
        self.stats = FetchStats(files=len(objects), skipped=len(skip), bytes_total=self._total)
        if skip:
            log_event("fetch", "resume", files_skipped=len(skip), bytes=sum(o.size for o in skip))
        self._add_bytes(sum(o.size for o in skip))
        large = [o for o in todo if o.size >= self.settings.resumable_threshold]
        small = [o for o in todo if o.size < self.settings.resumable_threshold]

        def finish(obj: RemoteObject) -> None:
            with self._lock:
                completed[obj.relative] = {"etag": obj.etag, "size": obj.size}
                self._save_state(completed)

        # Small files in parallel (boto3 splits any above part_size); large ones one at a time, each
        # with its own pool of ranged parts, so the two pools never wait on each other.
        def fetch_small(obj: RemoteObject) -> None:
            finish(self._fetch_small(obj))

        run_all(fetch_small, small, self.settings.concurrency)
        for obj in large:
            self._fetch_large(obj)
            finish(obj)
        self.stats.seconds = time.monotonic() - started
        return self.dest, self.stats

    def _fetch_small(self, obj: RemoteObject) -> RemoteObject:
        target = self.dest / obj.relative
        target.parent.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):
            tmp = target.with_name(target.name + PARTIAL_SUFFIX)
            try:
                self.client.download_file(
                    self.location.bucket,
                    obj.key,
                    str(tmp),
                    Config=self.settings.boto_transfer_config(),
                    Callback=self._add_bytes,
                )
            except Exception as exc:
                raise SourceUnavailable(
                    f"download of {self.location.uri(obj.relative)} failed: {describe(exc)}", stage="fetch"
                ) from exc
            if self._verify(obj, tmp, attempt):
                os.replace(tmp, target)
                with self._lock:
                    self.stats.bytes_downloaded += obj.size
                return obj
            self._add_bytes(-obj.size)
        raise AssertionError("unreachable")

    def _fetch_large(self, obj: RemoteObject) -> None:
        target = self.dest / obj.relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        sidecar = target.with_name(target.name + PARTIAL_SUFFIX + ".json")
        for attempt in (1, 2):
            previous = None
            if partial.is_file() and sidecar.is_file():
                try:
                    previous = PartState.from_json(sidecar.read_text())
                except (ValueError, KeyError):
                    previous = None
            state = resumable_parts(previous, obj.etag, obj.size, self.settings.part_size)
            if state is not previous or not partial.is_file():
                state.done.clear()
                with partial.open("wb") as f:
                    f.truncate(obj.size)
            ranges = part_ranges(obj.size, state.part_size)
            resumed = sum(ranges[i][1] - ranges[i][0] + 1 for i in state.done)
            if resumed:
                log_event(
                    "fetch",
                    "resume-file",
                    file=obj.relative,
                    bytes=resumed,
                    parts_done=len(state.done),
                    parts=len(ranges),
                )
                self.stats.bytes_resumed += resumed
            self._add_bytes(resumed)
            sidecar.write_text(state.to_json())
            self._download_parts(obj, partial, sidecar, state, ranges)
            if self._verify(obj, partial, attempt):
                os.replace(partial, target)
                sidecar.unlink(missing_ok=True)
                self.stats.bytes_downloaded += obj.size - resumed
                return
            sidecar.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
            self._add_bytes(-obj.size)

    def _download_parts(
        self, obj: RemoteObject, partial: Path, sidecar: Path, state: PartState, ranges: list[tuple[int, int]]
    ) -> None:
        todo = [i for i in range(len(ranges)) if i not in state.done]
        fd = os.open(partial, os.O_WRONLY)
        delay = download_delay()
        try:

            def get_part(index: int) -> None:
                start, end = ranges[index]
                if delay:
                    time.sleep(delay)
                try:
                    resp = self.client.get_object(
                        Bucket=self.location.bucket,
                        Key=obj.key,
                        Range=f"bytes={start}-{end}",
                        IfMatch=f'"{obj.etag}"',
                    )
                    body = resp["Body"]
                    readinto = raw_readinto(body)
                    offset = start
                    if readinto is None:
                        while chunk := body.read(READ_BLOCK):
                            pwrite_all(fd, chunk, offset)
                            offset += len(chunk)
                            self._add_bytes(len(chunk))
                    else:
                        view = memoryview(bytearray(READ_BLOCK))
                        try:
                            while n := readinto(view):
                                pwrite_all(fd, view[:n], offset)
                                offset += n
                                self._add_bytes(n)
                        except BaseException:
                            body.close()  # the connection is in an unknown state: not reused
                            raise
                        release_connection(body)
                except Exception as exc:
                    if error_code(exc) in ("412", "PreconditionFailed"):
                        raise SourceUnavailable(
                            f"{self.location.uri(obj.relative)} changed during download", stage="fetch"
                        ) from exc
                    raise SourceUnavailable(
                        f"download of {self.location.uri(obj.relative)} failed: {describe(exc)}",
                        stage="fetch",
                    ) from exc
                if offset != end + 1:
                    raise SourceUnavailable(
                        f"short read of {obj.relative} bytes {start}-{end}", stage="fetch"
                    )
                with self._lock:
                    state.done.add(index)
                    tmp = sidecar.with_suffix(".tmp")
                    tmp.write_text(state.to_json())
                    os.replace(tmp, sidecar)

            run_all(get_part, todo, self.settings.concurrency)
        finally:
            os.close(fd)

    def _verify(self, obj: RemoteObject, path: Path, attempt: int) -> bool:
        """True when the file matches the source checksum (or none is offered)."""
        try:
            head = self.client.head_object(Bucket=self.location.bucket, Key=obj.key, ChecksumMode="ENABLED")
        except Exception as exc:
            raise SourceUnavailable(
                f"head of {self.location.uri(obj.relative)} failed: {describe(exc)}", stage="fetch"
            ) from exc
        if path.stat().st_size != obj.size:
            ok, detail = False, f"size {path.stat().st_size} != {obj.size}"
        else:
            check = checksum_to_verify(head)
            if check is None:
                return True
            algorithm, expected = check
            actual = sha256_file(path) if algorithm == "sha256" else md5_file(path)
            ok, detail = actual == expected, f"{algorithm} {actual} != {expected}"
            if ok:
                log_event("fetch", "verified", file=obj.relative, checksum=algorithm)
        if ok:
            return True
        if attempt >= 2:
            raise SourceUnavailable(
                f"{self.location.uri(obj.relative)} failed verification twice: {detail}", stage="fetch"
            )
        log_event("fetch", "checksum-mismatch", level="warning", file=obj.relative, detail=detail)
        return False
