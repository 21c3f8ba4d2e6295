"""Kubernetes Events through the project's own client (no kopf internals).

kopf.event() only works inside a handler's context; the poller and the admission loop, which
notice many transitions first, ran outside it and needed kopf's private posting queue. Posting
ourselves works from anywhere. Events are fire-and-forget: a failed post is logged, never retried,
and never holds up a status write. `event_body` is pure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pitcrew.api.v1alpha1 import API_VERSION, KIND
from pitcrew.kube import ns_path
from pitcrew.runtime import RT

log = logging.getLogger("pitcrew.events")
COMPONENT = "pitcrew"
MAX_MESSAGE = 1024
_tasks: set[asyncio.Task[None]] = set()  # strong references until each post is done


def event_body(
    obj: Mapping[str, Any], type_: str, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    """A core/v1 Event about an EngineBuild (`obj` is its body)."""
    meta = obj["metadata"]
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def _send(body: dict[str, Any]) -> None:
    try:
        await RT.kube.create(ns_path(body["metadata"]["namespace"], "events"), body)
    except Exception as e:
        log.info("event not posted", extra={"reason": body.get("reason"), "error": repr(e)[:200]})


def post(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Posts an Event about `obj` in the background; without a running loop (unit tests) it is dropped."""
    if not (obj.get("metadata") or {}).get("namespace"):
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    task = loop.create_task(_send(event_body(obj, type_, reason, message, datetime.now(UTC))))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
