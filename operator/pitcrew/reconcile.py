"""The executor of the state machine (pitcrew.decide): spec -> Job (or cache hit), the build-slot
queue, deletion, and the one status writer of every EngineBuild (write_status).

Decisions are made by the pure modules (decide, validation, plans, jobs, slots, sharing, statuses);
this module fetches what they need and performs what they decide. The Job follower (Job + Pods ->
status) is pitcrew.follow.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fnmatch
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from pitcrew import (
    conditions,
    decide,
    events,
    images,
    jobs,
    jobstatus,
    metrics,
    plans,
    sharing,
    slots,
    statuses,
    tenancy,
)
from pitcrew.api.listing import listing_digest
from pitcrew.api.plan import Manifest
from pitcrew.api.reasons import Reason
from pitcrew.api.v1alpha1 import (
    GROUP,
    PLURAL,
    VERSION,
    EngineBuildSpec,
    EngineRecord,
)
from pitcrew.kube import ApiError, Conflict, ns_path
from pitcrew.runtime import RT, Obj, trim_job
from pitcrew.storage import Credentials, StorageError, sha256
from pitcrew.validation import InvalidSpec, Problem, Resolved, secret_refs, validate

log = logging.getLogger("pitcrew.reconcile")

REASON_INVALID_SPEC = Reason.INVALID_SPEC
REASON_SOURCE = Reason.SOURCE_UNAVAILABLE
REASON_STORAGE = Reason.STORAGE_UNAVAILABLE
REASON_CACHE_HIT = Reason.CACHE_HIT
REASON_VERIFY = Reason.VERIFICATION_FAILED
REASON_FOREIGN_JOB = Reason.JOB_NAME_TAKEN
REASON_SECRET_MISSING = Reason.SECRET_NOT_FOUND


def eb_path(namespace: str, name: str | None = None) -> str:
    return ns_path(namespace, PLURAL, name, group=GROUP, version=VERSION)


def jobs_path(namespace: str, name: str | None = None) -> str:
    return ns_path(namespace, "jobs", name, group="batch")


def _post(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    events.post(body, type_, reason, message)


# -- Secrets and storage -----------------------------------------------------------------------


async def read_secrets(namespace: str, spec: EngineBuildSpec) -> dict[str, Obj | None]:
    out: dict[str, Obj | None] = {}
    for ref in secret_refs(spec).values():
        if ref.name not in out:
            out[ref.name] = await RT.kube.get(ns_path(namespace, "secrets", ref.name))
    return out


def credentials(
    secrets: Mapping[str, Obj | None], spec: EngineBuildSpec, namespace: str, role: str
) -> Credentials:
    """The identity for the build's `role` ("source" or "output") S3 location.

    The Secret the spec names (from its own namespace), or the operator's own identity only where
    the admin granted the prefix to the namespace (pitcrew.tenancy). Never a fallback from one to
    the other: a missing Secret or an ungranted location is an error.
    """
    ref = spec.source.credentials_secret_ref if role == "source" else spec.output.credentials_secret_ref
    if ref is not None:
        secret = secrets.get(ref.name)
        if not secret:
            raise StorageError(
                f"spec.{role}.credentialsSecretRef: Secret {ref.name!r} not found in this namespace: "
                "create it or fix the name",
                transient=False,
            )
        data = secret.get("data") or {}

        def dec(key: str) -> str | None:
            return base64.b64decode(data[key]).decode() if key in data else None

        return Credentials(
            dec(ref.access_key_id_key), dec(ref.secret_access_key_key), origin=f"{namespace}/{ref.name}"
        )
    access, problems = tenancy.s3_access(spec, namespace, RT.settings.tenant_policy, RT.settings.s3_endpoint)
    if role in access and access[role].operator_identity:
        return Credentials()  # the operator's own, for a prefix the admin granted to this namespace
    mine = [p for p in problems if p.field.startswith(f"spec.{role}.")]
    raise StorageError(str(mine[0]) if mine else f"spec.{role}: not permitted", transient=False)


def policy_problems(spec: EngineBuildSpec, namespace: str, resolved: Resolved) -> list[Problem]:
    """What the admin's tenancy policy refuses in this spec (pitcrew.tenancy)."""
    settings = RT.settings
    _, problems = tenancy.s3_access(spec, namespace, settings.tenant_policy, settings.s3_endpoint)
    problems += tenancy.pod_problems(
        spec, namespace, settings.tenant_policy, settings.builder_image(spec.backend)
    )
    problems += tenancy.gpu_problems(resolved.gpu_count, namespace, settings.tenant_policy)
    return problems


