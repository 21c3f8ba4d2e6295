"""Events go through the project's client (pitcrew.events), from handlers and the poller alike."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pitcrew import events
from pitcrew.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
EB = {"metadata": {"name": "llama", "namespace": "team-a", "uid": "u-1"}}


def test_event_body_names_the_engine_build() -> None:
    body = events.event_body(
        EB, "Warning", "PolicyViolation", "x" * 5000, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    )
    assert body["metadata"] == {"generateName": "llama.", "namespace": "team-a"}
    assert body["involvedObject"] == {
        "apiVersion": "pitcrew.dev/v1alpha1", "kind": "EngineBuild", "name": "llama", "namespace": "team-a",
        "uid": "u-1",
    }  # fmt: skip
    assert body["type"] == "Warning" and body["reason"] == "PolicyViolation"
    assert len(body["message"]) == events.MAX_MESSAGE and body["lastTimestamp"] == "2026-01-02T03:04:05Z"


class FakeKube:
    def __init__(self) -> None:
        self.created: list[tuple[str, dict[str, Any]]] = []

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append((path, body))
        return body


def test_post_works_outside_any_kopf_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube()
    rt = Runtime()
    rt.kube = kube  # type: ignore[assignment]
    monkeypatch.setattr(events, "RT", rt)

    async def scenario() -> None:
        events.post(EB, "Normal", "CacheHit", "engine already published")
        await asyncio.sleep(0)
        await asyncio.gather(*events._tasks)

    asyncio.run(scenario())
    ((path, body),) = kube.created
    assert path == "/api/v1/namespaces/team-a/events" and body["reason"] == "CacheHit"


def test_no_kopf_private_modules() -> None:
    for file in (ROOT / "operator" / "pitcrew").rglob("*.py"):
        assert "kopf._" not in file.read_text(), file


def test_kopf_is_pinned_to_the_tested_minor() -> None:
    """The controller uses kopf's public API only, and only the minor it was tested with: a new
    kopf minor is a deliberate upgrade (change the pin, run the suite), not an accident of pip."""
    import importlib.metadata
    import re
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "operator"
    ]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == "kopf"]
    installed = importlib.metadata.version("kopf")
    assert req.specifier.contains(installed), (str(req), installed)
    # A minor, not a range of minors: the upper bound is the next minor.
    minor = re.match(r"(\d+)\.(\d+)", installed)
    assert minor is not None
    nxt = f"{minor.group(1)}.{int(minor.group(2)) + 1}.0"
    assert not req.specifier.contains(nxt), str(req)
