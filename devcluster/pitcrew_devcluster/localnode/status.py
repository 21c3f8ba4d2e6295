"""Building the pod status a kubelet would report (pure, so the shapes are unit-tested)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .podspec import LOCAL_IP

Obj = dict[str, Any]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class ContainerState:
    """One container's reported state; `state` is one of waiting/running/terminated."""

    name: str
    image: str
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    restart_count: int = 0
    container_id: str = ""

    def waiting(self, reason: str, message: str = "") -> None:
        self.state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}

    def running(self, started_at: str, pid: int) -> None:
        self.container_id = f"localnode://{pid}"
        self.state = {"running": {"startedAt": started_at}}

    def terminated(self, exit_code: int, reason: str, message: str, started_at: str, finished_at: str) -> Obj:
        term: Obj = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": started_at,
            "finishedAt": finished_at,
            "containerID": self.container_id,
        }
        if message:
            term["message"] = message
        self.state = {"terminated": term}
        return term

    @property
    def is_running(self) -> bool:
        return "running" in self.state

    @property
    def exit_code(self) -> int | None:
        term = self.state.get("terminated")
        return None if term is None else int(term["exitCode"])

    def to_status(self) -> Obj:
        out: Obj = {
            "name": self.name,
            "image": self.image,
            "imageID": f"localnode://{self.image}",
            "ready": self.is_running,
            "started": self.is_running,
            "restartCount": self.restart_count,
            # Explicit nulls: a strategic merge must not keep a stale "waiting" beside "running".
            "state": {"waiting": None, "running": None, "terminated": None, **self.state},
            "lastState": self.last_state,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


class Conditions:
    """Pod conditions whose lastTransitionTime only moves when the status changes."""

    def __init__(self) -> None:
        self._conds: dict[str, Obj] = {}

    def set(self, ctype: str, ok: bool, reason: str = "") -> None:
        status = "True" if ok else "False"
        old = self._conds.get(ctype)
        if old and old["status"] == status and old.get("reason", "") == reason:
            return
        cond: Obj = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": now()}
        if reason:
            cond["reason"] = reason
        self._conds[ctype] = cond

    def to_list(self) -> list[Obj]:
        return list(self._conds.values())


def pod_status(
    phase: str,
    start_time: str,
    conditions: Conditions,
    init: list[ContainerState],
    main: list[ContainerState],
    *,
    reason: str = "",
    message: str = "",
) -> Obj:
    status: Obj = {
        "phase": phase,
        "hostIP": LOCAL_IP,
        "hostIPs": [{"ip": LOCAL_IP}],
        "podIP": LOCAL_IP,
        "podIPs": [{"ip": LOCAL_IP}],
        "startTime": start_time,
        "conditions": conditions.to_list(),
        "containerStatuses": [c.to_status() for c in main],
    }
    if init:
        status["initContainerStatuses"] = [c.to_status() for c in init]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return status


def terminal_phase(main: list[ContainerState]) -> str | None:
    """Succeeded when every container exited 0, Failed when all exited and one did not, else None."""
    codes = [c.exit_code for c in main]
    if any(code is None for code in codes):
        return None
    return "Succeeded" if all(code == 0 for code in codes) else "Failed"
