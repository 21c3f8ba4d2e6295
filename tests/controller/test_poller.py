"""The timers are separate loops: a slow follow pass (S3 reads for progress) does not hold up
admissions, and a failing pass does not end its loop (pitcrew.poller)."""

from __future__ import annotations

import asyncio

import pytest

from pitcrew import poller, reconcile
from pitcrew.runtime import Runtime
from pitcrew.settings import Settings


def test_a_slow_follow_pass_does_not_hold_up_admissions(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = Runtime(settings=Settings.from_env({"PITCREW_POLL_SECONDS": "0.1"}))
    monkeypatch.setattr(poller, "RT", rt)
    admitted: list[int] = []
    failures = {"n": 0}

    async def slow_follow() -> None:
        await asyncio.sleep(10)  # e.g. an S3 endpoint that hangs

    async def admit() -> None:
        admitted.append(1)
        if len(admitted) == 2:
            failures["n"] += 1
            raise RuntimeError("API hiccup")  # counted and logged; the loop goes on

    monkeypatch.setattr(poller, "follow_in_flight", slow_follow)
    monkeypatch.setattr(reconcile, "admit_queued", admit)

    async def go() -> None:
        tasks = poller.start()
        await asyncio.sleep(1.0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(go())
    assert len(admitted) >= 3 and failures["n"] == 1
