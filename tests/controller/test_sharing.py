"""One Job per engine (pitcrew.sharing): table tests of the pure part."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pitcrew import jobs, plans, sharing
from pitcrew.runtime import KeyedLocks
from pitcrew.settings import Settings
from pitcrew.validation import validate

from .helpers import spec

KEY = "ab" * 32
EP = "http://minio:9000"


def test_engine_ident() -> None:
    a = sharing.engine_ident("s3://Engines/out/", EP, "ns1", KEY)
    assert a == f"{EP} s3://engines/out/{KEY}/"
    assert a == sharing.engine_ident("s3://engines//out", EP + "/", "ns2", KEY)  # s3: namespace-free
    assert a != sharing.engine_ident("s3://engines/out", "http://other:9000", "ns1", KEY)
    assert a != sharing.engine_ident("s3://engines/out", EP, "ns1", "cd" * 32)
    # Claims are namespace-local: the same pvc:// URI in two namespaces is two places.
    assert sharing.engine_ident("pvc://e/x", None, "a", KEY) != sharing.engine_ident(
        "pvc://e/x", None, "b", KEY
    )


def _job(engine: str, *conds: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"annotations": {sharing.ANN_ENGINE: engine}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": c, "status": "True"} for c in conds]}}


E = "ep s3://b/out/k/"


@pytest.mark.parametrize(
    ("view", "found"),
    [
        ({}, False),
        ({"other": {"j": _job(E)}}, True),
        ({"me": {"j": _job(E)}}, False),  # my own Job is not "another build"
        ({"other": {"j": _job("ep s3://b/elsewhere/k/")}}, False),
        ({"other": {"j": _job(E, "Complete")}}, False),
        ({"other": {"j": _job(E, "Failed")}}, False),
        ({"other": {"j": _job(E, deleting=True)}}, False),
    ],
)
def test_shared_builder(view: dict[str, dict[str, Any]], found: bool) -> None:
    assert (sharing.shared_builder(view, "me", E) is not None) is found


def test_rendered_jobs_carry_their_engine() -> None:
    settings = Settings(s3_endpoint=EP)
    s = spec()
    resolved = validate(s, settings, secret_keys={})
    planned = plans.make_plan(
        s, resolved, settings, namespace="ns", name="m", generation=1, source_identity="x"
    )
    job = jobs.render_job(
        namespace="ns",
        eb_name="m",
        eb_uid="u",
        spec=s,
        resolved=resolved,
        plan=planned.plan,
        settings=settings,
    )
    assert job["metadata"]["annotations"][sharing.ANN_ENGINE] == sharing.engine_ident(
        "s3://engines/out", EP, "ns", planned.key
    )


def test_engine_locks_exclude_and_are_pruned_when_nobody_needs_them() -> None:
    """RT.engine_lock: one step per engine, and no lock left behind per engine ever built."""
    locks = KeyedLocks()
    inside: list[str] = []
    order: list[str] = []

    async def step(engine: str, who: str) -> None:
        async with locks(engine):
            inside.append(who)
            assert len([w for w in inside if w.startswith(engine)]) == 1  # alone for this engine
            await asyncio.sleep(0.01)
            order.append(who)
            inside.remove(who)

    async def scenario() -> None:
        await asyncio.gather(*(step(f"e{i % 3}", f"e{i % 3}-{i}") for i in range(12)))
        assert locks.held == {}
        # A waiter keeps the lock (and its place) until it is done.
        async with locks("x"):
            waiter = asyncio.create_task(step("x", "x-late"))
            await asyncio.sleep(0.01)
            assert locks.held["x"][1] == 2
        await waiter
        assert locks.held == {}
        for i in range(1000):  # engines of 1000 finished builds: nothing kept
            async with locks(f"engine-{i}"):
                pass
        assert locks.held == {}

    asyncio.run(scenario())
    assert len(order) == 13


def test_published_engines_are_remembered_newest_last_and_bounded() -> None:
    out = sharing.remember_published(None, "s3://b/o/k1/", EP)
    assert out == [{"uri": "s3://b/o/k1/", "endpoint": EP}]
    out = sharing.remember_published(out, "s3://b/o/k2/", None)
    out = sharing.remember_published(out, "s3://b/o/k1/", EP)  # rebuilt: moves to the end, once
    assert [e["uri"] for e in out] == ["s3://b/o/k2/", "s3://b/o/k1/"] and out[0]["endpoint"] == ""
    many: list[dict[str, Any]] = []
    for i in range(40):
        many = sharing.remember_published(many, f"s3://b/o/k{i}/", EP)
    assert len(many) == 16 and many[-1]["uri"] == "s3://b/o/k39/" and many[0]["uri"] == "s3://b/o/k24/"


def test_engines_to_clean_and_in_use() -> None:
    body = {
        "metadata": {"namespace": "ns1"},
        "spec": {"output": {"uri": "s3://B/o/"}},
        "status": {
            "cacheKey": KEY,
            "engine": {"uri": "s3://b/o/old/"},
            "publishedEngines": [{"uri": "s3://b/o/old/", "endpoint": ""}, {"uri": f"s3://b/o/{KEY}/"}],
        },
    }
    assert sharing.engines_to_clean(body, EP) == [("s3://b/o/old/", EP), (f"s3://b/o/{KEY}/", EP)]
    assert sharing.engines_in_use(body, EP) == {f"{EP} s3://b/o/{KEY}/", f"{EP} s3://b/o/old/"}
    assert sharing.engines_in_use({**body, "metadata": {"deletionTimestamp": "t"}}, EP) == frozenset()
    pvc = {
        "metadata": {"namespace": "ns1"},
        "spec": {"output": {"uri": "pvc://c/o"}},
        "status": {"cacheKey": KEY},
    }
    assert sharing.engines_to_clean(pvc, EP) == []  # only the builder can reach a claim
