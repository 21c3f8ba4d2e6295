"""Status writes per build: Queued coalesced into Building, progress written only when it changed."""

from datetime import UTC, datetime, timedelta
from typing import Any

from pitcrew import follow, jobstatus, statuses
from pitcrew.api.v1alpha1 import Phase

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _job(age: float) -> dict[str, Any]:
    created = statuses.now_rfc3339(NOW - timedelta(seconds=age))
    return {"metadata": {"name": "j", "creationTimestamp": created}}


def _verdict(phase: Phase, reason: str) -> jobstatus.Verdict:
    return jobstatus.Verdict(phase, reason, "m")


def test_fresh_build_waiting_or_starting_is_not_written_as_queued() -> None:
    for reason in (jobstatus.WAITING, jobstatus.STARTING):
        wait = follow.quiet_queued_wait({}, _verdict(Phase.QUEUED, reason), _job(2), NOW, 10)
        assert wait is not None and 8 < wait <= 8.2
    # After the quiet window it is written (a slow image pull is worth showing).
    assert follow.quiet_queued_wait({}, _verdict(Phase.QUEUED, jobstatus.STARTING), _job(11), NOW, 10) is None


def test_queued_is_written_at_once_when_it_tells_something() -> None:
    fresh = _job(1)
    # Unschedulable (why it waits) and retrying pods are news.
    for reason in (jobstatus.SCHEDULING, jobstatus.RETRYING):
        assert follow.quiet_queued_wait({}, _verdict(Phase.QUEUED, reason), fresh, NOW, 10) is None
    # A build already showing a phase (e.g. the old build of a changed spec) moves at once.
    shown = {"phase": "Building"}
    assert follow.quiet_queued_wait(shown, _verdict(Phase.QUEUED, jobstatus.WAITING), fresh, NOW, 10) is None
    # Building and final verdicts are never held back.
    for phase in (Phase.BUILDING, Phase.SUCCEEDED, Phase.FAILED):
        assert follow.quiet_queued_wait({}, _verdict(phase, "x"), fresh, NOW, 10) is None
    # No creation time: nothing to measure the window from.
    assert (
        follow.quiet_queued_wait({}, _verdict(Phase.QUEUED, jobstatus.WAITING), {"metadata": {}}, NOW, 10)
        is None
    )


def _building(progress: dict[str, Any] | None, current: dict[str, Any] | None = None) -> dict[str, Any]:
    message = "the builder is running" + (f": {progress['stage']} {progress['percent']}%" if progress else "")
    fields: dict[str, Any] = {"job": {"name": "j", "attempts": 1}}
    if progress:
        fields["progress"] = progress
    return statuses.compose(
        current, phase=Phase.BUILDING, reason=jobstatus.RUNNING, message=message, generation=1,
        now="2026-01-01T12:00:00Z", **fields,
    )  # fmt: skip


def test_progress_is_written_only_when_it_changed() -> None:
    first = _building({"stage": "convert", "percent": 40})
    current = dict(first)
    # Same progress, later: nothing to write (conditions compare without their timestamps).
    again = statuses.compose(
        current, phase=Phase.BUILDING, reason=jobstatus.RUNNING, message=first["message"], generation=1,
        now="2026-01-01T12:05:00Z", job={"name": "j", "attempts": 1},
        progress={"stage": "convert", "percent": 40},
    )  # fmt: skip
    assert statuses.is_noop(current, again)
    assert not statuses.is_noop(current, _building({"stage": "convert", "percent": 60}, current))


def test_the_job_created_write_keeps_the_quiet_window() -> None:
    """A new generation's one write (Queued/JobCreated, Reconciling=True) says nothing about the pod:
    the quiet window still holds back WaitingForPod/Starting, so a pod that starts at once is next
    written as Building (5 state writes per build at most: see docs/controller.md)."""
    created = {"phase": "Queued", "reason": jobstatus.JOB_CREATED, "observedGeneration": 1}
    wait = follow.quiet_queued_wait(created, _verdict(Phase.QUEUED, jobstatus.STARTING), _job(2), NOW, 10)
    assert wait is not None and 8 < wait <= 8.2
    waiting = {**created, "reason": "WaitingForBuildSlot"}
    assert (
        follow.quiet_queued_wait(waiting, _verdict(Phase.QUEUED, jobstatus.STARTING), _job(2), NOW, 10)
        is None
    )
