"""After a watch relist that missed a DELETED event, the Job view is resynced: a Job the API server
no longer has stops holding a build slot (reconcile.resync_jobs against a fake API client)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pitcrew import jobs, reconcile
from pitcrew.runtime import Runtime, trim_job
from pitcrew.settings import Settings

KEY = "f" * 64


def _job(eb: str, created: datetime) -> dict[str, Any]:
    uid = f"uid-{eb}"
    return {
        "metadata": {
            "name": jobs.job_name(eb, uid, KEY, 1),
            "namespace": "a",
            "uid": f"job-{eb}",
            "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "labels": jobs.labels(uid, KEY),
            "annotations": jobs.job_annotations(eb, KEY, 1),
            "ownerReferences": [jobs.owner_reference(eb, uid)],
        },
        "spec": {},
        "status": {},
    }


class FakeKube:
    def __init__(self, listed: list[dict[str, Any]]) -> None:
        self.listed = listed

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.listed


def test_jobs_gone_from_the_api_server_leave_the_view(monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC)
    kept, gone, fresh = (
        _job("kept", now - timedelta(hours=1)),
        _job("gone", now - timedelta(hours=1)),
        _job("fresh", now),
    )
    rt = Runtime(settings=Settings())
    rt.kube = FakeKube([kept])  # type: ignore[assignment]
    for job in (kept, gone, fresh):
        rt.remember(
            rt.jobs, job["metadata"]["labels"][jobs.LABEL_UID], job["metadata"]["name"], trim_job(job)
        )
    monkeypatch.setattr(reconcile, "RT", rt)
    assert rt.active_jobs() == 3
    assert asyncio.run(reconcile.resync_jobs()) == 1
    # The missed deletion frees its slot; a Job created while the LIST ran is not dropped.
    assert rt.active_jobs() == 2 and "uid-gone" not in rt.jobs and "uid-fresh" in rt.jobs
