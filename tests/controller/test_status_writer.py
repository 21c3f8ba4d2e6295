"""One writer per EngineBuild (reconcile.write_status): writes are serialized per object, and a
write for an older generation than the newest seen is dropped. Against a fake API client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pitcrew import reconcile
from pitcrew.runtime import Runtime
from pitcrew.settings import Settings


class SlowKube:
    """merge_patch takes a while and notes whether another write to the same path overlapped."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.inside: set[str] = set()
        self.overlaps = 0

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path in self.inside:
            self.overlaps += 1
        self.inside.add(path)
        await asyncio.sleep(0.01)
        self.inside.discard(path)
        self.patches.append((path, body))
        return body


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    runtime = Runtime(settings=Settings())
    runtime.kube = SlowKube()  # type: ignore[assignment]
    monkeypatch.setattr(reconcile, "RT", runtime)
    return runtime


def test_writes_for_an_older_generation_are_dropped(rt: Runtime) -> None:
    kube: SlowKube = rt.kube  # type: ignore[assignment]
    rt.note_generation("u", 3)  # the watch has shown generation 3

    async def go() -> list[bool]:
        return [
            await reconcile.write_status("u", "a", "m", 2, {"phase": "Building"}),  # the old Job's news
            await reconcile.write_status("u", "a", "m", 3, {"phase": "Queued"}),
            await reconcile.write_status("u", "a", "m", 2, {"phase": "Succeeded"}),
        ]

    assert asyncio.run(go()) == [False, True, False]
    assert [b["status"]["phase"] for _, b in kube.patches] == ["Queued"]


def test_a_write_raises_the_newest_generation(rt: Runtime) -> None:
    async def go() -> list[bool]:
        first = await reconcile.write_status("u", "a", "m", 5, {"phase": "Queued"})
        return [first, await reconcile.write_status("u", "a", "m", 4, {"phase": "Building"})]

    assert asyncio.run(go()) == [True, False]
    assert rt.generations["u"] == 5


def test_writes_to_one_object_are_serialized_others_are_not(rt: Runtime) -> None:
    kube: SlowKube = rt.kube  # type: ignore[assignment]

    async def go() -> None:
        await asyncio.gather(
            *(reconcile.write_status("u", "a", "m", 1, {"n": i}) for i in range(5)),
            *(reconcile.write_status(f"v{i}", "a", f"o{i}", 1, {"n": i}) for i in range(5)),
        )

    asyncio.run(go())
    assert kube.overlaps == 0 and len(kube.patches) == 10
