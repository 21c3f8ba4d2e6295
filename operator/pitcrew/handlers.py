"""kopf registration: `kopf run -m pitcrew.handlers --standalone --all-namespaces` (or `python -m pitcrew`).

Thin by design: each handler hands over to pitcrew.reconcile. Jobs and Pods are watched with a
server-side label selector (only ours), and their events feed the trimmed views in pitcrew.runtime.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from pitcrew import follow, jobs, jobview, metrics, poller, reconcile, sharing
from pitcrew.api.v1alpha1 import GROUP, PLURAL, VERSION, DeletionPolicy
from pitcrew.runtime import RT, trim_job, trim_pod
from pitcrew.settings import Settings, SettingsError
from pitcrew.statuses import TERMINAL

log = logging.getLogger("pitcrew")
PREFIX = "pitcrew.dev"
EB = (GROUP, VERSION, PLURAL)
OURS = {jobs.MANAGED_BY: jobs.MANAGER}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    try:
        RT.settings = Settings.from_env()
    except SettingsError as e:
        raise kopf.PermanentError(f"bad operator setting: {e}") from e
    # Progress, diff-base and finalizer under our own prefix: they land on users' (GitOps) objects.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    # Watch streams must not freeze silently: the server ends them, the client gives up a bit later.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # Only our Jobs and Pods come over the wire.
    settings.watching.label_selectors["batch", "jobs"] = jobs.SELECTOR
    settings.watching.label_selectors["", "pods"] = jobs.SELECTOR
    # kopf's own per-handler INFO events would cost a write each; ours are posted explicitly.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8
    # Bounded per-object workers: a mass apply is processed 64 objects at a time instead of all at
    # once, which bounds the memory peak (the watch stream waits meanwhile); an idle worker gives
    # its slot back quickly so the bound does not throttle a burst.
    settings.queueing.worker_limit = 64
    settings.queueing.idle_timeout = 0.5
    metrics.serve(RT.settings.metrics_port)
    RT.timers = poller.start()
    log.info("pitcrew operator starting", extra={"settings": RT.settings.describe()})


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    for task in RT.timers:
        task.cancel()
    await RT.kube.close()


def in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The API server a pod reaches, as client-go's in-cluster config finds it:
    https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT (kopf's own login assumes the DNS name
    kubernetes.default.svc on port 443, which needs cluster DNS and a Service proxy)."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


@kopf.on.login()
def login(**kwargs: Any) -> Any:
    """kopf's own minimal logins (no client library needed); our client shares the credentials."""
    info = kopf.login_with_service_account(**kwargs)
    server = in_cluster_server(os.environ) if info is not None else None
    if info is not None and server:
        info = dataclasses.replace(info, server=server)
    info = info or kopf.login_with_kubeconfig(**kwargs)
    if info is None:
        raise kopf.LoginError("no in-cluster service account and no kubeconfig (set KUBECONFIG)")
    RT.kube.configure(info)
    return info


# -- EngineBuilds --------------------------------------------------------------------------------


@kopf.on.create(*EB, id="build", retries=reconcile.RETRIES, backoff=RT.settings.retry_seconds)
async def on_create(body: kopf.Body, retry: int, **_: Any) -> None:
    await reconcile.reconcile(body, "create", attempt=retry)


@kopf.on.update(*EB, field="spec", id="rebuild", retries=reconcile.RETRIES, backoff=RT.settings.retry_seconds)
async def on_update(body: kopf.Body, retry: int, **_: Any) -> None:
    await reconcile.reconcile(body, "update", attempt=retry)


@kopf.on.resume(*EB, id="resume", retries=reconcile.RETRIES, backoff=RT.settings.retry_seconds)
async def on_resume(body: kopf.Body, retry: int, **_: Any) -> None:
    await reconcile.reconcile(body, "resume", attempt=retry)


def _deletes_artifacts(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("output", {}).get("deletionPolicy") == DeletionPolicy.DELETE.value)


# Only objects with deletionPolicy Delete get a finalizer; Retain needs none (Jobs go by owner refs).
@kopf.on.delete(
    *EB, id="delete-artifacts", when=_deletes_artifacts, retries=10, backoff=RT.settings.retry_seconds
)
async def on_delete(body: kopf.Body, **_: Any) -> None:
    await reconcile.delete_artifacts(body)


def _in_flight(body: kopf.Body) -> bool:
    status = body.get("status") or {}
    return status.get("phase") not in TERMINAL or status.get("observedGeneration") != body["metadata"].get(
        "generation"
    )


@kopf.on.event(*EB)
async def track_phase(type: str, body: kopf.Body, **_: Any) -> None:
    uid = body["metadata"]["uid"]
    if type == "DELETED":
        metrics.STATE.forget(uid)
        RT.forget(uid)
    else:
        RT.note_generation(uid, body["metadata"].get("generation"))
        metrics.STATE.set_phase(uid, (body.get("status") or {}).get("phase"))
        meta = body["metadata"]
        RT.note_engines(
            uid, meta["namespace"], meta["name"], sharing.engines_in_use(body, RT.settings.s3_endpoint)
        )
        if _in_flight(body):
            RT.in_flight[uid] = (body["metadata"]["namespace"], body["metadata"]["name"])
        else:
            RT.in_flight.pop(uid, None)


# -- our Jobs and Pods ------------------------------------------------------------------------------


def _owner(body: kopf.Body, *, pod: bool = False) -> tuple[str, str, str] | None:
    """(uid, namespace, name) of the EngineBuild, for Jobs (and their Pods) the controller made.

    Labels only select what comes over the wire: a Job anyone labelled like ours neither takes a
    build slot nor drives a build's status (jobs.owner_of checks owner reference and name).
    """
    owner = jobs.pod_owner_of(body) if pod else jobs.owner_of(body)
    if owner is None:
        return None
    uid, name = owner
    return uid, body["metadata"]["namespace"], name


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
async def job_event(type: str, body: kopf.Body, **_: Any) -> None:
    owner = _owner(body)
    if owner is None:
        return
    uid, ns, name = owner
    job_uid, job_name = body["metadata"]["uid"], body["metadata"]["name"]
    trimmed = trim_job(body)
    finished = jobview.finished(trimmed)
    if type == "DELETED":
        RT.remember(RT.jobs, uid, job_name, None)
        metrics.STATE.active_jobs.discard(job_uid)
        if not RT.jobs_primed:
            RT.job_tombstones.add(job_uid)
        poller.slot_freed()
        reconcile.wake_waiters(trimmed)
        return
    RT.remember(RT.jobs, uid, job_name, trimmed)
    RT.note_job_image(trimmed)  # a Job run by tag@digest teaches what the tag stands for
    if finished:
        metrics.STATE.active_jobs.discard(job_uid)
        poller.slot_freed()
        reconcile.wake_waiters(trimmed)
    else:
        metrics.STATE.active_jobs.add(job_uid)
    RT.schedule(uid, lambda: follow.sync(uid, ns, name))


@kopf.on.event("", "v1", "pods", labels=OURS)
async def pod_event(type: str, body: kopf.Body, **_: Any) -> None:
    owner = _owner(body, pod=True)
    if owner is None:
        return
    uid, ns, name = owner
    RT.remember(RT.pods, uid, body["metadata"]["name"], None if type == "DELETED" else trim_pod(body))
    if type != "DELETED":
        RT.schedule(uid, lambda: follow.sync(uid, ns, name))
