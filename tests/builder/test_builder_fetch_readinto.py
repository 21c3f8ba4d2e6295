"""The ranged downloader's fast path (readinto a reusable buffer under botocore's StreamingBody):
same bytes as the public read() path, connections go back to the pool, and a short body fails."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from pitcrew_builder.errors import SourceUnavailable
from pitcrew_builder.s3 import TransferSettings, make_client
from pitcrew_builder.stages import fetch
from pitcrew_builder.stages.fetch import S3Fetcher
from pitcrew_builder.uris import S3Location
from pitcrew_devcluster.s3server import S3Info

KiB = 1024
SETTINGS = TransferSettings(concurrency=2, part_size=256 * KiB, resumable_threshold=1024 * KiB)


@pytest.fixture
def big(s3: S3Info, s3_prefix: str) -> bytes:
    data = os.urandom(3 * 1024 * KiB + 123)  # 13 ranged parts
    s3.client().put_object(Bucket=s3.bucket, Key=f"{s3_prefix}/w.safetensors", Body=data)
    return data


@pytest.mark.parametrize("fast", [True, False])
def test_both_read_paths_give_the_source_bytes(
    s3: S3Info,
    s3_prefix: str,
    big: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clean_env: None,
    fast: bool,
) -> None:
    if not fast:
        monkeypatch.setattr(fetch, "raw_readinto", lambda body: None)
    client = make_client("source", None, SETTINGS)
    body = client.get_object(Bucket=s3.bucket, Key=f"{s3_prefix}/w.safetensors")["Body"]
    assert (fetch.raw_readinto(body) is not None) == fast  # the fast path is there with this botocore
    body.close()
    dest, stats = S3Fetcher(client, S3Location(s3.bucket, s3_prefix), tmp_path / "src", SETTINGS).run()
    assert (dest / "w.safetensors").read_bytes() == big
    assert stats.bytes_downloaded == len(big)


def test_fully_read_parts_return_their_connection_to_the_pool(
    s3: S3Info, s3_prefix: str, big: bytes, tmp_path: Path, clean_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client("source", None, SETTINGS)
    with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        S3Fetcher(client, S3Location(s3.bucket, s3_prefix), tmp_path / "src", SETTINGS).run()
    opened = [r for r in caplog.records if "Starting new HTTP" in r.getMessage()]
    assert 1 <= len(opened) <= 2 * SETTINGS.concurrency  # not one per part (13)


def test_a_short_body_is_an_error_not_a_silently_short_file(
    s3: S3Info, s3_prefix: str, big: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fetch.raw_readinto

    def truncated(body: Any) -> Any:
        inner = real(body)
        assert inner is not None
        left = [100 * KiB]  # the connection "drops" after 100 KiB of each part

        def readinto(view: memoryview) -> int:
            if left[0] <= 0:
                return 0
            n: int = inner(view[: left[0]])
            left[0] -= n
            return n

        return readinto

    monkeypatch.setattr(fetch, "raw_readinto", truncated)
    with pytest.raises(SourceUnavailable, match=r"short read of w\.safetensors"):
        S3Fetcher(s3.client(), S3Location(s3.bucket, s3_prefix), tmp_path / "src", SETTINGS).run()
