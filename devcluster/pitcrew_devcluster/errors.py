"""The one exception type devcluster raises: a message a person can act on."""

from __future__ import annotations

from pathlib import Path


class DevclusterError(Exception):
    """A failure naming the component at fault and, when there is one, its log file."""

    def __init__(self, message: str, *, component: str | None = None, log: Path | None = None) -> None:
        self.component = component
        self.log = log
        text = message
        if component and not message.startswith(component):
            text = f"{component}: {message}"
        if log is not None:
            text += f" (log: {log})"
        super().__init__(text)


def tail(path: Path, lines: int = 15, max_bytes: int = 64 * 1024) -> str:
    """The last lines of a log file, for error messages; empty when the file is missing."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
