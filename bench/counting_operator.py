"""Runs `python -m pitcrew` with every Kubernetes write request counted (bench only).

Both kopf and pitcrew's client speak aiohttp; wrapping ClientSession._request counts every
non-GET request by method and resource, and the counts are written to $PITCREW_BENCH_COUNTS
each second, so the benchmark reads exactly what this operator sent (not other components).
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
import threading
import time
from typing import Any

import aiohttp

COUNTS: collections.Counter[str] = collections.Counter()
_original = aiohttp.ClientSession._request


async def _counted(self: aiohttp.ClientSession, method: str, str_or_url: Any, **kwargs: Any) -> Any:
    if method.upper() != "GET":
        path = str(str_or_url).split("?", 1)[0]
        resource = re.sub(r"/namespaces/[^/]+", "", path.split("://", 1)[-1].split("/", 1)[-1])
        parts = [p for p in resource.split("/") if p]
        # /apis/group/version/plural[/name[/sub]] or /api/v1/plural[/name[/sub]]
        base = 3 if parts and parts[0] == "apis" else 2
        kind = parts[base] if len(parts) > base else resource
        sub = parts[base + 2] if len(parts) > base + 2 else ""
        COUNTS[f"{method.upper()} {kind}{'/' + sub if sub else ''}"] += 1
    return await _original(self, method, str_or_url, **kwargs)


def _dump(path: str) -> None:
    while True:
        time.sleep(1)
        with open(path + ".tmp", "w") as f:
            json.dump(dict(COUNTS), f)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    aiohttp.ClientSession._request = _counted  # type: ignore[method-assign]
    threading.Thread(target=_dump, args=(os.environ["PITCREW_BENCH_COUNTS"],), daemon=True).start()
    from pitcrew.__main__ import main

    sys.exit(main())
