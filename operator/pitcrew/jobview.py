"""One definition of what a builder Job's conditions mean. Pure.

Kubernetes 1.31+ sets an early condition (SuccessCriteriaMet, FailureTarget) as soon as the Job's
outcome is known, and the final one (Complete, Failed) once its pods have terminated:

- `completed` / `failed`: the outcome is known (early or final condition): the status may say so.
- `decided`: either; no new pod will start, so it is nothing to wait for or to share.
- `finished`: the final condition; only then are its pods gone.
- `holds_slot`: counts against PITCREW_MAX_ACTIVE_BUILDS: not being deleted and not finished (a
  Job whose pod still terminates keeps its GPU, so its slot is not given away early).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _true(job: Mapping[str, Any], *types: str) -> bool:
    return any(
        c.get("type") in types and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or ()
    )


def deleting(job: Mapping[str, Any]) -> bool:
    return bool((job.get("metadata") or {}).get("deletionTimestamp"))


def completed(job: Mapping[str, Any]) -> bool:
    """The Job says it succeeded (Complete, or SuccessCriteriaMet before Complete)."""
    return _true(job, "Complete", "SuccessCriteriaMet")


# The final condition first: its reason and time are the ones to report.
FAILURE_TYPES = ("Failed", "FailureTarget")


def failed(job: Mapping[str, Any]) -> bool:
    """The Job says it failed (Failed, or FailureTarget before Failed)."""
    return _true(job, *FAILURE_TYPES)


def failure_condition(job: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The condition that says the Job failed (for its reason and time), or None."""
    conditions: list[Mapping[str, Any]] = (job.get("status") or {}).get("conditions") or []
    for ctype in FAILURE_TYPES:
        for c in conditions:
            if c.get("type") == ctype and c.get("status") == "True":
                return c
    return None


def decided(job: Mapping[str, Any]) -> bool:
    return completed(job) or failed(job)


def finished(job: Mapping[str, Any]) -> bool:
    """The final condition (Complete or Failed): the Job's pods have terminated."""
    return _true(job, "Complete", "Failed")


def holds_slot(job: Mapping[str, Any]) -> bool:
    return not deleting(job) and not finished(job)


def building(job: Mapping[str, Any]) -> bool:
    """Still building (an engine may yet come of it): not being deleted, outcome not known."""
    return not deleting(job) and not decided(job)
