"""Controlled pace and builder upgrades on the real control plane and S3, with the FAKE builder.

Each test runs its own operator process (settings differ), after the lifecycle module's is gone.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pitcrew_devcluster import ClusterInfo

from .harness import (
    FAKE,
    Operator,
    StatusRecorder,
    apply,
    engine_build,
    get_eb,
    install,
    new_namespace,
    owned,
    seed_checkpoint,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(cluster: ClusterInfo) -> None:
    install(cluster)
    seed_checkpoint(cluster)


@pytest.fixture
def ns(cluster: ClusterInfo, installed: None) -> Iterator[str]:
    name = new_namespace(cluster, prefix="u")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _finished(job: dict[str, Any]) -> bool:
    return any(
        c["type"] in ("Complete", "Failed") and c["status"] == "True"
        for c in (job.get("status") or {}).get("conditions") or ()
    )


def _jobs(cluster: ClusterInfo, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.client().get(f"/apis/batch/v1/namespaces/{ns}/jobs")["items"]
    return items


def _phase(cluster: ClusterInfo, ns: str, name: str) -> dict[str, Any]:
    return (get_eb(cluster, ns, name) or {}).get("status") or {}


def _events(cluster: ClusterInfo, ns: str, name: str) -> list[str]:
    items = cluster.kubectl_json(
        "-n", ns, "get", "events", "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return [e["reason"] for e in items]


def test_max_active_builds_paces_jobs(cluster: ClusterInfo, ns: str, tmp_path: Path) -> None:
    op = Operator(cluster, tmp_path, PITCREW_MAX_ACTIVE_BUILDS="1").start()
    try:
        names = [f"b{i}" for i in range(3)]
        for i, name in enumerate(names):  # distinct options: three keys, three Jobs
            apply(cluster, engine_build(cluster, name, ns, mode="sleep-3", **{"build.maxBatchSize": 10 + i}))
        most, waited, queued_metric = 0, set(), 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            active = [
                j
                for j in _jobs(cluster, ns)
                if not _finished(j) and not j["metadata"].get("deletionTimestamp")
            ]
            most = max(most, len(active))
            statuses = {n: _phase(cluster, ns, n) for n in names}
            waited |= {n for n, st in statuses.items() if st.get("reason") == "WaitingForBuildSlot"}
            if waited and not queued_metric:
                text = urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics").read().decode()
                line = next(x for x in text.splitlines() if x.startswith("pitcrew_queued_builds "))
                queued_metric = int(float(line.split()[1]))
            if all(st.get("phase") in ("Succeeded", "Failed") for st in statuses.values()):
                break
            time.sleep(0.2)
        assert {n: st.get("phase") for n, st in statuses.items()} == dict.fromkeys(names, "Succeeded"), (
            op.tail()
        )
        assert most == 1, f"{most} builder Jobs were active at once"
        assert len(_jobs(cluster, ns)) == 3
        assert waited, "no build was ever Queued/WaitingForBuildSlot"
        assert queued_metric >= 1
        st = next(s for s in (_phase(cluster, ns, n) for n in names) if s)
        assert st["cacheHit"] is False
    finally:
        op.stop()


def _gpus(job: dict[str, Any]) -> int:
    limits = job["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def test_gpu_and_namespace_caps_pace_jobs(cluster: ClusterInfo, ns: str, tmp_path: Path) -> None:
    other = new_namespace(cluster, prefix="u")
    op = Operator(
        cluster, tmp_path, PITCREW_MAX_ACTIVE_GPUS="4", PITCREW_MAX_ACTIVE_BUILDS_PER_NAMESPACE="1"
    ).start()
    try:
        builds = [(n, name) for n in (ns, other) for name in ("g0", "g1")]
        for i, (n, name) in enumerate(builds):  # 2 GPUs each, distinct keys
            spec = {"build.maxBatchSize": 30 + i, "target.gpuCount": 2}
            apply(cluster, engine_build(cluster, name, n, mode="sleep-3", **spec))
        apply(cluster, engine_build(cluster, "huge", ns, **{"target.gpuCount": 8}))
        most_gpus, most_per_ns, together, messages = 0, 0, 0, set()
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            active = {
                n: [
                    j
                    for j in _jobs(cluster, n)
                    if not _finished(j) and not j["metadata"].get("deletionTimestamp")
                ]
                for n in (ns, other)
            }
            most_gpus = max(most_gpus, sum(_gpus(j) for js in active.values() for j in js))
            most_per_ns = max(most_per_ns, *(len(js) for js in active.values()))
            together = max(together, sum(1 for js in active.values() if js))
            statuses = {(n, name): _phase(cluster, n, name) for n, name in builds}
            messages |= {
                st["message"] for st in statuses.values() if st.get("reason") == "WaitingForBuildSlot"
            }
            if all(st.get("phase") in ("Succeeded", "Failed") for st in statuses.values()):
                break
            time.sleep(0.2)
        assert {k: st.get("phase") for k, st in statuses.items()} == dict.fromkeys(builds, "Succeeded"), (
            op.tail()
        )
        assert most_per_ns == 1 and most_gpus <= 4, (most_per_ns, most_gpus)
        assert together == 2, "the two namespaces' builds never ran side by side"
        assert any("PITCREW_MAX_ACTIVE_BUILDS_PER_NAMESPACE" in m for m in messages), messages
        # More GPUs than the cap could ever give: refused at once instead of queued forever.
        huge = _phase(cluster, ns, "huge")
        assert (huge.get("phase"), huge.get("reason")) == ("Failed", "PolicyViolation"), huge
        assert "PITCREW_MAX_ACTIVE_GPUS=4" in huge["message"]
    finally:
        op.stop()
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_builder_upgrade_rebuilds_unpinned_builds(cluster: ClusterInfo, ns: str, tmp_path: Path) -> None:
    bodies = {
        "u1": engine_build(cluster, "u1", ns, **{"build.maxBatchSize": 21}),
        "u2": engine_build(cluster, "u2", ns, **{"build.maxBatchSize": 22}),
        "pinned": engine_build(cluster, "pinned", ns, mode="ok", **{"build.maxBatchSize": 23}),
    }
    for name in ("u1", "u2"):
        del bodies[name]["spec"]["builderImage"]  # follow the operator's image
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    op = Operator(cluster, tmp_path / "a").start()
    try:
        for body in bodies.values():
            apply(cluster, body)
        before = wait_for(
            "three Succeeded builds",
            lambda: (
                (s := {n: get_eb(cluster, ns, n) for n in bodies})
                and all((e or {}).get("status", {}).get("phase") == "Succeeded" for e in s.values())
                and s
            ),
            timeout=180,
            op=op,
        )
    finally:
        op.stop()
    uids = {n: e["metadata"]["uid"] for n, e in before.items()}
    jobs_before = {n: {j["metadata"]["name"] for j in owned(cluster, "jobs", ns, uids[n])} for n in bodies}
    for name in ("u1", "u2"):
        assert before[name]["status"]["builderImage"] == f"{FAKE}:ok"

    # The new image builds for 8 s: long enough that the rebuild in progress is stored and seen.
    new_image = f"{FAKE}:sleep-8"
    recorders = {n: StatusRecorder(cluster, ns, n) for n in bodies}
    for r in recorders.values():
        r.__enter__()
    op = Operator(cluster, tmp_path / "b", PITCREW_BUILDER_IMAGE=new_image).start()
    try:
        upgraded: dict[str, dict[str, Any]] = {}
        for name in ("u1", "u2"):
            upgraded[name] = wait_for(
                f"{name} rebuilt with {new_image}",
                lambda n=name: (
                    (st := _phase(cluster, ns, n)).get("phase") == "Succeeded"
                    and st.get("builderImage") == new_image
                    and st
                ),
                timeout=120,
                op=op,
            )
        for name, st in upgraded.items():
            old = before[name]["status"]
            # Mid-upgrade (stored while the new Job ran): Reconciling, and the old engine still Ready.
            rebuilding = [
                x
                for x in recorders[name].statuses
                if any(
                    c["type"] == "Reconciling" and c["status"] == "True" for c in x.get("conditions") or ()
                )
            ]
            assert rebuilding, f"{name}: no status showed the rebuild in progress: {recorders[name].phases()}"
            assert any(x.get("phase") == "Building" for x in rebuilding), [x.get("phase") for x in rebuilding]
            for x in rebuilding:
                conds = {c["type"]: c for c in x["conditions"]}
                assert conds["Reconciling"]["reason"] == "BuilderUpgrade", x
                assert conds["Ready"]["status"] == "True", x
                assert x["engine"]["uri"].rstrip("/").endswith(old["cacheKey"]), x
            assert st["cacheKey"] != old["cacheKey"]
            assert st["engine"]["uri"].rstrip("/").endswith(st["cacheKey"])
            assert st["engine"]["manifestSha256"] != old["engine"]["manifestSha256"]
            assert st["cacheHit"] is False
            jobs = owned(cluster, "jobs", ns, uids[name])
            new_jobs = [j for j in jobs if j["metadata"]["name"] not in jobs_before[name]]
            assert len(new_jobs) == 1, [j["metadata"]["name"] for j in jobs]
            assert new_jobs[0]["metadata"]["annotations"]["pitcrew.dev/cache-key"] == st["cacheKey"]
            image = new_jobs[0]["spec"]["template"]["spec"]["containers"][0]["image"]
            assert image == new_image
            reasons = wait_for(
                "events", lambda n=name: (r := _events(cluster, ns, n)) and "BuilderUpgrade" in r
            )
            assert reasons
        # The pinned build is left alone. Checked after the positive event (both unpinned builds
        # rebuilt, which the operator decided at the same resume as the pinned one) plus poll periods.
        time.sleep(3 * float(op.env["PITCREW_POLL_SECONDS"]))
        pinned = get_eb(cluster, ns, "pinned")
        assert pinned is not None
        assert pinned["status"] == before["pinned"]["status"]
        assert [x for x in recorders["pinned"].statuses if x != before["pinned"]["status"]] == []
        jobs_now = {j["metadata"]["name"] for j in owned(cluster, "jobs", ns, uids["pinned"])}
        assert jobs_now == jobs_before["pinned"]
        assert "BuilderUpgrade" not in _events(cluster, ns, "pinned")
    finally:
        op.stop()
        for r in recorders.values():
            r.__exit__(None, None, None)
