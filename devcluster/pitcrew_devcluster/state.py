"""The state directory: where a running devcluster records its processes, ports and credentials."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DevclusterError
from .procs import Proc, is_alive

STATE_FILE = "state.json"


def default_state_dir() -> Path:
    """$PITCREW_STATE_DIR, else .pitcrew/devcluster in the current directory (the Makefile runs
    from the checkout and sets it)."""
    env = os.environ.get("PITCREW_STATE_DIR")
    return Path(env).resolve() if env else Path.cwd() / ".pitcrew" / "devcluster"


@dataclass
class State:
    state_dir: Path
    procs: list[Proc] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.state_dir / STATE_FILE

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"procs": [p.to_json() for p in self.procs], "info": self.info}, indent=2))
        tmp.replace(self.path)  # atomic: readers never see half a file

    def live(self) -> list[Proc]:
        return [p for p in self.procs if is_alive(p)]

    def proc(self, name: str) -> Proc | None:
        return next((p for p in self.procs if p.name == name), None)


def load(state_dir: Path) -> State | None:
    path = state_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise DevclusterError(
            f"{path} is corrupt ({e}); delete it and any leftover processes", component="state"
        ) from e
    return State(
        state_dir=state_dir, procs=[Proc.from_json(p) for p in raw.get("procs", [])], info=raw.get("info", {})
    )


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Exclusive lock on the state dir for the duration of `up`/`down` (a concurrent one is refused)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DevclusterError(
                f"another `up` or `down` is in progress on {state_dir}; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
