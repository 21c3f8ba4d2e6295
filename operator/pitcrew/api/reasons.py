"""The one vocabulary of EngineBuild reasons: status.reason, condition reasons, Event reasons.

Shared by the controller (which derives most of them from the Job and its Pods), the builder (which
reports its own failures in BuildResult.reason) and docs/controller.md (a test checks that every
member is documented there). A StrEnum: members are the strings written to the API.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # -- admission: before any Job ------------------------------------------------------------------
    ACCEPTED = "Accepted"  # a new generation was seen; the controller is working on it
    INVALID_SPEC = "InvalidSpec"  # also reported by the builder (exit 2)
    POLICY_VIOLATION = "PolicyViolation"
    SECRET_NOT_FOUND = "SecretNotFound"
    STORAGE_UNAVAILABLE = "StorageUnavailable"  # transient S3 trouble: retried
    API_UNAVAILABLE = "APIUnavailable"  # transient Kubernetes API trouble (5xx, 429, no answer): retried
    SOURCE_UNAVAILABLE = "SourceUnavailable"  # also reported by the builder
    CACHE_HIT = "CacheHit"
    JOB_NAME_TAKEN = "JobNameTaken"
    WAITING_FOR_BUILD_SLOT = "WaitingForBuildSlot"
    WAITING_FOR_SHARED_BUILD = "WaitingForSharedBuild"
    BUILDER_UPGRADE = "BuilderUpgrade"
    # -- following the Job ----------------------------------------------------------------------------
    JOB_CREATED = "JobCreated"
    JOB_REPLACED = "JobReplaced"  # scheduling changed while the Job was not running: new Job
    SUPERSEDED = "Superseded"  # the spec changed the engine: the old Job is deleted
    WAITING_FOR_POD = "WaitingForPod"
    STARTING = "Starting"
    UNSCHEDULABLE = "Unschedulable"  # waiting for a node, then (after the grace period) failed
    RETRYING = "Retrying"
    BUILDING = "Building"
    SUCCEEDED = "Succeeded"
    # -- failures read from the Job and its Pods -------------------------------------------------------
    OOM_KILLED = "OOMKilled"
    EVICTED = "Evicted"  # by the kubelet, e.g. /scratch past its sizeLimit
    IMAGE_PULL_ERROR = "ImagePullError"
    CONTAINER_START_ERROR = "ContainerStartError"
    CONTAINER_CONFIG_ERROR = "ContainerConfigError"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BUILDER_ERROR = "BuilderError"
    BAD_BUILD_RESULT = "BadBuildResult"
    VERIFICATION_FAILED = "VerificationFailed"
    # -- failures the builder reports (BuildResult.reason) ---------------------------------------------
    INVALID_CHECKPOINT = "InvalidCheckpoint"
    BUILD_ERROR = "BuildError"
    PUBLISH_ERROR = "PublishError"
    # -- other Events and conditions -------------------------------------------------------------------
    ARTIFACTS_KEPT = "ArtifactsKept"
    UPGRADE_FAILED = "UpgradeFailed"  # BuilderUpgrade condition: the rebuild failed, old engine kept
