"""Following a build: its current Job and Pods -> the EngineBuild status (the Job follower).

Fed by watch events on our Jobs and Pods (coalesced, pitcrew.runtime.RT.schedule) and by the
poller. The mapping itself is pure (pitcrew.jobstatus: Job + Pods -> verdict; pitcrew.upgrades: a
builder upgrade's outcome; quiet_queued_wait, reschedule_due); this module reads what it needs
(the object, progress and manifest in S3, Pods the watch has not shown yet) and writes through the
one status writer (reconcile.write_status).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from pitcrew import images, jobs, jobstatus, jobview, metrics, plans, sharing, slots, statuses, upgrades
from pitcrew.api.plan import PROGRESS_FILE, ProgressReport
from pitcrew.api.reasons import Reason
from pitcrew.api.v1alpha1 import EngineBuildSpec, Phase
from pitcrew.kube import ns_path
from pitcrew.reconcile import (
    REASON_VERIFY,
    _ann,
    _post,
    _rerun,
    credentials,
    eb_path,
    engine_record,
    jobs_path,
    read_manifest,
    read_secrets,
    run,
    write_status,
)
from pitcrew.runtime import RT, Obj, trim_pod
from pitcrew.storage import StorageError, sha256

log = logging.getLogger("pitcrew.follow")


def current_job(uid: str, status: Mapping[str, Any]) -> Obj | None:
    observed = int(status.get("observedGeneration") or 0)
    key = status.get("cacheKey")
    candidates = [
        j
        for j in RT.jobs.get(uid, {}).values()
        if not j["metadata"].get("deletionTimestamp")
        and (int(_ann(j, jobs.ANN_GENERATION) or 0) >= observed or _ann(j, jobs.ANN_KEY) == key)
    ]
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda j: (int(_ann(j, jobs.ANN_GENERATION) or 0), j["metadata"].get("creationTimestamp") or ""),
    )


async def read_progress(
    job: Obj, spec: EngineBuildSpec, secrets: Mapping[str, Obj | None]
) -> dict[str, Any] | None:
    key = _ann(job, jobs.ANN_KEY) or ""
    if not spec.output.uri.startswith("s3://"):
        return None
    uri = plans.engine_uri(spec.output.uri, key) + PROGRESS_FILE
    try:
        data = await RT.store().get(
            spec.output.endpoint or RT.settings.s3_endpoint,
            credentials(secrets, spec, job["metadata"]["namespace"], "output"),
            uri,
        )
        if data is None:
            return None
        report = ProgressReport.model_validate_json(data)
    except (StorageError, ValidationError) as e:
        log.debug("no progress", extra={"uri": uri, "error": str(e)[:200]})
        return None
    return {"stage": report.stage, "percent": max(0, min(100, report.percent))}


async def sync(uid: str, ns: str, name: str) -> None:
    """Maps the current Job and its Pods to the EngineBuild status; writes only when it changed."""
    async with RT.lock(uid):
        body = await RT.kube.get(eb_path(ns, name))
        if not body or body["metadata"].get("uid") != uid or body["metadata"].get("deletionTimestamp"):
            return
        status = body.get("status") or {}
        job = current_job(uid, status)
        if job is None:
            return
        job_name = job["metadata"]["name"]
        key = _ann(job, jobs.ANN_KEY) or ""
        job_gen = int(_ann(job, jobs.ANN_GENERATION) or 0)
        generation = max(int(status.get("observedGeneration") or 0), job_gen)
        if (
            status.get("phase") in statuses.TERMINAL
            and status.get("cacheKey") == key
            and (status.get("job") or {}).get("name") == job_name
        ):
            return  # already final for this Job
        pods = [
            p
            for p in RT.pods.get(uid, {}).values()
            if (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name", job_name) == job_name
            and (p["metadata"].get("labels") or {}).get("job-name", job_name) == job_name
        ]
        if jobview.completed(job) and not any(
            (p.get("status") or {}).get("phase") == "Succeeded" for p in pods
        ):
            # The watch may not have shown the pod yet (e.g. right after a restart): ask before
            # concluding that the result is gone.
            pods += await _list_job_pods(uid, ns, name, job_name)
        now = datetime.now(UTC)
        verdict = jobstatus.evaluate(
            job,
            pods,
            now=now,
            unschedulable_grace_seconds=RT.settings.unschedulable_grace_seconds,
            timeout_seconds=job["spec"].get("activeDeadlineSeconds"),
        )
        if verdict.settling:
            return  # e.g. pod Succeeded, Job not Complete yet: the Job's event follows
        if reschedule_due(verdict, job, int(body["metadata"].get("generation") or 0)) and (
            RT.rescheduled.get(uid) != job_name
        ):
            # Waiting to retry with a pod template from an older spec: the state machine replaces it
            # if the spec's scheduling changed (pitcrew.decide: stale_scheduling). Once per Job.
            RT.rescheduled[uid] = job_name
            RT.schedule(f"reschedule:{uid}", _rerun(uid, ns, name, "reschedule"))
        wait = quiet_queued_wait(status, verdict, job, now, RT.quiet_queued_seconds)
        if wait is not None:
            # Coalesce Queued into Building: look again when the quiet window ends (pod events
            # wake us earlier), and write Queued only if the pod is still not running then.
            RT.schedule(uid, lambda: sync(uid, ns, name), delay=wait)
            return
        spec = EngineBuildSpec.model_validate(body["spec"])
        fields: dict[str, Any] = {
            "cacheKey": key,
            "cacheHit": False,
            "builderImage": _ran(job, pods),
            "job": {"name": job_name, "attempts": verdict.attempts},
            "startTime": verdict.started_at or job["metadata"].get("creationTimestamp"),
        }
        phase, reason, message = verdict.phase, verdict.reason, verdict.message
        secrets: dict[str, Obj | None] = {}
        if phase == Phase.SUCCEEDED or phase == Phase.BUILDING:
            secrets = await read_secrets(ns, spec)
        if phase == Phase.SUCCEEDED:
            phase, reason, message, extra = await verify(spec, secrets, key, verdict, ns)
            fields.update(extra)
        elif phase == Phase.BUILDING:
            progress = await read_progress(job, spec, secrets)
            if progress is None and (status.get("job") or {}).get("name") == job_name:
                # No (readable) report this time: keep the last one rather than write its removal.
                progress = status.get("progress")
            if progress:
                fields["progress"] = progress
                message = f"{message}: {progress['stage']} {progress['percent']}%"
        if phase in (Phase.SUCCEEDED, Phase.FAILED):
            fields["completionTime"] = _rfc3339(verdict.finished_at) or statuses.now_rfc3339(now)
        if phase == Phase.SUCCEEDED and spec.output.uri.startswith("s3://"):
            # Tracked for deletionPolicy Delete: an engine stays this object's after a spec change.
            fields["publishedEngines"] = sharing.remember_published(
                status.get("publishedEngines"),
                plans.engine_uri(spec.output.uri, key),
                spec.output.endpoint or RT.settings.s3_endpoint,
            )
        if verdict.stop_job:
            await RT.kube.delete(jobs_path(ns, job_name), propagation="Background")
        # A failed builder-upgrade rebuild of a Ready build keeps the previous engine (Ready=True).
        phase, reason, message, failure = upgrades.outcome(status, phase, reason, message)
        patch = statuses.compose(
            status, phase=phase, reason=reason, message=message, generation=generation,
            now=statuses.now_rfc3339(now), upgrade_failure=failure, **fields,
        )  # fmt: skip
        if statuses.is_noop(status, patch):
            return
        if not await write_status(uid, ns, name, generation, patch):
            return
        if phase.value in statuses.TERMINAL:
            # A build that ran with an older image (e.g. started before an operator upgrade) is
            # rebuilt now that it has finished, once per image.
            up = slots.needs_upgrade({**body, "status": {**status, **patch}}, RT.settings, RT.image_digests)
            if up is not None and RT.upgrades_tried.get(uid) != up.new_image:
                RT.upgrades_tried[uid] = up.new_image
                RT.schedule(uid, lambda: run(uid, ns, name, "upgrade"))
        if status.get("phase") != phase.value:
            metrics.TRANSITIONS.labels(phase.value, reason).inc()
            warn = phase == Phase.FAILED or reason == Reason.UPGRADE_FAILED
            _post(body, "Warning" if warn else "Normal", reason, message)
            if phase.value in statuses.TERMINAL:
                _observe_duration(spec, phase, fields)
        log.info(
            "status",
            extra={"eb": f"{ns}/{name}", "phase": phase.value, "reason": reason, "job": job_name},
        )


def _ran(job: Obj, pods: list[Obj]) -> str | None:
    """What the Job's builder ran (`tag@sha256:…` once its pod reported it); learns the digest."""
    image = job["spec"].get("image")
    if not image:
        return None
    ref, seen_at = images.ran(image, pods, jobs.CONTAINER)
    digest = images.split(ref)[1]
    if seen_at and digest and images.learn(RT.image_digests, image, digest, seen_at):
        log.info("builder image digest seen", extra={"image": image, "digest": digest})
    return str(ref)


