"""Bring-up failures: one clear message naming the component and its log, and nothing left running
(tests/e2e/test_real_node.py shows `down` stopping a node with a running pod)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from controller.harness import BUILD_TOOLS
from e2e.realnode_support import host_problem
from pitcrew_devcluster import DevclusterError, UpOptions, cluster, controlplane, readiness, up
from pitcrew_devcluster.procs import alive
from pitcrew_devcluster.state import STATE_FILE

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(host_problem() is not None, reason=str(host_problem()))]


def _pids_started(state_dir: Path) -> list[int]:
    """Pids from the component logs' first lines are not recorded; use the processes' cmdlines."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(state_dir) in (proc / "cmdline").read_text():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return [p for p in pids if alive(p)]


def test_component_exiting_early_is_named(short_state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = controlplane.etcd

    def broken_etcd(*args: object, **kwargs: object) -> list[str]:
        return [*real(*args, **kwargs), "--no-such-flag"]  # type: ignore[arg-type]

    monkeypatch.setattr(controlplane, "etcd", broken_etcd)
    start = time.monotonic()
    with pytest.raises(DevclusterError) as err:
        # A phase timeout far beyond the check below: only noticing the exit can end `up` in time.
        up(UpOptions(state_dir=short_state_dir, build=False, build_tools=BUILD_TOOLS, s3=False, timeout=600))
    elapsed = time.monotonic() - start
    message = str(err.value)
    assert message.startswith("etcd: exited early with code"), message
    assert "no-such-flag" in message
    assert f"(log: {short_state_dir}/logs/etcd.log)" in message
    assert elapsed < 300, f"the exit was noticed only after {elapsed:.0f} s (phase timeout 600 s)"
    assert not (short_state_dir / STATE_FILE).exists()
    assert _pids_started(short_state_dir) == []


def test_readiness_timeout_is_named(short_state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "node_ready", lambda client, name: False)
    real_wait = readiness.wait

    def wait(checks: list[readiness.Check], running: Any, *, timeout: float, **kwargs: Any) -> None:
        # The node's phase times out after 15 s; the others (a second etcd and apiserver starting
        # next to the session's cluster on a busy machine) get a generous 300 s.
        node_phase = any(c.component.startswith("node ") for c in checks)
        real_wait(checks, running, timeout=15 if node_phase else 300, **kwargs)

    monkeypatch.setattr(readiness, "wait", wait)
    with pytest.raises(DevclusterError) as err:
        up(UpOptions(state_dir=short_state_dir, build=False, build_tools=BUILD_TOOLS, s3=False))
    message = str(err.value)
    assert re.match(r"(?s)node pitcrew-local: not ready after 15 s .*kubelet\.log", message), message
    assert _pids_started(short_state_dir) == []
