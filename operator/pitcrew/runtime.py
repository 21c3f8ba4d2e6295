"""Process-wide state of the operator: settings, clients, and the watch-fed views of our Jobs and Pods.

The Job and Pod views are dicts filled by kopf event handlers (no API calls to read them), trimmed
to the fields the status mapping needs so that memory stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pitcrew import images, jobview
from pitcrew.jobs import GPU_RESOURCE
from pitcrew.kube import Kube
from pitcrew.settings import Settings, SettingsError
from pitcrew.slots import QueueEntry, Usage
from pitcrew.storage import Storage

log = logging.getLogger("pitcrew")

Obj = dict[str, Any]


def trim_job(body: Any) -> Obj:
    meta = body.get("metadata", {})
    container = (body.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}])[0]
    return {
        "metadata": {
            k: meta.get(k)
            for k in (
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "labels",
                "annotations",
            )
        },
        "spec": {
            "activeDeadlineSeconds": body.get("spec", {}).get("activeDeadlineSeconds"),
            "backoffLimit": body.get("spec", {}).get("backoffLimit"),
            "image": container.get("image"),
            "gpus": job_gpus(container),
        },
        "status": dict(body.get("status") or {}),
    }


def trim_pod(body: Any) -> Obj:
    meta = body.get("metadata", {})
    status = body.get("status") or {}
    return {
        "metadata": {k: meta.get(k) for k in ("name", "creationTimestamp", "deletionTimestamp", "labels")},
        "spec": {"nodeName": body.get("spec", {}).get("nodeName")},
        "status": {
            k: status.get(k)
            for k in ("phase", "reason", "message", "conditions", "containerStatuses")
            if k in status
        },
    }


def job_gpus(container: Any) -> int:
    """The GPUs a builder container holds (its nvidia.com/gpu limit; the operator sets requests
    equal to it)."""
    value = ((container.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE) or 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class KeyedLocks:
    """One asyncio.Lock per key, kept only while someone holds or waits for it: keys such as an
    engine's identity are unbounded over an operator's life, so a dict of locks must not grow."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[asyncio.Lock, int]] = {}  # key -> (lock, holders + waiters)

    @contextlib.asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        lock, users = self.held.get(key, (None, 0))
        lock = lock or asyncio.Lock()
        self.held[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self.held[key]
            if users <= 1:
                del self.held[key]
            else:
                self.held[key] = (lock, users - 1)


def _settings_or_default() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError:
        return Settings()  # the startup handler reports the error and stops the operator


@dataclass
class Runtime:
    settings: Settings = field(default_factory=_settings_or_default)
    kube: Kube = field(default_factory=Kube)
    storage: Storage | None = None
    jobs: dict[str, dict[str, Obj]] = field(default_factory=dict)  # EngineBuild uid -> Job name -> Job
    pods: dict[str, dict[str, Obj]] = field(default_factory=dict)  # EngineBuild uid -> Pod name -> Pod
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # One Job per engine (pitcrew.sharing): the look for another build's Job and our create are one
    # step per engine identity; pruned as soon as nobody holds or waits for it.
    engine_lock: KeyedLocks = field(default_factory=KeyedLocks)
    # The one status writer per object (reconcile.write_status): its lock, and the newest
    # generation seen per EngineBuild uid (watch events and writes); older writes are dropped.
    write_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    # EngineBuild uid -> the Job a `reschedule` pass was started for (once per Job).
    rescheduled: dict[str, str] = field(default_factory=dict)
    pending: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # EngineBuilds not final yet (uid -> namespace, name): the poller's work list. One loop for all,
    # instead of a kopf timer per object, because kopf puts a finalizer on objects with timers.
    in_flight: dict[str, tuple[str, str]] = field(default_factory=dict)
    timers: list[asyncio.Task[None]] = field(default_factory=list)  # pitcrew.poller.start
    # Watch events for one build are coalesced for this long: a pod that goes Pending -> Running
    # within it costs one status write, not two.
    debounce_seconds: float = 1.0
    # A fresh build (no status yet) whose pod is merely waiting/starting is not written as Queued
    # before its Job is this old: a pod that starts within it goes straight to Building (one status
    # write fewer per build). Unschedulable and retrying pods are written at once.
    quiet_queued_seconds: float = 10.0
    # Builds waiting for a slot under PITCREW_MAX_ACTIVE_BUILDS (uid -> entry), served in
    # slots.order. In memory only: after a restart the resume handlers queue them again.
    queue: dict[str, QueueEntry] = field(default_factory=dict)
    # Queued builds whose admission failed (e.g. S3 down for their bucket): uid -> monotonic time
    # before which they are not tried again and do not hold back the builds behind them.
    admit_backoff: dict[str, float] = field(default_factory=dict)
    # Held from the admission decision to the Job being in `jobs`, so two builds cannot both take
    # the last slot.
    admission_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    admitting: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The Job view is complete only once one LIST of our Jobs has been merged into it (the watch
    # may still be replaying its initial listing when the first builds are admitted after a start).
    jobs_primed: bool = False
    prime_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    job_tombstones: set[str] = field(default_factory=set)  # Job uids deleted before priming ended
    # EngineBuild uid -> builder image an upgrade was last started for (one try per image and
    # process: an upgrade that cannot start, e.g. InvalidSpec, does not loop).
    upgrades_tried: dict[str, str] = field(default_factory=dict)
    # Builds waiting for another build's Job of the same engine (pitcrew.sharing):
    # engine ident -> EngineBuild uid -> (namespace, name). Woken when that Job finishes or goes.
    waiters: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)

    # Which EngineBuilds point at which engine (pitcrew.sharing.engines_in_use), from their watch
    # events: engine ident -> uid -> (namespace, name). Deletion asks it whether anyone else still
    # uses an engine, instead of listing every EngineBuild. Complete once one LIST was merged in.
    engine_users: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    engines_of: dict[str, frozenset[str]] = field(default_factory=dict)
    builds_primed: bool = False

    def note_engines(self, uid: str, namespace: str, name: str, engines: frozenset[str]) -> None:
        old = self.engines_of.pop(uid, frozenset())
        for engine in old - engines:
            users = self.engine_users.get(engine, {})
            users.pop(uid, None)
            if not users:
                self.engine_users.pop(engine, None)
        for engine in engines:
            self.engine_users.setdefault(engine, {})[uid] = (namespace, name)
        if engines:
            self.engines_of[uid] = engines

    # Builder image tag -> the newest digest seen running for it (pitcrew.images), from builder
    # pods' imageID and from Jobs run by digest.
    image_digests: dict[str, images.Seen] = field(default_factory=dict)

    def note_job_image(self, job: Obj) -> None:
        seen = images.from_job(job)
        if seen is not None:
            images.learn(self.image_digests, *seen)

    def store(self) -> Storage:
        if self.storage is None:
            self.storage = Storage(self.settings.s3_endpoint, self.settings.s3_region)
        return self.storage

    def lock(self, uid: str) -> asyncio.Lock:
        return self.locks.setdefault(uid, asyncio.Lock())

    def write_lock(self, uid: str) -> asyncio.Lock:
        return self.write_locks.setdefault(uid, asyncio.Lock())

    def note_generation(self, uid: str, generation: int | None) -> None:
        if generation:
            self.generations[uid] = max(self.generations.get(uid, 0), int(generation))

    def remember(self, table: dict[str, dict[str, Obj]], uid: str, name: str, value: Obj | None) -> None:
        if value is None:
            table.get(uid, {}).pop(name, None)
            if uid in table and not table[uid]:
                del table[uid]
        else:
            table.setdefault(uid, {})[name] = value

    def active_jobs(self) -> int:
        return sum(1 for by_name in self.jobs.values() for job in by_name.values() if jobview.holds_slot(job))

    def held(self) -> Usage:
        """What the active builder Jobs hold, for the build-slot decisions (pitcrew.slots)."""
        return Usage.of(
            (str(job["metadata"].get("namespace") or ""), int((job.get("spec") or {}).get("gpus") or 0))
            for by_name in self.jobs.values()
            for job in by_name.values()
            if jobview.holds_slot(job)
        )

    def forget(self, uid: str) -> None:
        self.note_engines(uid, "", "", frozenset())
        self.in_flight.pop(uid, None)
        self.queue.pop(uid, None)
        self.admit_backoff.pop(uid, None)
        self.upgrades_tried.pop(uid, None)
        for engine in [e for e, by_uid in self.waiters.items() if uid in by_uid]:
            self.waiters[engine].pop(uid, None)
            if not self.waiters[engine]:
                del self.waiters[engine]
        self.jobs.pop(uid, None)
        self.pods.pop(uid, None)
        self.locks.pop(uid, None)
        self.write_locks.pop(uid, None)
        self.generations.pop(uid, None)
        self.rescheduled.pop(uid, None)
        task = self.pending.pop(uid, None)
        if task is not None:
            task.cancel()

    def schedule(self, uid: str, run: Callable[[], Awaitable[None]], delay: float | None = None) -> None:
        """Coalesces bursts of watch events for one build into one sync after a short pause."""
        if uid in self.pending:
            return

        async def later() -> None:
            await asyncio.sleep(self.debounce_seconds if delay is None else delay)
            self.pending.pop(uid, None)
            try:
                await run()
            except Exception:
                log.exception("status sync failed", extra={"uid": uid})

        self.pending[uid] = asyncio.get_running_loop().create_task(later())


RT = Runtime()