async def _list_job_pods(uid: str, ns: str, name: str, job_name: str) -> list[Obj]:
    found: list[Obj] = []
    for pod in await RT.kube.list(ns_path(ns, "pods"), f"batch.kubernetes.io/job-name={job_name}"):
        if jobs.pod_owner_of(pod) != (uid, name):
            continue
        trimmed = trim_pod(pod)
        RT.remember(RT.pods, uid, pod["metadata"]["name"], trimmed)
        found.append(trimmed)
    return found


def reschedule_due(verdict: jobstatus.Verdict, job: Mapping[str, Any], generation: int) -> bool:
    """A Job that waits to retry (no pod runs) and was made for an older generation, with a
    scheduling digest to compare: worth a look whether the spec's scheduling changed. Pure."""
    return (
        verdict.reason == jobstatus.RETRYING
        and _ann(job, jobs.ANN_SCHEDULING) is not None
        and int(_ann(job, jobs.ANN_GENERATION) or 0) < generation
    )


QUIET_REASONS = frozenset({jobstatus.WAITING, jobstatus.STARTING})


def quiet_queued_wait(
    status: Mapping[str, Any], verdict: jobstatus.Verdict, job: Mapping[str, Any], now: datetime, quiet: float
) -> float | None:
    """Seconds to hold back a Queued write for a fresh build, or None to write now.

    A build that has shown nothing about its pod yet (no phase, or only Queued/JobCreated) and whose
    pod is only waiting or starting stays unwritten until its Job is `quiet` seconds old: most pods
    start sooner, and then the next status write is Building. Unschedulable and retrying pods, and
    any build with a phase shown already (e.g. a spec change replacing a running build), are written
    at once.
    """
    shown = status.get("phase") and status.get("reason") != Reason.JOB_CREATED
    if shown or verdict.phase != Phase.QUEUED or verdict.reason not in QUIET_REASONS:
        return None
    created = jobstatus.parse_time(job["metadata"].get("creationTimestamp"))
    if created is None:
        return None
    left = quiet - (now - created).total_seconds()
    return left + 0.1 if left > 0 else None


