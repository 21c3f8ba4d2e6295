"""publish: upload the engine directory, then manifest.json as the commit point.

A reader only trusts a prefix with a manifest, and the manifest is written after every file it lists
is uploaded, so a crash at any point leaves either nothing trusted or a complete engine. A re-run
skips files already uploaded with the same size and sha256 (kept as object metadata) and redoes the
rest; if a matching manifest is already there it succeeds without uploading.

The manifest is written only if absent (S3 `If-None-Match: *`, a hard link on a local directory): of
two builds publishing into one prefix, the first manifest stays. The later one succeeds if that
manifest describes the same build (same cache key and files), and otherwise fails without overwriting.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from pitcrew.api.plan import MANIFEST_FILE, PROGRESS_FILE, Manifest, ManifestFile
from pitcrew_builder.errors import PublishFailed
from pitcrew_builder.hashing import sha256_file
from pitcrew_builder.logging import log_event
from pitcrew_builder.parallel import run_all
from pitcrew_builder.s3 import describe
from pitcrew_builder.stages.fetch import hold_forever
from pitcrew_builder.store import ObjectInfo, ObjectStore

# Files the builder itself writes under the prefix; never part of an engine.
RESERVED = frozenset({MANIFEST_FILE, PROGRESS_FILE})

FractionFn = Callable[[float, int], None]


@dataclass(frozen=True)
class LocalFile:
    path: Path
    relative: str
    size: int
    sha256: str


@dataclass
class PublishStats:
    files: int = 0
    uploaded: int = 0
    skipped: int = 0
    bytes_total: int = 0
    bytes_uploaded: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Published:
    manifest: Manifest
    manifest_uri: str
    manifest_sha256: str
    stats: PublishStats


# ---- pure decisions ---------------------------------------------------------------------------


def needs_upload(local: LocalFile, remote: ObjectInfo | None) -> bool:
    return remote is None or remote.size != local.size or remote.sha256 != local.sha256


def manifest_matches(manifest: Manifest, cache_key: str) -> bool:
    return manifest.cache_key == cache_key and bool(manifest.files)


def file_set(manifest: Manifest) -> list[tuple[str, int, str]]:
    return sorted((f.path, f.size, f.sha256) for f in manifest.files)


def same_build(existing: Manifest, ours: Manifest) -> bool:
    """The manifest already published describes the engine we built: same key, same files and bytes.
    Timings and creation time differ between runs and do not count."""
    return existing.cache_key == ours.cache_key and file_set(existing) == file_set(ours)


def render_manifest(manifest: Manifest) -> bytes:
    return (manifest.model_dump_json(by_alias=True, indent=2) + "\n").encode()


# ---- I/O --------------------------------------------------------------------------------------


def list_engine_files(engine_dir: Path) -> list[tuple[Path, str]]:
    files = []
    for path in sorted(p for p in engine_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(engine_dir).as_posix()
        if rel in RESERVED:
            continue
        files.append((path, rel))
    return files


def hash_files(files: list[tuple[Path, str]], workers: int = 2) -> list[LocalFile]:
    def one(item: tuple[Path, str]) -> LocalFile:
        path, rel = item
        return LocalFile(path, rel, path.stat().st_size, sha256_file(path))

    return run_all(one, files, workers)  # hashlib releases the GIL


def read_manifest(store: ObjectStore) -> tuple[Manifest, bytes] | None:
    try:
        data = store.get_bytes(MANIFEST_FILE)
    except Exception as exc:
        message = f"cannot read {store.uri(MANIFEST_FILE)}: {describe(exc)}"
        raise PublishFailed(message, stage="publish") from exc
    if data is None:
        return None
    try:
        return Manifest.model_validate_json(data), data
    except ValidationError as exc:
        log_event("publish", "manifest-unreadable", level="warning", error=str(exc)[:500])
        return None


def existing_engine(store: ObjectStore, cache_key: str) -> tuple[Manifest, str] | None:
    """The published manifest (and its sha256) when it is for this cache key and its files are there."""
    found = read_manifest(store)
    if found is None or not manifest_matches(found[0], cache_key):
        return None
    manifest, data = found
    for f in manifest.files:
        info = store.head(f.path)
        if info is None or info.size != f.size:
            log_event("publish", "manifest-incomplete", level="warning", file=f.path)
            return None
    return manifest, hashlib.sha256(data).hexdigest()


def upload_delay() -> float:
    # Test hook: slows each upload so a test can kill the builder in the middle of publishing.
    return float(os.environ.get("PITCREW_TEST_UPLOAD_DELAY", "0") or 0)


def hold_after_files() -> int:
    """Test hook: after this many files are uploaded (one at a time), create PITCREW_TEST_HOLD_FILE
    and wait to be killed, so a test kills the builder at a known point."""
    return int(os.environ.get("PITCREW_TEST_PUBLISH_HOLD_AFTER_FILES", "0") or 0)


def publish(
    engine_dir: Path,
    store: ObjectStore,
    make_manifest: Callable[[list[ManifestFile]], Manifest],
    *,
    concurrency: int = 4,
    progress: FractionFn | None = None,
) -> Published:
    started = time.monotonic()
    local = hash_files(list_engine_files(engine_dir))
    if not local:
        raise PublishFailed(f"nothing to publish in {engine_dir}", stage="publish")
    stats = PublishStats(files=len(local), bytes_total=sum(f.size for f in local))
    lock = threading.Lock()
    done = 0
    delay = upload_delay()
    hold = hold_after_files()

    def add(n: int) -> None:
        nonlocal done
        with lock:
            done += n
            value = done
        if progress and stats.bytes_total:
            progress(value / stats.bytes_total, value)

    def one(f: LocalFile) -> None:
        try:
            remote = store.head(f.relative)
            if not needs_upload(f, remote):
                with lock:
                    stats.skipped += 1
                add(f.size)
                return
            if delay:
                time.sleep(delay)
            store.upload_file(f.relative, f.path, f.sha256, add)
        except PublishFailed:
            raise
        except Exception as exc:
            raise PublishFailed(
                f"upload of {f.relative} to {store.uri(f.relative)} failed: {describe(exc)}", stage="publish"
            ) from exc
        with lock:
            stats.uploaded += 1
            stats.bytes_uploaded += f.size
            uploaded = stats.uploaded
        log_event("publish", "uploaded", file=f.relative, bytes=f.size)
        if hold and uploaded >= hold:
            hold_forever(f"{uploaded} files")

    # The test hooks upload one file at a time so "killed mid-upload" is a deterministic state.
    workers = 1 if delay or hold else max(1, concurrency)
    run_all(one, local, workers)
    if stats.skipped:
        log_event("publish", "resume", files_skipped=stats.skipped)

    manifest = make_manifest([ManifestFile(path=f.relative, size=f.size, sha256=f.sha256) for f in local])
    data = render_manifest(manifest)
    uri = store.uri(MANIFEST_FILE)
    try:
        # The commit point: always last, and only if no manifest is there yet.
        written = store.put_bytes_if_absent(MANIFEST_FILE, data, "application/json")
    except Exception as exc:
        raise PublishFailed(f"writing {uri} failed: {describe(exc)}", stage="publish") from exc
    stats.seconds = time.monotonic() - started
    if written:
        return Published(manifest, uri, hashlib.sha256(data).hexdigest(), stats)
    return adopt_existing(store, manifest, stats)


def adopt_existing(store: ObjectStore, ours: Manifest, stats: PublishStats) -> Published:
    """A manifest appeared before ours: the existing one stands if it is the same build; else fail."""
    uri = store.uri(MANIFEST_FILE)
    found = read_manifest(store)
    if found is None:
        raise PublishFailed(
            f"{uri} already exists but is not a readable manifest; it was not overwritten. "
            f"Delete it (or choose another output.engineUri) and rebuild",
            stage="publish",
        )
    existing, existing_data = found
    if not same_build(existing, ours):
        raise PublishFailed(
            f"publish conflict: {uri} was written by another build (cacheKey {existing.cache_key!r}, "
            f"{len(existing.files)} files) while this one (cacheKey {ours.cache_key!r}) was publishing; "
            f"it was not overwritten, but files under the prefix may now mix both builds. Delete the "
            f"prefix (or choose another output.engineUri) and rebuild",
            stage="publish",
        )
    log_event("publish", "manifest-exists-same-build", manifest=uri)
    return Published(existing, uri, hashlib.sha256(existing_data).hexdigest(), stats)
