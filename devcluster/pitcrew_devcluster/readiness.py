"""Waits for several components at once, failing fast when one of them dies."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import DevclusterError, tail
from .procs import Proc, exited_error


@dataclass
class Check:
    component: str
    ready: Callable[[], bool]
    log: Path | None = None


def wait(
    checks: list[Check],
    running: list[tuple[Proc, subprocess.Popen[bytes] | None]],
    *,
    timeout: float,
    on_ready: Callable[[str, float], None] | None = None,
) -> None:
    """Polls every check until all pass; raises naming the component and its log when a process
    exits or the deadline passes. Never blocks longer than `timeout` plus one check's own timeout."""
    start = time.monotonic()
    pending = list(checks)
    while pending:
        for proc, popen in running:
            code = popen.poll() if popen is not None else None
            if code is not None:
                raise exited_error(proc, code)
        for check in list(pending):
            try:
                ok = check.ready()
            except Exception:  # a check that cannot connect yet is simply not ready
                ok = False
            if ok:
                pending.remove(check)
                if on_ready:
                    on_ready(check.component, time.monotonic() - start)
        if not pending:
            return
        if time.monotonic() - start > timeout:
            first = pending[0]
            names = ", ".join(c.component for c in pending)
            last = tail(first.log, 5) if first.log else ""
            detail = "".join(f"\n    {ln[:300]}" for ln in last.splitlines())
            raise DevclusterError(
                f"not ready after {timeout:.0f} s (waiting for: {names})"
                + (f"; last log lines:{detail}\n " if detail else ""),
                component=first.component,
                log=first.log,
            )
        time.sleep(0.2)