class SourceMissing(Exception):
    pass


async def source_identity(spec: EngineBuildSpec, creds: Credentials | None, namespace: str) -> str:
    """What the source bytes are (pitcrew.cachekey.key_inputs); spec.source.revision is a label only."""
    uri = spec.source.uri
    if uri.startswith("pvc://"):
        claim = uri[len("pvc://") :].split("/", 1)[0]
        pvc = await RT.kube.get(ns_path(namespace, "persistentvolumeclaims", claim))
        if pvc is None:
            raise SourceMissing(
                f"spec.source.uri: PersistentVolumeClaim {claim!r} not found in namespace {namespace}: "
                "create it or fix the URI"
            )
        return plans.pvc_identity(namespace, str(pvc["metadata"]["uid"]))
    if not uri.startswith("s3://") or creds is None:
        return plans.UNPINNED
    objects = await RT.store().list(spec.source.endpoint, creds, spec.source.uri)
    if not objects:
        raise SourceMissing(
            f"spec.source.uri: no objects under {spec.source.uri}: upload the checkpoint or fix the URI"
        )
    prefix = spec.source.uri[len("s3://") :].partition("/")[2]
    return listing_digest(objects, prefix)


async def read_manifest(
    output_uri: str, endpoint: str | None, creds: Credentials, key: str
) -> tuple[Manifest, bytes] | None:
    if not output_uri.startswith("s3://"):
        return None  # pvc:// outputs are only visible to the builder
    data = await RT.store().get(endpoint, creds, plans.manifest_uri(output_uri, key))
    if data is None:
        return None
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as e:
        log.warning("ignoring unreadable manifest", extra={"key": key, "error": str(e)[:200]})
        return None
    if manifest.cache_key != key:
        log.warning("ignoring manifest of another key", extra={"key": key, "found": manifest.cache_key})
        return None
    return manifest, data


def engine_record(output_uri: str, key: str, manifest: Manifest, data: bytes) -> dict[str, Any]:
    return EngineRecord(
        uri=plans.engine_uri(output_uri, key),
        manifest_uri=plans.manifest_uri(output_uri, key),
        size_bytes=manifest.size_bytes,
        file_count=len(manifest.files),
        manifest_sha256=sha256(data),
        compute_capability=manifest.compute_capability,
        trtllm_version=manifest.versions.tensorrt_llm,
        tensorrt_version=manifest.versions.tensorrt,
        backend=str(manifest.backend),
    ).to_api()


# -- spec -> Job: the executor of pitcrew.decide ----------------------------------------------------


@dataclass
class _Pass:
    """What one reconcile pass has read so far (the facts given to decide, and what they came from)."""

    body: Mapping[str, Any]
    cause: str
    spec: EngineBuildSpec | None = None
    resolved: Resolved | None = None
    secrets: dict[str, Obj | None] = field(default_factory=dict)
    job: Obj | None = None  # the Job the spec renders now
    key: str = ""
    jobs: dict[str, Obj] = field(default_factory=dict)  # our existing Jobs by name

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.body["metadata"]  # type: ignore[no-any-return]


async def reconcile(body: Mapping[str, Any], cause: str, *, attempt: int = 0) -> None:
    """create / update / resume / queue / upgrade: decide.decide's actions, with the I/O they need.

    Serialized per object with the Job follower (pitcrew.runtime.RT.lock), and every status write goes
    through write_status: one writer per object.
    """
    meta = body["metadata"]
    uid = meta["uid"]
    status = body.get("status") or {}
    observed = decide.Observed(
        cause=decide.Cause(cause),
        generation=int(meta.get("generation") or 0),
        status=status,
        deleting=bool(meta.get("deletionTimestamp")),
        upgrade=slots.needs_upgrade(body, RT.settings, RT.image_digests),
        attempt=attempt,
        max_attempts=RETRIES,
    )
    async with RT.lock(uid):
        await _execute(_Pass(body, cause), observed)


