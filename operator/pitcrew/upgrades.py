"""What a finished builder-upgrade rebuild means for the object. Pure.

A build that was Ready keeps its engine (status.engine, built with the previous builder image and
still valid for the spec) when its rebuild fails: the object stays `Succeeded` and `Ready=True`,
reason `UpgradeFailed`, and the failure is reported in its own condition (`BuilderUpgrade`, False,
with the rebuild's reason and message), not as `Failed`/`Stalled`: nothing is broken for its
users, and GitOps tools need not show it degraded. A build that was not Ready has no engine to
keep: its failed rebuild is `Failed` like any build. It is not retried until the spec or the
builder image changes again (status.builderImage records the image tried).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pitcrew import conditions
from pitcrew.api.reasons import Reason
from pitcrew.api.v1alpha1 import Phase

Failure = tuple[str, str]  # (reason, message) of a failed rebuild


def _was_ready(status: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == conditions.READY and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )


def outcome(
    status: Mapping[str, Any], phase: Phase, reason: str, message: str
) -> tuple[Phase, str, str, Failure | None]:
    """The (phase, reason, message) to write for a build's verdict, and the rebuild's failure for the
    BuilderUpgrade condition (None when there is none to report)."""
    if phase != Phase.FAILED or not conditions.upgrading(status.get("conditions")):
        return phase, reason, message, None
    if not _was_ready(status):
        return phase, reason, message, (reason, message)
    engine = (status.get("engine") or {}).get("uri") or "status.engine"
    kept = f"builder upgrade failed ({reason}: {message}); the previous engine is kept: {engine}"
    return Phase.SUCCEEDED, Reason.UPGRADE_FAILED, kept, (reason, message)
