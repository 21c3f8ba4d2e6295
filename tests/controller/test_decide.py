"""The EngineBuild state machine (pitcrew.decide), case by case: observed state -> actions.

Each row is one line of the table in docs/controller.md ("The state machine").
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pitcrew import decide, slots
from pitcrew.decide import (
    Cause,
    Event,
    ForeignJob,
    JobFacts,
    ManifestCheck,
    MarkUpgrade,
    Need,
    NoSlot,
    Observe,
    Observed,
    Plan,
    Replace,
    SharedBuild,
    SourceCheck,
    SpecCheck,
    Started,
    Supersede,
    Write,
)

KEY, OTHER = "a" * 64, "b" * 64
PLAN = Plan(
    key=KEY,
    engine=f"http://s3 s3://out/{KEY}/",
    builder_image="builder:2",
    engine_uri=f"s3://out/{KEY}/",
    job_name="m-uid-aaaaaaaa-2",
    scheduling="sched-new",
)
UP = slots.Upgrade(backend="tensorrt-llm", old_image="builder:1", new_image="builder:2")
OK_SPEC, OK_SOURCE = SpecCheck(), SourceCheck()


def job(name: str = "j1", **kw: Any) -> JobFacts:
    base: dict[str, Any] = dict(
        name=name, key=KEY, engine=PLAN.engine, generation=1, deleting=False, failed=False,
        holds_slot=True, building=True, running=True, scheduling="sched-old",
    )  # fmt: skip
    return JobFacts(**{**base, **kw})


def obs(
    cause: Cause = Cause.CREATE, *, gen: int = 1, status: dict[str, Any] | None = None, **kw: Any
) -> Observed:
    return Observed(cause=cause, generation=gen, status=status or {}, **kw)


def ready(cause: Cause = Cause.CREATE, **kw: Any) -> Observed:
    """Everything observed up to the Jobs (none); override what the case is about."""
    base: dict[str, Any] = dict(spec=OK_SPEC, source=OK_SOURCE, plan=PLAN, jobs=())
    return obs(cause, **{**base, **kw})


def summary(actions: list[decide.Action]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for a in actions:
        if isinstance(a, Write):
            out.append(("write", a.phase.value, a.reason, a.event))
        elif isinstance(a, Observe):
            out.append(("observe", a.what.value))
        elif isinstance(a, Event):
            out.append(("event", a.reason))
        elif isinstance(a, Supersede | Replace):
            out.append((type(a).__name__.lower(), a.job_name))
        elif isinstance(a, MarkUpgrade):
            out.append(("mark", a.image))
        else:
            out.append((type(a).__name__.lower(),))
    return out


RUNNING = {
    "phase": "Building",
    "reason": "Building",
    "observedGeneration": 1,
    "cacheKey": KEY,
    "job": {"name": "j1"},
}
DONE = {
    "phase": "Succeeded",
    "reason": "Succeeded",
    "observedGeneration": 1,
    "cacheKey": KEY,
    "builderImage": "b:1",
}
W_FAILED_SPEC = ("write", "Failed", "InvalidSpec", "Warning")

CASES: list[tuple[str, Observed, list[tuple[Any, ...]]]] = [
    # -- entry -----------------------------------------------------------------------------------------
    ("being deleted: nothing", obs(deleting=True), []),
    ("restart, build running: follow its Job", obs(Cause.RESUME, status=RUNNING), [("follow",)]),
    ("restart, finished, same image: nothing", obs(Cause.RESUME, status=DONE), []),
    (
        "restart, finished, new image: rebuild",
        obs(Cause.RESUME, status=DONE, upgrade=UP),
        [("observe", "spec")],
    ),
    (
        "restart, spec changed meanwhile: reconcile",
        obs(Cause.RESUME, gen=2, status=DONE),
        [("observe", "spec")],
    ),
    ("upgrade no longer due: nothing", obs(Cause.UPGRADE, status=DONE), []),
    # -- transient Kubernetes API trouble while observing -------------------------------------------------
    (
        "API unreachable: Pending (Reconciling), retried",
        obs(spec=OK_SPEC, api_trouble="503"),
        [("write", "Pending", "APIUnavailable", None), ("retry",)],
    ),
    (
        "API unreachable, retries exhausted: Failed",
        obs(spec=OK_SPEC, api_trouble="503", attempt=19),
        [("write", "Failed", "APIUnavailable", "Warning")],
    ),
    # -- the spec --------------------------------------------------------------------------------------
    ("new object: read the spec", obs(), [("observe", "spec")]),
    ("invalid spec: Failed, not retried", obs(spec=SpecCheck(invalid="spec.x: bad")), [W_FAILED_SPEC]),
    (
        "still invalid: written, no second Event",
        obs(status={"phase": "Failed", "reason": "InvalidSpec"}, spec=SpecCheck(invalid="spec.x: worse")),
        [("write", "Failed", "InvalidSpec", None)],
    ),
    (
        "Secret missing: Pending, waits for it",
        obs(spec=SpecCheck(missing_secrets="no s")),
        [("write", "Pending", "SecretNotFound", "Warning")],
    ),
    (
        "Secret still missing, nothing new: no write",
        obs(
            Cause.SECRET,
            status={"reason": "SecretNotFound", "message": "no s", "observedGeneration": 1},
            spec=SpecCheck(missing_secrets="no s"),
        ),
        [],
    ),
    (
        "policy refuses: Failed before any S3 call",
        obs(spec=SpecCheck(refused="spec.output.uri: not granted")),
        [("write", "Failed", "PolicyViolation", "Warning")],
    ),
    # -- the source ------------------------------------------------------------------------------------
    ("spec fine: list the source", obs(spec=OK_SPEC), [("observe", "source")]),
    (
        "no checkpoint there: Failed, looked at again",
        obs(spec=OK_SPEC, source=SourceCheck(trouble="no objects", missing=True)),
        [("write", "Failed", "SourceUnavailable", "Warning"), ("retry",)],
    ),
    (
        "S3 unreachable: Pending (Reconciling), retried",
        obs(spec=OK_SPEC, source=SourceCheck(trouble="timeout", transient=True)),
        [("write", "Pending", "StorageUnavailable", None), ("retry",)],
    ),
    (
        "S3 unreachable, retries exhausted: Failed",
        obs(spec=OK_SPEC, source=SourceCheck(trouble="timeout", transient=True), attempt=19),
        [("write", "Failed", "StorageUnavailable", "Warning")],
    ),
    (
        "S3 refuses: Failed, retried",
        obs(spec=OK_SPEC, source=SourceCheck(trouble="denied")),
        [("write", "Failed", "SourceUnavailable", "Warning"), ("retry",)],
    ),
    # -- our Jobs --------------------------------------------------------------------------------------
    ("key known: look at our Jobs", ready(jobs=None), [("observe", "jobs")]),
    (
        "a Job of another key: superseded",
        ready(jobs=(job(key=OTHER, engine=None),)),
        [("supersede", "j1"), ("observe", "manifest")],
    ),
    (
        "a running Job publishing elsewhere: superseded",
        ready(jobs=(job(engine="http://s3 s3://old/x/"),)),
        [("supersede", "j1"), ("observe", "manifest")],
    ),
    (
        "a finished Job publishing elsewhere: kept (its engine stays)",
        ready(jobs=(job(engine="http://s3 s3://old/x/", holds_slot=False, building=False),)),
        [("observe", "manifest")],
    ),
    ("the same engine's Job, same generation: follow", ready(status=RUNNING, jobs=(job(),)), [("follow",)]),
    (
        "spec change keeping the engine: one write, follow",
        ready(gen=2, status=RUNNING, jobs=(job(),)),
        [("write", "Building", "Building", None), ("follow",)],
    ),
    (
        "spec change keeping the engine, scheduling changed, pod pending: Job replaced",
        ready(gen=2, status=RUNNING, jobs=(job(running=False),)),
        [("replace", "j1"), ("observe", "manifest")],
    ),
    (
        "scheduling changed but the pod runs: left to finish",
        ready(gen=2, status=RUNNING, jobs=(job(running=True),)),
        [("write", "Building", "Building", None), ("follow",)],
    ),
    (
        "retrying with old scheduling (poller): Job replaced",
        ready(
            Cause.RESCHEDULE, gen=2, status={**RUNNING, "observedGeneration": 2}, jobs=(job(running=False),)
        ),
        [("replace", "j1"), ("observe", "manifest")],
    ),
    (
        "a Job made before scheduling digests: followed",
        ready(gen=2, status=RUNNING, jobs=(job(running=False, scheduling=None),)),
        [("write", "Building", "Building", None), ("follow",)],
    ),
    (
        "same engine's Job failed, spec changed: build again",
        ready(Cause.UPDATE, gen=2, jobs=(job(failed=True, building=False, holds_slot=False),)),
        [("observe", "manifest")],
    ),
    (
        "same engine's Job failed, restart: follow it (its failure is the status)",
        ready(Cause.RESUME, status=RUNNING, jobs=(job(failed=True, building=False),)),
        [("follow",)],
    ),
    # -- the published engine --------------------------------------------------------------------------
    (
        "S3 trouble looking: Pending, retried",
        ready(manifest=ManifestCheck(trouble="slow down")),
        [("write", "Pending", "StorageUnavailable", None), ("retry",)],
    ),
    (
        "S3 trouble looking, retries exhausted: Failed",
        ready(manifest=ManifestCheck(trouble="slow down"), attempt=19),
        [("write", "Failed", "StorageUnavailable", "Warning")],
    ),
    (
        "published: CacheHit, no Job",
        ready(manifest=ManifestCheck(record={"uri": "x"})),
        [("write", "Succeeded", "CacheHit", "Normal"), ("dequeue",)],
    ),
    (
        "upgrade finds the new engine published: CacheHit",
        ready(Cause.UPGRADE, status=DONE, upgrade=UP, manifest=ManifestCheck(record={"uri": "x"})),
        [
            ("mark", "builder:2"),
            ("event", "BuilderUpgrade"),
            ("write", "Succeeded", "CacheHit", "Normal"),
            ("dequeue",),
        ],
    ),
    # -- starting a Job --------------------------------------------------------------------------------
    ("not published: start a Job", ready(manifest=ManifestCheck()), [("observe", "start")]),
    (
        "Job created: Queued/JobCreated (Reconciling, new generation), follow",
        ready(manifest=ManifestCheck(), start=Started("m-1")),
        [("write", "Queued", "JobCreated", None), ("follow",)],
    ),
    (
        "queued build admitted: no write, follow",
        ready(
            Cause.ADMIT,
            status={"reason": "WaitingForBuildSlot", "cacheKey": KEY, "observedGeneration": 1},
            manifest=ManifestCheck(),
            start=Started("m-1"),
        ),
        [("follow",)],
    ),
    (
        "upgrade Job created: Queued/BuilderUpgrade",
        ready(Cause.UPGRADE, status=DONE, upgrade=UP, manifest=ManifestCheck(), start=Started("m-1")),
        [("mark", "builder:2"), ("write", "Queued", "BuilderUpgrade", "Normal"), ("follow",)],
    ),
    (
        "no build slot: Queued/WaitingForBuildSlot",
        ready(manifest=ManifestCheck(), start=NoSlot("waiting for a build slot")),
        [("write", "Queued", "WaitingForBuildSlot", "Normal")],
    ),
    (
        "still no slot: no second write",
        ready(
            Cause.ADMIT,
            status={"reason": "WaitingForBuildSlot", "cacheKey": KEY, "observedGeneration": 1},
            manifest=ManifestCheck(),
            start=NoSlot("waiting for a build slot"),
        ),
        [],
    ),
    (
        "another build makes this engine: Queued/WaitingForSharedBuild",
        ready(manifest=ManifestCheck(), start=SharedBuild("other-job")),
        [("write", "Queued", "WaitingForSharedBuild", "Normal")],
    ),
    (
        "someone else's Job has our Job's name: Failed, retried",
        ready(manifest=ManifestCheck(), start=ForeignJob("taken")),
        [("write", "Failed", "JobNameTaken", "Warning"), ("retry",)],
    ),
]


@pytest.mark.parametrize(("observed", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_state_machine(observed: Observed, want: list[tuple[Any, ...]]) -> None:
    assert summary(decide.decide(observed)) == want


def _run(o: Observed, facts: dict[Need, dict[str, Any]]) -> list[decide.Action]:
    """The executor's loop over pure facts: every action, observations resolved from `facts`."""
    out: list[decide.Action] = []
    for _ in range(10):
        actions = decide.decide(o)
        for a in actions:
            if isinstance(a, Observe):
                o = dataclasses.replace(o, **facts[a.what])
                break
            if a not in out:
                out.append(a)
        else:
            return out
    raise AssertionError("no decision after 10 observations")


