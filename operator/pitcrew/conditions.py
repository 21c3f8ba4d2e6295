"""kstatus conditions (Ready, Reconciling, Stalled) from a phase. Pure.

`kubectl wait --for=condition=Ready` and GitOps health checks (Flux/Argo kstatus) read these.
lastTransitionTime moves only when a condition's status flips, as the API conventions ask.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pitcrew.api.v1alpha1 import Phase

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
TYPES = (READY, RECONCILING, STALLED)


def desired(phase: Phase, reason: str, message: str) -> dict[str, tuple[str, str, str]]:
    """Condition type -> (status, reason, message) for a phase."""
    if phase == Phase.SUCCEEDED:
        return {
            READY: ("True", reason, message),
            RECONCILING: ("False", reason, ""),
            STALLED: ("False", reason, ""),
        }
    if phase == Phase.FAILED:
        return {
            READY: ("False", reason, message),
            RECONCILING: ("False", reason, ""),
            STALLED: ("True", reason, message),
        }
    return {
        READY: ("False", reason, message),
        RECONCILING: ("True", reason, message),
        STALLED: ("False", reason, ""),
    }


def compute(
    phase: Phase,
    reason: str,
    message: str,
    *,
    generation: int | None,
    existing: Iterable[Mapping[str, Any]] | None,
    now: str,
) -> list[dict[str, Any]]:
    old = {c.get("type"): c for c in existing or ()}
    out: list[dict[str, Any]] = []
    for ctype, (status, why, text) in desired(phase, reason, message).items():
        previous = old.get(ctype)
        changed = previous is None or previous.get("status") != status
        cond: dict[str, Any] = {
            "type": ctype,
            "status": status,
            "reason": why,
            "message": text,
            "lastTransitionTime": now
            if changed or previous is None
            else previous.get("lastTransitionTime", now),
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    # Conditions other tools added (not ours) are kept as they are.
    out += [dict(c) for t, c in old.items() if t not in TYPES]
    return out


def same(a: Iterable[Mapping[str, Any]] | None, b: Iterable[Mapping[str, Any]] | None) -> bool:
    """Equal ignoring lastTransitionTime (used to skip no-op status writes)."""

    def strip(cs: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
        return sorted(
            ({k: v for k, v in c.items() if k != "lastTransitionTime"} for c in cs or ()),
            key=lambda c: str(c.get("type")),
        )

    return strip(a) == strip(b)
