"""Builder upgrades and the build-slot queue: the decisions, without I/O. Pure.

- `needs_upgrade`: a finished EngineBuild that did not pin `spec.builderImage` and whose engine was
  built by another image than the operator's current one for its backend is rebuilt.
- `admit`: a new builder Job may start when fewer than `cap` Jobs are active, counting the queued
  builds that are ahead of it (FIFO); `cap` 0 means no cap.
- `order`: the queue is served round-robin across namespaces, oldest EngineBuild first within each
  (creationTimestamp, then namespace/name), an order that survives an operator restart (the queue
  itself is rebuilt by the resume handlers).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pitcrew.api.reasons import Reason
from pitcrew.api.v1alpha1 import Backend, Phase
from pitcrew.conditions import BUILDER_UPGRADE
from pitcrew.settings import Settings

REASON_UPGRADE = BUILDER_UPGRADE
REASON_WAITING = Reason.WAITING_FOR_BUILD_SLOT

FINISHED = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value})


@dataclass(frozen=True)
class Upgrade:
    backend: str
    old_image: str
    new_image: str


def needs_upgrade(body: Mapping[str, Any], settings: Settings) -> Upgrade | None:
    """The upgrade due for a finished build of the current generation, or None.

    Only builds that recorded the image they used (status.builderImage: every build that reached a
    Job or a cache lookup) qualify; failures before that (InvalidSpec) do not depend on the builder.
    Failed builds are rebuilt too: a new builder may well fix them.
    """
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    if spec.get("builderImage"):
        return None  # pinned: the user decides when to move
    if status.get("phase") not in FINISHED:
        return None  # a running build finishes first (checked again when it does)
    if status.get("observedGeneration") != (body.get("metadata") or {}).get("generation"):
        return None  # a spec change is pending: that reconcile uses the current image anyway
    old = status.get("builderImage")
    if not old:
        return None
    try:
        backend = Backend(spec.get("backend") or Backend.TENSORRT_LLM.value)
    except ValueError:
        return None
    new = settings.builder_image(backend)
    if old == new:
        return None
    return Upgrade(backend=backend.value, old_image=str(old), new_image=new)


def admit(active: int, cap: int, ahead: int = 0) -> bool:
    """May one more builder Job start now? `ahead`: queued builds served before this one."""
    if cap <= 0:
        return True
    return active + ahead < cap


@dataclass(frozen=True, order=True)
class QueueEntry:
    """Sort key first: creationTimestamp (RFC 3339, so string order is time order), namespace, name."""

    created: str
    namespace: str
    name: str
    uid: str


def order(entries: Iterable[QueueEntry]) -> list[QueueEntry]:
    """Round-robin across namespaces, oldest first within each: every namespace's oldest build,
    then every namespace's second oldest, ... (ties by age, then namespace/name). A namespace that
    queues 500 builds does not make another namespace's one build wait behind all of them."""
    by_ns: dict[str, list[QueueEntry]] = {}
    for e in sorted(entries):
        by_ns.setdefault(e.namespace, []).append(e)
    ranked = [(rank, e) for es in by_ns.values() for rank, e in enumerate(es)]
    return [e for _, e in sorted(ranked)]


def ahead_of(entry: QueueEntry, queue: Iterable[QueueEntry], skip: Container[str] = ()) -> int:
    """How many queued builds (other than this one) are served before it; `skip`: builds whose
    admission failed and that wait for a retry do not hold the others back."""
    others = [e for e in queue if e.uid != entry.uid and e.uid not in skip]
    return [e.uid for e in order([*others, entry])].index(entry.uid)


def serve_order(entries: Iterable[QueueEntry], backoff: Mapping[str, float], now: float) -> list[QueueEntry]:
    """The queue in serving order, without builds whose failed admission waits for its retry time
    (`backoff`: uid -> monotonic time): one build whose S3 calls keep failing must not stop all."""
    return order(e for e in entries if backoff.get(e.uid, 0.0) <= now)


def backing_off(backoff: Mapping[str, float], now: float) -> frozenset[str]:
    return frozenset(uid for uid, until in backoff.items() if until > now)


def waiting_message(active: int, cap: int, ahead: int) -> str:
    where = f"{ahead} queued build{'s' if ahead != 1 else ''} ahead" if ahead else "next in line"
    return (
        f"waiting for a build slot: {active} of {cap} builder Jobs active "
        f"(PITCREW_MAX_ACTIVE_BUILDS), {where}"
    )


def upgrade_message(up: Upgrade, key: str) -> str:
    return (
        f"builder image for {up.backend} changed from {up.old_image} to {up.new_image}: rebuilding "
        f"(cache key {key[:12]}); status.engine keeps the previous engine until the new one is published"
    )
