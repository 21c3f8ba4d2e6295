"""A Complete Job whose Pod the watch has not shown yet (e.g. right after a restart) is not a failure.

follow.sync runs against a fake API client: the Job view has the Complete Job, the Pod view is
empty, and the API server (fake) has the Pod with the builder's result.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pitcrew import follow, jobs, plans, reconcile
from pitcrew.api.plan import BuildResult
from pitcrew.runtime import Runtime, trim_job
from pitcrew.settings import Settings
from pitcrew.validation import validate

from .helpers import spec

S = Settings()
UID, NAME, NS = "uid-1", "model", "a"


class FakeKube:
    def __init__(self, eb: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        self.eb, self.pods = eb, pods
        self.patches: list[dict[str, Any]] = []
        self.listed: list[tuple[str, str | None]] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        return self.eb if path.endswith(f"/enginebuilds/{NAME}") else None

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        self.listed.append((path, label_selector))
        return self.pods if path.endswith("/pods") else []

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(body)
        return body

    async def delete(self, path: str, propagation: str = "Background") -> bool:
        return True


def _setup(monkeypatch: pytest.MonkeyPatch, pod_phase: str | None) -> FakeKube:
    s = spec(**{"output.uri": "pvc://engines/out"})
    resolved = validate(s, S, secret_keys={})
    planned = plans.make_plan(s, resolved, S, namespace=NS, name=NAME, generation=1, source_identity="x")
    job = jobs.render_job(
        namespace=NS, eb_name=NAME, eb_uid=UID, spec=s, resolved=resolved, plan=planned.plan, settings=S
    )
    job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    meta = job["metadata"]
    pods = []
    if pod_phase:
        result = BuildResult(ok=True, cache_key=planned.key, engine_uri="pvc://engines/out/k/", size_bytes=3)
        pods.append(
            {
                "metadata": {
                    "name": meta["name"] + "-abcde",
                    "labels": {**meta["labels"], "batch.kubernetes.io/job-name": meta["name"]},
                    "annotations": meta["annotations"],
                    "ownerReferences": [{"kind": "Job", "name": meta["name"], "controller": True}],
                },
                "status": {
                    "phase": pod_phase,
                    "containerStatuses": [
                        {
                            "state": {
                                "terminated": {
                                    "exitCode": 0,
                                    "message": result.model_dump_json(by_alias=True),
                                }
                            }
                        }
                    ],
                },
            }
        )
    eb = {
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1},
        "spec": s.to_api(),
        "status": {},
    }
    kube = FakeKube(eb, pods)
    rt = Runtime(settings=S)
    rt.kube = kube  # type: ignore[assignment]
    rt.jobs = {UID: {meta["name"]: trim_job(job)}}
    monkeypatch.setattr(reconcile, "RT", rt)
    monkeypatch.setattr(follow, "RT", rt)
    return kube


def test_pods_are_listed_before_a_complete_job_is_called_a_bad_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = _setup(monkeypatch, "Succeeded")
    asyncio.run(follow.sync(UID, NS, NAME))
    (patch,) = kube.patches
    assert patch["status"]["phase"] == "Succeeded", patch
    assert any(path.endswith(f"/namespaces/{NS}/pods") for path, _ in kube.listed)


def test_a_pod_that_is_really_gone_is_still_a_bad_result(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = _setup(monkeypatch, None)
    asyncio.run(follow.sync(UID, NS, NAME))
    (patch,) = kube.patches
    assert patch["status"]["phase"] == "Failed" and patch["status"]["reason"] == "BadBuildResult"
