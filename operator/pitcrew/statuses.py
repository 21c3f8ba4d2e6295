"""EngineBuild status patches: one place that keeps phase, reason, message and conditions in step. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pitcrew import conditions
from pitcrew.api.v1alpha1 import Phase

TERMINAL = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value})


def now_rfc3339(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def compose(
    current: Mapping[str, Any] | None,
    *,
    phase: Phase,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
    upgrade: bool | None = None,
    upgrade_failure: tuple[str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A merge patch for .status; fields set to None are removed (JSON merge-patch null)."""
    current = current or {}
    patch: dict[str, Any] = {
        "phase": phase.value,
        "reason": reason,
        "message": message,
        "conditions": conditions.compute(
            phase,
            reason,
            message,
            generation=generation,
            existing=current.get("conditions"),
            now=now,
            upgrade=upgrade,
            upgrade_failure=upgrade_failure,
        ),
    }
    if generation is not None:
        patch["observedGeneration"] = generation
    patch.update(fields)
    return patch


def is_noop(current: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> bool:
    """True when applying `patch` would change nothing a reader cares about."""
    current = current or {}
    for key, value in patch.items():
        if key == "conditions":
            if not conditions.same(current.get("conditions"), value):
                return False
        elif value is None:
            if current.get(key) is not None:
                return False
        elif isinstance(value, Mapping) and isinstance(current.get(key), Mapping):
            if any(current[key].get(k) != v for k, v in value.items()):
                return False
        elif current.get(key) != value:
            return False
    return True
