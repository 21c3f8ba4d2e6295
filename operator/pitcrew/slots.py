"""Builder upgrades and build slots: which new builder Jobs may start now. Pure.

- `needs_upgrade`: a finished EngineBuild that did not pin `spec.builderImage` and whose engine was
  built by another image than the operator's current one for its backend is rebuilt.
- Caps (`Limits`, 0 = none): builder Jobs and their GPUs active at once, cluster-wide and per
  namespace. A build's GPUs are what its pod requests (`validation.Resolved.gpu_count`: gpuCount,
  else tensor x pipeline parallelism; 0 for a conversion).
- `order`: work classes first (new builds and spec changes before builder-upgrade rebuilds), then
  round-robin across namespaces, oldest EngineBuild first within each (creationTimestamp, then
  namespace/name): an order that survives an operator restart.
- `walk`: the queue in that order against what active Jobs hold. A build over its namespace's cap
  holds back only its namespace; a build over a global cap stops the line (no backfill, or a big GPU
  build would wait forever behind small ones), except that builds without GPUs may pass a build
  waiting for GPUs (they take none of what it waits for). Recomputed at every decision, never kept.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pitcrew import images
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


def needs_upgrade(
    body: Mapping[str, Any], settings: Settings, known: Mapping[str, images.Seen] | None = None
) -> Upgrade | None:
    """The upgrade due for a finished build of the current generation, or None.

    Only builds that recorded the image they used (status.builderImage: every build that reached a
    Job or a cache lookup) qualify; failures before that (InvalidSpec) do not depend on the builder.
    Failed builds are rebuilt too: a new builder may well fix them. `known`: the digests tags
    were seen running as (pitcrew.images): a tag seen as another digest after the build finished
    was pushed again, which is an upgrade too.
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
    configured, known = settings.builder_image(backend), known or {}
    if images.same_builder(str(old), configured) and not images.moved(
        str(old), status.get("completionTime"), known
    ):
        return None
    return Upgrade(backend=backend.value, old_image=str(old), new_image=images.resolve(configured, known))


NEW, UPGRADE = 0, 1  # work classes: a lower class is served first


@dataclass(frozen=True, order=True)
class QueueEntry:
    """Sort key first: creationTimestamp (RFC 3339, so string order is time order), namespace, name."""

    created: str
    namespace: str
    name: str
    uid: str
    gpus: int = 0
    work: int = NEW


@dataclass(frozen=True)
class Limits:
    builds: int = 0  # PITCREW_MAX_ACTIVE_BUILDS
    gpus: int = 0  # PITCREW_MAX_ACTIVE_GPUS
    ns_builds: int = 0  # PITCREW_MAX_ACTIVE_BUILDS_PER_NAMESPACE
    ns_gpus: int = 0  # PITCREW_MAX_ACTIVE_GPUS_PER_NAMESPACE

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            builds=settings.max_active_builds,
            gpus=settings.max_active_gpus,
            ns_builds=settings.max_active_builds_per_namespace,
            ns_gpus=settings.max_active_gpus_per_namespace,
        )

    def any(self) -> bool:
        return bool(self.builds or self.gpus or self.ns_builds or self.ns_gpus)


# Which cap holds a build back; the names are the settings, for messages.
BUILDS, GPUS = "PITCREW_MAX_ACTIVE_BUILDS", "PITCREW_MAX_ACTIVE_GPUS"
NS_BUILDS, NS_GPUS = "PITCREW_MAX_ACTIVE_BUILDS_PER_NAMESPACE", "PITCREW_MAX_ACTIVE_GPUS_PER_NAMESPACE"


@dataclass
class Usage:
    """What active builder Jobs (and builds admitted in a simulation) hold."""

    builds: int = 0
    gpus: int = 0
    ns_builds: dict[str, int] = field(default_factory=dict)
    ns_gpus: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, held: Iterable[tuple[str, int]]) -> Usage:
        """`held`: (namespace, GPUs) of every active builder Job."""
        usage = cls()
        for namespace, gpus in held:
            usage.add(namespace, gpus)
        return usage

    def add(self, namespace: str, gpus: int) -> None:
        self.builds += 1
        self.gpus += gpus
        self.ns_builds[namespace] = self.ns_builds.get(namespace, 0) + 1
        self.ns_gpus[namespace] = self.ns_gpus.get(namespace, 0) + gpus

    def copy(self) -> Usage:
        return Usage(self.builds, self.gpus, dict(self.ns_builds), dict(self.ns_gpus))


def blocker(entry: QueueEntry, usage: Usage, limits: Limits) -> str | None:
    """The cap this build would go over if it started now (namespace caps first), or None."""
    ns = entry.namespace
    if limits.ns_builds and usage.ns_builds.get(ns, 0) + 1 > limits.ns_builds:
        return NS_BUILDS
    if limits.ns_gpus and entry.gpus and usage.ns_gpus.get(ns, 0) + entry.gpus > limits.ns_gpus:
        return NS_GPUS
    if limits.builds and usage.builds + 1 > limits.builds:
        return BUILDS
    if limits.gpus and entry.gpus and usage.gpus + entry.gpus > limits.gpus:
        return GPUS
    return None


