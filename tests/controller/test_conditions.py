from typing import Any

from pitcrew import conditions, statuses, upgrades
from pitcrew.api.reasons import Reason
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


def _types(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def _upgrading_from(phase: Phase, reason: str) -> dict[str, Any]:
    before = statuses.compose(None, phase=phase, reason=reason, message="m0", generation=1, now="t1")
    return statuses.compose(
        before, phase=Phase.BUILDING, reason="Building", message="b", generation=1, now="t2", upgrade=True
    )


def test_a_failed_upgrade_keeps_the_old_engine_ready_and_reports_in_its_own_condition() -> None:
    during = _upgrading_from(Phase.SUCCEEDED, "Succeeded")
    phase, reason, message, failure = upgrades.outcome(during, Phase.FAILED, "OOMKilled", "ran out of memory")
    assert (phase, reason) == (Phase.SUCCEEDED, Reason.UPGRADE_FAILED)
    assert "ran out of memory" in message and "previous" in message
    end = statuses.compose(
        during, phase=phase, reason=reason, message=message, generation=1, now="t3", upgrade_failure=failure
    )
    c = _types(end)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("True", Reason.UPGRADE_FAILED)
    assert c["Ready"]["lastTransitionTime"] == "t1"  # never stopped being Ready
    assert c["Reconciling"]["status"] == "False" and c["Stalled"]["status"] == "False"
    up = c[conditions.UPGRADE]
    assert (up["status"], up["reason"], up["message"]) == ("False", "OOMKilled", "ran out of memory")
    assert not conditions.upgrading(end["conditions"])
    # Later writes keep the report; a spec change (a new engine anyway) drops it.
    later = statuses.compose(end, phase=phase, reason=reason, message=message, generation=1, now="t4")
    assert _types(later)[conditions.UPGRADE]["status"] == "False"
    changed = statuses.compose(
        end, phase=Phase.QUEUED, reason="JobCreated", message="j", generation=2, now="t5", upgrade=False
    )
    assert conditions.UPGRADE not in _types(changed)


def test_a_successful_upgrade_says_so_and_a_failed_build_stays_failed() -> None:
    during = _upgrading_from(Phase.SUCCEEDED, "Succeeded")
    assert upgrades.outcome(during, Phase.SUCCEEDED, "Succeeded", "ok") == (
        Phase.SUCCEEDED,
        "Succeeded",
        "ok",
        None,
    )
    end = statuses.compose(
        during, phase=Phase.SUCCEEDED, reason="Succeeded", message="ok", generation=1, now="t3"
    )
    assert _types(end)[conditions.UPGRADE]["status"] == "True"
    # A build that had failed has no engine to keep: its failed rebuild is Failed (Stalled).
    was_failed = _upgrading_from(Phase.FAILED, "OOMKilled")
    phase, reason, _, failure = upgrades.outcome(was_failed, Phase.FAILED, "BuildError", "x")
    assert (phase, reason) == (Phase.FAILED, "BuildError")
    end = statuses.compose(
        was_failed, phase=phase, reason=reason, message="x", generation=1, now="t3", upgrade_failure=failure
    )
    c = _types(end)
    assert c["Stalled"]["status"] == "True" and c[conditions.UPGRADE]["reason"] == "BuildError"
    # Outside an upgrade nothing changes.
    plain = statuses.compose(
        None, phase=Phase.BUILDING, reason="Building", message="b", generation=1, now="t"
    )
    assert upgrades.outcome(plain, Phase.FAILED, "OOMKilled", "m") == (Phase.FAILED, "OOMKilled", "m", None)
