"""Writing received chunks into a file: O_DIRECT for block-aligned chunks, buffered otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pitcrew_builder.crt import ALIGN, open_direct, write_chunk


@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "memoryview"])
@pytest.mark.parametrize("direct", [True, False])
def test_chunks_land_at_their_offsets(
    tmp_path: Path, direct: bool, as_bytes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """awscrt hands each chunk over as bytes (copied into the bounce buffer without the GIL); other
    buffers take the memoryview path."""
    if not direct:
        monkeypatch.setenv("PITCREW_S3_DIRECT_IO", "0")
    path = tmp_path / "f.partial"
    data = os.urandom(3 * 1024 * 1024 + 123)  # a tail that is not block-aligned
    with path.open("wb") as f:
        f.truncate(len(data))
    fd = os.open(path, os.O_WRONLY)
    direct_fd = open_direct(path)
    if direct and direct_fd is None:
        pytest.skip(f"{tmp_path} does not support O_DIRECT")
    assert (direct_fd is None) == (not direct)
    try:
        # Out of order, as parts arrive: aligned 1 MiB chunks, an unaligned one, the tail.
        pieces = [(2 * 2**20, 2**20), (0, 2**20), (2**20, ALIGN + 1), (2**20 + ALIGN + 1, 2**20 - ALIGN - 1)]
        pieces.append((3 * 2**20, len(data) - 3 * 2**20))
        for offset, n in pieces:
            chunk = memoryview(data)[offset : offset + n]
            write_chunk(fd, direct_fd, bytes(chunk) if as_bytes else chunk, offset)
    finally:
        os.close(fd)
        if direct_fd is not None:
            os.close(direct_fd)
    assert path.read_bytes() == data
