"""Builder failures, each carrying the BuildResult reason the controller maps to status."""

from __future__ import annotations

from pitcrew.api.plan import (
    REASON_BUILD_ERROR,
    REASON_INVALID_CHECKPOINT,
    REASON_INVALID_SPEC,
    REASON_PUBLISH_ERROR,
    REASON_SOURCE_UNAVAILABLE,
)

# Exit codes: the controller (or a Job podFailurePolicy) can tell "retrying will not help" (2)
# from "the source could not be read" (3) from "the build itself broke" (1).
EXIT_OK = 0
EXIT_BUILD_ERROR = 1
EXIT_INVALID_INPUT = 2
EXIT_SOURCE_UNAVAILABLE = 3


class BuilderError(Exception):
    reason: str = REASON_BUILD_ERROR
    exit_code: int = EXIT_BUILD_ERROR

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


class InvalidSpec(BuilderError):
    reason = REASON_INVALID_SPEC
    exit_code = EXIT_INVALID_INPUT


class InvalidCheckpoint(BuilderError):
    reason = REASON_INVALID_CHECKPOINT
    exit_code = EXIT_INVALID_INPUT


class SourceUnavailable(BuilderError):
    reason = REASON_SOURCE_UNAVAILABLE
    exit_code = EXIT_SOURCE_UNAVAILABLE


class BuildFailed(BuilderError):
    reason = REASON_BUILD_ERROR
    exit_code = EXIT_BUILD_ERROR


class PublishFailed(BuilderError):
    reason = REASON_PUBLISH_ERROR
    exit_code = EXIT_BUILD_ERROR
