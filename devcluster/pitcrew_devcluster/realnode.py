"""The real node: a kubelet (built by hack/build-tools.sh) on containerd + runc + bridge CNI.

Everything lives under `<state dir>/realnode/`: containerd's root (images, kept across `up`s like S3
data), state and socket, runc's state, the kubelet's root dir and pod logs, the CNI config and IP
allocations. Each cluster gets its own bridge `pcbrN` with 10.213.N.0/24 (N is the first free
index, chosen under a host-wide lock), so several clusters run at once; the node's IP is the
bridge's gateway address, which is also where pods reach MinIO.

No GPU exists here: the node advertises `nvidia.com/gpu` as an extended resource on its status and
the labels NVIDIA's GPU feature discovery would set, for a configurable GPU model.

The settings come from docs of what this machine type needs (cgroup v1: `failCgroupV1: false`;
containerd: `restrict_oom_score_adj`, cgroupfs). Pure functions build the configs; `start_*`,
`stop_containers` and `cleanup` do the I/O.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import DevclusterError

BRIDGE_PREFIX = "pcbr"
SUBNET_PREFIX = "10.213"
MAX_BRIDGES = 200
BRIDGE_LOCK = Path("/run/lock/pitcrew-devcluster-bridges.lock")
CNI_BIN_DIR = Path("/usr/lib/cni")
NETNS_DIR = Path("/var/run/netns")
CNI_CACHE_DIR = Path("/var/lib/cni/results")
K8S_NAMESPACE = "k8s.io"  # containerd's namespace for the CRI
# Host tools the real node needs and the Debian package each comes from.
HOST_TOOLS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "containerd-shim-runc-v2": "containerd",
    "ip": "iproute2",
}
UNIX_SOCKET_MAX = 107
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


@dataclass(frozen=True)
class Layout:
    """Where the real node keeps its files, all under one folder of the state dir."""

    base: Path

    @classmethod
    def of(cls, state_dir: Path) -> Layout:
        return cls(state_dir / "realnode")

    @property
    def containerd_root(self) -> Path:
        return self.base / "containerd-root"

    @property
    def containerd_state(self) -> Path:
        return self.base / "containerd-state"

    @property
    def containerd_config(self) -> Path:
        return self.base / "containerd.toml"

    @property
    def socket(self) -> Path:
        return self.base / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.base / "runc"

    @property
    def kubelet_dir(self) -> Path:
        return self.base / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.base / "kubelet.yaml"

    @property
    def pod_logs(self) -> Path:
        return self.base / "pod-logs"

    @property
    def cni_conf_dir(self) -> Path:
        return self.base / "cni"

    @property
    def ipam_dir(self) -> Path:
        return self.base / "ipam"

    @property
    def images(self) -> Path:
        return self.base / "images"

    def ephemeral(self) -> list[Path]:
        """What `down` removes (containerd's root, with the imported images, stays)."""
        return [
            self.containerd_state,
            self.runc_root,
            self.kubelet_dir,
            self.pod_logs,
            self.cni_conf_dir,
            self.ipam_dir,
            self.socket,
            Path(f"{self.socket}.ttrpc"),
        ]


@dataclass(frozen=True)
class Network:
    """The cluster's bridge `pcbrN` and its /24; the gateway is the node's (and MinIO's) address."""

    index: int

    @property
    def bridge(self) -> str:
        return f"{BRIDGE_PREFIX}{self.index}"

    @property
    def subnet(self) -> str:
        return f"{SUBNET_PREFIX}.{self.index}.0/24"

    @property
    def gateway(self) -> str:
        return f"{SUBNET_PREFIX}.{self.index}.1"

    @property
    def name(self) -> str:
        return f"pitcrew-{self.index}"


@dataclass(frozen=True)
class GpuModel:
    product: str = "NVIDIA-A100-SXM4-80GB"
    compute_capability: str = "8.0"
    count: int = 8
    memory_mib: int = 81920

    def labels(self) -> dict[str, str]:
        """The labels NVIDIA GPU feature discovery sets on a node with these GPUs."""
        major, _, minor = self.compute_capability.partition(".")
        if not major.isdigit() or not (minor or "0").isdigit():
            raise DevclusterError(
                f"compute capability {self.compute_capability!r}: expected MAJOR.MINOR such as 8.0 or 9.0",
                component="realnode",
            )
        return {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": self.product,
            "nvidia.com/gpu.count": str(self.count),
            "nvidia.com/gpu.memory": str(self.memory_mib),
            "nvidia.com/gpu.compute.major": major,
            "nvidia.com/gpu.compute.minor": minor or "0",
            "pitcrew.dev/compute-capability": self.compute_capability,
        }


# -- pure: configuration files ------------------------------------------------------------------


def containerd_config(layout: Layout, network: Network, sandbox_image: str) -> str:
    """containerd 1.6 config (version 2) with its own root, state, socket and runc root."""
    return f"""version = 2
root = "{layout.containerd_root}"
state = "{layout.containerd_state}"
oom_score = 0

[grpc]
  address = "{layout.socket}"

[ttrpc]
  address = ""

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # Without it every sandbox fails with "can't get final child's PID from pipe" on this machine.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{layout.runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{layout.cni_conf_dir}"
    max_conf_num = 1
"""


def cni_conflist(layout: Layout, network: Network) -> dict[str, Any]:
    """A bridge network of its own; no masquerade or port maps, so no iptables rules to clean up."""
    return {
        "cniVersion": "1.0.0",
        "name": network.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": network.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": network.subnet, "gateway": network.gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.ipam_dir),
                },
            }
        ],
    }