def transient_api_error(e: ApiError) -> bool:
    """No answer, throttled or a server error (after the client's own retries): worth retrying."""
    return e.status == 0 or e.status == 429 or e.status >= 500


RETRIES = 20  # kopf handler retries (handlers.py) before transient trouble counts as a failure


async def _execute(p: _Pass, o: decide.Observed) -> None:
    done: list[decide.Action] = []  # by equality: Write fields may hold dicts
    while True:
        for action in decide.decide(o):
            if isinstance(action, decide.Observe):
                try:
                    o = await _observe(p, o, action.what)
                except ApiError as e:
                    if not transient_api_error(e):
                        raise
                    o = dataclasses.replace(o, api_trouble=f"the Kubernetes API did not answer: {e}"[:600])
                break
            if action in done:
                continue
            done.append(action)
            await _apply(p, o, action)
        else:
            return


async def _observe(p: _Pass, o: decide.Observed, what: decide.Need) -> decide.Observed:
    ns, name, uid = p.meta["namespace"], p.meta["name"], p.meta["uid"]
    if what == decide.Need.SPEC:
        return dataclasses.replace(o, spec=await _check_spec(p))
    if what == decide.Need.SOURCE:
        return await _read_source(p, o)
    if what == decide.Need.JOBS:
        if p.cause == decide.Cause.CREATE:
            # A new object has no Jobs yet (a retried create that made one gets 409 and adopts it):
            # skip the LIST, it is the hot path of a burst.
            listed = list(RT.jobs.get(uid, {}).values())
        else:
            listed = [
                j
                for j in await RT.kube.list(jobs_path(ns), f"{jobs.LABEL_UID}={uid}")
                if jobs.owner_of(j) == (uid, name)
            ]
        p.jobs = {j["metadata"]["name"]: j for j in listed}
        pods = list(RT.pods.get(uid, {}).values())
        return dataclasses.replace(o, jobs=tuple(decide.job_facts(j, pods) for j in listed))
    if what == decide.Need.MANIFEST:
        assert p.spec is not None
        spec = p.spec
        try:
            out_creds = (
                credentials(p.secrets, spec, ns, "output") if spec.output.uri.startswith("s3://") else None
            )
            endpoint = spec.output.endpoint or RT.settings.s3_endpoint
            found = await read_manifest(spec.output.uri, endpoint, out_creds or Credentials(), p.key)
        except StorageError as e:
            return dataclasses.replace(
                o,
                manifest=decide.ManifestCheck(
                    trouble=f"spec.output.uri: cannot look for a published engine: {e}"
                ),
            )
        record = engine_record(spec.output.uri, p.key, *found) if found else None
        return dataclasses.replace(o, manifest=decide.ManifestCheck(record=record))
    assert what == decide.Need.START and p.job is not None
    return dataclasses.replace(o, start=await _start(p, o))


async def _check_spec(p: _Pass) -> decide.SpecCheck:
    ns = p.meta["namespace"]
    try:
        spec = EngineBuildSpec.model_validate(p.body.get("spec") or {})
    except ValidationError as e:
        first = e.errors()[0]
        where = "spec." + ".".join(str(x) for x in first["loc"])
        return decide.SpecCheck(invalid=f"{where}: {first['msg']}")
    p.spec = spec
    p.secrets = await read_secrets(ns, spec)
    keys: dict[str, frozenset[str] | None] = {
        n: frozenset((s or {}).get("data") or {}) if s else None for n, s in p.secrets.items()
    }
    # A Secret that does not exist yet (external-secrets, sealed-secrets, a later apply) is waited
    # for, not a failure: validate the rest as if it had the keys the spec names.
    missing = {f: ref for f, ref in secret_refs(spec).items() if keys.get(ref.name) is None}
    for ref in missing.values():
        keys[ref.name] = frozenset({ref.access_key_id_key, ref.secret_access_key_key})
    try:
        resolved = validate(spec, RT.settings, secret_keys=keys)
    except InvalidSpec as e:
        return decide.SpecCheck(invalid=str(e))
    # The builder by digest when one was seen for its tag (pitcrew.images): Job and key alike.
    image = images.resolve(resolved.builder_image, RT.image_digests)
    p.resolved = resolved = dataclasses.replace(resolved, builder_image=image)
    if missing:
        return decide.SpecCheck(
            missing_secrets="; ".join(
                f"{f}: Secret {ref.name!r} not found in this namespace: create it (the build starts when "
                "it appears) or fix the name"
                for f, ref in missing.items()
            )
        )
    refused = policy_problems(spec, ns, p.resolved)
    if refused:
        return decide.SpecCheck(refused="; ".join(str(x) for x in refused))
    too_big = slots.never_fits(resolved.gpu_count, slots.Limits.of(RT.settings))
    if too_big:
        return decide.SpecCheck(refused=too_big)  # it would wait for a slot forever
    return decide.SpecCheck()


