"""A cache key that cannot serve the wrong engine: endpoint, revision as a label, pvc:// per claim.

The controller's source_identity runs against small fakes of the API server and S3 (no I/O of its
own to test beyond the calls it makes); the key itself is pure.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pitcrew import cachekey, jobs, plans, reconcile
from pitcrew.api.listing import ListedObject
from pitcrew.runtime import Runtime
from pitcrew.settings import Settings
from pitcrew.storage import Credentials
from pitcrew.validation import validate

from .helpers import spec

S = Settings(s3_endpoint="http://minio.a:9000")


def key_of(settings: Settings = S, identity: str = "listing:sha256:1", **overrides: Any) -> str:
    s = spec(**overrides)
    resolved = validate(s, settings, secret_keys={})
    planned = plans.make_plan(
        s, resolved, settings, namespace="ns", name="m", generation=1, source_identity=identity
    )
    return planned.key


def test_schema_was_bumped() -> None:
    assert cachekey.KEY_SCHEMA >= 2  # keys of schema 1 meant something else (no endpoint, trusted revision)


def test_source_endpoint_is_part_of_the_key() -> None:
    """The same bucket name on two S3 servers is two sources."""
    assert key_of(**{"source.endpoint": "http://minio.b:9000"}) != key_of()
    # The default spelled out, or spelled differently, is the same endpoint.
    assert key_of(**{"source.endpoint": "http://MINIO.A:9000/"}) == key_of()
    # The output endpoint is where the engine goes, not what it is.
    assert key_of(**{"output.endpoint": "http://minio.b:9000"}) == key_of()


def test_revision_is_a_label_on_top_of_the_content_identity() -> None:
    assert key_of(**{"source.revision": "v1"}) != key_of(**{"source.revision": "v2"})
    # A claimed revision does not make different bytes the same source.
    assert key_of(identity="listing:sha256:1", **{"source.revision": "v1"}) != key_of(
        identity="listing:sha256:2", **{"source.revision": "v1"}
    )


class FakeKube:
    def __init__(self, claims: dict[str, str]) -> None:
        self.claims = claims  # "namespace/claim" -> uid

    async def get(self, path: str) -> dict[str, Any] | None:
        parts = path.strip("/").split("/")  # api v1 namespaces NS persistentvolumeclaims NAME
        assert parts[4] == "persistentvolumeclaims", path
        uid = self.claims.get(f"{parts[3]}/{parts[5]}")
        return {"metadata": {"uid": uid}} if uid else None


class FakeStore:
    def __init__(self) -> None:
        self.listed: list[str] = []

    async def list(self, endpoint: str | None, creds: Credentials, uri: str) -> list[ListedObject]:
        self.listed.append(uri)
        return [
            ListedObject("llama/config.json", 10, '"e1"'),
            ListedObject("llama/w.safetensors", 99, '"e2"'),
        ]


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    runtime = Runtime(settings=S)
    runtime.kube = FakeKube({"a/ckpt": "uid-a", "b/ckpt": "uid-b"})  # type: ignore[assignment]
    runtime.storage = FakeStore()  # type: ignore[assignment]
    monkeypatch.setattr(reconcile, "RT", runtime)
    return runtime


def test_s3_source_with_a_revision_is_still_listed(rt: Runtime) -> None:
    s = spec(**{"source.uri": "s3://models/llama/", "source.revision": "v1"})
    identity = asyncio.run(reconcile.source_identity(s, Credentials(), "a"))
    assert identity.startswith("listing:sha256:")
    assert rt.storage.listed == ["s3://models/llama/"]  # type: ignore[union-attr]


def test_pvc_sources_of_two_namespaces_are_two_keys(rt: Runtime) -> None:
    s = spec(**{"source.uri": "pvc://ckpt/llama"})
    a = asyncio.run(reconcile.source_identity(s, None, "a"))
    b = asyncio.run(reconcile.source_identity(s, None, "b"))
    assert a == "pvc:a:uid-a" and b == "pvc:b:uid-b"
    assert key_of(identity=a, **{"source.uri": "pvc://ckpt/llama"}) != key_of(
        identity=b, **{"source.uri": "pvc://ckpt/llama"}
    )


def test_missing_claim_names_the_field(rt: Runtime) -> None:
    with pytest.raises(reconcile.SourceMissing) as err:
        asyncio.run(reconcile.source_identity(spec(**{"source.uri": "pvc://nope/x"}), None, "a"))
    assert str(err.value).startswith("spec.source.uri: PersistentVolumeClaim 'nope' not found in namespace a")


def _pod_spec(**overrides: Any) -> dict[str, Any]:
    s = spec(**overrides)
    resolved = validate(s, S, secret_keys={})
    planned = plans.make_plan(s, resolved, S, namespace="ns", name="m", generation=1, source_identity="x")
    job = jobs.render_job(
        namespace="ns", eb_name="m", eb_uid="u1", spec=s, resolved=resolved, plan=planned.plan, settings=S
    )
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


def test_compute_capability_only_selects_nodes_by_gpu_feature_labels() -> None:
    pod = _pod_spec(**{"target.gpuProduct": None, "target.computeCapability": "9.0"})
    assert pod["nodeSelector"] == {"nvidia.com/gpu.compute.major": "9", "nvidia.com/gpu.compute.minor": "0"}
    # With a product the product label selects (it implies the capability).
    pod = _pod_spec()
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    # A CPU-only conversion needs no GPU node.
    pod = _pod_spec(**{"target.gpuProduct": None, "target.computeCapability": "8.0", "backend": "checkpoint"})
    assert "nodeSelector" not in pod
