"""One definition of a builder Job's state (pitcrew.jobview), case by case."""

from __future__ import annotations

from typing import Any

import pytest

from pitcrew import jobview


def _job(*conds: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "j"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "status": {"conditions": [{"type": t, "status": "True"} for t in conds] + [
            {"type": "Suspended", "status": "False"}
        ]},
    }  # fmt: skip


# conditions, deleting -> completed, failed, decided, finished, holds_slot, building
CASES = [
    ((), False, (False, False, False, False, True, True)),
    (("SuccessCriteriaMet",), False, (True, False, True, False, True, False)),
    (("SuccessCriteriaMet", "Complete"), False, (True, False, True, True, False, False)),
    (("FailureTarget",), False, (False, True, True, False, True, False)),
    (("FailureTarget", "Failed"), False, (False, True, True, True, False, False)),
    ((), True, (False, False, False, False, False, False)),
    (("Complete",), True, (True, False, True, True, False, False)),
]


@pytest.mark.parametrize(("conds", "deleting", "want"), CASES)
def test_job_states(conds: tuple[str, ...], deleting: bool, want: tuple[bool, ...]) -> None:
    job = _job(*conds, deleting=deleting)
    got = (
        jobview.completed(job),
        jobview.failed(job),
        jobview.decided(job),
        jobview.finished(job),
        jobview.holds_slot(job),
        jobview.building(job),
    )
    assert got == want


def test_a_false_condition_is_not_a_state() -> None:
    job = {"metadata": {}, "status": {"conditions": [{"type": "Complete", "status": "False"}]}}
    assert not jobview.completed(job) and jobview.holds_slot(job)


@pytest.mark.parametrize(
    ("conds", "expected"),
    [
        ((), None),
        (("Complete",), None),
        (("FailureTarget",), "FailureTarget"),
        (("FailureTarget", "Failed"), "Failed"),
    ],
)
def test_failure_condition_prefers_the_final_one(conds: tuple[str, ...], expected: str | None) -> None:
    # Its reason (e.g. DeadlineExceeded) and time are what the status reports.
    found = jobview.failure_condition(_job(*conds))
    assert (found or {}).get("type") == expected
