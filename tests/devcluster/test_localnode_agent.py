"""The local node's pod watch loop against a fake API: relist on 410 Gone, finalize deleted pods."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pitcrew_devcluster.kubeapi import WatchExpired
from pitcrew_devcluster.localnode.agent import PodAgent
from pitcrew_devcluster.localnode.config import LocalNodeConfig

Obj = dict[str, Any]


def pod(name: str, **meta: Any) -> Obj:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "5", **meta},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Succeeded"},
    }


class FakeClient:
    server = "https://127.0.0.1:6443"

    def __init__(self, agent_ref: list[PodAgent]) -> None:
        self.agent_ref = agent_ref
        self.lists = 0
        self.watches: list[str] = []
        self.deleted: list[tuple[str, Obj | None]] = []

    def get(self, path: str, **params: Any) -> Obj:
        assert params == {"fieldSelector": "spec.nodeName=n1"}
        self.lists += 1
        return {"metadata": {"resourceVersion": str(10 * self.lists)}, "items": [pod("done")]}

    def watch(self, path: str, rv: str, **params: Any) -> Iterator[Obj]:
        self.watches.append(rv)
        if len(self.watches) == 1:
            yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "11"}}}
            raise WatchExpired(path)
        yield {"type": "MODIFIED", "object": pod("gone", deletionTimestamp="2026-01-01T00:00:00Z")}
        self.agent_ref[0]._stop.set()

    def delete(self, path: str, body: Obj | None = None) -> Obj:
        self.deleted.append((path, body))
        return {}


def test_relists_after_410_and_finalizes_deleted_pods(tmp_path: Path) -> None:
    ref: list[PodAgent] = []
    client = FakeClient(ref)
    cfg = LocalNodeConfig(kubeconfig=tmp_path / "kubeconfig", node_name="n1", work_dir=tmp_path)
    agent = PodAgent(client, cfg)  # type: ignore[arg-type]
    ref.append(agent)
    agent.run()
    agent._pool.shutdown(wait=True)
    assert client.lists == 2  # the 410 forced a second list
    assert client.watches == ["10", "20"]  # each watch starts at its list's resourceVersion
    assert client.deleted == [
        ("/api/v1/namespaces/ns/pods/gone", {"gracePeriodSeconds": 0, "preconditions": {"uid": "uid-gone"}})
    ]
    assert agent.workers == {}  # a pod that finished before we started is not run again
