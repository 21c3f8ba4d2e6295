"""deletionPolicy Delete (reconcile.delete_artifacts) against a fake API client and a fake store."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from pitcrew import jobs, reconcile
from pitcrew.runtime import Runtime
from pitcrew.settings import Settings
from pitcrew.storage import Credentials

from .helpers import spec

KEY = "ab" * 32
EP = "http://minio:9000"
REF = {"name": "s3"}


def _eb(name: str, ns: str, uid: str, **overrides: Any) -> dict[str, Any]:
    s = spec(**{"output.credentialsSecretRef": REF, **overrides})
    return {
        "metadata": {"name": name, "namespace": ns, "uid": uid},
        "spec": s.to_api(),
        "status": {"cacheKey": KEY},
    }


class FakeKube:
    def __init__(self, builds: list[dict[str, Any]], job_lingers: bool = False) -> None:
        self.builds = builds
        self.job_lingers = job_lingers
        self.deleted: list[tuple[str, str]] = []
        self.build_lists = 0

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        if path.endswith("/jobs"):
            me = self.builds[0]["metadata"]
            name = jobs.job_name(me["name"], me["uid"], KEY, 1)
            return [
                {
                    "metadata": {
                        "name": name,
                        "labels": jobs.labels(me["uid"], KEY),
                        "annotations": jobs.job_annotations(me["name"], KEY, 1),
                        "ownerReferences": [jobs.owner_reference(me["name"], me["uid"])],
                    }
                }
            ]
        self.build_lists += 1
        return self.builds

    async def delete(self, path: str, propagation: str = "Background") -> bool:
        self.deleted.append((path, propagation))
        return True

    async def get(self, path: str) -> dict[str, Any] | None:
        if "/jobs/" in path:
            return {"metadata": {}} if self.job_lingers else None
        if path.endswith("/secrets/s3"):
            return {"data": {"AWS_ACCESS_KEY_ID": "a2V5", "AWS_SECRET_ACCESS_KEY": "c2VjcmV0"}}
        return None


class FakeStore:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    async def delete_prefix(self, endpoint: str | None, creds: Credentials, uri: str) -> int:
        self.deleted.append(uri)
        return 3


@pytest.fixture
def posted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    messages: list[str] = []
    monkeypatch.setattr(reconcile, "_post", lambda body, type_, reason, message: messages.append(message))
    return messages


def _run(monkeypatch: pytest.MonkeyPatch, kube: FakeKube) -> FakeStore:
    rt = Runtime(settings=Settings(s3_endpoint=EP))
    rt.kube = kube  # type: ignore[assignment]
    store = FakeStore()
    rt.storage = store  # type: ignore[assignment]
    monkeypatch.setattr(reconcile, "RT", rt)
    asyncio.run(reconcile.delete_artifacts(kube.builds[0]))
    return store


def test_the_builder_is_gone_before_the_engine_is_deleted(
    monkeypatch: pytest.MonkeyPatch, posted: list[str]
) -> None:
    kube = FakeKube([_eb("m", "a", "u1")], job_lingers=True)
    with pytest.raises(kopf.TemporaryError, match="to be gone before deleting the engine"):
        _run(monkeypatch, kube)
    assert [p for _, p in kube.deleted] == ["Foreground"]


def test_deleted_when_nobody_else_uses_the_engine(monkeypatch: pytest.MonkeyPatch, posted: list[str]) -> None:
    # Same key and URI, but another endpoint: another engine.
    other = _eb("n", "b", "u2", **{"output.endpoint": "http://other:9000"})
    store = _run(monkeypatch, FakeKube([_eb("m", "a", "u1"), other]))
    assert store.deleted == [f"s3://engines/out/{KEY}/"]


def test_kept_when_another_namespace_uses_it_without_naming_it(
    monkeypatch: pytest.MonkeyPatch, posted: list[str]
) -> None:
    store = _run(monkeypatch, FakeKube([_eb("m", "a", "u1"), _eb("secret-project", "b", "u2")]))
    assert store.deleted == []
    assert posted == [f"engine {KEY[:12]} is still used by another namespace"]


OLD_KEY, OLDER_KEY = "cd" * 32, "ef" * 32


def test_every_engine_it_published_is_deleted_with_one_list_per_process(
    monkeypatch: pytest.MonkeyPatch, posted: list[str]
) -> None:
    me = _eb("m", "a", "u1")
    me["status"]["publishedEngines"] = [
        {"uri": f"s3://old-bucket/place/{OLDER_KEY}/", "endpoint": EP},  # before spec.output moved
        {"uri": f"s3://engines/out/{OLD_KEY}/", "endpoint": EP},  # before a spec change
        {"uri": f"s3://engines/out/{KEY}/", "endpoint": EP},
    ]
    kube = FakeKube([me, _eb("n", "b", "u2", **{"output.uri": "s3://elsewhere/x/"})])
    store = _run(monkeypatch, kube)
    assert store.deleted == [
        f"s3://old-bucket/place/{OLDER_KEY}/",
        f"s3://engines/out/{OLD_KEY}/",
        f"s3://engines/out/{KEY}/",
    ]
    assert kube.build_lists == 1
    # The next deletion in this process asks the watch-fed index, not the API server.
    asyncio.run(reconcile.delete_artifacts(_eb("n", "b", "u2", **{"output.uri": "s3://elsewhere/x/"})))
    assert kube.build_lists == 1 and store.deleted[-1] == f"s3://elsewhere/x/{KEY}/"


def test_still_in_use_is_decided_by_the_engine_uri(
    monkeypatch: pytest.MonkeyPatch, posted: list[str]
) -> None:
    me = _eb("m", "a", "u1")
    me["status"]["publishedEngines"] = [{"uri": f"s3://engines/out/{OLD_KEY}/", "endpoint": EP}]
    # Another build of the same namespace mid-upgrade: its cacheKey is new, but status.engine
    # (what its readers use meanwhile) is my old engine. A third uses the same key elsewhere.
    upgrading = _eb("upgrading", "a", "u2")
    upgrading["status"] = {"cacheKey": "00" * 32, "engine": {"uri": f"s3://engines/out/{OLD_KEY}/"}}
    elsewhere = _eb("elsewhere", "a", "u3", **{"output.uri": "s3://engines/other/"})
    store = _run(monkeypatch, FakeKube([me, upgrading, elsewhere]))
    assert store.deleted == [f"s3://engines/out/{KEY}/"]
    assert posted == [f"engine {OLD_KEY[:12]} is still used by upgrading"]


def test_the_index_follows_watch_events(monkeypatch: pytest.MonkeyPatch, posted: list[str]) -> None:
    """handlers.track_phase keeps RT.engine_users current: a user that moves away or goes frees it."""
    from pitcrew import handlers

    rt = Runtime(settings=Settings(s3_endpoint=EP))
    rt.builds_primed = True
    monkeypatch.setattr(handlers, "RT", rt)
    other = _eb("n", "a", "u2")
    asyncio.run(handlers.track_phase(type="MODIFIED", body=other))  # type: ignore[arg-type]
    engine = f"{EP} s3://engines/out/{KEY}/"
    assert rt.engine_users == {engine: {"u2": ("a", "n")}}
    moved = _eb("n", "a", "u2", **{"output.uri": "s3://engines/new/"})
    asyncio.run(handlers.track_phase(type="MODIFIED", body=moved))  # type: ignore[arg-type]
    assert engine not in rt.engine_users
    asyncio.run(handlers.track_phase(type="DELETED", body=moved))  # type: ignore[arg-type]
    assert rt.engine_users == {} and rt.engines_of == {}
