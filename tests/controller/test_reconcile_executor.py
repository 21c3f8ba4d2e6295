"""The state machine's executor (reconcile.reconcile, follow.sync) against a fake API client:
the writes it makes for a create, for transient API trouble, and for a failed builder upgrade."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from pitcrew import conditions, follow, jobs, plans, reconcile, statuses
from pitcrew.api.v1alpha1 import Phase
from pitcrew.kube import ApiError
from pitcrew.runtime import Runtime, trim_job
from pitcrew.settings import Settings
from pitcrew.validation import validate

from .helpers import spec

S = Settings()
UID, NAME, NS = "uid-1", "model", "a"
SPEC = spec(**{"source.uri": "pvc://ckpt/llama", "output.uri": "pvc://engines/out"})


class FakeKube:
    def __init__(self, eb: dict[str, Any], *, list_error: ApiError | None = None) -> None:
        self.eb, self.list_error = eb, list_error
        self.patches: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        if path.endswith(f"/enginebuilds/{NAME}"):
            return self.eb
        if "/persistentvolumeclaims/" in path:
            return {"metadata": {"uid": "pvc-uid"}}
        return None

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        if self.list_error is not None:
            raise self.list_error
        return []

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append(body)
        return body

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(body["status"])
        return body

    async def delete(self, path: str, propagation: str = "Background") -> bool:
        return True


def _eb(generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": NAME, "namespace": NS, "uid": UID, "generation": generation,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": SPEC.to_api(),
        "status": status or {},
    }  # fmt: skip


def _runtime(monkeypatch: pytest.MonkeyPatch, kube: FakeKube) -> Runtime:
    rt = Runtime(settings=S)
    rt.kube = kube  # type: ignore[assignment]
    rt.jobs_primed = True
    monkeypatch.setattr(reconcile, "RT", rt)
    monkeypatch.setattr(follow, "RT", rt)
    return rt


def _conds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_a_create_is_answered_by_one_write_with_reconciling_and_its_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = FakeKube(_eb())
    _runtime(monkeypatch, kube)

    async def go() -> None:
        await reconcile.reconcile(kube.eb, "create")
        await asyncio.sleep(0)

    asyncio.run(go())
    assert len(kube.created) == 1
    (status,) = kube.patches
    assert (status["phase"], status["reason"], status["observedGeneration"]) == ("Queued", "JobCreated", 1)
    assert status["job"]["name"] == kube.created[0]["metadata"]["name"]
    c = _conds(status)
    assert c["Reconciling"]["status"] == "True" and c["Reconciling"]["observedGeneration"] == 1
    assert c["Ready"]["status"] == "False" and c["Stalled"]["status"] == "False"


def test_transient_api_trouble_is_reconciling_with_a_reason_not_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = FakeKube(_eb(2, {"phase": "Succeeded", "observedGeneration": 1}), list_error=ApiError(503, "busy"))
    _runtime(monkeypatch, kube)
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(reconcile.reconcile(kube.eb, "update"))
    (status,) = kube.patches
    assert (status["phase"], status["reason"], status["observedGeneration"]) == (
        "Pending",
        "APIUnavailable",
        2,
    )
    c = _conds(status)
    assert c["Reconciling"]["status"] == "True" and c["Stalled"]["status"] == "False"
    # The last try gives up visibly.
    kube.patches.clear()
    asyncio.run(reconcile.reconcile(kube.eb, "update", attempt=reconcile.RETRIES - 1))
    assert (kube.patches[0]["phase"], kube.patches[0]["reason"]) == ("Failed", "APIUnavailable")
    # A refusal (403) is not transient: no status, kopf reports the error.
    kube.list_error, kube.patches = ApiError(403, "forbidden"), []
    with pytest.raises(ApiError):
        asyncio.run(reconcile.reconcile(kube.eb, "update"))
    assert kube.patches == []


def _failed_upgrade_job() -> dict[str, Any]:
    resolved = validate(SPEC, S, secret_keys={})
    planned = plans.make_plan(SPEC, resolved, S, namespace=NS, name=NAME, generation=1, source_identity="x")
    job = jobs.render_job(
        namespace=NS, eb_name=NAME, eb_uid=UID, spec=SPEC, resolved=resolved, plan=planned.plan, settings=S
    )
    job["status"] = {
        "failed": 1,
        "conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}],
    }
    return job


def test_a_failed_upgrade_rebuild_keeps_ready_and_the_previous_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = _failed_upgrade_job()
    key = job["metadata"]["annotations"][jobs.ANN_KEY]
    old_engine = {"uri": "pvc://engines/out/0ld/", "sizeBytes": 3}
    done = statuses.compose(
        None, phase=Phase.SUCCEEDED, reason="Succeeded", message="ok", generation=1, now="t1",
        engine=old_engine, cacheKey="0ld",
    )  # fmt: skip
    upgrading = {
        **done,
        **statuses.compose(
            done, phase=Phase.BUILDING, reason="Building", message="b", generation=1, now="t2",
            upgrade=True, cacheKey=key, job={"name": job["metadata"]["name"]},
        ),
    }  # fmt: skip
    kube = FakeKube(_eb(1, upgrading))
    rt = _runtime(monkeypatch, kube)
    rt.jobs = {UID: {job["metadata"]["name"]: trim_job(job)}}
    pod = {
        "metadata": {
            "name": job["metadata"]["name"] + "-x",
            "labels": {"batch.kubernetes.io/job-name": job["metadata"]["name"]},
        },
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"state": {"terminated": {"exitCode": 1, "reason": "OOMKilled"}}}],
        },
    }
    rt.pods = {UID: {pod["metadata"]["name"]: pod}}
    asyncio.run(follow.sync(UID, NS, NAME))
    (status,) = kube.patches
    assert (status["phase"], status["reason"]) == ("Succeeded", "UpgradeFailed"), status
    assert "engine" not in status  # the merge patch leaves status.engine (the previous engine) alone
    c = _conds(status)
    assert (c["Ready"]["status"], c["Stalled"]["status"], c["Reconciling"]["status"]) == (
        "True",
        "False",
        "False",
    )
    assert (c[conditions.UPGRADE]["status"], c[conditions.UPGRADE]["reason"]) == ("False", "OOMKilled")


def test_the_follower_writes_nothing_for_an_older_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spec moved on (generation 2, seen by the watch) while the old Job still reports: its
    news is not written; generation 2's own pass writes."""
    job = _failed_upgrade_job()
    kube = FakeKube(_eb(2, {"phase": "Building", "reason": "Building", "observedGeneration": 1}))
    rt = _runtime(monkeypatch, kube)
    rt.jobs = {UID: {job["metadata"]["name"]: trim_job(job)}}
    rt.note_generation(UID, 2)
    asyncio.run(follow.sync(UID, NS, NAME))
    assert kube.patches == []
