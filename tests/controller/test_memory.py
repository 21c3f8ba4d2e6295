"""trim_heap hands freed heap pages back to the OS (glibc), which is what keeps the RSS steady."""

from __future__ import annotations

from pathlib import Path

from pitcrew.memory import trim_heap


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_trim_returns_freed_heap_to_the_os() -> None:
    # Buffers above pymalloc's 512 bytes and below the mmap threshold come from glibc's heap; one
    # survivor at its top pins the freed pages there, as a long-lived object does after a burst.
    blobs = [bytearray(4000) for _ in range(50_000)]
    survivor = blobs[-1]
    del blobs
    freed_but_kept = _rss_kib()
    assert trim_heap() is True
    assert _rss_kib() < freed_but_kept - 100_000
    assert len(survivor) == 4000
