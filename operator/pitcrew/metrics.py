"""Prometheus metrics: builds by phase, build durations, cache hits, active Jobs, queued builds."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pitcrew.api.v1alpha1 import Phase

BUILD_DURATION = Histogram(
    "pitcrew_build_duration_seconds",
    "Wall time from Job creation to the build's end, by backend and result.",
    ["backend", "result"],
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800),
)
CACHE_HITS = Counter("pitcrew_cache_hits_total", "Builds served from a published engine (no Job).")
JOBS_CREATED = Counter("pitcrew_jobs_created_total", "Builder Jobs created.")
TRANSITIONS = Counter(
    "pitcrew_transitions_total", "Phase transitions, by phase and reason.", ["phase", "reason"]
)
ERRORS = Counter("pitcrew_reconcile_errors_total", "Reconcile attempts that failed, by kind.", ["kind"])


class State:
    """Live counts fed by watch events (no API calls at scrape time)."""

    def __init__(self) -> None:
        self.phases: dict[str, str] = {}  # EngineBuild uid -> phase
        self.active_jobs: set[str] = set()  # Job uids without a terminal condition
        self.queued_builds = 0  # EngineBuilds waiting for a build slot

    def set_phase(self, uid: str, phase: str | None) -> None:
        self.phases[uid] = phase or Phase.PENDING.value

    def forget(self, uid: str) -> None:
        self.phases.pop(uid, None)


STATE = State()


class _Collector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        builds = GaugeMetricFamily("pitcrew_builds", "EngineBuilds by phase.", labels=["phase"])
        counts = {p.value: 0 for p in Phase}
        # A copy: /metrics is served from another thread while watch events change the dict.
        for phase in list(STATE.phases.values()):
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in sorted(counts.items()):
            builds.add_metric([phase], n)
        yield builds
        yield GaugeMetricFamily(
            "pitcrew_active_jobs", "Builder Jobs still running.", value=len(STATE.active_jobs)
        )
        yield GaugeMetricFamily(
            "pitcrew_queued_builds",
            "EngineBuilds waiting for a build slot (PITCREW_MAX_ACTIVE_BUILDS).",
            value=STATE.queued_builds,
        )


_registered = False


def serve(port: int) -> None:
    global _registered
    if not _registered:
        REGISTRY.register(_Collector())
        _registered = True
    if port:
        start_http_server(port)
