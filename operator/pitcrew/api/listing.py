"""A source listing's identity: shared by the controller (cache key) and the builder (which checks
the listing again before it builds). Pure; lives in pitcrew.api so the builder never imports
controller code."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int
    etag: str


def listing_digest(objects: Iterable[ListedObject], prefix: str) -> str:
    """sha256 over the relative keys, sizes and ETags of a source listing, order-independent."""
    base = prefix.rstrip("/") + "/" if prefix else ""
    rows = sorted(
        (o.key[len(base) :] if o.key.startswith(base) else o.key, o.size, o.etag.strip('"')) for o in objects
    )
    # The same canonical JSON as cachekey.canonical_json (the digest must never drift).
    text = json.dumps(rows, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "listing:sha256:" + hashlib.sha256(text.encode()).hexdigest()
