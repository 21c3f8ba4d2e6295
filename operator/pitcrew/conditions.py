"""kstatus conditions (Ready, Reconciling, Stalled) from a phase. Pure.

`kubectl wait --for=condition=Ready` and GitOps health checks (Flux/Argo kstatus) read these.
lastTransitionTime moves only when a condition's status flips, as the API conventions ask.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pitcrew.api.reasons import Reason
from pitcrew.api.v1alpha1 import Phase

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
# The result of the last builder upgrade of this spec: True (rebuilt), or False with the failed
# rebuild's reason and message (pitcrew.upgrades). Dropped by a spec change.
UPGRADE = "BuilderUpgrade"
TYPES = (READY, RECONCILING, STALLED, UPGRADE)
# Reconciling's reason while a finished build is rebuilt for a new builder image. It also marks the
# upgrade as under way for later writes (a status has no other place that survives a restart).
BUILDER_UPGRADE = Reason.BUILDER_UPGRADE


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


def upgrading(existing: Iterable[Mapping[str, Any]] | None) -> bool:
    """True while a builder upgrade is under way (Reconciling=True, reason BuilderUpgrade)."""
    return any(
        c.get("type") == RECONCILING and c.get("status") == "True" and c.get("reason") == BUILDER_UPGRADE
        for c in existing or ()
    )


def compute(
    phase: Phase,
    reason: str,
    message: str,
    *,
    generation: int | None,
    existing: Iterable[Mapping[str, Any]] | None,
    now: str,
    upgrade: bool | None = None,
    upgrade_failure: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """`upgrade`: True starts a builder upgrade, False ends one (spec change), None keeps the state.

    During an upgrade (until the phase is final) Reconciling is True with reason BuilderUpgrade and
    Ready keeps the status it had when the upgrade began: a Succeeded build stays Ready, because its
    engine (still in status.engine) is valid for the spec and usable until the new one replaces it;
    a Failed one stays not Ready. kstatus reads Reconciling=True as InProgress either way.
    """
    old = {c.get("type"): c for c in existing or ()}
    want = desired(phase, reason, message)
    ending = upgrade is False
    if upgrade is None:
        upgrade = upgrading(existing)
    if upgrade and phase.value in (Phase.SUCCEEDED.value, Phase.FAILED.value):
        # The rebuild's result, in its own condition (pitcrew.upgrades: a failure that kept the
        # previous engine is phase Succeeded, reason UpgradeFailed, so Ready stays True).
        if upgrade_failure is not None:
            want[UPGRADE] = ("False", upgrade_failure[0], upgrade_failure[1])
        else:
            want[UPGRADE] = ("True", reason, "rebuilt with the operator's current builder image")
    elif not ending and UPGRADE in old:
        last = old[UPGRADE]
        want[UPGRADE] = (str(last.get("status")), str(last.get("reason")), str(last.get("message") or ""))
    if upgrade and phase.value not in (Phase.SUCCEEDED.value, Phase.FAILED.value):
        was_ready = (old.get(READY) or {}).get("status") == "True"
        want = {
            READY: ("True", BUILDER_UPGRADE, message) if was_ready else ("False", reason, message),
            RECONCILING: ("True", BUILDER_UPGRADE, message),
            STALLED: ("False", BUILDER_UPGRADE, ""),
            **{k: v for k, v in want.items() if k == UPGRADE},
        }
    out: list[dict[str, Any]] = []
    for ctype, (status, why, text) in want.items():
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
