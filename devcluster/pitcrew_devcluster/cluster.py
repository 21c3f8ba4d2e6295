"""Bringing the whole devcluster up and down: control plane, S3, the real node and kwok."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from . import (
    binaries,
    certs,
    controlplane,
    images,
    kubeconfig,
    kwok,
    ports,
    procs,
    readiness,
    realnode,
    s3server,
    state,
)
from .errors import DevclusterError
from .info import ClusterInfo
from .kubeapi import ApiError, KubeClient
from .procs import Proc

Running = list[tuple[Proc, subprocess.Popen[bytes] | None]]

# Stopped stage by stage: the kubelet first (the node's containers are killed through containerd
# right after it stops), then the API server's clients, then the API server while etcd still
# answers (else it hangs in shutdown).
STOP_ORDER = (
    ("kubelet",),
    ("kwok", "kube-controller-manager", "kube-scheduler", "minio", "containerd"),
    ("kube-apiserver",),
    ("etcd",),
)


def _stderr(msg: str) -> None:
    print(f"devcluster: {msg}", file=sys.stderr, flush=True)


@dataclass
class UpOptions:
    state_dir: Path = field(default_factory=state.default_state_dir)
    node_name: str = "pitcrew-local"
    gpus: int = 8
    gpu_product: str = "NVIDIA-A100-SXM4-80GB"
    compute_capability: str = "8.0"
    gpu_memory_mib: int = 81920
    # "real": kubelet + containerd + runc (the only kind; kept as an option for the CLI and state).
    node: str = "real"
    # What kwok nodes advertise to the scheduler (the real node reports the machine's own).
    node_cpu: str = "32"
    node_memory: str = "256Gi"
    s3: bool = True
    bucket: str = "pitcrew"
    kwok_nodes: int = 0
    apiserver_port: int | None = None
    s3_port: int | None = None
    timeout: float = 60.0
    build: bool = True
    # hack/build-tools.sh, which builds the binaries and knows their versions and cache folders.
    build_tools: Path = field(default_factory=binaries.default_build_tools)
    # OCI image archives the node imports into containerd (e.g. from hack/build-images.sh).
    images: list[Path] = field(default_factory=list)
    say: Callable[[str], None] = _stderr


def _get_ok(url: str, ca: Path, token: str | None = None) -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.get(url, verify=str(ca), headers=headers, timeout=2)
    return r.status_code == 200 and r.text.strip() == "ok"


def node_ready(client: KubeClient, name: str) -> bool:
    node = client.get_or_none(f"/api/v1/nodes/{name}")
    conds = (node or {}).get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


NODE_KINDS = ("real",)


def _real_network(st: state.State | None) -> realnode.Network | None:
    index = ((st.info if st else {}).get("realnode") or {}).get("bridge_index")
    return realnode.Network(int(index)) if index is not None else None


def _stop(st: state.State, sd: Path, grace: float) -> list[str]:
    """Stops every recorded process stage by stage, and the real node's containers, network and
    mounts; returns the names of processes that had to be SIGKILLed."""
    killed: list[str] = []
    layout = realnode.Layout.of(sd)
    left = realnode.Leftovers()
    for i, stage in enumerate(STOP_ORDER):
        killed += procs.stop_all([pr for pr in st.procs if pr.name in stage], grace=grace)
        if i == 0 and layout.base.exists():
            left = realnode.stop_containers(layout)  # containerd still runs, the kubelet is gone
    killed += procs.stop_all([pr for pr in st.procs if not any(pr.name in s for s in STOP_ORDER)])
    network = _real_network(st)
    if network is not None or layout.base.exists():
        realnode.cleanup(layout, network, left)
    return killed


def _fresh(sd: Path) -> None:
    # Each `up` starts from an empty etcd and no pods; S3 data persists (like a real bucket) until
    # `down --purge`.
    for name in ("etcd", "pods", "pki", "apiserver-certs", "kwok"):
        shutil.rmtree(sd / name, ignore_errors=True)
    (sd / "logs").mkdir(parents=True, exist_ok=True)


def up(opts: UpOptions) -> ClusterInfo:
    sd = opts.state_dir.resolve()
    with state.locked(sd):
        prev = state.load(sd)
        if prev is not None:
            live = prev.live()
            if live:
                cli = "python -m pitcrew_devcluster"
                if sd != state.default_state_dir().resolve():
                    cli += f" --state-dir {sd}"
                raise DevclusterError(
                    f"a devcluster is already running in {sd} "
                    f"({', '.join(f'{p.name}={p.pid}' for p in live)}); use it (`{cli} env`), "
                    f"stop it (`{cli} down`) or pick another state dir (PITCREW_STATE_DIR)"
                )
            opts.say(f"removing stale state of a devcluster that is no longer running in {sd}")
            _stop(prev, sd, grace=3)
            prev.path.unlink()
        return _up(opts, sd)


def _up(opts: UpOptions, sd: Path) -> ClusterInfo:
    t0 = time.monotonic()
    if opts.node not in NODE_KINDS:
        raise DevclusterError(f"node {opts.node!r}: choose one of {', '.join(NODE_KINDS)}")
    layout = realnode.Layout.of(sd)
    gpu = realnode.GpuModel(opts.gpu_product, opts.compute_capability, opts.gpus, opts.gpu_memory_mib)
    realnode.check_host(layout)
    gpu.labels()  # validates the compute capability before anything starts
    components = [
        "etcd",
        "kubernetes",
        "kubelet",
        *(["minio"] if opts.s3 else []),
        *(["kwok"] if opts.kwok_nodes else []),
    ]
    bins = binaries.locate(components, build=opts.build, script=opts.build_tools)

    if opts.apiserver_port is not None:
        ports.require_free(opts.apiserver_port, "kube-apiserver")
    if opts.s3 and opts.s3_port is not None:
        ports.require_free(opts.s3_port, "minio")
    free = ports.pick_free_ports(10)
    p = controlplane.Ports(
        etcd_client=free[0],
        etcd_peer=free[1],
        apiserver=opts.apiserver_port or free[2],
        controller_manager=free[3],
        scheduler=free[4],
    )
    s3_port, console_port, kwok_port = opts.s3_port or free[5], free[6], free[7]
    kubelet_port, kubelet_healthz = free[8], free[9]

    _fresh(sd)
    logs = sd / "logs"
    # The node's pods reach the API server (and MinIO) at their bridge's gateway: the API server
    # listens there instead of loopback, and its certificate names that address.
    network = realnode.create_network()
    try:
        creds = certs.generate(sd / "pki", extra_ips=(network.gateway,))
    except BaseException:
        realnode.delete_network(network)
        raise
    api_host = network.gateway
    server = f"https://{api_host}:{p.apiserver}"
    kcfg = kubeconfig.write(sd / "kubeconfig", server, creds.ca_cert, creds.admin_token)
    s3 = s3server.credentials(opts.bucket, s3_port) if opts.s3 else None
    info = ClusterInfo(
        state_dir=sd,
        kubeconfig=kcfg,
        server=server,
        token=creds.admin_token,
        ca_file=creds.ca_cert,
        node_name=opts.node_name,
        s3=s3,
        node=opts.node,
        pod_host=network.gateway,
    )
    real_info = {"realnode": {"bridge_index": network.index}}
    st = state.State(state_dir=sd, info={**info.to_json(), **real_info})
    st.save()  # recorded before anything starts, so `down` removes the bridge
    running: Running = []

    def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc, popen = procs.launch(name, argv, logs / f"{name}.log", env=env, cwd=sd)
        running.append((proc, popen))
        st.procs.append(proc)
        st.save()  # recorded at once, so `down` can clean up even if this `up` dies midway
        return proc

    def ready(component: str, seconds: float) -> None:
        opts.say(f"{component} ready after {time.monotonic() - t0:.1f} s")

    def log_of(name: str) -> Path:
        return logs / f"{name}.log"

    try:
        realnode.prepare(
            layout,
            network,
            sandbox_image=images.PAUSE_IMAGE,
            kubelet_cfg=realnode.kubelet_config(
                layout, network, port=kubelet_port, healthz_port=kubelet_healthz, ca_file=creds.ca_cert
            ),
        )
        # Phase 1, in parallel: etcd, apiserver (it retries etcd until it answers), MinIO, containerd.
        start("etcd", controlplane.etcd(bins, p, sd / "etcd"))
        start("kube-apiserver", controlplane.apiserver(bins, p, creds, sd / "apiserver-certs", api_host))
        checks = [
            readiness.Check(
                "etcd",
                lambda: (
                    requests.get(f"http://{ports.LOOPBACK}:{p.etcd_client}/health", timeout=1).status_code
                    == 200
                ),
                log_of("etcd"),
            ),
            readiness.Check(
                "kube-apiserver",
                lambda: _get_ok(f"{server}/readyz", creds.ca_cert, creds.admin_token),
                log_of("kube-apiserver"),
            ),
        ]
        if s3 is not None:
            s3dir = sd / "s3"
            s3dir.mkdir(exist_ok=True)
            host = "0.0.0.0"  # the node's pods come via their gateway
            start("minio", s3server.argv(bins, s3dir, s3_port, console_port, host), env=s3server.env(s3))
            checks.append(readiness.Check("minio", lambda: s3server.live(s3), log_of("minio")))
        start("containerd", realnode.containerd_argv(layout))
        checks.append(
            readiness.Check("containerd", lambda: realnode.containerd_ready(layout), log_of("containerd"))
        )
        readiness.wait(checks, running, timeout=opts.timeout, on_ready=ready)
        specs = images.node_images()
        archives = [*images.write_archives(layout.images, specs), *opts.images]
        realnode.load_images(layout, archives)
        ready(f"images {', '.join(s.name for s in specs)} and {len(opts.images)} archive(s)", 0)

        # Phase 2, in parallel: everything that needs a serving apiserver.
        kcm_url = f"https://{ports.LOOPBACK}:{p.controller_manager}/healthz"
        sched_url = f"https://{ports.LOOPBACK}:{p.scheduler}/healthz"
        start("kube-controller-manager", controlplane.controller_manager(bins, p, creds, kcfg))
        start("kube-scheduler", controlplane.scheduler(bins, p, creds, kcfg))
        start(
            "kubelet",
            realnode.kubelet_argv(
                bins.path("kubelet"),
                layout,
                network,
                node_name=opts.node_name,
                kubeconfig=kcfg,
                labels={"pitcrew.dev/node": "real", **gpu.labels()},
            ),
        )
        if opts.kwok_nodes:
            start("kwok", kwok.argv(bins, kcfg, kwok_port, kwok.write_config(sd / "kwok", bins)))
        client = info.client()
        checks = [
            readiness.Check(
                "kube-controller-manager",
                lambda: _get_ok(kcm_url, creds.ca_cert),
                log_of("kube-controller-manager"),
            ),
            readiness.Check(
                "kube-scheduler", lambda: _get_ok(sched_url, creds.ca_cert), log_of("kube-scheduler")
            ),
            readiness.Check(
                f"node {opts.node_name}",
                lambda: node_ready(client, opts.node_name) and _finish_real_node(client, opts.node_name, gpu),
                log_of("kubelet"),
            ),
        ]
        if s3 is not None:

            def bucket() -> bool:
                s3server.ensure_bucket(s3, timeout=1)
                return True

            checks.append(readiness.Check(f"bucket {s3.bucket}", bucket, log_of("minio")))
        readiness.wait(checks, running, timeout=opts.timeout, on_ready=ready)

        if opts.kwok_nodes:
            names = add_kwok_nodes(
                client,
                opts.kwok_nodes,
                gpus=opts.gpus,
                gpu_product=opts.gpu_product,
                compute_capability=opts.compute_capability,
                cpu=opts.node_cpu,
                memory=opts.node_memory,
            )
            info = dataclasses.replace(info, kwok_nodes=tuple(names))
            readiness.wait(
                [
                    readiness.Check(
                        f"{len(names)} kwok nodes",
                        lambda: all(node_ready(client, n) for n in names),
                        log_of("kwok"),
                    )
                ],
                running,
                timeout=opts.timeout,
                on_ready=ready,
            )
        st.info = {**info.to_json(), **real_info}
        st.save()
    except BaseException:
        # Never leave half a cluster behind: stop what we started, keep the logs.
        _stop(st, sd, grace=3)
        st.path.unlink(missing_ok=True)
        raise
    opts.say(f"up in {time.monotonic() - t0:.1f} s; state in {sd}")
    return info


def _finish_real_node(client: KubeClient, name: str, gpu: realnode.GpuModel) -> bool:
    """Once the kubelet registered the node: lifts the not-ready taint (admission adds it to new
    nodes and no node lifecycle controller runs to remove it) and adds the nvidia.com/gpu extended
    resource to its status. True when both show."""
    node = client.get(f"/api/v1/nodes/{name}")
    taints = node.get("spec", {}).get("taints") or []
    kept = [t for t in taints if t.get("key") != realnode.NOT_READY_TAINT]
    if kept != taints:
        client.patch(f"/api/v1/nodes/{name}", {"spec": {"taints": kept or None}})
    if node.get("status", {}).get("allocatable", {}).get("nvidia.com/gpu") != str(gpu.count):
        client.patch(f"/api/v1/nodes/{name}/status", realnode.gpu_status_patch(gpu))
        return False
    return kept == taints


def add_kwok_nodes(
    client: KubeClient,
    count: int,
    *,
    start: int = 0,
    prefix: str = "kwok-gpu-",
    gpus: int = 8,
    gpu_product: str = "NVIDIA-A100-SXM4-80GB",
    compute_capability: str = "8.0",
    cpu: str = "32",
    memory: str = "256Gi",
) -> list[str]:
    """Creates fake GPU nodes `<prefix><start>` .. for kwok to manage; returns their names."""
    names = []
    for i in range(start, start + count):
        body = kwok.node_manifest(
            f"{prefix}{i}",
            gpus=gpus,
            gpu_product=gpu_product,
            compute_capability=compute_capability,
            cpu=cpu,
            memory=memory,
        )
        try:
            client.create("/api/v1/nodes", body)
        except ApiError as e:
            if e.status != 409:
                raise
        # Admission adds the not-ready taint to new nodes and no node lifecycle controller runs to
        # lift it: set the taints to just ours (kwok marks the node Ready itself).
        client.patch(
            f"/api/v1/nodes/{body['metadata']['name']}", {"spec": {"taints": body["spec"]["taints"]}}
        )
        names.append(body["metadata"]["name"])
    return names


def start_kwok(
    count: int,
    state_dir: Path | None = None,
    *,
    gpus: int = 8,
    gpu_product: str = "NVIDIA-A100-SXM4-80GB",
    compute_capability: str = "8.0",
    timeout: float = 60.0,
    build: bool = True,
    build_tools: Path | None = None,
) -> list[str]:
    """Adds `count` kwok fake GPU nodes to a running devcluster (starting kwok if needed)."""
    sd = (state_dir or state.default_state_dir()).resolve()
    with state.locked(sd):
        st = state.load(sd)
        if st is None or not st.live() or not st.info:
            raise DevclusterError(f"no devcluster is running in {sd}", component="kwok")
        info = ClusterInfo.from_json(st.info)
        running: Running = []
        kw = st.proc("kwok")
        if kw is None or not procs.is_alive(kw):
            bins = binaries.locate(["kwok"], build=build, script=build_tools)
            argv = kwok.argv(
                bins, info.kubeconfig, ports.pick_free_ports(1)[0], kwok.write_config(sd / "kwok", bins)
            )
            proc, popen = procs.launch("kwok", argv, sd / "logs" / "kwok.log", cwd=sd)
            st.procs = [p for p in st.procs if p.name != "kwok"] + [proc]
            st.save()
            running.append((proc, popen))
        client = info.client()
        names = add_kwok_nodes(
            client,
            count,
            start=len(info.kwok_nodes),
            gpus=gpus,
            gpu_product=gpu_product,
            compute_capability=compute_capability,
        )
        readiness.wait(
            [
                readiness.Check(
                    f"{count} kwok nodes",
                    lambda: all(node_ready(client, n) for n in names),
                    sd / "logs" / "kwok.log",
                )
            ],
            running,
            timeout=timeout,
        )
        st.info = dataclasses.replace(info, kwok_nodes=(*info.kwok_nodes, *names)).to_json()
        st.save()
    return names


def load_images(archives: list[Path], state_dir: Path | None = None) -> list[str]:
    """Imports OCI image archives into the real node of a running devcluster; returns the names."""
    sd = (state_dir or state.default_state_dir()).resolve()
    st = state.load(sd)
    if st is None or not st.live() or (st.info or {}).get("node") != "real":
        raise DevclusterError(f"no devcluster with a real node is running in {sd}", component="images")
    return realnode.load_images(realnode.Layout.of(sd), archives)


def load(state_dir: Path | None = None) -> ClusterInfo | None:
    """The devcluster running in `state_dir`, or None unless every component is alive."""
    sd = (state_dir or state.default_state_dir()).resolve()
    st = state.load(sd)
    if st is None or not st.info or len(st.live()) != len(st.procs):
        return None
    return ClusterInfo.from_json(st.info)


def down(state_dir: Path | None = None, *, purge: bool = False, say: Callable[[str], None] = _stderr) -> bool:
    """Stops everything `up` started in `state_dir`; returns False when nothing was running."""
    sd = (state_dir or state.default_state_dir()).resolve()
    with state.locked(sd):
        st = state.load(sd)
        was_running = bool(st and st.live())
        if st is not None:
            killed = _stop(st, sd, grace=10)
            if killed:
                say(f"had to SIGKILL: {', '.join(killed)}")
            st.path.unlink(missing_ok=True)
        shutil.rmtree(sd / "etcd", ignore_errors=True)
        if purge:
            for child in sd.iterdir():
                if child.name != ".lock":
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink()
    say("stopped" if was_running else f"no devcluster was running in {sd}")
    return was_running


def status(state_dir: Path | None = None) -> dict[str, Any]:
    sd = (state_dir or state.default_state_dir()).resolve()
    st = state.load(sd)
    if st is None:
        return {"state_dir": str(sd), "running": False, "components": []}
    comps = [{"name": p.name, "pid": p.pid, "alive": procs.is_alive(p), "log": p.log} for p in st.procs]
    out: dict[str, Any] = {
        "state_dir": str(sd),
        "running": any(c["alive"] for c in comps),
        "components": comps,
    }
    if st.info and out["running"]:
        info = ClusterInfo.from_json(st.info)
        out["server"] = info.server
        try:
            out["apiserver_ready"] = _get_ok(f"{info.server}/readyz", info.ca_file, info.token)
            out["node_ready"] = node_ready(info.client(), info.node_name)
        except Exception as e:  # status reports, it does not fail
            out["apiserver_ready"] = False
            out["error"] = str(e)
        if info.s3:
            out["s3_live"] = s3server.live(info.s3)
    return out