FACTS: dict[Need, dict[str, Any]] = {
    Need.SPEC: {"spec": OK_SPEC},
    Need.SOURCE: {"source": OK_SOURCE, "plan": PLAN},
    Need.JOBS: {"jobs": ()},
    Need.MANIFEST: {"manifest": ManifestCheck()},
    Need.START: {"start": Started("m-1")},
}


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {Need.MANIFEST: {"manifest": ManifestCheck(record={"uri": "x"})}},
        {Need.START: {"start": NoSlot("waiting")}},
        {Need.START: {"start": SharedBuild("o")}},
        {Need.SPEC: {"spec": SpecCheck(invalid="spec.x: bad")}},
        {Need.SPEC: {"spec": SpecCheck(missing_secrets="s")}},
        {Need.SOURCE: {"source": SourceCheck(trouble="t", transient=True)}},
        {Need.JOBS: {"jobs": (job(),)}},
        {Need.JOBS: {"jobs": (job(running=False),)}},
    ],
)
@pytest.mark.parametrize("status", [{}, RUNNING, DONE, {**DONE, "phase": "Failed", "reason": "OOMKilled"}])
def test_every_new_generation_ends_in_exactly_one_write(
    variant: dict[Need, Any], status: dict[str, Any]
) -> None:
    """GitOps truth: a create or spec change is answered by one status write (it carries the new
    observedGeneration and, while work remains, Reconciling=True)."""
    cause = Cause.CREATE if not status else Cause.UPDATE
    actions = _run(obs(cause, gen=2, status=status), {**FACTS, **variant})
    assert sum(isinstance(a, Write) for a in actions) == 1, summary(actions)


