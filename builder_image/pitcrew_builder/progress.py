"""Overall progress of a build, logged and (throttled) written where the controller reads it.

The builder has no Kubernetes token, so progress goes to <engine_uri>/.pitcrew-progress.json as a
ProgressReport. Writes happen at stage changes and at most every `interval` seconds otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pitcrew.api.plan import PROGRESS_FILE, ProgressReport
from pitcrew_builder.logging import log_event, now_iso

# Share of the overall percentage each stage owns, in pipeline order.
STAGE_WEIGHTS: dict[str, int] = {
    "fetch": 20,
    "convert": 25,
    "compile": 35,
    "validate": 5,
    "publish": 15,
}
STAGES = tuple(STAGE_WEIGHTS)
DEFAULT_INTERVAL = 5.0

Sink = Callable[[ProgressReport], None]


def overall_percent(stage: str, fraction: float) -> int:
    """Stage-weighted percent; fraction is the stage's own progress in [0, 1]."""
    if stage not in STAGE_WEIGHTS:
        return 100 if stage == "done" else 0
    before = sum(STAGE_WEIGHTS[s] for s in STAGES[: STAGES.index(stage)])
    total = sum(STAGE_WEIGHTS.values())
    frac = min(max(fraction, 0.0), 1.0)
    return min(int((before + STAGE_WEIGHTS[stage] * frac) * 100 / total), 100)


def should_flush(*, now: float, last_flush: float | None, stage_changed: bool, interval: float) -> bool:
    return stage_changed or last_flush is None or now - last_flush >= interval


class ProgressReporter:
    def __init__(
        self,
        sink: Sink | None,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.interval = interval
        self.clock = clock
        self.stage: str | None = None
        self.percent = 0
        self._last_flush: float | None = None
        self._last_log: float | None = None
        self._lock = threading.Lock()
        self.sink_errors = 0

    def update(self, stage: str, fraction: float, message: str = "", **fields: Any) -> None:
        with self._lock:
            now = self.clock()
            changed = stage != self.stage
            self.stage = stage
            # Never move backwards within a run: a retried part must not make the bar jump.
            self.percent = max(self.percent if not changed else 0, overall_percent(stage, fraction))
            if changed or self._last_log is None or now - self._last_log >= min(self.interval, 2.0):
                self._last_log = now
                log_event(stage, "progress", percent=self.percent, message=message or None, **fields)
            if not should_flush(
                now=now, last_flush=self._last_flush, stage_changed=changed, interval=self.interval
            ):
                return
            self._last_flush = now
            report = ProgressReport(
                stage=stage, percent=self.percent, message=message[:500], updated_at=now_iso()
            )
        self._write(report)

    def _write(self, report: ProgressReport) -> None:
        if self.sink is None:
            return
        try:
            self.sink(report)
        except Exception as exc:  # progress is advisory: never fail a build over it
            self.sink_errors += 1
            log_event(report.stage, "progress-write-failed", level="warning", error=str(exc)[:500])

    def stage_callback(self, stage: str) -> Callable[[str, float], None]:
        """A (message, fraction) callback bound to one stage, the shape converters use."""

        def callback(message: str, fraction: float) -> None:
            self.update(stage, fraction, message)

        return callback


def store_sink(put_bytes: Callable[[str, bytes, str], None]) -> Sink:
    def sink(report: ProgressReport) -> None:
        put_bytes(PROGRESS_FILE, report.model_dump_json(by_alias=True).encode(), "application/json")

    return sink
