"""The real node (kubelet + containerd): `up` and `down` times, memory of the whole cluster, and the
latency of a trivial Job from create to Complete.

    .venv/bin/python bench/realnode_bench.py [--repeat 3] [--jobs 5]

Each repeat brings up a fresh devcluster with `node="real"` in a new temp state dir (binaries
already built: hack/build-tools.sh), measures the resident memory (sum of VmRSS) of every process
of the cluster (recorded components, containerd shims and their containers) while idle, runs
`--jobs` busybox Jobs one after another, and stops it. Prints per-repeat numbers and medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from controller.harness import BUILD_TOOLS, wait_for  # noqa: E402
from pitcrew_devcluster import ClusterInfo, UpOptions, down, up  # noqa: E402
from pitcrew_devcluster.images import BUSYBOX_IMAGE  # noqa: E402
from pitcrew_devcluster.realnode import Layout  # noqa: E402
from pitcrew_devcluster.state import load as load_state  # noqa: E402


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _descendants(pids: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(pids), list(pids)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def cluster_memory(sd: Path) -> dict[str, float]:
    st = load_state(sd)
    assert st is not None
    per = {p.name: sum(_rss_mib(q) for q in _descendants({p.pid})) for p in st.procs}
    sock = str(Layout.of(sd).socket).encode()
    shims = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmd and sock in cmd:
                shims.add(int(entry.name))
    per["shims+containers"] = sum(_rss_mib(q) for q in _descendants(shims))
    return per


def run_job(info: ClusterInfo, ns: str, name: str) -> float:
    client = info.client()
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [
                        {"name": "main", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                         "command": ["/bin/sh", "-c", "echo done > /dev/termination-log"]}
                    ],
                }
            },
        },
    }  # fmt: skip
    t0 = time.monotonic()
    client.create(f"/apis/batch/v1/namespaces/{ns}/jobs", body)

    def complete() -> bool:
        job = client.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
        return any(c["type"] == "Complete" for c in job.get("status", {}).get("conditions") or [])

    wait_for(f"job {name}", complete, timeout=120, interval=0.1)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=5)
    args = ap.parse_args()
    ups, downs, mems, jobs = [], [], [], []
    for r in range(args.repeat):
        sd = Path(tempfile.mkdtemp(prefix="pitcrew-rnb-"))
        t0 = time.monotonic()
        info = up(UpOptions(state_dir=sd, build=False, build_tools=BUILD_TOOLS, say=lambda _m: None))
        ups.append(time.monotonic() - t0)
        try:
            time.sleep(10)  # settle: first node status updates, kubelet caches
            per = cluster_memory(sd)
            mems.append(sum(per.values()))
            print(f"repeat {r}: up {ups[-1]:.1f} s; memory {mems[-1]:.0f} MiB "
                  + ", ".join(f"{k} {v:.0f}" for k, v in sorted(per.items())))  # fmt: skip
            ns = f"b-{uuid.uuid4().hex[:6]}"
            info.kubectl("create", "namespace", ns)
            client, sa = info.client(), f"/api/v1/namespaces/{ns}/serviceaccounts/default"
            wait_for("default SA", lambda: client.get_or_none(sa))  # noqa: B023 (called right here)
            for j in range(args.jobs):
                jobs.append(run_job(info, ns, f"j{j}"))
            print(
                f"repeat {r}: job create->Complete "
                + ", ".join(f"{x:.1f}" for x in jobs[-args.jobs :])
                + " s"
            )
        finally:
            t1 = time.monotonic()
            down(sd, purge=True, say=lambda _m: None)
            downs.append(time.monotonic() - t1)
    print(
        f"median: up {statistics.median(ups):.1f} s, down {statistics.median(downs):.1f} s, "
        f"idle memory {statistics.median(mems):.0f} MiB, "
        f"job create->Complete {statistics.median(jobs) if jobs else 0:.2f} s (n={len(jobs)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
