"""Structured build log: one JSON object per line on stdout (kubectl logs, log shippers)."""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

_lock = threading.Lock()
_stream: TextIO | None = None


def set_stream(stream: TextIO | None) -> None:
    """Redirect the log (tests); None means sys.stdout at the time of each write."""
    global _stream
    _stream = stream


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def log_event(stage: str, event: str, *, level: str = "info", **fields: Any) -> None:
    """Emit one line: {"ts", "level", "stage", "event", ...fields}; None-valued fields are dropped."""
    record: dict[str, Any] = {"ts": now_iso(), "level": level, "stage": stage, "event": event}
    for key, value in fields.items():
        if value is None:
            continue
        record[key] = float(f"{value:.4g}") if isinstance(value, float) else value
    line = json.dumps(record, default=str, separators=(",", ":"))
    with _lock:
        stream = _stream or sys.stdout
        stream.write(line + "\n")
        stream.flush()


class StageTimer:
    """Logs `start` and `end` (with seconds) of a stage; used as a context manager."""

    def __init__(self, stage: str, timings: dict[str, float] | None = None) -> None:
        self.stage = stage
        self.timings = timings
        self.started = 0.0
        self.extra: dict[str, Any] = {}

    def __enter__(self) -> StageTimer:
        self.started = time.monotonic()
        log_event(self.stage, "start")
        return self

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        seconds = self.elapsed
        if self.timings is not None:
            self.timings[self.stage] = round(seconds, 3)
        if exc is None:
            log_event(self.stage, "end", seconds=seconds, **self.extra)
        else:
            log_event(self.stage, "failed", level="error", seconds=seconds, error=str(exc)[:2000])
