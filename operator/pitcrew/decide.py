"""The EngineBuild state machine: what to do about an object, from what was observed. Pure.

In the style of kopf's own causes (pure detection) / processing (effects) split: `decide(observed)`
returns actions; the executor (`pitcrew.reconcile.reconcile`) performs them. Observation is lazy:
when `decide` needs a fact it does not have yet (the spec's Secrets, the source listing, the Jobs,
the published manifest, the outcome of starting a Job) its last action is `Observe(what)`; the
executor gathers it and calls `decide` again with the richer `Observed`. Effects listed before an
`Observe` are idempotent in the executor (each distinct action runs once per reconcile).

Every pass for a new generation (status.observedGeneration != metadata.generation) ends in exactly
one status write carrying that generation, in `status.observedGeneration` and in every condition:
GitOps tools (kstatus) read a stale observedGeneration as "not looked at yet".
docs/controller.md has the table of observed state -> action; tests/controller/test_decide.py checks
it case by case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pitcrew import jobview, sharing, slots, statuses
from pitcrew.api.reasons import Reason
from pitcrew.api.v1alpha1 import Phase


class Cause(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    RESUME = "resume"
    UPGRADE = "upgrade"  # a finished build's builder image changed
    ADMIT = "admit"  # a build slot came free for a queued build
    SHARED = "shared"  # the build of the same engine it waited for ended
    SECRET = "secret"  # the poller looks again for a missing Secret
    POLL = "poll"  # the poller found the build's Job gone
    RESCHEDULE = "reschedule"  # the Job retries with a pod template the spec no longer asks for


class Need(StrEnum):
    SPEC = "spec"  # parse + validate the spec, read its Secrets, check the tenancy policy
    SOURCE = "source"  # the source identity (S3 listing / PVC uid), then the plan and key
    JOBS = "jobs"  # our Jobs of this object, with their Pods
    MANIFEST = "manifest"  # <output>/<key>/manifest.json
    START = "start"  # start a Job: one per engine, a build slot, the create (one locked step)


# -- what was observed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecCheck:
    invalid: str | None = None  # InvalidSpec message (schema or validation)
    missing_secrets: str | None = None  # Secrets named but not there (yet)
    refused: str | None = None  # the tenancy policy's refusal


@dataclass(frozen=True)
class SourceCheck:
    trouble: str | None = None
    transient: bool = False  # S3 unreachable/overloaded: retried (Reconciling), not failed
    missing: bool = False  # no objects / no claim: Failed, but retried (it may appear)


@dataclass(frozen=True)
class Plan:
    """What the spec asks for now (from the plan): the engine, and the Job that would build it."""

    key: str
    engine: str  # sharing.engine_ident: where it is published
    builder_image: str
    engine_uri: str
    job_name: str
    scheduling: str  # jobs.scheduling_digest of the Job the spec renders now


@dataclass(frozen=True)
class JobFacts:
    name: str
    key: str | None
    engine: str | None
    generation: int
    deleting: bool
    failed: bool  # outcome known: failed (jobview.failed)
    holds_slot: bool
    building: bool  # outcome not known yet (jobview.building)
    running: bool  # a pod of it is Running
    scheduling: str | None  # its jobs.ANN_SCHEDULING (None: made before the annotation existed)
    created: str = ""


def job_facts(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> JobFacts:
    meta = job.get("metadata") or {}
    ann = meta.get("annotations") or {}
    name = str(meta.get("name"))
    running = any(
        (p.get("status") or {}).get("phase") == "Running"
        and not (p.get("metadata") or {}).get("deletionTimestamp")
        and (p.get("metadata", {}).get("labels") or {}).get("batch.kubernetes.io/job-name", name) == name
        for p in pods
    )
    return JobFacts(
        name=name,
        key=ann.get("pitcrew.dev/cache-key"),
        engine=ann.get("pitcrew.dev/engine"),
        generation=int(ann.get("pitcrew.dev/generation") or 0),
        deleting=jobview.deleting(job),
        failed=jobview.failed(job),
        holds_slot=jobview.holds_slot(job),
        building=jobview.building(job),
        running=running,
        scheduling=ann.get("pitcrew.dev/scheduling"),
        created=str(meta.get("creationTimestamp") or ""),
    )


@dataclass(frozen=True)
class ManifestCheck:
    record: Mapping[str, Any] | None = None  # the engine record when published (a cache hit)
    trouble: str | None = None  # S3 trouble while looking (transient)


@dataclass(frozen=True)
class Started:
    job_name: str


@dataclass(frozen=True)
class SharedBuild:
    job_name: str  # another EngineBuild's Job builds the same engine


@dataclass(frozen=True)
class NoSlot:
    message: str  # why it waits (pitcrew.slots.waiting_message)


@dataclass(frozen=True)
class ForeignJob:
    message: str


StartOutcome = Started | SharedBuild | NoSlot | ForeignJob


@dataclass(frozen=True)
class Observed:
    cause: Cause
    generation: int
    status: Mapping[str, Any] = field(default_factory=dict)
    deleting: bool = False
    upgrade: slots.Upgrade | None = None  # slots.needs_upgrade for this body (pure)
    attempt: int = 0  # kopf's retry count of this handler (0 = first try)
    max_attempts: int = 20
    spec: SpecCheck | None = None
    source: SourceCheck | None = None
    plan: Plan | None = None
    jobs: tuple[JobFacts, ...] | None = None
    manifest: ManifestCheck | None = None
    start: StartOutcome | None = None
    # Transient Kubernetes API trouble while observing (5xx, 429, no answer), after the client's own
    # retries: still working on it (Reconciling), retried like S3 trouble.
    api_trouble: str | None = None

    @property
    def new_generation(self) -> bool:
        return self.status.get("observedGeneration") != self.generation

    @property
    def last_attempt(self) -> bool:
        return self.attempt + 1 >= self.max_attempts


# -- actions ----------------------------------------------------------------------------------------

NOW = "<now>"  # a Write field the executor fills with the time of the write


@dataclass(frozen=True)
class Observe:
    what: Need


@dataclass(frozen=True)
class Write:
    """A status write (statuses.compose). `event`: post an Event of this type with the reason and
    message, and count the transition. `upgrade`: conditions.compute's marker."""

    phase: Phase
    reason: str
    message: str
    fields: tuple[tuple[str, Any], ...] = ()
    upgrade: bool | None = None
    event: str | None = None  # "Normal" / "Warning"


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Retry:
    message: str