async def _read_source(p: _Pass, o: decide.Observed) -> decide.Observed:
    assert p.spec is not None and p.resolved is not None
    spec, ns, name = p.spec, p.meta["namespace"], p.meta["name"]
    try:
        creds = credentials(p.secrets, spec, ns, "source") if spec.source.uri.startswith("s3://") else None
        identity = await source_identity(spec, creds, ns)
    except SourceMissing as e:
        return dataclasses.replace(o, source=decide.SourceCheck(trouble=str(e), missing=True))
    except StorageError as e:
        message = f"spec.source.uri: cannot list the checkpoint: {e}"
        return dataclasses.replace(o, source=decide.SourceCheck(trouble=message, transient=e.transient))
    planned = plans.make_plan(
        spec, p.resolved, RT.settings, namespace=ns, name=name, generation=o.generation,
        source_identity=identity,
    )  # fmt: skip
    p.key = planned.key
    p.job = jobs.render_job(
        namespace=ns, eb_name=name, eb_uid=p.meta["uid"], spec=spec, resolved=p.resolved, plan=planned.plan,
        settings=RT.settings,
    )  # fmt: skip
    ann = p.job["metadata"]["annotations"]
    plan = decide.Plan(
        key=planned.key,
        engine=ann[sharing.ANN_ENGINE],
        builder_image=p.resolved.builder_image,
        engine_uri=plans.engine_uri(spec.output.uri, planned.key),
        job_name=p.job["metadata"]["name"],
        scheduling=ann[jobs.ANN_SCHEDULING],
    )
    return dataclasses.replace(o, source=decide.SourceCheck(), plan=plan)


async def _start(p: _Pass, o: decide.Observed) -> decide.StartOutcome:
    """One Job per engine: looking for another build's Job and creating ours is one step per engine."""
    assert p.job is not None
    ns, name, uid = p.meta["namespace"], p.meta["name"], p.meta["uid"]
    engine = p.job["metadata"]["annotations"][sharing.ANN_ENGINE]
    assert p.resolved is not None
    # A builder upgrade (starting now, or queued before: its Reconciling reason says so) waits
    # behind new builds and spec changes.
    marker = decide.marker(o)
    rebuild = o.upgrade is not None or (marker is None and conditions.upgrading(o.status.get("conditions")))
    entry = slots.QueueEntry(
        created=str(p.meta.get("creationTimestamp") or ""), namespace=ns, name=name, uid=uid,
        gpus=p.resolved.gpu_count, work=slots.UPGRADE if rebuild else slots.NEW,
    )  # fmt: skip
    async with RT.engine_lock(engine):
        builder = sharing.shared_builder(RT.jobs, uid, engine)
        if builder is not None:
            RT.waiters.setdefault(engine, {})[uid] = (ns, name)
            _dequeue(uid)
            log.info(
                "waiting for a shared build", extra={"eb": f"{ns}/{name}", "job": builder["metadata"]["name"]}
            )
            return decide.SharedBuild(builder["metadata"]["name"])
        _stop_waiting(uid, engine)
        try:
            waiting = await start_job(p.body, entry, p.job, p.key)
        except ForeignJob as e:
            return decide.ForeignJob(str(e))
    if waiting is not None:
        # Over a build-slot cap: queued; the poller (or a finishing Job) starts it later.
        log.info("queued", extra={"eb": f"{ns}/{name}", "why": waiting})
        return decide.NoSlot(waiting)
    return decide.Started(p.job["metadata"]["name"])


