"""The operator's timers: one loop per kind of work, so slow work of one kind (S3 reads for a
build's progress, a LIST of every Job) never holds up another (starting queued builds).

- follow: every PITCREW_POLL_SECONDS, each in-flight build: progress, unschedulable grace expiry,
  a vanished Job, a missing Secret, a lost wait for a shared build. A safety net behind the watch
  events, which do the same at once.
- admit: every PITCREW_POLL_SECONDS, queued builds into free build slots (also woken at once when a
  Job finishes or goes: `slot_freed`).
- resync: every reconcile.RESYNC_SECONDS, the Job view against a LIST (missed DELETED events).
- trim: every memory.TRIM_INTERVAL_SECONDS, the heap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pitcrew import follow, memory, metrics, reconcile, sharing
from pitcrew.runtime import RT
from pitcrew.statuses import TERMINAL

log = logging.getLogger("pitcrew.poller")
ADMISSION = "pitcrew/admission"  # RT.schedule key of the queue's admission run (not an object uid)


def slot_freed() -> None:
    """A Job finished or went: start queued builds now rather than at the next admission tick."""
    if RT.queue:
        RT.schedule(ADMISSION, reconcile.admit_queued)


async def poll_one(uid: str, ns: str, name: str) -> None:
    """Safety net: progress, unschedulable grace expiry, a Job that vanished, missed events."""
    body = await RT.kube.get(reconcile.eb_path(ns, name))
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    status = body.get("status") or {}
    if status.get("reason") == sharing.REASON_WAITING and not any(uid in w for w in RT.waiters.values()):
        # Waiting for a shared build nobody will wake it for (e.g. its Job went while the watch
        # was down): look again.
        await reconcile.run(uid, ns, name, "shared")
        return
    if status.get("reason") == reconcile.REASON_SECRET_MISSING and not status.get("job"):
        # Waiting for a Secret to appear: look again (no spec change needed).
        await reconcile.run(uid, ns, name, "secret")
        return
    job_name = (status.get("job") or {}).get("name")
    if (
        job_name
        and status.get("phase") not in TERMINAL
        and follow.current_job(uid, status) is None
        and await RT.kube.get(reconcile.jobs_path(ns, job_name)) is None
    ):
        log.warning("builder Job vanished; recreating", extra={"eb": f"{ns}/{name}", "job": job_name})
        await reconcile.run(uid, ns, name, "poll")
        return
    await follow.sync(uid, ns, name)


async def follow_in_flight() -> None:
    for uid, (ns, name) in list(RT.in_flight.items()):
        if uid in RT.queue:
            continue  # no Job yet: nothing to follow (the admission loop starts it)
        try:
            await poll_one(uid, ns, name)
        except Exception as e:
            metrics.ERRORS.labels("poll").inc()
            log.warning("poll failed", extra={"eb": f"{ns}/{name}", "error": repr(e)[:300]})


async def resync() -> None:
    if RT.jobs_primed and await reconcile.resync_jobs():
        slot_freed()


async def trim() -> None:
    memory.trim_heap()


async def every(seconds: Callable[[], float], work: Callable[[], Awaitable[None]], what: str) -> None:
    """Runs `work` every `seconds()`; a failure is counted and logged, never ends the loop."""
    while True:
        await asyncio.sleep(seconds())
        try:
            await work()
        except Exception as e:
            metrics.ERRORS.labels(what).inc()
            log.warning(f"{what} failed", extra={"error": repr(e)[:300]})


def start() -> list[asyncio.Task[None]]:
    loop = asyncio.get_running_loop()
    poll = lambda: RT.settings.poll_seconds  # noqa: E731 (read each time: tests change it)
    return [
        loop.create_task(every(poll, follow_in_flight, "poll"), name="pitcrew-follow"),
        loop.create_task(every(poll, reconcile.admit_queued, "admit"), name="pitcrew-admit"),
        loop.create_task(every(lambda: reconcile.RESYNC_SECONDS, resync, "resync"), name="pitcrew-resync"),
        loop.create_task(every(lambda: memory.TRIM_INTERVAL_SECONDS, trim, "trim"), name="pitcrew-trim"),
    ]
