"""Handing freed heap back to the OS.

After a burst (hundreds of watch events, manifests and status patches) CPython frees its objects but
glibc keeps the pages, so the RSS stays at the burst's peak. malloc_trim(0) returns them; calling it
now and then from the poller keeps the steady-state RSS near the live data's size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

TRIM_INTERVAL_SECONDS = 10.0


@cache
def _malloc_trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    libc = ctypes.CDLL(name)
    return getattr(libc, "malloc_trim", None)  # glibc only; musl has none


def trim_heap() -> bool:
    """Returns True when memory could be handed back (glibc), False where there is no malloc_trim."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