async def _apply(p: _Pass, o: decide.Observed, action: decide.Action) -> None:
    body, ns, name, uid = p.body, p.meta["namespace"], p.meta["name"], p.meta["uid"]
    if isinstance(action, decide.Write):
        now = statuses.now_rfc3339()
        fields: dict[str, Any] = {k: (now if v == decide.NOW else v) for k, v in action.fields}
        patch = statuses.compose(
            o.status, phase=action.phase, reason=action.reason, message=action.message,
            generation=o.generation, now=now, upgrade=action.upgrade, **fields,
        )  # fmt: skip
        await write_status(uid, ns, name, o.generation, patch)
        if action.reason == Reason.CACHE_HIT:
            metrics.CACHE_HITS.inc()
        if action.event is not None:
            metrics.TRANSITIONS.labels(action.phase.value, action.reason).inc()
            _post(body, action.event, action.reason, action.message)
    elif isinstance(action, decide.Event):
        _post(body, action.type, action.reason, action.message)
    elif isinstance(action, decide.Retry):
        raise kopf.TemporaryError(action.message, delay=RT.settings.retry_seconds)
    elif isinstance(action, decide.Supersede):
        await supersede(body, p.jobs[action.job_name])
    elif isinstance(action, decide.Replace):
        await supersede(
            body, p.jobs[action.job_name], reason=Reason.JOB_REPLACED,
            why="the spec changed its scheduling (resources, tolerations, node selection, priority, timeout "
            "or retries) and no pod of it runs yet: a new Job applies the change",
        )  # fmt: skip
    elif isinstance(action, decide.Follow):
        from pitcrew import follow  # follow imports this module's helpers: imported when first used

        RT.schedule(uid, lambda: follow.sync(uid, ns, name))
    elif isinstance(action, decide.MarkUpgrade):
        RT.upgrades_tried[uid] = action.image
    elif isinstance(action, decide.Dequeue):
        _dequeue(uid)


async def write_status(
    uid: str, ns: str, name: str, generation: int | None, patch: Mapping[str, Any]
) -> bool:
    """The one path of every EngineBuild status write: serialized per object, and a write for an
    older generation than the newest one seen (from the watch or an earlier write) is dropped: that
    generation's own pass writes (decide: one write per new generation). Returns whether it wrote."""
    async with RT.write_lock(uid):
        newest = RT.generations.get(uid, 0)
        if generation is not None and generation < newest:
            metrics.ERRORS.labels("stale_write").inc()
            log.info(
                "dropped a status write for an older generation",
                extra={"eb": f"{ns}/{name}", "generation": generation, "newest": newest},
            )
            return False
        if generation is not None:
            RT.generations[uid] = max(newest, generation)
        await RT.kube.merge_patch(eb_path(ns, name) + "/status", {"status": dict(patch)})
        return True


def _stop_waiting(uid: str, engine: str | None = None) -> None:
    for e in [engine] if engine else list(RT.waiters):
        by_uid = RT.waiters.get(e)
        if by_uid is not None:
            by_uid.pop(uid, None)
            if not by_uid:
                del RT.waiters[e]


def wake_waiters(job: Mapping[str, Any]) -> None:
    """A Job finished or went: builds waiting for its engine look again (manifest, or build it)."""
    engine = (job.get("metadata", {}).get("annotations") or {}).get(sharing.ANN_ENGINE)
    if not engine:
        return
    for uid, (ns, name) in RT.waiters.pop(engine, {}).items():
        RT.schedule(f"shared:{uid}", _rerun(uid, ns, name, "shared"))


def _rerun(uid: str, ns: str, name: str, cause: str) -> Callable[[], Awaitable[None]]:
    async def again() -> None:
        await run(uid, ns, name, cause)

    return again


# LISTs across the watched namespaces: one call per namespace when they are plain names (a
# namespaced install grants nothing cluster-wide), else one cluster-wide call.


async def _list_watched_jobs() -> list[Obj]:
    exact = RT.settings.exact_namespaces()
    if exact is None:
        return await RT.kube.list("/apis/batch/v1/jobs", jobs.SELECTOR)
    out: list[Obj] = []
    for namespace in exact:
        out += await RT.kube.list(jobs_path(namespace), jobs.SELECTOR)
    return out


