"""What a builder Job and its Pods say about the build. Pure: dicts in, a Verdict out.

Tells apart: OOMKilled, evictions (e.g. /scratch past its sizeLimit), image pull errors, deadline
exceeded, unschedulable (no node with that GPU, after a grace period), builder-reported reasons
(InvalidCheckpoint, ...) and other builder errors, whose message carries the builder's last words
(termination message or log tail).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from pitcrew import jobview
from pitcrew.api.plan import BuildResult
from pitcrew.api.reasons import Reason
from pitcrew.api.v1alpha1 import Phase

# Reasons the controller sets (the builder's own come from BuildResult.reason).
JOB_CREATED = Reason.JOB_CREATED
WAITING = Reason.WAITING_FOR_POD
SCHEDULING = Reason.UNSCHEDULABLE
STARTING = Reason.STARTING
RUNNING = Reason.BUILDING
RETRYING = Reason.RETRYING
SUCCEEDED = Reason.SUCCEEDED
OOM_KILLED = Reason.OOM_KILLED
EVICTED = Reason.EVICTED
IMAGE_PULL_ERROR = Reason.IMAGE_PULL_ERROR
DEADLINE_EXCEEDED = Reason.DEADLINE_EXCEEDED
UNSCHEDULABLE = Reason.UNSCHEDULABLE
CONFIG_ERROR = Reason.CONTAINER_CONFIG_ERROR
START_ERROR = Reason.CONTAINER_START_ERROR
BUILDER_ERROR = Reason.BUILDER_ERROR
BAD_RESULT = Reason.BAD_BUILD_RESULT

IMAGE_PULL_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_WAITING = frozenset({"CreateContainerConfigError", "CreateContainerError"})
# The runtime could not start the program at all (bad entrypoint, missing executable in the image).
START_FAILURES = frozenset({"StartError", "RunContainerError", "ContainerCannotRun"})
LAST_WORDS = 600  # characters of the builder's message kept in status


@dataclass(frozen=True)
class Verdict:
    phase: Phase
    reason: str
    message: str
    attempts: int = 0
    result: BuildResult | None = None
    # The controller decided the failure from pod state (the Job itself is still alive): delete it.
    stop_job: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    # Nothing new to show: a pod has finished and its Job's verdict (Complete/Failed) is on its way.
    # The status is left as it is (no write); the Job's next watch event brings the verdict.
    settling: bool = False

    @property
    def terminal(self) -> bool:
        return self.phase in (Phase.SUCCEEDED, Phase.FAILED)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in obj.get("status", {}).get("conditions") or ()}


def _container(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or ()
    return statuses[0] if statuses else {}


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    cs = _container(pod)
    term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
    return term or None


def last_words(text: str | None, limit: int = LAST_WORDS) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def parse_result(message: str | None) -> BuildResult | None:
    """The BuildResult JSON from a termination message, or None when it is not one (e.g. a log tail)."""
    if not message:
        return None
    text = message.strip()
    try:
        return BuildResult.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        pass
    # FallbackToLogsOnError gives the log tail: the result may be its last JSON line.
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"cacheKey"' in line:
            try:
                return BuildResult.model_validate(json.loads(line))
            except (ValueError, ValidationError):
                return None
    return None


def _sorted_pods(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(
        pods, key=lambda p: (p.get("metadata", {}).get("creationTimestamp") or "", p["metadata"]["name"])
    )


def failed_pod_verdict(pod: Mapping[str, Any], attempts: int) -> Verdict:
    """Why one pod failed (its container terminated non-zero, or the kubelet killed it)."""
    term = _terminated(pod) or {}
    pod_status = pod.get("status", {})
    if pod_status.get("reason") == EVICTED:
        # The container only shows the kill (exit 137, "Error"); the kubelet's reason is on the pod.
        why = (pod_status.get("message") or "no message").strip()
        fix = (
            "; raise the operator's PITCREW_SCRATCH_SIZE_LIMIT (the sizeLimit of /scratch)"
            if 'EmptyDir volume "scratch"' in why
            else ""
        )
        return Verdict(
            Phase.FAILED,
            EVICTED,
            f"the kubelet evicted the builder pod: {why}{fix}",
            attempts,
            finished_at=term.get("finishedAt"),
        )
    reason = term.get("reason") or pod_status.get("reason") or ""
    message = term.get("message") or ""
    exit_code = term.get("exitCode")
    finished = term.get("finishedAt")
    if reason == "OOMKilled" or (exit_code == 137 and "oom" in message.lower()):
        return Verdict(
            Phase.FAILED,
            OOM_KILLED,
            "the builder ran out of memory (OOMKilled): raise spec.target.resources.limits.memory"
            + (f"; last words: {last_words(message)}" if message and parse_result(message) is None else ""),
            attempts,
            finished_at=finished,
        )
    if reason in START_FAILURES:
        return Verdict(
            Phase.FAILED,
            START_ERROR,
            f"the builder container could not start ({reason}): {last_words(message)}; "
            "check spec.builderImage or the operator's image settings",
            attempts,
            finished_at=finished,
        )
    result = parse_result(message)
    if result is not None and not result.ok:
        return Verdict(
            Phase.FAILED,
            result.reason or BUILDER_ERROR,
            last_words(result.message) or f"builder failed with reason {result.reason}",
            attempts,
            result=result,
            finished_at=finished,
        )
    words = last_words(message) if message else pod.get("status", {}).get("message", "")
    return Verdict(
        Phase.FAILED,
        BUILDER_ERROR,
        f"builder exited with code {exit_code}"
        + (f" ({reason})" if reason and reason != "Error" else "")
        + (f": {words}" if words else ""),
        attempts,
        finished_at=finished,
    )


def evaluate(
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    unschedulable_grace_seconds: float,
    timeout_seconds: int | None = None,
) -> Verdict:
    status = job.get("status", {})
    ordered = _sorted_pods(pods)
    counted = (
        int(status.get("active") or 0) + int(status.get("failed") or 0) + int(status.get("succeeded") or 0)
    )
    attempts = max(counted, len(ordered))
    started = status.get("startTime")

    if jobview.completed(job):
        succeeded = [p for p in ordered if p.get("status", {}).get("phase") == "Succeeded"]
        if not succeeded:
            # The pod may already be gone (TTL, GC): nothing to read the result from.
            return Verdict(
                Phase.FAILED, BAD_RESULT, "the Job completed but its pod and result are gone", attempts
            )
        term = _terminated(succeeded[-1]) or {}
        result = parse_result(term.get("message"))
        finished = status.get("completionTime") or term.get("finishedAt")
        if result is None or not result.ok:
            text = last_words(term.get("message")) or "empty termination message"
            return Verdict(
                Phase.FAILED,
                BAD_RESULT,
                f"the builder exited 0 without a successful BuildResult: {text}",
                attempts,
                result=result,
                started_at=started,
                finished_at=finished,
            )
        return Verdict(
            Phase.SUCCEEDED,
            SUCCEEDED,
            "engine built",
            attempts,
            result,
            started_at=started,
            finished_at=finished,
        )

    failed = jobview.failure_condition(job)
    if failed:
        finished = failed.get("lastTransitionTime")
        if failed.get("reason") == "DeadlineExceeded":
            limit = f" of {timeout_seconds} s" if timeout_seconds else ""
            return Verdict(
                Phase.FAILED,
                DEADLINE_EXCEEDED,
                f"the build exceeded spec.timeoutSeconds{limit}: raise it or use a faster target",
                attempts,
                started_at=started,
                finished_at=finished,
            )
        bad = [p for p in ordered if p.get("status", {}).get("phase") == "Failed"]
        if bad:
            v = failed_pod_verdict(bad[-1], attempts)
            return Verdict(
                v.phase, v.reason, v.message, attempts, v.result, started_at=started, finished_at=finished
            )
        return Verdict(
            Phase.FAILED,
            BUILDER_ERROR,
            f"the Job failed ({failed.get('reason')}): {failed.get('message', '')}".strip(),
            attempts,
            started_at=started,
            finished_at=finished,
        )

    # Still going: judge by the newest pod.
    live = [p for p in ordered if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
    earlier_failures = [p for p in ordered if p.get("status", {}).get("phase") == "Failed"]
    retry_note = ""
    if earlier_failures:
        prev = failed_pod_verdict(earlier_failures[-1], attempts)
        retry_note = f" (attempt {len(earlier_failures) + 1}; previous: {prev.reason}: {prev.message})"
    if not live:
        newest = ordered[-1] if ordered else None
        if newest is not None and newest.get("status", {}).get("phase") == "Succeeded":
            # The pod succeeded; the Job controller has not marked the Job Complete yet.
            return Verdict(
                Phase.BUILDING,
                RUNNING,
                "the builder finished; waiting for the Job to complete",
                attempts,
                started_at=started,
                settling=True,
            )
        limit = job.get("spec", {}).get("backoffLimit")
        if earlier_failures and limit is not None and len(earlier_failures) > int(limit):
            # No retry left: the Job controller is about to mark the Job Failed.
            return Verdict(
                Phase.BUILDING,
                RUNNING,
                "the builder failed; waiting for the Job to fail",
                attempts,
                started_at=started,
                settling=True,
            )
        if earlier_failures:
            return Verdict(
                Phase.QUEUED, RETRYING, "waiting for the retry pod" + retry_note, attempts, started_at=started
            )
        return Verdict(
            Phase.QUEUED, WAITING, "waiting for the Job to start a pod", attempts, started_at=started
        )
    pod = live[-1]
    pstatus = pod.get("status", {})
    waiting = (_container(pod).get("state") or {}).get("waiting") or {}
    wreason = waiting.get("reason", "")
    if wreason in IMAGE_PULL_WAITING:
        image = _container(pod).get("image") or ""
        return Verdict(
            Phase.FAILED,
            IMAGE_PULL_ERROR,
            f"cannot pull builder image {image!r} ({wreason}): {waiting.get('message', '')}".rstrip(": ")
            + "; fix spec.builderImage or the operator's image settings",
            attempts,
            stop_job=True,
            started_at=started,
            finished_at=now.isoformat(),
        )
    if wreason in CONFIG_WAITING:
        return Verdict(
            Phase.FAILED,
            CONFIG_ERROR,
            f"the builder container cannot be created ({wreason}): {waiting.get('message', '')}",
            attempts,
            stop_job=True,
            started_at=started,
            finished_at=now.isoformat(),
        )
    if pstatus.get("phase") == "Running":
        return Verdict(
            Phase.BUILDING, RUNNING, "the builder is running" + retry_note, attempts, started_at=started
        )
    scheduled = _conditions(pod).get("PodScheduled")
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        since = parse_time(scheduled.get("lastTransitionTime")) or parse_time(
            pod.get("metadata", {}).get("creationTimestamp")
        )
        waited = (now - since).total_seconds() if since else 0.0
        sched_msg = scheduled.get("message", "")
        if waited >= unschedulable_grace_seconds:
            return Verdict(
                Phase.FAILED,
                UNSCHEDULABLE,
                f"no node can run the builder after {int(waited)} s: {sched_msg} "
                "(is there a node with the requested nvidia.com/gpu.product and free GPUs?)",
                attempts,
                stop_job=True,
                started_at=started,
                finished_at=now.isoformat(),
            )
        return Verdict(
            Phase.QUEUED, SCHEDULING, f"waiting for a node: {sched_msg}", attempts, started_at=started
        )
    if scheduled and scheduled.get("status") == "True":
        node = pod.get("spec", {}).get("nodeName", "")
        return Verdict(
            Phase.QUEUED,
            STARTING,
            f"pod scheduled on {node}, starting" + retry_note,
            attempts,
            started_at=started,
        )
    return Verdict(
        Phase.QUEUED, WAITING, "waiting for the scheduler" + retry_note, attempts, started_at=started
    )
