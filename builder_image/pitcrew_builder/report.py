"""The BuildResult on the termination-message path: what the controller reads when the pod ends."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pitcrew.api.plan import TERMINATION_MESSAGE_LIMIT, BuildResult
from pitcrew_builder.logging import log_event

DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def termination_log_path(flag: str | None) -> Path:
    return Path(flag or os.environ.get("PITCREW_TERMINATION_LOG") or DEFAULT_TERMINATION_LOG)


def render_result(result: BuildResult, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """JSON under `limit` bytes: the message is cut first (the kubelet truncates the tail otherwise)."""
    text = result.model_dump_json(by_alias=True, exclude_none=True)
    if len(text.encode()) <= limit:
        return text
    message = result.message or ""
    overflow = len(text.encode()) - limit
    keep = max(len(message.encode()) - overflow - 16, 0)
    trimmed = message.encode()[:keep].decode(errors="ignore") + " …[truncated]"
    text = result.model_copy(update={"message": trimmed}).model_dump_json(by_alias=True, exclude_none=True)
    if len(text.encode()) > limit:  # pathological: drop optional detail entirely
        text = result.model_copy(update={"message": None, "versions": None}).model_dump_json(
            by_alias=True, exclude_none=True
        )
    return text


def write_result(result: BuildResult, path: Path) -> None:
    text = render_result(result)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError:
        # Outside Kubernetes /dev/termination-log may not be writable; stdout still has the result.
        log_event("report", "termination-log-unwritable", level="warning", path=str(path))
    log_event("report", "result", result=json.loads(text))
