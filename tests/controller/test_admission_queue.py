"""Queue head-of-line blocking: one queued build whose admission keeps failing must not stop the rest.

reconcile.admit_queued runs against a fake API client; the build's own reconcile is replaced by
one that fails (as a queued build whose S3 bucket is unreachable does, with kopf.TemporaryError)
for the oldest build and starts a Job through the real start_job for the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import kopf
import pytest

from pitcrew import reconcile, slots
from pitcrew.runtime import Runtime
from pitcrew.settings import Settings


class FakeKube:
    def __init__(self, names: list[str]) -> None:
        self.bodies = {
            n: {
                "metadata": {
                    "name": n,
                    "namespace": "a",
                    "uid": n,
                    "creationTimestamp": f"2026-01-01T10:00:0{i}Z",
                }
            }
            for i, n in enumerate(names)
        }
        self.created: list[str] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        return self.bodies.get(path.rsplit("/", 1)[1])

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return []

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append(body["metadata"]["name"])
        return body

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return body


def _entry(body: dict[str, Any]) -> slots.QueueEntry:
    m = body["metadata"]
    return slots.QueueEntry(
        created=m["creationTimestamp"], namespace=m["namespace"], name=m["name"], uid=m["uid"]
    )


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    runtime = Runtime(
        settings=Settings.from_env({"PITCREW_MAX_ACTIVE_BUILDS": "2", "PITCREW_RETRY_SECONDS": "30"})
    )
    runtime.kube = FakeKube(["broken", "good1", "good2", "good3"])  # type: ignore[assignment]
    runtime.jobs_primed = True
    monkeypatch.setattr(reconcile, "RT", runtime)

    async def fake_reconcile(body: dict[str, Any], cause: str, *, attempt: int = 0) -> None:
        if body["metadata"]["name"] == "broken":
            raise kopf.TemporaryError("spec.source.uri: cannot list the checkpoint: S3 unreachable")
        job = {"metadata": {"name": body["metadata"]["name"] + "-job"}, "spec": {}}
        await reconcile.start_job(body, _entry(body), job, "k" * 64)

    monkeypatch.setattr(reconcile, "reconcile", fake_reconcile)
    for body in runtime.kube.bodies.values():  # type: ignore[attr-defined]
        runtime.queue[body["metadata"]["uid"]] = _entry(body)
    return runtime


def test_a_failing_head_does_not_block_admissions(rt: Runtime) -> None:
    asyncio.run(reconcile.admit_queued())
    kube: FakeKube = rt.kube  # type: ignore[assignment]
    # Two slots: the two oldest builds that can start, start; the broken one waits for its retry.
    assert kube.created == ["good1-job", "good2-job"]
    assert set(rt.queue) == {"broken", "good3"}
    assert rt.admit_backoff["broken"] > time.monotonic() + 20


def test_a_build_backing_off_is_not_counted_ahead(rt: Runtime) -> None:
    """A new build is not held back by a failing older one (nor is it over the cap)."""
    rt.queue = {"broken": rt.queue["broken"]}
    rt.admit_backoff["broken"] = time.monotonic() + 30
    body = rt.kube.bodies["good1"]  # type: ignore[attr-defined]
    job = {"metadata": {"name": "good1-job"}, "spec": {}}
    assert asyncio.run(reconcile.start_job(body, _entry(body), job, "k" * 64)) is None


def test_retry_time_passed_means_tried_again() -> None:
    a = slots.QueueEntry("2026-01-01T10:00:00Z", "a", "x", "x")
    b = slots.QueueEntry("2026-01-01T10:00:01Z", "a", "y", "y")
    none, one = slots.Usage(), slots.Limits(builds=1)
    assert slots.startable(none, [b, a], one, {"x": 100.0}, now=50.0) == [b]
    assert slots.startable(none, [b, a], one, {"x": 100.0}, now=150.0) == [a]
    assert slots.decide(b, none, [a, b], one, skip={"x"}).ahead == 0
    assert slots.decide(b, none, [a, b], one).ahead == 1


def test_the_order_is_computed_again_before_every_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new build queued while admissions run goes before the builder upgrades still waiting."""
    runtime = Runtime(settings=Settings.from_env({"PITCREW_MAX_ACTIVE_BUILDS": "2"}))
    kube = FakeKube(["up1", "up2", "up3", "fresh"])
    runtime.kube = kube  # type: ignore[assignment]
    runtime.jobs_primed = True
    monkeypatch.setattr(reconcile, "RT", runtime)
    entries = {
        n: dataclasses.replace(_entry(b), work=slots.NEW if n == "fresh" else slots.UPGRADE)
        for n, b in kube.bodies.items()
    }

    async def fake_reconcile(body: dict[str, Any], cause: str, *, attempt: int = 0) -> None:
        name = body["metadata"]["name"]
        if name == "up1":
            # While the first upgrade starts, a new EngineBuild arrives and queues (no slot free
            # for it at that moment: the admission holds the slot up1 is about to take).
            runtime.queue["fresh"] = entries["fresh"]
        job = {"metadata": {"name": name + "-job"}, "spec": {}}
        await reconcile.start_job(body, entries[name], job, "k" * 64)

    monkeypatch.setattr(reconcile, "reconcile", fake_reconcile)
    for n in ("up1", "up2", "up3"):
        runtime.queue[n] = entries[n]
    asyncio.run(reconcile.admit_queued())
    # Two slots: up1 (oldest upgrade), then the new build, not up2 (an order sorted once would).
    assert kube.created == ["up1-job", "fresh-job"]
    assert set(runtime.queue) == {"up2", "up3"}
