from pitcrew import conditions, statuses
from pitcrew.api.v1alpha1 import Phase


def by_type(conds):  # type: ignore[no-untyped-def]
    return {c["type"]: c for c in conds}


def test_phases_map_to_kstatus() -> None:
    ok = by_type(
        conditions.compute(Phase.SUCCEEDED, "Succeeded", "done", generation=2, existing=None, now="t1")
    )
    assert ok["Ready"]["status"] == "True" and ok["Reconciling"]["status"] == "False"
    assert ok["Stalled"]["status"] == "False" and ok["Ready"]["observedGeneration"] == 2
    bad = by_type(conditions.compute(Phase.FAILED, "OOMKilled", "oom", generation=2, existing=None, now="t1"))
    assert bad["Ready"]["status"] == "False" and bad["Stalled"]["status"] == "True"
    assert bad["Stalled"]["reason"] == "OOMKilled" and bad["Stalled"]["message"] == "oom"
    busy = by_type(
        conditions.compute(Phase.BUILDING, "Building", "go", generation=2, existing=None, now="t1")
    )
    assert busy["Reconciling"]["status"] == "True" and busy["Ready"]["status"] == "False"


def test_transition_time_moves_only_on_status_change() -> None:
    first = conditions.compute(Phase.QUEUED, "Unschedulable", "wait", generation=1, existing=None, now="t1")
    second = by_type(
        conditions.compute(Phase.BUILDING, "Building", "run", generation=1, existing=first, now="t2")
    )
    assert second["Reconciling"]["lastTransitionTime"] == "t1"  # True -> True
    assert second["Reconciling"]["reason"] == "Building"
    third = by_type(
        conditions.compute(
            Phase.SUCCEEDED, "Succeeded", "ok", generation=1, existing=second.values(), now="t3"
        )
    )
    assert third["Ready"]["lastTransitionTime"] == "t3" and third["Reconciling"]["lastTransitionTime"] == "t3"
    assert third["Stalled"]["lastTransitionTime"] == "t1"


def test_foreign_conditions_are_kept() -> None:
    existing = [
        {"type": "Custom", "status": "True", "reason": "X", "message": "", "lastTransitionTime": "t0"}
    ]
    out = by_type(
        conditions.compute(Phase.PENDING, "JobCreated", "", generation=1, existing=existing, now="t1")
    )
    assert out["Custom"]["reason"] == "X"


def test_status_patch_noop_detection() -> None:
    patch = statuses.compose(
        None,
        phase=Phase.BUILDING,
        reason="Building",
        message="m",
        generation=1,
        now="t1",
        job={"name": "j", "attempts": 1},
    )
    current = {**patch}
    later = statuses.compose(
        current,
        phase=Phase.BUILDING,
        reason="Building",
        message="m",
        generation=1,
        now="t2",
        job={"name": "j", "attempts": 1},
    )
    assert statuses.is_noop(current, later)
    moved = statuses.compose(
        current,
        phase=Phase.BUILDING,
        reason="Building",
        message="m",
        generation=1,
        now="t2",
        job={"name": "j", "attempts": 2},
    )
    assert not statuses.is_noop(current, moved)
    assert not statuses.is_noop({**current, "progress": {"stage": "x", "percent": 1}}, {"progress": None})
