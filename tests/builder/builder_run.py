"""Running the builder CLI as a subprocess, the way the Job runs it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    events: list[dict[str, Any]]
    result: dict[str, Any]
    stderr: str

    def find(self, stage: str, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("stage") == stage and e.get("event") == event]


def parse_events(stdout: str) -> list[dict[str, Any]]:
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


def builder_argv(plan: Path, work: Path, term: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pitcrew_builder",
        "build",
        "--plan",
        str(plan),
        "--work-dir",
        str(work),
        "--termination-log",
        str(term),
    ]


def subprocess_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PITCREW_"))}
    extra = dict(extra)
    # PYTHONPATH_EXTRA: directories put first on the path (e.g. the TensorRT-LLM contract double).
    first = [p for p in extra.pop("PYTHONPATH_EXTRA", "").split(os.pathsep) if p]
    extra.pop("PYTHONPATH_PREPEND", None)
    env["PYTHONPATH"] = os.pathsep.join([*first, str(REPO / "builder_image"), str(REPO / "operator")])
    env.update(extra)
    return env


def run_builder(plan: Path, work: Path, term: Path, env: dict[str, str], timeout: float = 600) -> Run:
    proc = subprocess.run(
        builder_argv(plan, work, term),
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    result = json.loads(term.read_text()) if term.exists() else {}
    return Run(proc.returncode, parse_events(proc.stdout), result, proc.stderr)
