"""Fetching a checkpoint from a real S3 server: parallel, verified, resumed after an interruption."""

from __future__ import annotations

import base64
import hashlib
import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from builder_run import parse_events

from pitcrew.api.listing import ListedObject, listing_digest
from pitcrew_builder.crt import CrtTransfer
from pitcrew_builder.errors import SourceUnavailable
from pitcrew_builder.s3 import TransferSettings
from pitcrew_builder.stages.fetch import STATE_FILE, S3Fetcher
from pitcrew_builder.uris import S3Location
from pitcrew_devcluster.s3server import S3Info

KiB = 1024
SETTINGS = TransferSettings(concurrency=4, part_size=256 * KiB, resumable_threshold=1024 * KiB)


def crt(s3: S3Info) -> CrtTransfer:
    return CrtTransfer(
        s3.endpoint, s3.region, {"aws_access_key_id": s3.access_key, "aws_secret_access_key": s3.secret_key}
    )


class FlakyTransfer:
    """Wraps the CRT transfer: ranged GETs fail after `allow` of them (a crash in the middle)."""

    def __init__(self, inner: CrtTransfer, allow: int) -> None:
        self.inner, self.allow, self.ranged_gets = inner, allow, 0

    def get(self, bucket: str, key: str, **kw: Any) -> Future[None]:
        if kw.get("byte_range") is not None:
            self.ranged_gets += 1
            if self.ranged_gets > self.allow:
                failed: Future[None] = Future()
                failed.set_exception(ConnectionResetError("simulated crash"))
                return failed
        return self.inner.get(bucket, key, **kw)


def fetcher(s3: S3Info, prefix: str, dest: Path, **kw: Any) -> S3Fetcher:
    client, transfer = kw.pop("client", s3.client()), kw.pop("transfer", crt(s3))
    settings = kw.pop("settings", SETTINGS)
    return S3Fetcher(client, transfer, S3Location(kw.pop("bucket", s3.bucket), prefix), dest, settings, **kw)