def kubelet_config(
    layout: Layout, network: Network, *, port: int, healthz_port: int, ca_file: Path
) -> dict[str, Any]:
    """KubeletConfiguration for this machine: cgroup v1 and cgroupfs, no QoS cgroups, no swap check,
    authenticated (client certificates of our CA) and authorized (SubjectAccessReview) API only."""
    endpoint = f"unix://{layout.socket}"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": network.gateway,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        # emptyDir sizeLimit and ephemeral-storage limits are enforced (by eviction); the volume
        # usage is measured every volumeStatsAggPeriod (1 min by default: tests would wait).
        "localStorageCapacityIsolation": True,
        "volumeStatsAggPeriod": "10s",
        "containerRuntimeEndpoint": endpoint,
        "imageServiceEndpoint": endpoint,
        "podLogsDir": str(layout.pod_logs),
        "makeIPTablesUtilChains": False,
        "serializeImagePulls": False,
        "registerNode": True,
        # A development machine's disk is often fuller than a node's: never evict or GC images
        # (they were imported here and cannot be pulled back).
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "nodeStatusUpdateFrequency": "10s",
        "nodeStatusReportFrequency": "30s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "shutdownGracePeriod": "0s",
    }


def kubelet_argv(
    kubelet: Path,
    layout: Layout,
    network: Network,
    *,
    node_name: str,
    kubeconfig: Path,
    labels: dict[str, str],
) -> list[str]:
    return [
        str(kubelet),
        f"--config={layout.kubelet_config}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={layout.kubelet_dir}",
        f"--hostname-override={node_name}",
        f"--node-ip={network.gateway}",
        "--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "--v=1",
    ]


def containerd_argv(layout: Layout) -> list[str]:
    return ["containerd", f"--config={layout.containerd_config}", "--log-level=warn"]


def gpu_status_patch(gpu: GpuModel) -> dict[str, Any]:
    """The node status patch that advertises the (absent) GPUs as an extended resource."""
    return {"status": {"capacity": {"nvidia.com/gpu": str(gpu.count)}}}


def check_host(layout: Layout) -> None:
    """Raises with what to install or change when this host cannot run the real node."""
    longest = layout.kubelet_dir / "device-plugins" / "kubelet.sock"  # the kubelet's deepest socket
    if len(str(longest)) > UNIX_SOCKET_MAX:
        raise DevclusterError(
            f"state dir path too long for the node's unix sockets ({longest} has more than "
            f"{UNIX_SOCKET_MAX} characters); use a shorter --state-dir",
            component="realnode",
        )
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not (CNI_BIN_DIR / "bridge").is_file():
        missing.append("containernetworking-plugins")
    if missing:
        raise DevclusterError(
            f"the real node needs the Debian packages {', '.join(sorted(set(missing)))}: "
            "run hack/install-node-deps.sh (as root)",
            component="realnode",
        )
    if os.geteuid() != 0:
        raise DevclusterError("the real node (kubelet + containerd) must run as root", component="realnode")


# -- I/O: network ---------------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise DevclusterError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}", component="realnode")
    return proc


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


@contextlib.contextmanager
def _bridge_lock() -> Iterator[None]:
    BRIDGE_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with BRIDGE_LOCK.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _routed_prefixes() -> set[str]:
    out = _ip("-4", "route", "show", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line}


def create_network() -> Network:
    """Creates the first free bridge pcbrN (10.213.N.1/24), under a host-wide lock."""
    with _bridge_lock():
        routed = _routed_prefixes()
        for i in range(MAX_BRIDGES):
            net = Network(i)
            if _link_exists(net.bridge) or net.subnet in routed:
                continue
            _ip("link", "add", net.bridge, "type", "bridge")
            try:
                _ip("addr", "add", f"{net.gateway}/24", "dev", net.bridge)
                _ip("link", "set", net.bridge, "up")
            except DevclusterError:
                _ip("link", "del", net.bridge, check=False)
                raise
            return net
    raise DevclusterError(
        f"no free bridge: {BRIDGE_PREFIX}0..{MAX_BRIDGES - 1} all exist (stale ones: `ip link del pcbrN`)",
        component="realnode",
    )


