"""The manifest is written only if absent: two builds publishing into one prefix (issue 7).

Against a real S3 server (MinIO, conditional writes with If-None-Match) and a local directory (pvc://).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from pitcrew.api.plan import MANIFEST_FILE, Manifest, ManifestFile
from pitcrew_builder.crt import CrtSettings, CrtTransfer
from pitcrew_builder.errors import PublishFailed
from pitcrew_builder.stages.publish import publish, same_build
from pitcrew_builder.store import LocalStore, ObjectStore, S3Store
from pitcrew_builder.uris import LocalLocation, S3Location
from pitcrew_devcluster.s3server import S3Info


def _manifest(cache_key: str, files: list[ManifestFile], created_at: str = "t0") -> Manifest:
    return Manifest(
        cache_key=cache_key,
        backend="tensorrt-rtx",
        compute_capability="8.6",
        files=files,
        versions={},
        created_at=created_at,
    )


def _maker(cache_key: str, created_at: str) -> Any:
    return lambda files: _manifest(cache_key, files, created_at)


def _engine(root: Path, payload: bytes) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "rank0.engine").write_bytes(payload)
    return root


def _s3_store(s3: S3Info, prefix: str) -> S3Store:
    creds = {"aws_access_key_id": s3.access_key, "aws_secret_access_key": s3.secret_key}
    transfer = CrtTransfer(s3.endpoint, s3.region, creds, CrtSettings())
    return S3Store(S3Location(s3.bucket, prefix), s3.client(), transfer)


F1 = ManifestFile(path="a", size=1, sha256="1" * 64)
F2 = ManifestFile(path="b", size=2, sha256="2" * 64)


@pytest.mark.parametrize(
    ("existing", "ours", "same"),
    [
        (_manifest("k", [F1, F2], "t0"), _manifest("k", [F2, F1], "t1"), True),  # order, time: no matter
        (_manifest("k", [F1]), _manifest("other", [F1]), False),  # another cache key
        (_manifest("k", [F1, F2]), _manifest("k", [F1]), False),  # a file fewer
        (_manifest("k", [F1]), _manifest("k", [F1.model_copy(update={"sha256": "3" * 64})]), False),
        (_manifest("k", [F1]), _manifest("k", [F1.model_copy(update={"size": 9})]), False),
    ],
)
def test_same_build(existing: Manifest, ours: Manifest, same: bool) -> None:
    assert same_build(existing, ours) is same


def _check_second_publisher(store: ObjectStore, read_manifest_bytes: Any, tmp_path: Path) -> None:
    first_dir = _engine(tmp_path / "first", b"first engine" * 1000)
    other_dir = _engine(tmp_path / "other", b"other engine" * 1000)

    first = publish(first_dir, store, _maker("k", "t0"))
    stored = read_manifest_bytes()
    assert Manifest.model_validate_json(stored) == first.manifest

    # A different engine for the same prefix: refused, the first manifest stays byte for byte.
    with pytest.raises(PublishFailed) as err:
        publish(other_dir, store, _maker("k", "t1"))
    assert "publish conflict" in str(err.value) and store.uri(MANIFEST_FILE) in str(err.value)
    assert read_manifest_bytes() == stored

    # A different cache key for the same prefix: refused as well.
    with pytest.raises(PublishFailed, match="cacheKey 'k'"):
        publish(first_dir, store, _maker("k2", "t2"))
    assert read_manifest_bytes() == stored

    # The same build again (another run: other timestamps): success, the existing manifest is the result.
    again = publish(first_dir, store, _maker("k", "t3"))
    assert again.manifest == first.manifest and again.manifest_sha256 == first.manifest_sha256
    assert again.manifest.created_at == "t0"
    assert read_manifest_bytes() == stored


def test_s3_second_publisher_does_not_overwrite(s3: S3Info, s3_prefix: str, tmp_path: Path) -> None:
    client = s3.client()
    key = f"{s3_prefix}/{MANIFEST_FILE}"

    def stored() -> bytes:
        body: bytes = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        return body

    _check_second_publisher(_s3_store(s3, s3_prefix), stored, tmp_path)


def test_local_second_publisher_does_not_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = LocalStore(LocalLocation(out))
    _check_second_publisher(store, lambda: (out / MANIFEST_FILE).read_bytes(), tmp_path)
    assert (out / MANIFEST_FILE).stat().st_mode & 0o777 == 0o644  # readable by the serving pods
    assert sorted(p.name for p in out.iterdir()) == ["config.json", MANIFEST_FILE, "rank0.engine"]  # no temp


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_concurrent_conditional_puts_one_wins(kind: str, s3: S3Info, s3_prefix: str, tmp_path: Path) -> None:
    """Many writers at once: exactly one put succeeds and the stored bytes are that writer's."""
    store: ObjectStore = (
        _s3_store(s3, s3_prefix) if kind == "s3" else LocalStore(LocalLocation(tmp_path / "out"))
    )
    n = 8
    results: list[bool | None] = [None] * n
    barrier = threading.Barrier(n)

    def writer(i: int) -> None:
        barrier.wait()
        results[i] = store.put_bytes_if_absent("m.json", f"writer {i}".encode(), "application/json")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results.count(True) == 1 and results.count(False) == n - 1, results
    assert store.get_bytes("m.json") == f"writer {results.index(True)}".encode()