def _upload(s3: S3Info, prefix: str, files: dict[str, bytes], sha256: bool = False) -> None:
    client = s3.client()
    for name, data in files.items():
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        extra = {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": digest} if sha256 else {}
        client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{name}", Body=data, **extra)


@pytest.fixture
def source(s3: S3Info, s3_prefix: str) -> dict[str, bytes]:
    files = {
        "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
        "sub/tokenizer.json": b"{}" * 100,
        "model.safetensors": os.urandom(3 * 1024 * KiB + 123),  # 13 ranged parts
    }
    _upload(s3, s3_prefix, files)
    return files


def test_fetch_downloads_and_verifies(
    s3: S3Info, s3_prefix: str, source: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest, stats = fetcher(s3, s3_prefix, tmp_path / "src").run()
    for name, data in source.items():
        assert (dest / name).read_bytes() == data
    assert stats.files == 3 and stats.bytes_downloaded == sum(map(len, source.values()))
    # Single-part uploads: the ETag is the MD5, checked for every file (ranged or whole).
    verified = [e for e in parse_events(capsys.readouterr().out) if e["event"] == "verified"]
    assert sorted((e["file"], e["checksum"]) for e in verified) == [
        ("config.json", "md5"),
        ("model.safetensors", "md5"),
        ("sub/tokenizer.json", "md5"),
    ]
    # A second run finds everything complete and downloads nothing.
    _, again = fetcher(s3, s3_prefix, tmp_path / "src").run()
    assert again.skipped == 3 and again.bytes_downloaded == 0


def test_fetch_resumes_a_large_file_from_its_finished_parts(
    s3: S3Info, s3_prefix: str, source: dict[str, bytes], tmp_path: Path
) -> None:
    one_at_a_time = TransferSettings(concurrency=1, part_size=256 * KiB, resumable_threshold=1024 * KiB)
    flaky = FlakyTransfer(crt(s3), allow=5)
    with pytest.raises(SourceUnavailable, match=r"model\.safetensors failed: simulated crash"):
        fetcher(s3, s3_prefix, tmp_path / "src", transfer=flaky, settings=one_at_a_time).run()
    assert (tmp_path / "src" / "model.safetensors.partial").exists()
    assert not (tmp_path / "src" / "model.safetensors").exists()
    assert (tmp_path / "src" / STATE_FILE).exists()  # the small files were recorded as complete

    counting = FlakyTransfer(crt(s3), allow=10**6)
    dest, stats = fetcher(s3, s3_prefix, tmp_path / "src", transfer=counting).run()
    assert (dest / "model.safetensors").read_bytes() == source["model.safetensors"]
    assert stats.skipped == 2  # config.json and tokenizer.json were not fetched again
    assert stats.bytes_resumed == 5 * 256 * KiB
    assert counting.ranged_gets == 13 - 5  # only the missing parts
    assert not (dest / "model.safetensors.partial.json").exists()


def test_fetch_restarts_a_file_that_changed_since_the_interruption(
    s3: S3Info, s3_prefix: str, source: dict[str, bytes], tmp_path: Path
) -> None:
    one_at_a_time = TransferSettings(concurrency=1, part_size=256 * KiB, resumable_threshold=1024 * KiB)
    with pytest.raises(SourceUnavailable):
        fetcher(
            s3, s3_prefix, tmp_path / "src", transfer=FlakyTransfer(crt(s3), allow=3), settings=one_at_a_time
        ).run()
    new = os.urandom(len(source["model.safetensors"]))
    _upload(s3, s3_prefix, {"model.safetensors": new})
    dest, stats = fetcher(s3, s3_prefix, tmp_path / "src").run()
    assert (dest / "model.safetensors").read_bytes() == new
    assert stats.bytes_resumed == 0


def test_fetch_fails_when_the_object_changes_during_download(
    s3: S3Info, s3_prefix: str, source: dict[str, bytes], tmp_path: Path
) -> None:
    """Parts are requested with If-Match on the listed ETag: a new object mid-download is refused."""

    class ReplacesAfterTwoParts(FlakyTransfer):
        def get(self, bucket: str, key: str, **kw: Any) -> Future[None]:
            if kw.get("byte_range") is not None and self.ranged_gets == 2:
                _upload(s3, s3_prefix, {"model.safetensors": os.urandom(len(source["model.safetensors"]))})
            return super().get(bucket, key, **kw)

    one_at_a_time = TransferSettings(concurrency=1, part_size=256 * KiB, resumable_threshold=1024 * KiB)
    with pytest.raises(SourceUnavailable, match=r"model\.safetensors changed during download"):
        fetcher(
            s3,
            s3_prefix,
            tmp_path / "src",
            transfer=ReplacesAfterTwoParts(crt(s3), allow=10**6),
            settings=one_at_a_time,
        ).run()


@pytest.mark.parametrize("lie_about", ["w.bin", "c.json"])
def test_fetch_checks_sha256_when_the_source_offers_it(
    s3: S3Info, s3_prefix: str, tmp_path: Path, lie_about: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """w.bin (2 MiB) comes down in ranged parts and is hashed afterwards; c.json is one GET whose
    bytes the CRT checks against the expected digest as they arrive. A wrong digest fails either."""
    files = {"w.bin": os.urandom(2 * 1024 * KiB), "c.json": b"{}"}
    _upload(s3, s3_prefix, files, sha256=True)
    client = s3.client()
    for name, data in files.items():  # the server kept the checksum and reports it
        head = client.head_object(Bucket=s3.bucket, Key=f"{s3_prefix}/{name}", ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()

    class Lying:
        def head_object(self, **kw: Any) -> Any:
            head = dict(client.head_object(**kw))
            if kw["Key"].endswith(lie_about):
                head["ChecksumSHA256"] = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
            return head

        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

    with pytest.raises(SourceUnavailable, match=rf"{lie_about} failed verification twice: sha256"):
        fetcher(s3, s3_prefix, tmp_path / "bad", client=Lying()).run()
    mismatches = [e for e in parse_events(capsys.readouterr().out) if e["event"] == "checksum-mismatch"]
    assert [e["file"] for e in mismatches] == [lie_about]  # the first attempt, retried once
    dest, _ = fetcher(s3, s3_prefix, tmp_path / "good").run()
    assert (dest / "w.bin").read_bytes() == files["w.bin"]
    verified = [e for e in parse_events(capsys.readouterr().out) if e["event"] == "verified"]
    assert sorted((e["file"], e["checksum"]) for e in verified) == [("c.json", "sha256"), ("w.bin", "sha256")]


def test_fetch_of_an_empty_prefix_is_source_unavailable(s3: S3Info, s3_prefix: str, tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="no objects under"):
        fetcher(s3, s3_prefix, tmp_path / "src").run()
    with pytest.raises(SourceUnavailable, match="NoSuchBucket"):
        fetcher(s3, "p", tmp_path / "src2", bucket="no-such-bucket-x").run()


def test_fetch_refuses_a_source_that_changed_since_planning(
    s3: S3Info, s3_prefix: str, source: dict[str, bytes], tmp_path: Path
) -> None:
    client = s3.client()
    listing = client.list_objects_v2(Bucket=s3.bucket, Prefix=s3_prefix + "/")["Contents"]
    planned = listing_digest([ListedObject(o["Key"], o["Size"], o["ETag"]) for o in listing], s3_prefix)
    fetcher(s3, s3_prefix, tmp_path / "a", expected_identity=planned).run()
    _upload(s3, s3_prefix, {"config.json": b'{"changed": true}'})
    with pytest.raises(SourceUnavailable, match="changed after the build was planned"):
        fetcher(s3, s3_prefix, tmp_path / "b", expected_identity=planned).run()
    # Revision-pinned sources are identified by the revision, not re-checked here.
    fetcher(s3, s3_prefix, tmp_path / "c", expected_identity="revision:v1").run()
