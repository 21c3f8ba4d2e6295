"""Controller benchmarks on the devcluster: apply->Job latency, writes per build, memory.

    .venv/bin/python bench/controller_bench.py [--single 20] [--burst 500] [--objects 2000] [--repeat 3]
    .venv/bin/python bench/controller_bench.py --fleet 10000 --fleet-namespaces 20 --fleet-only

Each run brings up its own devcluster (binaries must be built: hack/build-tools.sh) with kwok GPU
nodes, runs the operator as a subprocess (bench/counting_operator.py: `python -m pitcrew` with its
Kubernetes write requests counted client-side), measures, and tears everything down. The whole run
is repeated --repeat times; the Markdown report (docs/benchmarks.md) gives the median of the runs
next to each run's value. Latencies are reported as p50, p90 and max: with 20 samples a "p99" would
only be the maximum under another name.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from controller.fake_image import build_operator_image, fake_builder_archive  # noqa: E402
from controller.harness import (  # noqa: E402
    BUILD_TOOLS,
    EB_API,
    Operator,
    engine_build,
    install,
    new_namespace,
    wait_for,
)
from pitcrew_devcluster import UpOptions, down, start_kwok, up  # noqa: E402
from pitcrew_devcluster.kwok import TOLERATION  # noqa: E402

KWOK_PRODUCT = "NVIDIA-L4"


class JobWatch:
    """Records when each Job (by its EngineBuild name) is first seen on a watch stream.

    The watch is re-opened every 2 s (server-side timeout) so stop() returns promptly and the thread
    never outlives the cluster (which would end its stream mid-response).
    """

    def __init__(self, client: Any, ns: str) -> None:
        self.client, self.ns = client, ns
        self.seen: dict[str, float] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        rv = client.get(f"/apis/batch/v1/namespaces/{ns}/jobs")["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._run, args=(rv,), daemon=True)
        self.thread.start()

    def _run(self, rv: str) -> None:
        try:
            while not self._stop.is_set():
                path = f"/apis/batch/v1/namespaces/{self.ns}/jobs"
                for ev in self.client.watch(path, rv, timeout_seconds=2):
                    obj = ev.get("object", {})
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if ev.get("type") == "ADDED":
                        name = (obj["metadata"].get("annotations") or {}).get("pitcrew.dev/enginebuild")
                        if name and name not in self.seen:
                            self.seen[name] = time.monotonic()
        except Exception as e:
            self.error = e

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)
        if self.error is not None:
            raise RuntimeError(f"job watch of {self.ns} failed: {self.error!r}")


# The kwok builds' pod settings, granted to every namespace (pitcrew.tenancy's default grants none).
BENCH_POLICY = {
    "*": {
        "builderImages": ["pitcrew.test/fake-builder:*"],
        "tolerationKeys": [str(TOLERATION["key"])],
        "nodeSelectorKeys": ["type"],
    }
}


def kwok_build(cluster: Any, name: str, ns: str, variant: int) -> dict[str, Any]:
    """A build for the kwok nodes; each `variant` is another engine (identical builds share one Job)."""
    return engine_build(
        cluster, name, ns, **{
            "source.revision": "bench", "target.gpuProduct": KWOK_PRODUCT, "target.gpuCount": 1,
            "target.tolerations": [TOLERATION], "target.nodeSelector": {"type": "kwok"},
            "build.maxBatchSize": variant,
        },
    )  # fmt: skip


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q=0.9: the value 90 % of the samples do not exceed)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Run:
    writes: dict[str, float] = field(default_factory=dict)  # per build, by request
    writes_total: float = 0.0
    writes_no_events: float = 0.0
    single: list[float] = field(default_factory=list)  # ms
    burst: list[float] = field(default_factory=list)  # ms
    burst_applied_s: float = 0.0
    burst_all_s: float = 0.0
    objects: int = 0
    rss_live: float = 0.0
    rss_peak: float = 0.0
    rss_settled: float = 0.0
    rss_restart: float = 0.0
    # --fleet: N cache-hit EngineBuilds over M namespaces, and an operator restart with all of them.
    fleet: int = 0
    fleet_applied_s: float = 0.0
    fleet_converged_s: float = 0.0
    fleet_rss_peak: float = 0.0
    fleet_rss_settled: float = 0.0
    restart_listed_s: float = 0.0
    restart_idle_s: float = 0.0
    restart_rss_peak: float = 0.0
    restart_rss_settled: float = 0.0
    restart_writes: float = 0.0


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


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--single", type=int, default=20)
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--objects", type=int, default=2000)
    ap.add_argument("--builds", type=int, default=5, help="real (fake-builder) builds for the write count")
    ap.add_argument("--kwok-nodes", type=int, default=70)
    ap.add_argument("--repeat", type=int, default=3, help="whole runs (fresh devcluster each); medians")
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
    ap.add_argument("--fleet", type=int, default=0, help="also: this many EngineBuilds, then a restart")
    ap.add_argument("--fleet-namespaces", type=int, default=20)
    ap.add_argument("--fleet-only", action="store_true", help="only the --fleet measurement")
    return ap.parse_args()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def succeeded_metric(port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith('pitcrew_builds{phase="Succeeded"}'):
            return int(float(line.split()[-1]))
    return 0


def metric_or_zero(port: int) -> int:
    try:
        return succeeded_metric(port)
    except OSError:  # a loaded machine: ask again
        return 0


def start_counting_operator(args: argparse.Namespace, cluster: Any, work: Path, count_file: Path) -> Operator:
    """`python -m pitcrew` with its Kubernetes write requests counted into `count_file`."""
    return Operator(
        cluster, work, argv=[sys.executable, str(ROOT / "bench" / "counting_operator.py")],
        PITCREW_BENCH_COUNTS=str(count_file), PITCREW_POLL_SECONDS="10",
        PITCREW_MAX_ACTIVE_BUILDS=args.max_active_builds,
        PITCREW_TENANT_POLICY=json.dumps(BENCH_POLICY),
        **({"MALLOC_ARENA_MAX": args.malloc_arena_max} if args.malloc_arena_max else {}),
    ).start()  # fmt: skip


def run_fleet(args: argparse.Namespace) -> Run:
    """N EngineBuilds (cache hits of one published engine) over M namespaces: time until all are
    Succeeded and the operator's memory; then a restart: time until the operator has listed them all
    (pitcrew_builds) and gone idle (resume handlers done: under 5 % of a core for 3 s), its memory,
    and its write requests meanwhile (a restart rewrites nothing)."""
    result = Run(fleet=args.fleet)
    work = Path(tempfile.mkdtemp(prefix="pitcrew-fleet-"))
    sd = work / "devcluster"
    cluster = up_cluster(sd)
    op: Operator | None = None
    try:
        install(cluster)
        assert cluster.s3 is not None
        bucket = cluster.s3.bucket
        cluster.s3_client().put_object(Bucket=bucket, Key="ckpt/tiny/config.json", Body=b"{}")
        count_file = work / "counts.json"
        op = start_counting_operator(args, cluster, work, count_file)
        client = cluster.client()
        spaces = [new_namespace(cluster, "fleet") for _ in range(args.fleet_namespaces)]
        out = {"output.uri": f"s3://{bucket}/engines/fleet"}  # one engine for all: cache hits

        def body(i: int) -> tuple[str, dict[str, Any]]:
            ns = spaces[i % len(spaces)]
            return ns, engine_build(cluster, f"f{i}", ns, **out)

        ns0, first = body(0)
        client.create(f"{EB_API}/namespaces/{ns0}/enginebuilds", first)
        wait_for("f0", lambda: phase(client, ns0, "f0") == "Succeeded", timeout=300, op=op)

        def create(i: int) -> None:
            ns, b = body(i)
            client.create(f"{EB_API}/namespaces/{ns}/enginebuilds", b)

        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(1, args.fleet)))
        result.fleet_applied_s = time.monotonic() - t0

        # The operator's own gauge (fed by its watch) instead of LISTing 10,000 objects every few
        # seconds on a loaded machine; one paged LIST confirms at the end.
        wait_for(
            "the fleet",
            lambda: metric_or_zero(op.metrics_port) >= args.fleet,
            timeout=3600,
            interval=2,
            op=op,
        )
        result.fleet_converged_s = time.monotonic() - t0
        done, cont = 0, ""
        while True:
            page = client.get(f"{EB_API}/enginebuilds", limit=500, **({"continue": cont} if cont else {}))
            done += sum((i.get("status") or {}).get("phase") == "Succeeded" for i in page["items"])
            cont = page["metadata"].get("continue") or ""
            if not cont:
                break
        assert done >= args.fleet, f"only {done} of {args.fleet} EngineBuilds Succeeded"
        result.fleet_rss_peak = op.rss_mib("VmHWM")
        time.sleep(30)  # the poller hands freed heap back every 10 s (pitcrew.memory)
        result.fleet_rss_settled = op.rss_mib()

        op.stop()
        t0 = time.monotonic()
        op.start()
        assert op.proc is not None
        pid, listed, idle_since, last = op.proc.pid, 0.0, 0.0, (time.monotonic(), cpu_seconds(op.proc.pid))
        deadline = t0 + 1800
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now, cpu = time.monotonic(), cpu_seconds(pid)
            busy = (cpu - last[1]) / (now - last[0])
            last = (now, cpu)
            if not listed and metric_or_zero(op.metrics_port) >= args.fleet:
                listed = now - t0
            if listed and busy < 0.05:
                idle_since = idle_since or now
                if now - idle_since >= 3:
                    break
            else:
                idle_since = 0.0
        else:
            raise RuntimeError(f"the restarted operator did not settle: {op.tail()}")
        result.restart_listed_s, result.restart_idle_s = listed, idle_since - t0
        result.restart_rss_peak = op.rss_mib("VmHWM")
        result.restart_writes = sum(counts(count_file).values())
        time.sleep(30)
        result.restart_rss_settled = op.rss_mib()
    finally:
        if op is not None:
            op.stop()
        down(sd)
    return result


def up_cluster(sd: Path) -> Any:
    """A devcluster whose real node has the FAKE builder image (and the operator image it is made of)."""
    _, operator_image = build_operator_image()  # cached by content
    images = [operator_image, fake_builder_archive(operator_image)]
    return up(UpOptions(state_dir=sd, node="real", build=False, build_tools=BUILD_TOOLS, images=images))


def run_once(args: argparse.Namespace) -> Run:
    result = Run()
    work = Path(tempfile.mkdtemp(prefix="pitcrew-bench-"))
    sd = work / "devcluster"
    t = time.monotonic()
    cluster = up_cluster(sd)
    watches: list[JobWatch] = []
    op: Operator | None = None
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
        op = start_counting_operator(args, cluster, work, count_file)
        print(f"cluster + operator up in {time.monotonic() - t:.1f} s", file=sys.stderr)
        client = cluster.client()

        # 1. Writes per successful build (fake builder on the real node, sequential).
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
        result.writes = {k: v / args.builds for k, v in delta.items()}
        result.writes_total, result.writes_no_events = total / args.builds, (total - events) / args.builds

        # 2. Single-object latency, apply -> Job created (kwok nodes).
        ns = new_namespace(cluster, "single")
        watch = JobWatch(client, ns)
        watches.append(watch)
        for i in range(args.single):
            t0 = time.monotonic()
            body = kwok_build(cluster, f"s{i}", ns, 1000 + i)
            client.create(f"{EB_API}/namespaces/{ns}/enginebuilds", body)
            wait_for(f"job of s{i}", lambda i=i: f"s{i}" in watch.seen, timeout=30, interval=0.005, op=op)
            result.single.append((watch.seen[f"s{i}"] - t0) * 1000)
            time.sleep(0.2)
        watch.stop()

        # 3. Burst.
        ns = new_namespace(cluster, "burst")
        watch = JobWatch(client, ns)
        watches.append(watch)
        starts: dict[str, float] = {}

        def create(i: int) -> None:
            starts[f"b{i}"] = time.monotonic()
            body = kwok_build(cluster, f"b{i}", ns, 2000 + i)
            client.create(f"{EB_API}/namespaces/{ns}/enginebuilds", body)

        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(args.burst)))
        result.burst_applied_s = time.monotonic() - t0
        wait_for("all burst Jobs", lambda: len(watch.seen) >= args.burst, timeout=300, interval=0.1, op=op)
        result.burst_all_s = max(watch.seen.values()) - t0
        result.burst = [(watch.seen[n] - starts[n]) * 1000 for n in starts]
        watch.stop()

        # 4. Memory with N EngineBuilds (cache hits of one published engine: the steady state).
        ns = new_namespace(cluster, "mem")
        first = engine_build(cluster, "m0", ns)
        client.create(f"{EB_API}/namespaces/{ns}/enginebuilds", first)
        wait_for("m0", lambda: phase(client, ns, "m0") == "Succeeded", timeout=300, op=op)
        n = args.objects - 1 - args.burst - args.single - args.builds
        with ThreadPoolExecutor(8) as pool:
            path = f"{EB_API}/namespaces/{ns}/enginebuilds"
            list(pool.map(lambda i: client.create(path, engine_build(cluster, f"m{i}", ns)), range(1, n + 1)))

        def all_done() -> bool:
            try:
                items = client.get(f"{EB_API}/namespaces/{ns}/enginebuilds")["items"]
            except requests.RequestException:  # a read timeout on a loaded machine: ask again
                return False
            return sum((i.get("status") or {}).get("phase") == "Succeeded" for i in items) >= n + 1

        wait_for("all cache hits", all_done, timeout=600, interval=2, op=op)
        result.objects = len(client.get(f"{EB_API}/enginebuilds")["items"])
        result.rss_live, result.rss_peak = op.rss_mib(), op.rss_mib("VmHWM")
        time.sleep(30)  # the poller hands freed heap back every 10 s (pitcrew.memory)
        result.rss_settled = op.rss_mib()
        op.stop()
        op.start()
        time.sleep(20)  # resume of every object
        result.rss_restart = op.rss_mib()
    finally:
        for w in watches:
            w._stop.set()
        for w in watches:
            w.thread.join(timeout=30)
        if op is not None:
            op.stop()
        down(sd)
    return result


def _cells(values: list[float], fmt: str) -> str:
    return f"**{format(statistics.median(values), fmt)}** ({', '.join(format(v, fmt) for v in values)})"


def fleet_report(args: argparse.Namespace, runs: list[Run]) -> list[str]:
    lines = ["| Measure | median (runs) |", "|---|---|"]

    def row(label: str, values: list[float], fmt: str = ".0f", unit: str = "") -> None:
        lines.append(f"| {label} | {_cells(values, fmt)}{unit} |")

    n, m = args.fleet, args.fleet_namespaces
    row(
        f"{n} EngineBuilds in {m} namespaces (8 client threads): applies took",
        [r.fleet_applied_s for r in runs],
        ".0f",
        " s",
    )
    row(
        "... all Succeeded (cache hits), s after the first apply",
        [r.fleet_converged_s for r in runs],
        ".0f",
        " s",
    )
    row("... operator RSS peak", [r.fleet_rss_peak for r in runs], unit=" MiB")
    row("... 30 s after all Succeeded", [r.fleet_rss_settled for r in runs], unit=" MiB")
    row(
        "restart: all listed (pitcrew_builds), s after start", [r.restart_listed_s for r in runs], ".0f", " s"
    )
    row("restart: converged (resumes done, operator idle)", [r.restart_idle_s for r in runs], ".0f", " s")
    row("restart: RSS peak", [r.restart_rss_peak for r in runs], unit=" MiB")
    row("restart: RSS 30 s after converging", [r.restart_rss_settled for r in runs], unit=" MiB")
    row("restart: write requests until converged", [r.restart_writes for r in runs], ".0f")
    return lines


def report(args: argparse.Namespace, runs: list[Run]) -> str:
    if args.fleet_only:
        return "\n".join(fleet_report(args, runs))
    lines = [
        f"Median of {len(runs)} runs (each run's value in brackets, in run order); each run is a fresh "
        "devcluster and operator.\n",
        "| Measure | median (runs) |",
        "|---|---|",
    ]

    def row(label: str, values: list[float], fmt: str = ".0f", unit: str = "") -> None:
        lines.append(f"| {label} | {_cells(values, fmt)}{unit} |")

    one = f"apply -> Job created, one object at a time ({args.single} objects)"
    row(f"{one}: p50", [pct(r.single, 0.5) for r in runs], unit=" ms")
    row(f"{one}: p90", [pct(r.single, 0.9) for r in runs], unit=" ms")
    row(f"{one}: max", [max(r.single) for r in runs], unit=" ms")
    burst = f"burst of {args.burst} (8 client threads)"
    row(f"{burst}: all Jobs created, s after the first apply", [r.burst_all_s for r in runs], ".1f", " s")
    row(f"{burst}: applies took", [r.burst_applied_s for r in runs], ".1f", " s")
    row(f"{burst}: apply -> Job p50", [pct(r.burst, 0.5) / 1000 for r in runs], ".1f", " s")
    row(f"{burst}: apply -> Job p90", [pct(r.burst, 0.9) / 1000 for r in runs], ".1f", " s")
    row(f"{burst}: apply -> Job max", [max(r.burst) / 1000 for r in runs], ".1f", " s")
    row(f"API writes per successful build ({args.builds} builds)", [r.writes_total for r in runs], ".1f")
    row("... without Events", [r.writes_no_events for r in runs], ".1f")
    objects = runs[0].objects
    row(f"operator RSS with {objects} EngineBuilds: peak", [r.rss_peak for r in runs], unit=" MiB")
    row("... right after handling them", [r.rss_live for r in runs], unit=" MiB")
    row("... 30 s later", [r.rss_settled for r in runs], unit=" MiB")
    row("... 20 s after a restart (resume of every object)", [r.rss_restart for r in runs], unit=" MiB")
    lines.append("\nAPI writes per successful build, by request (median of the runs):\n")
    lines.append("| Request | per build |\n|---|---|")
    for k in sorted({k for r in runs for k in r.writes}):
        lines.append(f"| `{k}` | {statistics.median([r.writes.get(k, 0.0) for r in runs]):.1f} |")
    if args.fleet:
        lines.append("")
        lines += fleet_report(args, runs)
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    runs: list[Run] = []
    for i in range(args.repeat):
        t = time.monotonic()
        run = Run() if args.fleet_only else run_once(args)
        if args.fleet:
            fleet = run_fleet(args)
            run.__dict__.update(
                {k: v for k, v in fleet.__dict__.items() if k.startswith(("fleet", "restart"))}
            )
        runs.append(run)
        print(f"run {i + 1}/{args.repeat} done in {time.monotonic() - t:.0f} s", file=sys.stderr)
        print(report(args, runs[-1:]), file=sys.stderr)
    print(report(args, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