async def verify(
    spec: EngineBuildSpec,
    secrets: Mapping[str, Obj | None],
    key: str,
    verdict: jobstatus.Verdict,
    namespace: str,
) -> tuple[Phase, str, str, dict[str, Any]]:
    """Succeeded only when manifest.json is in S3 and matches the builder's report (sha256)."""
    result = verdict.result
    assert result is not None
    if not spec.output.uri.startswith("s3://"):
        # pvc:// outputs cannot be read from here: trust the builder's report.
        record = {
            "uri": result.engine_uri or plans.engine_uri(spec.output.uri, key),
            "manifestUri": result.manifest_uri or plans.manifest_uri(spec.output.uri, key),
            "sizeBytes": result.size_bytes or 0,
            "fileCount": result.file_count or 0,
            "manifestSha256": result.manifest_sha256 or "",
            "computeCapability": result.compute_capability,
            "backend": result.backend,
        }
        return (
            Phase.SUCCEEDED,
            jobstatus.SUCCEEDED,
            "engine built (not verified: pvc output)",
            {
                "engine": {k: v for k, v in record.items() if v is not None},
                "progress": {"stage": "publish", "percent": 100},
            },
        )
    try:
        found = await read_manifest(
            spec.output.uri,
            spec.output.endpoint or RT.settings.s3_endpoint,
            credentials(secrets, spec, namespace, "output"),
            key,
        )
    except StorageError as e:
        # Leave the phase as it is; the timer retries the verification.
        raise kopf.TemporaryError(f"cannot verify the manifest: {e}") from e
    if found is None:
        return (
            Phase.FAILED,
            REASON_VERIFY,
            (
                f"the builder reported success but {plans.manifest_uri(spec.output.uri, key)} "
                "is missing or unreadable"
            ),
            {},
        )
    manifest, data = found
    digest = sha256(data)
    if result.manifest_sha256 and result.manifest_sha256 != digest:
        return (
            Phase.FAILED,
            REASON_VERIFY,
            (
                f"manifest.json sha256 {digest[:16]}… differs from the builder's report "
                f"{result.manifest_sha256[:16]}…"
            ),
            {},
        )
    record = engine_record(spec.output.uri, key, manifest, data)
    message = (
        f"engine published at {record['uri']} ({record['fileCount']} files, {record['sizeBytes']} bytes)"
    )
    return (
        Phase.SUCCEEDED,
        jobstatus.SUCCEEDED,
        message,
        {
            "engine": record,
            "progress": {"stage": "publish", "percent": 100},
        },
    )


def _rfc3339(value: str | None) -> str | None:
    moment = jobstatus.parse_time(value)
    return statuses.now_rfc3339(moment) if moment else None


def _observe_duration(spec: EngineBuildSpec, phase: Phase, fields: Mapping[str, Any]) -> None:
    start, end = (
        jobstatus.parse_time(fields.get("startTime")),
        jobstatus.parse_time(fields.get("completionTime")),
    )
    if start and end:
        metrics.BUILD_DURATION.labels(str(spec.backend), phase.value).observe(
            max(0.0, (end - start).total_seconds())
        )