async def _list_watched_builds() -> list[Obj]:
    exact = RT.settings.exact_namespaces()
    if exact is None:
        return await RT.kube.list(f"/apis/{GROUP}/{VERSION}/{PLURAL}")
    out: list[Obj] = []
    for namespace in exact:
        out += await RT.kube.list(eb_path(namespace))
    return out


def _dequeue(uid: str) -> None:
    RT.queue.pop(uid, None)
    RT.admit_backoff.pop(uid, None)
    metrics.STATE.queued_builds = len(RT.queue)


async def prime_jobs() -> None:
    """Merges one LIST of our Jobs into the watch-fed view, once per process, before admitting.

    After a restart the Job watch replays its initial listing concurrently with the resume
    handlers; without this, builds resumed first would see too few active Jobs and over-admit.
    Entries the watch already delivered win (they are newer); Jobs it reported deleted are skipped.
    """
    if RT.jobs_primed:
        return
    async with RT.prime_lock:
        if RT.jobs_primed:
            return
        patterns = RT.settings.namespaces
        for item in await _list_watched_jobs():
            meta = item.get("metadata") or {}
            ours = jobs.owner_of(item)
            if ours is None or meta.get("uid") in RT.job_tombstones:
                continue
            owner = ours[0]
            if patterns and not any(fnmatch.fnmatchcase(meta.get("namespace", ""), p) for p in patterns):
                continue
            if meta.get("name") not in RT.jobs.get(owner, {}):
                RT.remember(RT.jobs, owner, meta["name"], trim_job(item))
                RT.note_job_image(RT.jobs[owner][meta["name"]])
        RT.jobs_primed = True
        RT.job_tombstones.clear()
        log.info("job view primed", extra={"active": RT.active_jobs()})


RESYNC_SECONDS = 300.0  # how often the Job view is checked against a LIST (missed DELETED events)
RESYNC_MARGIN_SECONDS = 10.0  # Jobs younger than this before the LIST may be missing from it


def stale_jobs(
    view: Mapping[str, Mapping[str, Obj]], listed: set[tuple[str, str]], cutoff: datetime
) -> list[tuple[str, str]]:
    """(uid, name) of Jobs in the view that a LIST no longer has. Pure.

    A watch that relists can miss a DELETED event; such a Job would hold its build slot forever.
    Only Jobs created before `cutoff` count: one created while the LIST ran may not be in it yet.
    """
    out = []
    for uid, by_name in view.items():
        for name, job in by_name.items():
            created = jobstatus.parse_time(job["metadata"].get("creationTimestamp"))
            if (uid, name) not in listed and created is not None and created < cutoff:
                out.append((uid, name))
    return out


async def resync_jobs() -> int:
    """Drops Jobs from the view that the API server no longer has; returns how many."""
    started = datetime.now(UTC)
    listed = {
        (ours[0], str(item["metadata"]["name"]))
        for item in await _list_watched_jobs()
        if (ours := jobs.owner_of(item)) is not None
    }
    cutoff = started - timedelta(seconds=RESYNC_MARGIN_SECONDS)
    gone = stale_jobs(RT.jobs, listed, cutoff)
    for uid, name in gone:
        job = RT.jobs.get(uid, {}).get(name)
        RT.remember(RT.jobs, uid, name, None)
        if job is not None:
            metrics.STATE.active_jobs.discard(job["metadata"].get("uid"))
            wake_waiters(job)
        log.warning("job view: dropped a Job the API server no longer has", extra={"job": name})
    return len(gone)


