"""Starting component processes in their own process groups, checking and stopping them.

A process is identified by (pid, start time) so that `down` never signals a recycled pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import DevclusterError, tail

_ERROR_LINE = re.compile(
    r"error|fatal|panic|fail|invalid|unknown|not defined|cannot|can't|address already in use", re.I
)


@dataclass
class Proc:
    name: str
    pid: int
    start_ticks: int
    log: str
    argv: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Proc:
        return cls(**d)


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after the last ')' are fixed.
    return raw[raw.rfind(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    # starttime is field 22 overall, i.e. index 19 after (pid) and (comm).
    return int(fields[19]) if fields else None


def alive(pid: int, ticks: int | None = None) -> bool:
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return ticks is None or int(fields[19]) == ticks


def is_alive(p: Proc) -> bool:
    return alive(p.pid, p.start_ticks)


def launch(
    name: str, argv: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[Proc, subprocess.Popen[bytes]]:
    """Starts `argv` in a new session (so it outlives `up` and dies with one killpg), output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with log.open("ab") as out:
        out.write(
            f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} starting: {' '.join(argv)}\n".encode()
        )
        out.flush()
        try:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as e:
            # ENOEXEC / EACCES here means a truncated or foreign binary: the cache is stale.
            raise DevclusterError(
                f"cannot execute {argv[0]}: {e.strerror}; the binary cache may be stale: delete "
                f"{Path(argv[0]).parent} and run hack/build-tools.sh",
                component=name,
                log=log,
            ) from e
    ticks = start_ticks(popen.pid) or 0
    return Proc(name=name, pid=popen.pid, start_ticks=ticks, log=str(log), argv=argv), popen


def exited_error(p: Proc, returncode: int | None = None) -> DevclusterError:
    code = f" with code {returncode}" if returncode is not None else ""
    recent = tail(Path(p.log), 200)
    # Go servers often print usage after the error: show the error lines when there are some.
    errors = [ln for ln in recent.splitlines() if _ERROR_LINE.search(ln) and not ln.startswith("--- ")]
    last = "\n".join(ln[:300] for ln in errors[-6:]) if errors else "\n".join(recent.splitlines()[-12:])
    hint = ""
    if "address already in use" in recent:
        hint = " (a port it needs is already in use)"
    msg = f"exited early{code}{hint}"
    if last:
        msg += "; last log lines:\n" + "\n".join("    " + ln for ln in last.splitlines()) + "\n "
    return DevclusterError(msg, component=p.name, log=Path(p.log))


def stop_all(procs: list[Proc], grace: float = 10.0) -> list[str]:
    """SIGTERM every live process group, SIGKILL what is left after `grace`; returns what was killed."""
    pending = [p for p in procs if is_alive(p)]
    for p in pending:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        time.sleep(0.1)
        _reap(pending)
        pending = [p for p in pending if is_alive(p)]
    for p in pending:
        _signal_group(p, signal.SIGKILL)
    time.sleep(0.1 if pending else 0)
    _reap(pending)
    return [p.name for p in pending]


def _signal_group(p: Proc, sig: int) -> None:
    # Each component leads its own session, so its pgid is its pid; kill the group so helper
    # children (e.g. Go's) die too. Fall back to the pid alone if the group is gone.
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, sig)
    except PermissionError:
        pass


def _reap(procs: list[Proc]) -> None:
    # Children of this very process (pytest fixture) stay zombies until waited for.
    for p in procs:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(p.pid, os.WNOHANG)
