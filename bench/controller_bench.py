"""Controller benchmarks on the devcluster: apply->Job latency, writes per build, memory.

    .venv/bin/python bench/controller_bench.py [--single 20] [--burst 500] [--objects 2000]

Brings up its own devcluster (binaries must be built: hack/build-tools.sh) with kwok GPU nodes,
runs the operator as a subprocess (bench/counting_operator.py: `python -m pitcrew` with its
Kubernetes write requests counted client-side) and prints a Markdown report (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from controller.harness import (  # noqa: E402
    BUILD_TOOLS,
    EB_API,
    Operator,
    engine_build,
    fake_builder_rule,
    install,
    new_namespace,
    wait_for,
)
from pitcrew_devcluster import UpOptions, down, start_kwok, up  # noqa: E402
from pitcrew_devcluster.kwok import TOLERATION  # noqa: E402

KWOK_PRODUCT = "NVIDIA-L4"


class JobWatch:
    """Records when each Job (by its EngineBuild name) is first seen on a watch stream."""

    def __init__(self, client: Any, ns: str) -> None:
        self.client, self.ns = client, ns
        self.seen: dict[str, float] = {}
        self._stop = False
        rv = client.get(f"/apis/batch/v1/namespaces/{ns}/jobs")["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._run, args=(rv,), daemon=True)
        self.thread.start()

    def _run(self, rv: str) -> None:
        while not self._stop:
            for ev in self.client.watch(f"/apis/batch/v1/namespaces/{self.ns}/jobs", rv, timeout_seconds=60):
                obj = ev.get("object", {})
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                if ev.get("type") == "ADDED":
                    name = (obj["metadata"].get("annotations") or {}).get("pitcrew.dev/enginebuild")
                    if name and name not in self.seen:
                        self.seen[name] = time.monotonic()


# The kwok builds' pod settings, granted to every namespace (pitcrew.tenancy's default grants none).
BENCH_POLICY = {
    "*": {
        "builderImages": ["pitcrew.test/fake-builder:*"],
        "tolerationKeys": [str(TOLERATION["key"])],
        "nodeSelectorKeys": ["type"],
    }
}


def kwok_build(cluster: Any, name: str, ns: str) -> dict[str, Any]:
    return engine_build(
        cluster, name, ns, **{
            "source.revision": "bench", "target.gpuProduct": KWOK_PRODUCT, "target.gpuCount": 1,
            "target.tolerations": [TOLERATION], "target.nodeSelector": {"type": "kwok"},
        },
    )  # fmt: skip


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def phase(client: Any, ns: str, name: str) -> str | None:
    eb = client.get(f"{EB_API}/namespaces/{ns}/enginebuilds/{name}")
    value: str | None = (eb.get("status") or {}).get("phase")
    return value


def counts(path: Path) -> dict[str, int]:
    try:
        data: dict[str, int] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--single", type=int, default=20)
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--objects", type=int, default=2000)
    ap.add_argument("--builds", type=int, default=5, help="real (fake-builder) builds for the write count")
    ap.add_argument("--kwok-nodes", type=int, default=70)
    ap.add_argument(
        "--max-active-builds",
        default="0",
        help="PITCREW_MAX_ACTIVE_BUILDS of the operator; 0 (no cap) measures the controller's own "
        "throughput, the default 8 of a real deployment paces the burst on purpose",
    )
    ap.add_argument(
        "--malloc-arena-max",
        default="2",
        help="MALLOC_ARENA_MAX of the operator, as helm/pitcrew sets it ('' leaves glibc's default)",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pitcrew-bench-"))
    sd = work / "devcluster"
    t = time.monotonic()
    cluster = up(
        UpOptions(state_dir=sd, build=False, build_tools=BUILD_TOOLS, image_rules=[fake_builder_rule()])
    )
    report: list[str] = []
    try:
        install(cluster)
        start_kwok(
            args.kwok_nodes,
            sd,
            gpu_product=KWOK_PRODUCT,
            compute_capability="8.9",
            build=False,
            build_tools=BUILD_TOOLS,
        )
        s3 = cluster.s3_client()
        assert cluster.s3 is not None
        s3.put_object(Bucket=cluster.s3.bucket, Key="ckpt/tiny/config.json", Body=b"{}")
        count_file = work / "counts.json"
        op = Operator(
            cluster, work, argv=[sys.executable, str(ROOT / "bench" / "counting_operator.py")],
            PITCREW_BENCH_COUNTS=str(count_file), PITCREW_POLL_SECONDS="10",
            PITCREW_MAX_ACTIVE_BUILDS=args.max_active_builds,
            PITCREW_TENANT_POLICY=json.dumps(BENCH_POLICY),
            **({"MALLOC_ARENA_MAX": args.malloc_arena_max} if args.malloc_arena_max else {}),
        ).start()  # fmt: skip
        print(f"cluster + operator up in {time.monotonic() - t:.1f} s", file=sys.stderr)
        client = cluster.client()

        # 1. Writes per successful build (fake builder on the local node, sequential).
        ns = new_namespace(cluster, "writes")
        time.sleep(2)
        before = counts(count_file)
        for i in range(args.builds):
            body = engine_build(cluster, f"w{i}", ns, mode="sleep-3", **{"build.maxBatchSize": 10 + i})
            client.create(f"{EB_API}/namespaces/{ns}/enginebuilds", body)
            wait_for(f"w{i}", lambda i=i: phase(client, ns, f"w{i}") == "Succeeded", timeout=60, op=op)
        time.sleep(3)
        after = counts(count_file)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        total = sum(delta.values())
        events = sum(v for k, v in delta.items() if "events" in k)
        report.append(
            f"### API writes per successful build ({args.builds} builds, fake builder, ~3 s each)\n"
        )
        report.append("| Request | per build |\n|---|---|")
        for k, v in sorted(delta.items()):
            report.append(f"| `{k}` | {v / args.builds:.1f} |")
        per, bare = total / args.builds, (total - events) / args.builds
        report.append(f"| **total** | **{per:.1f}** (without Events: {bare:.1f}) |\n")

        # 2. Single-object latency, apply -> Job created (kwok nodes).
        ns = new_namespace(cluster, "single")
        watch = JobWatch(client, ns)
        lat: list[float] = []
        for i in range(args.single):
            t0 = time.monotonic()
            client.create(f"{EB_API}/namespaces/{ns}/enginebuilds", kwok_build(cluster, f"s{i}", ns))
            wait_for(f"job of s{i}", lambda i=i: f"s{i}" in watch.seen, timeout=30, interval=0.005, op=op)
            lat.append((watch.seen[f"s{i}"] - t0) * 1000)
            time.sleep(0.2)
        report.append(f"### Apply -> Job created, one object at a time ({args.single} objects)\n")
        report.append(f"p50 {pct(lat, 0.5):.0f} ms, p99 {pct(lat, 0.99):.0f} ms, max {max(lat):.0f} ms\n")

        # 3. Burst.
        ns = new_namespace(cluster, "burst")
        watch = JobWatch(client, ns)
        starts: dict[str, float] = {}

        def create(i: int) -> None:
            starts[f"b{i}"] = time.monotonic()
            client.create(f"{EB_API}/namespaces/{ns}/enginebuilds", kwok_build(cluster, f"b{i}", ns))

        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(args.burst)))
        applied = time.monotonic() - t0
        wait_for("all burst Jobs", lambda: len(watch.seen) >= args.burst, timeout=300, interval=0.1, op=op)
        total_s = max(watch.seen.values()) - t0
        blat = [(watch.seen[n] - starts[n]) * 1000 for n in starts]
        report.append(f"### Burst of {args.burst} objects (applied in {applied:.1f} s by 8 client threads)\n")
        report.append(
            f"apply -> Job p50 {pct(blat, 0.5):.0f} ms, p99 {pct(blat, 0.99):.0f} ms; all {args.burst} Jobs "
            f"created {total_s:.1f} s after the first apply. "
            f"Operator RSS after the burst: {op.rss_mib():.0f} MiB\n"
        )

        # 4. Memory with N EngineBuilds (cache hits of one published engine: the steady state).
        ns = new_namespace(cluster, "mem")
        first = engine_build(cluster, "m0", ns)
        client.create(f"{EB_API}/namespaces/{ns}/enginebuilds", first)
        wait_for("m0", lambda: phase(client, ns, "m0") == "Succeeded", timeout=60, op=op)
        n = args.objects - 1 - args.burst - args.single - args.builds
        with ThreadPoolExecutor(8) as pool:
            path = f"{EB_API}/namespaces/{ns}/enginebuilds"
            list(pool.map(lambda i: client.create(path, engine_build(cluster, f"m{i}", ns)), range(1, n + 1)))

        def all_done() -> bool:
            items = client.get(f"{EB_API}/namespaces/{ns}/enginebuilds")["items"]
            return sum((i.get("status") or {}).get("phase") == "Succeeded" for i in items) >= n + 1

        wait_for("all cache hits", all_done, timeout=600, interval=2, op=op)
        total_objs = len(client.get(f"{EB_API}/enginebuilds")["items"])
        rss_live, rss_peak = op.rss_mib(), op.rss_mib("VmHWM")
        time.sleep(30)  # the poller hands freed heap back every 10 s (pitcrew.memory)
        rss_settled = op.rss_mib()
        op.stop()
        op.start()
        time.sleep(20)  # resume of every object
        rss_restart = op.rss_mib()
        report.append(f"### Memory with {total_objs} EngineBuilds\n")
        report.append(
            f"operator RSS {rss_live:.0f} MiB right after handling them live ({n} cache hits + the builds "
            f"above; peak {rss_peak:.0f} MiB), {rss_settled:.0f} MiB 30 s later; "
            f"{rss_restart:.0f} MiB 20 s after a restart (resume of every object)\n"
        )
        op.stop()
    finally:
        down(sd)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