async def start_job(body: Mapping[str, Any], entry: slots.QueueEntry, job: Obj, key: str) -> str | None:
    """Creates the builder Job if a build slot is free; else queues the build: why it waits."""
    limits = slots.Limits.of(RT.settings)
    ns, job_name = entry.namespace, job["metadata"]["name"]
    if limits.any():
        await prime_jobs()
    async with RT.admission_lock if limits.any() else contextlib.nullcontext():
        if limits.any():
            skip = slots.backing_off(RT.admit_backoff, time.monotonic())
            held = RT.held()
            decision = slots.decide(entry, held, RT.queue.values(), limits, skip)
            if not decision.admit:
                RT.queue[entry.uid] = entry
                metrics.STATE.queued_builds = len(RT.queue)
                return slots.waiting_message(decision, entry, held, limits)
        _dequeue(entry.uid)
        try:
            created = await RT.kube.create(jobs_path(ns), job)
            # Counted at once, not when the watch reports it: the next decision must see it.
            RT.remember(RT.jobs, entry.uid, job_name, trim_job(created or job))
            metrics.JOBS_CREATED.inc()
            message = f"created builder Job {job_name} (cache key {key[:12]})"
            _post(body, "Normal", jobstatus.JOB_CREATED, message)
        except Conflict:
            existing = await RT.kube.get(jobs_path(ns, job_name))
            if existing is not None and jobs.owner_of(existing) != (entry.uid, entry.name):
                # Someone else's Job under our name: never adopted (it would drive our status).
                raise ForeignJob(
                    f"a Job named {job_name} exists in namespace {ns} that this EngineBuild does not own: "
                    "delete it (or rename it) and the build starts"
                ) from None
            log.info("Job exists, adopting", extra={"eb": f"{ns}/{entry.name}", "job": job_name})
            if existing is not None:
                RT.remember(RT.jobs, entry.uid, job_name, trim_job(existing))
    return None


class ForeignJob(Exception):
    pass


async def run(uid: str, ns: str, name: str, cause: str, entry: slots.QueueEntry | None = None) -> None:
    """reconcile() outside a kopf handler (poller: queued builds, upgrades, Secrets, rescheduling)."""
    body = await RT.kube.get(eb_path(ns, name))
    if not body or body["metadata"].get("uid") != uid or body["metadata"].get("deletionTimestamp"):
        _dequeue(uid)
        return
    try:
        await reconcile(body, cause)
    except kopf.TemporaryError as e:
        log.warning("retrying later", extra={"eb": f"{ns}/{name}", "cause": cause, "error": str(e)[:300]})
        if cause == "upgrade":
            RT.upgrades_tried.pop(uid, None)
        elif cause == "admit":
            created = str(body["metadata"].get("creationTimestamp") or "")
            _requeue_later(entry or slots.QueueEntry(created=created, namespace=ns, name=name, uid=uid))


def _requeue_later(entry: slots.QueueEntry) -> None:
    """Back in line (its place is by age) after a failed admission; tried again after
    PITCREW_RETRY_SECONDS, and meanwhile not counted ahead of anyone."""
    RT.queue.setdefault(entry.uid, entry)
    RT.admit_backoff[entry.uid] = time.monotonic() + RT.settings.retry_seconds
    metrics.STATE.queued_builds = len(RT.queue)


async def admit_queued() -> None:
    """Starts queued builds while slots are free, in slots.order (new work before upgrades,
    round-robin across namespaces), recomputed before every start: builds queued meanwhile take
    their place at once.

    A build whose admission fails (S3 or API trouble) goes back in line with a retry time and the
    next one is tried: one failing build does not stop admissions for everyone.
    """
    if not RT.queue:
        return
    async with RT.admitting:
        limits = slots.Limits.of(RT.settings)
        await prime_jobs()
        tried: set[str] = set()
        while True:
            queue = [e for e in RT.queue.values() if e.uid not in tried]
            ready = slots.startable(RT.held(), queue, limits, RT.admit_backoff, time.monotonic())
            if not ready:
                break
            entry = ready[0]
            tried.add(entry.uid)
            _dequeue(entry.uid)
            try:
                await run(entry.uid, entry.namespace, entry.name, "admit", entry)
            except Exception as e:
                metrics.ERRORS.labels("admit").inc()
                log.warning(
                    "admission failed",
                    extra={"eb": f"{entry.namespace}/{entry.name}", "error": repr(e)[:300]},
                )
                _requeue_later(entry)
                continue
            if entry.uid in RT.queue and entry.uid not in RT.admit_backoff:
                break  # it went back because the slot was taken meanwhile
        metrics.STATE.queued_builds = len(RT.queue)


def _ann(obj: Mapping[str, Any], key: str) -> str | None:
    value = (obj.get("metadata", {}).get("annotations") or {}).get(key)
    return str(value) if value is not None else None