@dataclass(frozen=True)
class Supersede:
    job_name: str  # another engine's Job: deleted (Superseded event)


@dataclass(frozen=True)
class Replace:
    job_name: str  # same engine, stale scheduling, no pod running: deleted (JobReplaced event)


@dataclass(frozen=True)
class Follow:
    """Map the current Job and Pods to the status (pitcrew.follow), soon."""


@dataclass(frozen=True)
class MarkUpgrade:
    image: str  # one try per EngineBuild and builder image in this process


@dataclass(frozen=True)
class Dequeue:
    """Leave the build-slot queue (a cache hit or a shared build needs no slot)."""


Action = Observe | Write | Event | Retry | Supersede | Replace | Follow | MarkUpgrade | Dequeue


# -- the decisions ----------------------------------------------------------------------------------


def _fail(o: Observed, reason: str, message: str, *, retry: bool = False) -> list[Action]:
    same = o.status.get("phase") == Phase.FAILED.value and o.status.get("reason") == reason
    out: list[Action] = [Write(Phase.FAILED, reason, message, event=None if same else "Warning")]
    return out + ([Retry(message)] if retry else [])


def _fields(**kw: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(kw.items())


def marker(o: Observed) -> bool | None:
    """Conditions: an upgrade starts here; a new spec ends one; anything else keeps the state."""
    if o.upgrade is not None:
        return True
    if o.cause in (Cause.CREATE, Cause.UPDATE) or o.new_generation:
        return False
    return None


def entry(o: Observed) -> list[Action] | None:
    """Before anything is read: nothing to do, only follow the Job, or go on (None)."""
    if o.deleting:
        return []
    status = o.status
    done = status.get("phase") in statuses.TERMINAL
    resumable = o.cause == Cause.RESUME and not o.new_generation and status.get("cacheKey")
    if resumable and (done or status.get("job")):
        # Restart: a running build is followed from its Job; a finished one needs nothing unless
        # the operator's builder image for its backend changed (and it did not pin one).
        if not done:
            return [Follow()]
        return [] if o.upgrade is None else None
    if o.cause == Cause.UPGRADE and o.upgrade is None:
        return []
    return None


def decide(o: Observed) -> list[Action]:
    first = entry(o)
    if first is not None:
        return first
    up = o.upgrade
    marker_ = marker(o)
    pre: list[Action] = [MarkUpgrade(up.new_image)] if up is not None else []
    if o.api_trouble is not None:
        if o.last_attempt:
            return pre + _fail(o, Reason.API_UNAVAILABLE, _gave_up(o, o.api_trouble))
        return [
            *pre,
            Write(Phase.PENDING, Reason.API_UNAVAILABLE, o.api_trouble, upgrade=marker_),
            Retry(o.api_trouble),
        ]

    # 1. The spec: schema, validation, Secrets, the tenancy policy (no S3 call, no Job before).
    if o.spec is None:
        return [Observe(Need.SPEC)]
    if o.spec.invalid is not None:
        return pre + _fail(o, Reason.INVALID_SPEC, o.spec.invalid)  # the next spec change retries
    if o.spec.missing_secrets is not None:
        message = o.spec.missing_secrets
        changed = (
            o.status.get("reason") != Reason.SECRET_NOT_FOUND
            or o.status.get("message") != message
            or o.new_generation
        )
        if not changed:
            return pre  # the poller looks again (Cause.SECRET)
        return [
            *pre,
            Write(Phase.PENDING, Reason.SECRET_NOT_FOUND, message, upgrade=marker_, event="Warning"),
        ]
    if o.spec.refused is not None:
        return pre + _fail(o, Reason.POLICY_VIOLATION, o.spec.refused)

    # 2. The source: what the bytes are, hence the key.
    if o.source is None:
        return [Observe(Need.SOURCE)]
    src = o.source
    if src.trouble is not None:
        if src.missing:
            return pre + _fail(o, Reason.SOURCE_UNAVAILABLE, src.trouble, retry=True)
        if src.transient and not o.last_attempt:
            # Unreachable or overloaded: still working on it (Reconciling), retried.
            return [
                *pre,
                Write(Phase.PENDING, Reason.STORAGE_UNAVAILABLE, src.trouble, upgrade=marker_),
                Retry(src.trouble),
            ]
        if src.transient:
            return pre + _fail(o, Reason.STORAGE_UNAVAILABLE, _gave_up(o, src.trouble))
        return pre + _fail(o, Reason.SOURCE_UNAVAILABLE, src.trouble, retry=True)
    plan = o.plan
    assert plan is not None, "a source without trouble comes with a plan"

    # 3. Our Jobs: others' engines go; the same engine's Job is followed (or replaced).
    if o.jobs is None:
        return [Observe(Need.JOBS)]
    effects: list[Action] = list(pre)

    def same_engine(j: JobFacts) -> bool:
        return j.key == plan.key and j.engine in (None, plan.engine)

    for j in o.jobs:
        if not j.deleting and not same_engine(j) and (j.key != plan.key or j.holds_slot):
            effects.append(Supersede(j.name))  # another key, or a running build publishing elsewhere
    same_key = [j for j in o.jobs if same_engine(j) and not j.deleting]
    live = [j for j in same_key if not j.failed]
    if live or (same_key and o.cause == Cause.RESUME):
        job = max(live or same_key, key=lambda j: (j.generation, j.created))
        if stale_scheduling(job, plan) and job.generation < o.generation:
            # The spec changed the pod's scheduling (resources, tolerations, timeout, ...) but not
            # the engine: a Job no pod of which runs yet (pending, unschedulable, or waiting to
            # retry) is replaced so the change reaches it; a running pod is left to finish.
            effects.append(Replace(job.name))
        else:
            if o.new_generation:
                effects.append(_regenerate(o, plan))
            return [*effects, Follow()]

    # 4. Published already?
    if o.manifest is None:
        return [*effects, Observe(Need.MANIFEST)]
    if o.manifest.trouble is not None:
        if o.last_attempt:
            return effects + _fail(o, Reason.STORAGE_UNAVAILABLE, _gave_up(o, o.manifest.trouble))
        return [
            *effects,
            Write(
                Phase.PENDING, Reason.STORAGE_UNAVAILABLE, o.manifest.trouble, upgrade=marker_,
                fields=_fields(cacheKey=plan.key),
            ),
            Retry(o.manifest.trouble),
        ]  # fmt: skip
    if o.manifest.record is not None:
        message = f"engine already published at {plan.engine_uri}"
        if up is not None:
            effects.append(Event("Normal", Reason.BUILDER_UPGRADE, slots.upgrade_message(up, plan.key)))
        return [
            *effects,
            Write(
                Phase.SUCCEEDED, Reason.CACHE_HIT, message, upgrade=marker_, event="Normal",
                fields=_fields(
                    cacheKey=plan.key, cacheHit=True, builderImage=plan.builder_image,
                    engine=dict(o.manifest.record), job=None, progress=None, startTime=NOW,
                    completionTime=NOW,
                ),
            ),
            Dequeue(),
        ]  # fmt: skip

    # 5. Build: one Job per engine, a build slot, the create.
    if o.start is None:
        return [*effects, Observe(Need.START)]
    return effects + _after_start(o, plan, o.start, marker_)


def _after_start(o: Observed, plan: Plan, outcome: StartOutcome, marker_: bool | None) -> list[Action]:
    up = o.upgrade
    waiting = dict(
        cacheKey=plan.key, cacheHit=False, builderImage=plan.builder_image, job=None, progress=None
    )
    if isinstance(outcome, ForeignJob):
        return _fail(o, Reason.JOB_NAME_TAKEN, outcome.message, retry=True)
    if isinstance(outcome, SharedBuild):
        message = _shared_message(plan)
        if (
            o.status.get("reason") == Reason.WAITING_FOR_SHARED_BUILD
            and o.status.get("cacheKey") == plan.key
            and not o.new_generation
        ):
            return []
        return [
            Write(
                Phase.QUEUED, Reason.WAITING_FOR_SHARED_BUILD, message, upgrade=marker_, event="Normal",
                fields=_fields(**waiting),
            )
        ]  # fmt: skip
    if isinstance(outcome, NoSlot):
        message = outcome.message
        out: list[Action] = []
        if up is not None:
            message += f" (builder upgrade {up.old_image} -> {up.new_image})"
            out.append(Event("Normal", Reason.BUILDER_UPGRADE, slots.upgrade_message(up, plan.key)))
        if (
            o.status.get("reason") != Reason.WAITING_FOR_BUILD_SLOT
            or o.status.get("cacheKey") != plan.key
            or o.new_generation
        ):
            out.append(
                Write(
                    Phase.QUEUED, Reason.WAITING_FOR_BUILD_SLOT, message, upgrade=marker_, event="Normal",
                    fields=_fields(**waiting),
                )
            )  # fmt: skip
        return out
    job = {"name": outcome.job_name, "attempts": 0}
    if up is not None:
        # The one extra write of an upgrade: why it rebuilds, visible before the Job reports.
        return [
            Write(
                Phase.QUEUED, Reason.BUILDER_UPGRADE, slots.upgrade_message(up, plan.key), upgrade=True,
                event="Normal", fields=_fields(**{**waiting, "job": job}),
            ),
            Follow(),
        ]  # fmt: skip
    if o.new_generation or o.status.get("cacheKey") != plan.key:
        # The new generation's one write: Reconciling=True with its observedGeneration, the Job named.
        # The Job's own events follow (Building, normally) from pitcrew.follow.
        return [
            Write(
                Phase.QUEUED, Reason.JOB_CREATED,
                f"builder Job {outcome.job_name} created (cache key {plan.key[:12]})",
                upgrade=marker_, fields=_fields(**{**waiting, "job": job}),
            ),
            Follow(),
        ]  # fmt: skip
    return [Follow()]


def stale_scheduling(job: JobFacts, plan: Plan) -> bool:
    """The same engine's Job asks for other scheduling than the spec now does, and no pod of it runs."""
    return (
        job.building and not job.running and job.scheduling is not None and job.scheduling != plan.scheduling
    )


def _regenerate(o: Observed, plan: Plan) -> Write:
    """A spec change that keeps the engine: the current state, restated for the new generation."""
    st = o.status
    try:
        phase = Phase(st.get("phase") or Phase.QUEUED.value)
    except ValueError:
        phase = Phase.QUEUED
    reason = str(st.get("reason") or Reason.ACCEPTED)
    message = str(st.get("message") or "spec change accepted; the build of the same engine continues")
    return Write(phase, reason, message, fields=_fields(cacheKey=plan.key))


def _gave_up(o: Observed, trouble: str) -> str:
    return f"{trouble} (gave up after {o.max_attempts} tries; a spec change or an operator restart retries)"


def _shared_message(plan: Plan) -> str:
    return sharing.waiting_message(plan.engine_uri)
