"""Builder upgrades and the build-slot queue: the pure decisions (pitcrew.slots, conditions)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pitcrew import conditions, jobs, reconcile, slots, statuses
from pitcrew.api.v1alpha1 import Phase
from pitcrew.jobview import holds_slot as job_active
from pitcrew.runtime import Runtime, trim_job
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


def _entry(created: str, name: str, ns: str = "a", gpus: int = 0, work: int = slots.NEW) -> slots.QueueEntry:
    return slots.QueueEntry(
        created=created, namespace=ns, name=name, uid=f"{ns}/{name}", gpus=gpus, work=work
    )


def _held(*jobs: tuple[str, int]) -> slots.Usage:
    """Active builder Jobs as (namespace, GPUs)."""
    return slots.Usage.of(jobs)


NEWBIE = _entry("2026-01-01T12:00:00Z", "newbie", gpus=1)


@pytest.mark.parametrize(
    ("held", "limits", "admit", "blocked_by"),
    [
        ([], slots.Limits(builds=1), True, None),
        ([("a", 0)], slots.Limits(builds=1), False, slots.BUILDS),
        ([("a", 0)] * 7, slots.Limits(builds=8), True, None),
        ([("a", 0)] * 9, slots.Limits(builds=8), False, slots.BUILDS),  # e.g. the cap was lowered
        ([("x", 0)] * 10_000, slots.Limits(), True, None),  # 0: no cap
        # GPUs: the build's own count must fit in what is left.
        ([("x", 7)], slots.Limits(gpus=8), True, None),
        ([("x", 8)], slots.Limits(gpus=8), False, slots.GPUS),
        ([("x", 8)], slots.Limits(builds=8, gpus=16), True, None),
        # Per namespace: only this namespace's Jobs count.
        ([("x", 4), ("x", 4)], slots.Limits(ns_builds=1, ns_gpus=1), True, None),
        ([("a", 0)], slots.Limits(ns_builds=1), False, slots.NS_BUILDS),
        ([("a", 0)], slots.Limits(ns_builds=2), True, None),
        ([("a", 1)], slots.Limits(ns_gpus=1), False, slots.NS_GPUS),
        ([("a", 1), ("b", 6)], slots.Limits(ns_gpus=2, gpus=8), True, None),
    ],
)
def test_admission_given_what_active_jobs_hold(
    held: list[tuple[str, int]], limits: slots.Limits, admit: bool, blocked_by: str | None
) -> None:
    d = slots.decide(NEWBIE, _held(*held), [], limits)
    assert (d.admit, d.blocked_by, d.ahead) == (admit, blocked_by, 0)


def test_a_build_without_gpus_is_not_held_by_a_gpu_cap() -> None:
    cpu = _entry("2026-01-01T12:00:00Z", "convert", gpus=0)
    assert slots.decide(cpu, _held(("x", 8)), [], slots.Limits(gpus=8)).admit


def test_queued_builds_ahead_take_the_free_room_first() -> None:
    older = [_entry(f"2026-01-01T10:00:0{i}Z", f"q{i}", gpus=1) for i in range(3)]
    # 5 of 8 builds: the two queued ahead take two slots, the third is this one's.
    d = slots.decide(NEWBIE, _held(*[("x", 0)] * 5), older[:2], slots.Limits(builds=8))
    assert (d.admit, d.ahead) == (True, 2)
    d = slots.decide(NEWBIE, _held(*[("x", 0)] * 5), older, slots.Limits(builds=8))
    assert (d.admit, d.ahead, d.blocked_by) == (False, 3, slots.BUILDS)
    # Same with GPUs: 4 of 6 in use, the one ahead takes one, one is left for this build.
    assert slots.decide(NEWBIE, _held(("x", 4)), older[:1], slots.Limits(gpus=6)).admit
    assert not slots.decide(NEWBIE, _held(("x", 4)), older[:2], slots.Limits(gpus=6)).admit
    # Builds waiting for a retry (skip) hold nobody back.
    assert slots.decide(NEWBIE, _held(*[("x", 0)] * 5), older, slots.Limits(builds=8), skip={"a/q0"}).admit


def test_no_backfill_past_a_build_waiting_for_gpus_except_builds_without_gpus() -> None:
    big = _entry("2026-01-01T10:00:00Z", "big", ns="a", gpus=4)
    small = _entry("2026-01-01T10:00:01Z", "small", ns="b", gpus=1)
    cpu = _entry("2026-01-01T10:00:02Z", "cpu", ns="c", gpus=0)
    steps = slots.walk(_held(("x", 6)), [small, cpu, big], slots.Limits(gpus=8, builds=8))
    # The small GPU build would delay the big one (2 GPUs free): it waits; the CPU build does not.
    assert [(s.entry.name, s.starts, s.blocked_by) for s in steps] == [
        ("big", False, slots.GPUS),
        ("small", False, slots.GPUS),
        ("cpu", True, None),
    ]
    # Once the build cap is reached nothing passes, GPUs or not.
    steps = slots.walk(_held(("x", 6)), [small, cpu, big], slots.Limits(gpus=8, builds=1))
    assert [s.starts for s in steps] == [False, False, False]


def test_a_namespace_over_its_cap_holds_back_only_itself() -> None:
    a1 = _entry("2026-01-01T10:00:00Z", "a1", ns="a")
    a2 = _entry("2026-01-01T10:00:01Z", "a2", ns="a")
    b1 = _entry("2026-01-01T10:00:02Z", "b1", ns="b")
    limits = slots.Limits(ns_builds=1, builds=8)
    assert [e.name for e in slots.startable(_held(("a", 0)), [a1, a2, b1], limits, {}, 0.0)] == ["b1"]
    # Without a running Job in a, its oldest starts (one per namespace), not its second.
    assert [e.name for e in slots.startable(_held(), [a1, a2, b1], limits, {}, 0.0)] == ["a1", "b1"]
    # Namespace GPU cap: a's 2-GPU build does not fit in 3 of 4; a's smaller one behind it waits too
    # (no backfill inside the namespace), b is not affected.
    big = _entry("2026-01-01T10:00:00Z", "big", ns="a", gpus=2)
    small = _entry("2026-01-01T10:00:01Z", "small", ns="a", gpus=1)
    ready = slots.startable(_held(("a", 3)), [big, small, b1], slots.Limits(ns_gpus=4), {}, 0.0)
    assert [e.name for e in ready] == ["b1"]


def test_builds_that_could_never_start_are_refused_and_hold_nobody_back() -> None:
    assert slots.never_fits(8, slots.Limits(gpus=8, ns_gpus=8)) is None
    msg = slots.never_fits(16, slots.Limits(gpus=8))
    assert msg is not None and "PITCREW_MAX_ACTIVE_GPUS=8" in msg and msg.startswith("spec.target.gpuCount")
    assert "PITCREW_MAX_ACTIVE_GPUS_PER_NAMESPACE=2" in (slots.never_fits(4, slots.Limits(ns_gpus=2)) or "")
    huge = _entry("2026-01-01T10:00:00Z", "huge", gpus=16)
    assert slots.startable(_held(), [huge, NEWBIE], slots.Limits(gpus=8), {}, 0.0) == [NEWBIE]


def test_queue_is_round_robin_across_namespaces_oldest_first_within() -> None:
    c = _entry("2026-01-01T10:00:02Z", "c")
    a = _entry("2026-01-01T10:00:01Z", "z")
    b1 = _entry("2026-01-01T10:00:02Z", "b", ns="a")
    b2 = _entry("2026-01-01T10:00:02Z", "b", ns="b")
    # Namespace b's only build goes right after namespace a's oldest, not behind all of a's.
    assert slots.order([c, b2, a, b1]) == [a, b2, b1, c]
    queue = [c, b2, a, b1]

    def ahead(e: slots.QueueEntry) -> int:
        return slots.decide(e, _held(), queue, slots.Limits(builds=1)).ahead

    assert [ahead(e) for e in (a, b2, b1, c)] == [0, 1, 2, 3]
    # A new build of a namespace with three queued waits behind them and the others' first rounds.
    assert ahead(_entry("2026-01-01T10:00:03Z", "new")) == 4
    # A new build of a namespace with nothing queued goes into the first round.
    assert ahead(_entry("2026-01-01T10:00:03Z", "new", ns="c")) == 2


def test_new_builds_and_spec_changes_go_before_builder_upgrades() -> None:
    up_old = _entry("2026-01-01T09:00:00Z", "up-old", ns="a", work=slots.UPGRADE)
    up_b = _entry("2026-01-01T09:00:01Z", "up-b", ns="b", work=slots.UPGRADE)
    new_late = _entry("2026-01-01T11:00:00Z", "new-late", ns="a")
    new_b = _entry("2026-01-01T11:00:01Z", "new-b", ns="b")
    # Within a class, round-robin across namespaces as before.
    assert slots.order([up_old, up_b, new_late, new_b]) == [new_late, new_b, up_old, up_b]
    # A new build is not counted behind queued upgrades: it takes the one free slot.
    d = slots.decide(new_late, _held(), [up_old, up_b], slots.Limits(builds=1))
    assert (d.admit, d.ahead) == (True, 0)
    assert not slots.decide(up_b, _held(), [new_late, up_old], slots.Limits(builds=2)).admit


def test_one_namespace_flooding_the_queue_does_not_starve_another() -> None:
    flood = [_entry(f"2026-01-01T10:00:{i:02d}Z", f"f{i}", ns="big") for i in range(50)]
    late = _entry("2026-01-01T11:00:00Z", "one", ns="small")
    assert slots.order([*flood, late])[:2] == [flood[0], late]


def test_waiting_message_says_which_cap_and_where_the_build_stands() -> None:
    held = _held(*[("a", 1)] * 8)
    msg = slots.waiting_message(slots.Decision(False, 3, slots.BUILDS), NEWBIE, held, slots.Limits(builds=8))
    assert msg == (
        "waiting for a build slot: 8 of 8 builder Jobs active (PITCREW_MAX_ACTIVE_BUILDS), "
        "3 queued builds ahead"
    )
    msg = slots.waiting_message(slots.Decision(False, 0, slots.GPUS), NEWBIE, held, slots.Limits(gpus=8))
    assert msg == (
        "waiting for a build slot: 8 of 8 GPUs in use (PITCREW_MAX_ACTIVE_GPUS), this build needs 1, "
        "next in line"
    )
    msg = slots.waiting_message(
        slots.Decision(False, 1, slots.NS_BUILDS), NEWBIE, held, slots.Limits(ns_builds=8)
    )
    assert "8 of 8 builder Jobs of namespace a active (PITCREW_MAX_ACTIVE_BUILDS_PER_NAMESPACE)" in msg
    assert msg.endswith("1 queued build ahead")


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


def test_what_active_jobs_hold_comes_from_their_gpu_limit() -> None:
    def rendered(ns: str, gpus: int | None, *conds: tuple[str, str]) -> dict[str, Any]:
        resources = {"limits": {jobs.GPU_RESOURCE: str(gpus)}} if gpus is not None else {}
        body = _job(*conds)
        body["metadata"]["namespace"] = ns
        body["spec"] = {"template": {"spec": {"containers": [{"image": "i", "resources": resources}]}}}
        return trim_job(body)

    rt = Runtime(settings=SETTINGS)
    rt.jobs = {
        "u1": {"a": rendered("a", 4), "done": rendered("a", 8, ("Complete", "True"))},
        "u2": {"b": rendered("b", None), "c": rendered("b", 2)},
    }
    held = rt.held()
    assert (held.builds, held.gpus, held.ns_builds, held.ns_gpus) == (
        3,
        6,
        {"a": 1, "b": 2},
        {"a": 4, "b": 2},
    )


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

    async def scenario() -> list[str | None]:
        out = []
        for i, name in enumerate(("n1", "n2", "n3")):
            entry = _entry(f"2026-01-01T10:00:0{i}Z", name)
            out.append(await reconcile.start_job({"metadata": {}}, entry, job(f"{name}-job"), "k" * 64))
        return out

    results = asyncio.run(scenario())
    # 1 Job was already running: one slot left, so n1 starts and the others queue.
    assert results == [
        None,
        "waiting for a build slot: 2 of 2 builder Jobs active (PITCREW_MAX_ACTIVE_BUILDS), next in line",
        "waiting for a build slot: 2 of 2 builder Jobs active (PITCREW_MAX_ACTIVE_BUILDS), "
        "1 queued build ahead",
    ]
    assert kube.created == ["n1-job"] and kube.lists == 1
    assert [e.name for e in slots.order(rt.queue.values())] == ["n2", "n3"]
    assert rt.jobs_primed and rt.active_jobs() == 2