async def supersede(
    body: Mapping[str, Any],
    job: Mapping[str, Any],
    *,
    reason: str = Reason.SUPERSEDED,
    why: str = "the spec changed its engine (cache key or output location)",
) -> None:
    ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
    if await RT.kube.delete(jobs_path(ns, name), propagation="Background"):
        _post(body, "Normal", reason, f"deleted builder Job {name}: {why}")
        # Its build slot is free now (the watch says so a moment later): the replacement may use it.
        cached = RT.jobs.get(body["metadata"]["uid"], {}).get(name)
        if cached is not None and not cached["metadata"].get("deletionTimestamp"):
            cached["metadata"] = {**cached["metadata"], "deletionTimestamp": statuses.now_rfc3339()}


# -- deletion ---------------------------------------------------------------------------------------


async def prime_builds() -> None:
    """Merges one LIST of the watched EngineBuilds into the engine-users index, once per process:
    after a restart a deletion may run before the watch has replayed every object."""
    if RT.builds_primed:
        return
    async with RT.prime_lock:
        if RT.builds_primed:
            return
        for item in await _list_watched_builds():
            meta = item["metadata"]
            if meta["uid"] not in RT.engines_of:
                engines = sharing.engines_in_use(item, RT.settings.s3_endpoint)
                RT.note_engines(meta["uid"], meta["namespace"], meta["name"], engines)
        RT.builds_primed = True


async def delete_artifacts(body: Mapping[str, Any]) -> None:
    """deletionPolicy Delete: stop the builder, then remove every engine this object published or
    points at (sharing.engines_to_clean) that no other EngineBuild uses."""
    meta = body["metadata"]
    ns, uid = meta["namespace"], meta["uid"]
    spec = EngineBuildSpec.model_validate(body["spec"])
    remaining = []
    for job in await RT.kube.list(jobs_path(ns), f"{jobs.LABEL_UID}={uid}"):
        if jobs.owner_of(job) != (uid, meta["name"]):
            continue  # not ours, whatever its labels say
        # Foreground: the Job is gone only once its pods are, so no builder writes after the delete.
        await RT.kube.delete(jobs_path(ns, job["metadata"]["name"]), propagation="Foreground")
        if await RT.kube.get(jobs_path(ns, job["metadata"]["name"])) is not None:
            remaining.append(job["metadata"]["name"])
    targets = sharing.engines_to_clean(body, RT.settings.s3_endpoint)
    if not targets:
        return
    if remaining:
        raise kopf.TemporaryError(
            f"waiting for builder Job {remaining[0]} to be gone before deleting the engine",
            delay=min(RT.settings.retry_seconds, 5.0),
        )
    await prime_builds()  # once per process; afterwards the watch keeps the index current
    secrets: dict[str, Obj | None] | None = None
    for uri, endpoint in targets:
        label = uri.rstrip("/").rsplit("/", 1)[-1][:12]
        users = {u: who for u, who in RT.engine_users.get(sharing.engine_at(uri, endpoint, ns), {}).items()}
        users.pop(uid, None)
        if users:
            # Another namespace's object is not named (tenants do not learn of each other).
            names = sorted(name for other_ns, name in users.values() if other_ns == ns)
            who = names[0] if names else "another namespace"
            _post(body, "Normal", Reason.ARTIFACTS_KEPT, f"engine {label} is still used by {who}")
            continue
        if secrets is None:
            secrets = await read_secrets(ns, spec)
        # The identity is checked against the engine's own location (it may be an earlier output).
        there = spec.model_copy(
            update={"output": spec.output.model_copy(update={"uri": uri, "endpoint": endpoint or None})}
        )
        try:
            count = await RT.store().delete_prefix(
                endpoint or None, credentials(secrets, there, ns, "output"), uri
            )
        except StorageError as e:
            if not e.transient:
                # Not permitted (no Secret, prefix not granted) or refused: keep the engine and let
                # the object go; deleting with the operator's own identity is what must not happen.
                _post(body, "Warning", Reason.ARTIFACTS_KEPT, f"engine {label} not deleted: {e}")
                continue
            raise kopf.TemporaryError(
                f"cannot delete the engine: {e}", delay=RT.settings.retry_seconds
            ) from e
        log.info("deleted artifacts", extra={"eb": f"{ns}/{meta['name']}", "engine": uri, "objects": count})