def test_work_remaining_after_a_new_generation_is_reconciling() -> None:
    """The one write of a pass that leaves work (a Job, a queue, a retry) is a non-final phase, so its
    conditions say Reconciling=True (pitcrew.conditions)."""
    for variant in (
        {},
        {Need.START: {"start": NoSlot("waiting")}},
        {Need.SOURCE: {"source": SourceCheck(trouble="t", transient=True)}},
    ):
        (write,) = [
            a
            for a in _run(obs(Cause.UPDATE, gen=2, status=DONE), {**FACTS, **variant})
            if isinstance(a, Write)
        ]
        assert write.phase.value in ("Pending", "Queued"), write


def test_job_facts_from_a_job_and_its_pods() -> None:
    j = {
        "metadata": {
            "name": "j1",
            "annotations": {
                "pitcrew.dev/cache-key": KEY,
                "pitcrew.dev/generation": "3",
                "pitcrew.dev/scheduling": "s",
            },
        },
        "status": {"conditions": [{"type": "FailureTarget", "status": "True"}]},
    }
    pod = {"metadata": {"labels": {"batch.kubernetes.io/job-name": "j1"}}, "status": {"phase": "Running"}}
    other = {"metadata": {"labels": {"batch.kubernetes.io/job-name": "j0"}}, "status": {"phase": "Running"}}
    facts = decide.job_facts(j, [pod])
    assert (facts.generation, facts.failed, facts.building, facts.holds_slot, facts.running) == (
        3,
        True,
        False,
        True,
        True,
    )
    assert facts.scheduling == "s" and facts.key == KEY
    assert not decide.job_facts(j, [other]).running


def test_every_reason_is_documented() -> None:
    """One vocabulary (pitcrew.api.reasons.Reason), shared by controller, builder and docs."""
    from pathlib import Path

    from pitcrew.api.reasons import Reason

    text = (Path(__file__).resolve().parents[2] / "docs" / "controller.md").read_text()
    assert [r.value for r in Reason if f"{r.value}" not in text] == []