def never_fits(gpus: int, limits: Limits) -> str | None:
    """Why a build could never start even on an idle cluster (it would wait forever), or None."""
    for cap, name in ((limits.gpus, GPUS), (limits.ns_gpus, NS_GPUS)):
        if cap and gpus > cap:
            return (
                f"spec.target.gpuCount: this build needs {gpus} GPUs (gpuCount, else tensor x pipeline "
                f"parallelism) but {name}={cap} allows at most {cap} at once: lower it, or ask the "
                "operator's admin to raise the cap"
            )
    return None


def order(entries: Iterable[QueueEntry]) -> list[QueueEntry]:
    """Work class first (new builds and spec changes before builder upgrades); within a class
    round-robin across namespaces, oldest first within each: every namespace's oldest build, then
    every namespace's second oldest, ... (ties by age, then namespace/name). A namespace that queues
    500 builds does not make another namespace's one build wait behind all of them."""
    by_class_ns: dict[tuple[int, str], list[QueueEntry]] = {}
    for e in sorted(entries):
        by_class_ns.setdefault((e.work, e.namespace), []).append(e)
    ranked = [(work, rank, e) for (work, _), es in by_class_ns.items() for rank, e in enumerate(es)]
    return [e for _, _, e in sorted(ranked)]


@dataclass(frozen=True)
class Step:
    entry: QueueEntry
    starts: bool
    blocked_by: str | None = None  # the cap that holds it (or the build before it) back


def walk(held: Usage, queue: Iterable[QueueEntry], limits: Limits) -> list[Step]:
    """The queue in serving order, each build marked as starting now or not (and why not)."""
    usage = held.copy()
    stopped: str | None = None  # a global cap stopped the line
    gpu_line = False  # the line waits for GPUs: builds without GPUs may still pass
    held_ns: dict[str, str] = {}  # namespaces whose earlier build is over a namespace cap
    out = []
    for e in order(queue):
        if never_fits(e.gpus, limits):
            out.append(Step(e, False, GPUS))  # refused by reconcile; must not stop the line
            continue
        if e.namespace in held_ns:
            out.append(Step(e, False, held_ns[e.namespace]))
            continue
        if stopped and not (gpu_line and e.gpus == 0):
            out.append(Step(e, False, stopped))
            continue
        why = blocker(e, usage, limits)
        if why is None:
            usage.add(e.namespace, e.gpus)
            out.append(Step(e, True))
        elif why in (NS_BUILDS, NS_GPUS):
            held_ns[e.namespace] = why
            out.append(Step(e, False, why))
        else:
            stopped = stopped or why
            gpu_line = stopped == GPUS
            out.append(Step(e, False, why))
    return out


@dataclass(frozen=True)
class Decision:
    admit: bool
    ahead: int  # queued builds served before this one
    blocked_by: str | None


def decide(
    entry: QueueEntry,
    held: Usage,
    queue: Iterable[QueueEntry],
    limits: Limits,
    skip: Container[str] = (),
) -> Decision:
    """May this build start its Job now? The queued builds served before it take the room first;
    `skip`: builds whose admission failed and that wait for a retry do not hold others back."""
    others = [e for e in queue if e.uid != entry.uid and e.uid not in skip]
    steps = walk(held, [*others, entry], limits)
    at = next(i for i, s in enumerate(steps) if s.entry.uid == entry.uid)
    return Decision(steps[at].starts, at, steps[at].blocked_by)


def startable(
    held: Usage, queue: Iterable[QueueEntry], limits: Limits, backoff: Mapping[str, float], now: float
) -> list[QueueEntry]:
    """Queued builds that may start now, in serving order, without those whose failed admission
    waits for its retry time (`backoff`: uid -> monotonic time)."""
    ready = [e for e in queue if backoff.get(e.uid, 0.0) <= now]
    return [s.entry for s in walk(held, ready, limits) if s.starts]


def backing_off(backoff: Mapping[str, float], now: float) -> frozenset[str]:
    return frozenset(uid for uid, until in backoff.items() if until > now)


def waiting_message(d: Decision, entry: QueueEntry, held: Usage, limits: Limits) -> str:
    """Which cap the build waits for, with the live counts when it queued."""
    ns = entry.namespace
    if d.blocked_by == GPUS:
        why = f"{held.gpus} of {limits.gpus} GPUs in use ({GPUS})"
    elif d.blocked_by == NS_BUILDS:
        active = held.ns_builds.get(ns, 0)
        why = f"{active} of {limits.ns_builds} builder Jobs of namespace {ns} active ({NS_BUILDS})"
    elif d.blocked_by == NS_GPUS:
        why = f"{held.ns_gpus.get(ns, 0)} of {limits.ns_gpus} GPUs of namespace {ns} in use ({NS_GPUS})"
    else:
        why = f"{held.builds} of {limits.builds} builder Jobs active ({BUILDS})"
    if d.blocked_by in (GPUS, NS_GPUS):
        why += f", this build needs {entry.gpus}"
    where = f"{d.ahead} queued build{'s' if d.ahead != 1 else ''} ahead" if d.ahead else "next in line"
    return f"waiting for a build slot: {why}, {where}"


def upgrade_message(up: Upgrade, key: str) -> str:
    return (
        f"builder image for {up.backend} changed from {up.old_image} to {up.new_image}: rebuilding "
        f"(cache key {key[:12]}); status.engine keeps the previous engine until the new one is published"
    )
