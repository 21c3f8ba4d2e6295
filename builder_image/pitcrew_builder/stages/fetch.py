"""fetch: make the source checkpoint a local directory.

- file:// and pvc:// sources are already local (a mounted volume): used in place, not copied.
- s3:// sources are downloaded through the AWS CRT (pitcrew_builder.crt: native connections, parts
  and file writes) and resume after a restart: files recorded as complete (same ETag and size) are
  skipped, and large files continue from the ranged parts already on disk. Checksums are verified
  where S3 offers them (full-object ChecksumSHA256: checked by the CRT as the bytes arrive for whole
  files, by reading the file back for ranged ones; else a single-part ETag, which is the MD5).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pitcrew.api.listing import ListedObject, listing_digest
from pitcrew_builder.crt import describe_crt, open_direct, status_of
from pitcrew_builder.errors import SourceUnavailable
from pitcrew_builder.hashing import b64_to_hex, md5_file, sha256_file
from pitcrew_builder.logging import log_event
from pitcrew_builder.parallel import run_all
from pitcrew_builder.s3 import DENIED_CODES, TransferSettings, describe, error_code, is_not_found
from pitcrew_builder.uris import LocalLocation, S3Location

STATE_FILE = ".pitcrew-fetch.json"
PARTIAL_SUFFIX = ".partial"
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


class Transfer(Protocol):
    """The data path (pitcrew_builder.crt.CrtTransfer; tests wrap it to inject faults)."""

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
        progress: Callable[[int], None] | None = None,
        expected_sha256_b64: str | None = None,
    ) -> Future[None]: ...


def hold_after_parts() -> int:
    """Test hook: after this many ranged parts are recorded, stop, create PITCREW_TEST_HOLD_FILE and
    wait to be killed, so a test kills the builder at a known point instead of racing a timer."""
    return int(os.environ.get("PITCREW_TEST_FETCH_HOLD_AFTER_PARTS", "0") or 0)


def hold_forever(what: str) -> None:
    signal_file = os.environ.get("PITCREW_TEST_HOLD_FILE")
    log_event("test", "hold", after=what)
    if signal_file:
        Path(signal_file).write_text(what)
    while True:
        time.sleep(3600)


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


def full_object_sha256(head: dict[str, Any]) -> str | None:
    """The base64 ChecksumSHA256 of the whole object, if the source offers one."""
    sha = head.get("ChecksumSHA256")
    # Multipart uploads report a composite checksum ("...-N"): not a digest of the object.
    if sha and "-" not in sha and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
        return str(sha)
    return None


def head_can_help(etag: str) -> bool:
    """Whether a HEAD can offer a checksum we verify (full-object SHA-256, or an ETag that is the MD5):
    only for single-part objects. A multipart upload's ETag ("<md5 of md5s>-<parts>") is no MD5 and
    its SHA-256 is composite (S3 keeps full-object checksums of multipart uploads only for CRCs)."""
    return "-" not in etag


def checksum_to_verify(head: dict[str, Any]) -> tuple[str, str] | None:
    """(algorithm, expected hex digest) the source offers for a whole object, if any."""
    sha = full_object_sha256(head)
    if sha:
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

CHECKSUM_MISMATCH = "AWS_ERROR_S3_RESPONSE_CHECKSUM_MISMATCH"

# What finishing a request does: given its error (None on success), may queue more requests.
Finisher = Callable[[BaseException | None], None]
Starter = Callable[[], tuple["Future[None]", Finisher]]


def is_checksum_mismatch(exc: BaseException) -> bool:
    return getattr(exc, "name", None) == CHECKSUM_MISMATCH


@dataclass
class Counter:
    """Bytes one request reported, so a retry can take them back out of the progress."""

    add: Callable[[int], None]
    n: int = 0

    def __call__(self, n: int) -> None:
        self.n += n
        self.add(n)


@dataclass
class LargeFile:
    """A file downloaded as ranged parts written at their offsets into `partial`."""

    obj: RemoteObject
    head: dict[str, Any]
    attempt: int
    partial: Path
    sidecar: Path
    state: PartState
    ranges: list[tuple[int, int]]
    fd: int
    left: set[int]
    resumed: int
    direct_fd: int | None = None  # O_DIRECT fd of `partial` for block-aligned chunks


class S3Fetcher:
    def __init__(
        self,
        client: Any,
        transfer: Transfer,
        location: S3Location,
        dest: Path,
        settings: TransferSettings,
        progress: FractionFn | None = None,
        expected_identity: str | None = None,
    ) -> None:
        self.client = client  # boto3: listing and HEAD
        self.transfer = transfer  # the CRT: the bytes
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
        self._queue: deque[Starter] = deque()
        self._completed: dict[str, dict[str, Any]] = {}
        self._open: dict[int, LargeFile] = {}  # by fd
        self._parts_recorded = 0
        self._hold_after = hold_after_parts()
        self._holding = False

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

    def _head(self, obj: RemoteObject) -> dict[str, Any]:
        try:
            head: dict[str, Any] = self.client.head_object(
                Bucket=self.location.bucket, Key=obj.key, ChecksumMode="ENABLED"
            )
            return head
        except Exception as exc:
            raise SourceUnavailable(
                f"head of {self.location.uri(obj.relative)} failed: {describe(exc)}", stage="fetch"
            ) from exc

    # -- main --
    def run(self) -> tuple[Path, FetchStats]:
        started = time.monotonic()
        self.dest.mkdir(parents=True, exist_ok=True)
        objects = self.list_objects()
        self._check_identity()
        self._completed = self._load_state()
        skip, todo = plan_fetch(objects, self._completed, self._local_size)
        self._total = sum(o.size for o in objects)
        self.stats = FetchStats(files=len(objects), skipped=len(skip), bytes_total=self._total)
        if skip:
            log_event("fetch", "resume", files_skipped=len(skip), bytes=sum(o.size for o in skip))
        self._add_bytes(sum(o.size for o in skip))
        need_head = [o for o in todo if head_can_help(o.etag)]
        fetched = dict(
            zip(
                (o.key for o in need_head),
                run_all(self._head, need_head, self.settings.concurrency),
                strict=True,
            )
        )
        heads = [fetched.get(o.key, {}) for o in todo]
        # Whole files first (configs and tokenizers are small and done at once), then the ranged parts
        # of the large ones; all share the `concurrency` slots.
        large = []
        for obj, head in zip(todo, heads, strict=True):
            threshold = self.settings.resumable_threshold
            if threshold is not None and obj.size >= threshold:
                large.append((obj, head))
            else:
                self._queue.append(lambda obj=obj, head=head: self._start_small(obj, head, 1))  # type: ignore[misc]
        for obj, head in large:
            self._queue.extend(self._large_starters(obj, head, 1))
        self._drive()
        self.stats.seconds = time.monotonic() - started
        return self.dest, self.stats

    def _drive(self) -> None:
        """Keep up to `concurrency` requests in flight (the CRT splits each into parts and spreads
        them over its connections); stop queueing at the first error, let in-flight ones end."""
        inflight: dict[Future[None], Finisher] = {}
        error: BaseException | None = None
        try:
            while inflight or (self._queue and error is None and not self._holding):
                while (
                    self._queue
                    and error is None
                    and not self._holding
                    and len(inflight) < max(1, self.settings.concurrency)
                ):
                    future, finish = self._queue.popleft()()
                    inflight[future] = finish
                if not inflight:
                    break
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for future in done:
                    finish = inflight.pop(future)
                    try:
                        finish(future.exception())
                    except BaseException as exc:
                        error = error or exc
        finally:
            if inflight:  # interrupted (SIGTERM): the CRT may still write into the open files
                wait(inflight)
            for large in list(self._open.values()):
                self._close(large)
        if error is not None:
            raise error
        if self._holding:
            hold_forever(f"{self._parts_recorded} parts")

    def _finish_file(self, obj: RemoteObject, downloaded: int) -> None:
        self._completed[obj.relative] = {"etag": obj.etag, "size": obj.size}
        self._save_state(self._completed)
        self.stats.bytes_downloaded += downloaded

    def _failed(self, obj: RemoteObject, exc: BaseException, ranged: bool = False) -> SourceUnavailable:
        if status_of(exc) == 412:
            what = f"{self.location.uri(obj.relative)} changed during download"
        else:
            what = f"download of {self.location.uri(obj.relative)} failed: {describe_crt(exc)}"
        err = SourceUnavailable(what, stage="fetch")
        err.__cause__ = exc
        return err

    def _mismatch(self, obj: RemoteObject, attempt: int, detail: str) -> None:
        """A checksum mismatch: retried once from scratch, then fatal."""
        if attempt >= 2:
            raise SourceUnavailable(
                f"{self.location.uri(obj.relative)} failed verification twice: {detail}", stage="fetch"
            )
        log_event("fetch", "checksum-mismatch", level="warning", file=obj.relative, detail=detail)

    # -- whole files (below the resumable threshold) --
    def _start_small(
        self, obj: RemoteObject, head: dict[str, Any], attempt: int
    ) -> tuple[Future[None], Finisher]:
        target = self.dest / obj.relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + PARTIAL_SUFFIX)
        # A killed earlier GET leaves holes anywhere in it (the CRT writes parts as they arrive).
        tmp.unlink(missing_ok=True)
        sha = full_object_sha256(head)
        counter = Counter(self._add_bytes)
        future = self.transfer.get(
            self.location.bucket,
            obj.key,
            recv_filepath=tmp,
            if_match=obj.etag,
            progress=counter,
            expected_sha256_b64=sha,
        )

        def finish(exc: BaseException | None) -> None:
            detail = None
            if exc is not None:
                if not (sha and is_checksum_mismatch(exc)):
                    raise self._failed(obj, exc)
                detail = f"sha256 of the received bytes != {b64_to_hex(sha)} (the object's ChecksumSHA256)"
            else:
                detail = self._check_file(obj, head, tmp, verified_sha256=sha is not None)
            if detail is None:
                os.replace(tmp, target)
                self._finish_file(obj, obj.size)
                return
            self._add_bytes(-counter.n)
            tmp.unlink(missing_ok=True)
            self._mismatch(obj, attempt, detail)
            self._queue.appendleft(lambda: self._start_small(obj, head, attempt + 1))

        return future, finish

    def _check_file(
        self, obj: RemoteObject, head: dict[str, Any], path: Path, verified_sha256: bool
    ) -> str | None:
        """None when the file is the object (size, and the checksum S3 offers if the CRT did not
        check one as the bytes arrived), else what differs."""
        size = path.stat().st_size
        if size != obj.size:
            return f"size {size} != {obj.size}"
        if verified_sha256:
            log_event("fetch", "verified", file=obj.relative, checksum="sha256")
            return None
        check = checksum_to_verify(head)
        if check is None:
            return None
        algorithm, expected = check
        actual = sha256_file(path) if algorithm == "sha256" else md5_file(path)
        if actual != expected:
            return f"{algorithm} {actual} != {expected}"
        log_event("fetch", "verified", file=obj.relative, checksum=algorithm)
        return None

    # -- large files: ranged parts, resumable --
    def _large_starters(self, obj: RemoteObject, head: dict[str, Any], attempt: int) -> list[Starter]:
        target = self.dest / obj.relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        sidecar = target.with_name(target.name + PARTIAL_SUFFIX + ".json")
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
        left = {i for i in range(len(ranges)) if i not in state.done}
        large = LargeFile(
            obj, head, attempt, partial, sidecar, state, ranges, os.open(partial, os.O_WRONLY), left, resumed
        )
        large.direct_fd = open_direct(partial)
        self._open[large.fd] = large
        if not left:
            self._queue.appendleft(lambda: self._start_verify_only(large))
            return []
        return [lambda i=i: self._start_part(large, i) for i in sorted(left)]  # type: ignore[misc]

    def _close(self, large: LargeFile) -> None:
        if self._open.pop(large.fd, None) is not None:
            os.close(large.fd)
            if large.direct_fd is not None:
                os.close(large.direct_fd)

    def _start_verify_only(self, large: LargeFile) -> tuple[Future[None], Finisher]:
        future: Future[None] = Future()
        future.set_result(None)
        return future, lambda exc: self._complete_large(large)

    def _start_part(self, large: LargeFile, index: int) -> tuple[Future[None], Finisher]:
        start, end = large.ranges[index]
        counter = Counter(self._add_bytes)
        obj = large.obj
        future = self.transfer.get(
            self.location.bucket,
            obj.key,
            fd=large.fd,
            direct_fd=large.direct_fd,
            byte_range=(start, end),
            if_match=obj.etag,
            progress=counter,
        )

        def finish(exc: BaseException | None) -> None:
            if exc is not None:
                raise self._failed(obj, exc, ranged=True)
            if counter.n != end - start + 1:
                raise SourceUnavailable(
                    f"short read of {obj.relative} bytes {start}-{end}: {counter.n} bytes", stage="fetch"
                )
            large.state.done.add(index)
            large.left.discard(index)
            tmp = large.sidecar.with_suffix(".tmp")
            tmp.write_text(large.state.to_json())
            os.replace(tmp, large.sidecar)
            self._parts_recorded += 1
            if self._hold_after and self._parts_recorded >= self._hold_after:
                self._holding = True
            if not large.left:
                self._complete_large(large)

        return future, finish

    def _complete_large(self, large: LargeFile) -> None:
        self._close(large)
        obj = large.obj
        detail = self._check_file(obj, large.head, large.partial, verified_sha256=False)
        if detail is None:
            os.replace(large.partial, self.dest / obj.relative)
            large.sidecar.unlink(missing_ok=True)
            self._finish_file(obj, obj.size - large.resumed)
            return
        large.sidecar.unlink(missing_ok=True)
        large.partial.unlink(missing_ok=True)
        self._add_bytes(-obj.size)
        self._mismatch(obj, large.attempt, detail)
        for starter in reversed(self._large_starters(obj, large.head, large.attempt + 1)):
            self._queue.appendleft(starter)
