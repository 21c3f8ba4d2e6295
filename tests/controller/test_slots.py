"""Builder upgrades and the build-slot queue: the pure decisions (pitcrew.slots, conditions)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pitcrew import conditions, jobs, reconcile, slots, statuses
from pitcrew.api.v1alpha1 import Phase
from pitcrew.jobview import holds_slot as job_active
from pitcrew.runtime import Runtime
from pitcrew.settings import Settings

OLD, NEW, RTX = "reg/builder:1", "reg/builder:2", "reg/builder-rtx:1"
SETTINGS = Settings.from_env(
    {
        "PITCREW_BUILDER_IMAGE": NEW,
        "PITCREW_CHECKPOINT_BUILDER_IMAGE": NEW,
        "PITCREW_RTX_BUILDER_IMAGE": RTX,
    }
)


def _eb(
    phase: str = "Succeeded", image: str | None = OLD, generation: int = 3, **spec: Any
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "observedGeneration": 3}
    if image:
        status["builderImage"] = image
    return {"metadata": {"generation": generation}, "spec": spec, "status": status}


def test_unpinned_finished_build_of_another_image_is_upgraded() -> None:
    up = slots.needs_upgrade(_eb(), SETTINGS)
    assert up == slots.Upgrade(backend="tensorrt-llm", old_image=OLD, new_image=NEW)
    # Failed builds too: a new builder may fix them.
    assert slots.needs_upgrade(_eb(phase="Failed"), SETTINGS) is not None
    # The image is the one of the build's backend.
    assert slots.needs_upgrade(_eb(image=RTX, backend="tensorrt-rtx"), SETTINGS) is None
    assert slots.needs_upgrade(_eb(image=NEW, backend="tensorrt-rtx"), SETTINGS) == slots.Upgrade(
        backend="tensorrt-rtx", old_image=NEW, new_image=RTX
    )


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (_eb(builderImage=OLD), "pinned by the spec"),
        (_eb(image=NEW), "already built with the current image"),
        (_eb(phase="Building"), "still running: checked again when it finishes"),
        (_eb(phase="Queued"), "queued: will use the current image anyway"),
        (_eb(generation=4), "a spec change is pending"),
        (_eb(phase="Failed", image=None), "InvalidSpec: never reached a builder"),
        (_eb(backend="no-such-backend"), "unknown backend"),
    ],
)
def test_no_upgrade(body: dict[str, Any], why: str) -> None:
    assert slots.needs_upgrade(body, SETTINGS) is None, why


def test_admission_given_active_count_and_cap() -> None:
    assert slots.admit(active=0, cap=1)
    assert not slots.admit(active=1, cap=1)
    assert slots.admit(active=7, cap=8) and not slots.admit(active=8, cap=8)
    assert not slots.admit(active=9, cap=8)  # e.g. the cap was lowered
    # Builds queued ahead take the free slots first.
    assert slots.admit(active=5, cap=8, ahead=2) and not slots.admit(active=5, cap=8, ahead=3)
    # 0: no cap.
    assert slots.admit(active=10_000, cap=0, ahead=10_000)


def _entry(created: str, name: str, ns: str = "a") -> slots.QueueEntry:
    return slots.QueueEntry(created=created, namespace=ns, name=name, uid=f"{ns}/{name}")


def test_queue_is_round_robin_across_namespaces_oldest_first_within() -> None:
    c = _entry("2026-01-01T10:00:02Z", "c")
    a = _entry("2026-01-01T10:00:01Z", "z")
    b1 = _entry("2026-01-01T10:00:02Z", "b", ns="a")
    b2 = _entry("2026-01-01T10:00:02Z", "b", ns="b")
    # Namespace b's only build goes right after namespace a's oldest, not behind all of a's.
    assert slots.order([c, b2, a, b1]) == [a, b2, b1, c]
    queue = [c, b2, a, b1]
    assert [slots.ahead_of(e, queue) for e in (a, b2, b1, c)] == [0, 1, 2, 3]
    # A new build of a namespace with three queued waits behind them and the others' first rounds.
    assert slots.ahead_of(_entry("2026-01-01T10:00:03Z", "new"), queue) == 4
    # A new build of a namespace with nothing queued goes into the first round.
    assert slots.ahead_of(_entry("2026-01-01T10:00:03Z", "new", ns="c"), queue) == 2


def test_one_namespace_flooding_the_queue_does_not_starve_another() -> None:
    flood = [_entry(f"2026-01-01T10:00:{i:02d}Z", f"f{i}", ns="big") for i in range(50)]
    late = _entry("2026-01-01T11:00:00Z", "one", ns="small")
    assert slots.order([*flood, late])[:2] == [flood[0], late]


def test_waiting_message_says_where_the_build_stands() -> None:
    assert slots.waiting_message(8, 8, 3) == (
        "waiting for a build slot: 8 of 8 builder Jobs active (PITCREW_MAX_ACTIVE_BUILDS), "
        "3 queued builds ahead"
    )
    assert slots.waiting_message(1, 1, 0).endswith("next in line")


def _job(*conds: tuple[str, str], deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "j"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": t, "status": s} for t, s in conds]}}


def test_active_jobs_are_counted_from_the_job_view() -> None:
    assert job_active(_job())
    assert job_active(_job(("Suspended", "False")))
    assert not job_active(_job(("Complete", "True")))
    assert not job_active(_job(("Failed", "True")))
    assert not job_active(_job(deleting=True))
    rt = Runtime(settings=SETTINGS)
    rt.jobs = {"u1": {"a": _job(), "b": _job(("Complete", "True"))}, "u2": {"c": _job()}}
    assert rt.active_jobs() == 2


def _by_type(conds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conds}


def test_upgrade_keeps_ready_of_a_succeeded_build_and_reports_reconciling() -> None:
    done = statuses.compose(
        None, phase=Phase.SUCCEEDED, reason="Succeeded", message="ok", generation=1, now="t1"
    )
    start = statuses.compose(
        done, phase=Phase.QUEUED, reason=slots.REASON_UPGRADE, message="rebuilding", generation=1, now="t2",
        upgrade=True,
    )  # fmt: skip
    c = _by_type(start["conditions"])
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("True", conditions.BUILDER_UPGRADE)
    assert c["Ready"]["lastTransitionTime"] == "t1"  # it never stopped being Ready
    assert (c["Reconciling"]["status"], c["Reconciling"]["reason"]) == ("True", conditions.BUILDER_UPGRADE)
    assert c["Stalled"]["status"] == "False"
    # Later writes (the Job's phases) keep the upgrade state without being told.
    building = statuses.compose(
        start, phase=Phase.BUILDING, reason="Building", message="b", generation=1, now="t3"
    )
    c = _by_type(building["conditions"])
    assert c["Ready"]["status"] == "True" and c["Reconciling"]["reason"] == conditions.BUILDER_UPGRADE
    # The end: ordinary terminal conditions.
    end = statuses.compose(
        building, phase=Phase.SUCCEEDED, reason="Succeeded", message="e", generation=1, now="t4"
    )
    c = _by_type(end["conditions"])
    assert c["Reconciling"]["status"] == "False" and c["Ready"]["reason"] == "Succeeded"
    assert not conditions.upgrading(end["conditions"])


def test_upgrade_of_a_failed_build_is_not_ready_and_a_spec_change_ends_an_upgrade() -> None:
    failed = statuses.compose(
        None, phase=Phase.FAILED, reason="OOMKilled", message="m", generation=1, now="t1"
    )
    start = statuses.compose(
        failed,
        phase=Phase.QUEUED,
        reason=slots.REASON_WAITING,
        message="w",
        generation=1,
        now="t2",
        upgrade=True,
    )
    c = _by_type(start["conditions"])
    assert c["Ready"]["status"] == "False" and c["Reconciling"]["reason"] == conditions.BUILDER_UPGRADE
    assert c["Stalled"]["status"] == "False"
    ok = statuses.compose(
        None, phase=Phase.SUCCEEDED, reason="Succeeded", message="ok", generation=1, now="t1"
    )
    up = statuses.compose(
        ok, phase=Phase.QUEUED, reason="x", message="w", generation=1, now="t2", upgrade=True
    )
    changed = statuses.compose(
        up, phase=Phase.QUEUED, reason="y", message="w", generation=2, now="t3", upgrade=False
    )
    c = _by_type(changed["conditions"])
    assert c["Ready"]["status"] == "False" and c["Reconciling"]["reason"] == "y"


class FakeKube:
    def __init__(self, listed: list[dict[str, Any]] | None = None) -> None:
        self.listed = listed or []
        self.created: list[str] = []
        self.lists = 0

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        self.lists += 1
        return self.listed

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append(body["metadata"]["name"])
        return body


def _listed_job(uid: str, name: str, *conds: tuple[str, str], job_uid: str = "") -> dict[str, Any]:
    """A Job as the controller makes it: controller ownerReference, labels, the expected name."""
    job = _job(*conds)
    key = "f" * 64
    job["metadata"].update(
        name=jobs.job_name(name, uid, key, 1),
        namespace="a",
        uid=job_uid or name,
        labels=jobs.labels(uid, key),
        annotations=jobs.job_annotations(name, key, 1),
        ownerReferences=[jobs.owner_reference(name, uid)],
    )
    return job


def _forged_job(uid: str) -> dict[str, Any]:
    """Labelled like ours, but not made by the controller (no owner reference to the build)."""
    job = _job()
    job["metadata"].update(
        name="forged", namespace="a", uid="forged", labels=jobs.labels(uid, "f" * 64),
        annotations=jobs.job_annotations("x", "f" * 64, 1),
    )  # fmt: skip
    return job


def _with_runtime(monkeypatch: pytest.MonkeyPatch, kube: FakeKube, cap: int) -> Runtime:
    rt = Runtime(settings=Settings.from_env({"PITCREW_MAX_ACTIVE_BUILDS": str(cap)}))
    rt.kube = kube  # type: ignore[assignment]
    monkeypatch.setattr(reconcile, "RT", rt)
    return rt


def test_restart_primes_the_job_view_before_admitting(monkeypatch: pytest.MonkeyPatch) -> None:
    # The watch has not replayed these yet: one running Job, one finished, one it saw deleted.
    kube = FakeKube(
        [
            _listed_job("u1", "running"),
            _listed_job("u2", "done", ("Complete", "True")),
            _listed_job("u3", "gone", job_uid="gone-uid"),
            _forged_job("u4"),  # must not take a slot
        ]
    )
    rt = _with_runtime(monkeypatch, kube, cap=2)
    rt.job_tombstones.add("gone-uid")

    def job(name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "spec": {}}

    async def scenario() -> list[tuple[int, int] | None]:
        out = []
        for i, name in enumerate(("n1", "n2", "n3")):
            entry = _entry(f"2026-01-01T10:00:0{i}Z", name)
            out.append(await reconcile.start_job({"metadata": {}}, entry, job(f"{name}-job"), "k" * 64))
        return out

    results = asyncio.run(scenario())
    # 1 Job was already running: one slot left, so n1 starts and the others queue.
    assert results == [None, (2, 0), (2, 1)]
    assert kube.created == ["n1-job"] and kube.lists == 1
    assert [e.name for e in slots.order(rt.queue.values())] == ["n2", "n3"]
    assert rt.jobs_primed and rt.active_jobs() == 2