def delete_network(network: Network) -> None:
    if not _link_exists(network.bridge):
        return
    # Veths whose pod netns could not be removed still hang on the bridge.
    for line in _ip("-o", "link", "show", "master", network.bridge, check=False).stdout.splitlines():
        m = re.match(r"\d+:\s+([^:@\s]+)", line)
        if m:
            _ip("link", "del", m.group(1), check=False)
    _ip("link", "del", network.bridge, check=False)
    for cached in CNI_CACHE_DIR.glob(f"{network.name}-*"):
        cached.unlink(missing_ok=True)


# -- I/O: files, containerd, images -------------------------------------------------------------------


def prepare(layout: Layout, network: Network, *, sandbox_image: str, kubelet_cfg: dict[str, Any]) -> None:
    for d in (layout.base, layout.containerd_root, layout.kubelet_dir, layout.pod_logs, layout.cni_conf_dir):
        d.mkdir(parents=True, exist_ok=True)
    layout.containerd_config.write_text(containerd_config(layout, network, sandbox_image))
    (layout.cni_conf_dir / "10-pitcrew.conflist").write_text(
        json.dumps(cni_conflist(layout, network), indent=2)
    )
    layout.kubelet_config.write_text(yaml.safe_dump(kubelet_cfg, sort_keys=False))


def ctr(
    layout: Layout, *args: str, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ctr", "--address", str(layout.socket), "--namespace", K8S_NAMESPACE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise DevclusterError(f"`ctr {' '.join(args)}` failed: {proc.stderr.strip()}", component="containerd")
    return proc


def containerd_ready(layout: Layout) -> bool:
    return layout.socket.exists() and ctr(layout, "version", timeout=5, check=False).returncode == 0


def image_names(layout: Layout) -> set[str]:
    return set(ctr(layout, "images", "list", "--quiet", timeout=30).stdout.split())


def import_archive(layout: Layout, archive: Path) -> None:
    ctr(layout, "images", "import", str(archive))


def load_images(layout: Layout, archives: list[Path]) -> list[str]:
    """Imports OCI archives into the node's containerd, skipping images it already has (its root,
    with the images, outlives `down`); returns the names imported."""
    from .images import archive_image_names

    have = image_names(layout)
    done = []
    for archive in archives:
        names = archive_image_names(archive)
        if names and all(n in have for n in names):
            continue
        import_archive(layout, archive)
        done += names
    return done


# -- I/O: stopping ------------------------------------------------------------------------------------


def _sandbox_netns(layout: Layout, container_id: str) -> list[Path]:
    info = ctr(layout, "containers", "info", container_id, timeout=30, check=False)
    if info.returncode != 0:
        return []
    try:
        spec = json.loads(info.stdout).get("Spec") or {}
    except ValueError:
        return []
    paths = []
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        path = ns.get("path", "")
        if ns.get("type") == "network" and path.startswith(str(NETNS_DIR) + "/"):
            paths.append(Path(path))
    return paths


@dataclass
class Leftovers:
    """What the killed containers leave on the host: sandbox network namespaces, CNI cache entries."""

    netns: list[Path] = field(default_factory=list)
    container_ids: list[str] = field(default_factory=list)


def stop_containers(layout: Layout) -> Leftovers:
    """Kills every container and sandbox (containerd still running, the kubelet already stopped),
    deletes them, and returns what their sandboxes leave behind."""
    if not containerd_ready(layout):
        return Leftovers()
    ids = ctr(layout, "containers", "list", "--quiet", timeout=60, check=False).stdout.split()
    netns = [p for cid in ids for p in _sandbox_netns(layout, cid)]
    for cid in ids:
        ctr(layout, "tasks", "kill", "--all", "--signal", "SIGKILL", cid, timeout=30, check=False)
    for cid in ids:
        ctr(layout, "tasks", "delete", "--force", cid, timeout=60, check=False)
        ctr(layout, "containers", "delete", cid, timeout=60, check=False)
    return Leftovers(netns, ids)


def _mounts_under(base: Path) -> list[str]:
    prefix = str(base) + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix) or point == str(base):
                points.append(point)
    # Deepest first, so nested mounts come off before their parents.
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def unmount_all(base: Path) -> list[str]:
    left = []
    for point in _mounts_under(base):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            left.append(point)
    return left


def _shim_pids(layout: Layout) -> list[int]:
    pids = []
    needle = str(layout.socket).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline and needle in cmdline:
            pids.append(int(entry.name))
    return pids


def kill_shims(layout: Layout) -> int:
    pids = _shim_pids(layout)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def cleanup(layout: Layout, network: Network | None, left: Leftovers) -> None:
    """After containerd and the kubelet are gone: shims, pod network namespaces, mounts, the bridge,
    CNI cache entries and the ephemeral folders. Safe to repeat."""
    kill_shims(layout)
    for ns in left.netns:
        subprocess.run(["umount", str(ns)], capture_output=True, check=False)
        ns.unlink(missing_ok=True)
    for cid in left.container_ids:
        for cached in CNI_CACHE_DIR.glob(f"*-{cid}-*"):
            cached.unlink(missing_ok=True)
    unmount_all(layout.base)
    if network is not None:
        delete_network(network)
    deadline = time.monotonic() + 5
    for path in layout.ephemeral():
        while True:
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
