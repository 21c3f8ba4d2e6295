"""Running the real operator against the devcluster, under the chart's least-privilege RBAC.

The operator is a subprocess (`python -m pitcrew`) logged in with a ServiceAccount token bound to
the ClusterRole rendered from helm/pitcrew: a verb the code needs but the chart lacks fails a test.
Its builder Jobs run on the real node, by default with the FAKE builder image (fake_image.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from pitcrew_devcluster import ClusterInfo
from pitcrew_devcluster.realnode import Layout, ctr

from .fake_image import FAKE

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_NS = "pitcrew-system"
EB_API = "/apis/pitcrew.dev/v1alpha1"


BUILD_TOOLS = ROOT / "hack" / "build-tools.sh"

# What the tests' tenants may set (pitcrew.tenancy): the fake builder's modes and an image that cannot
# be pulled (a failure test). Everything else stays at the strict default; a test that checks the
# policy itself passes its own PITCREW_TENANT_POLICY.
# DEAD_ENDPOINT: an allowed endpoint where nothing listens (storage-unreachable tests).
DEAD_ENDPOINT = "http://127.0.0.1:1"
# maxResources: the OOM test's memory limit (the fake builder's `oom` mode needs one).
TEST_POLICY = {
    "*": {
        "builderImages": [f"{FAKE}:*", "registry.invalid/*"],
        "endpoints": [DEAD_ENDPOINT],
        "maxResources": {"memory": "1Gi"},
    }
}


sys.path.insert(0, str(ROOT / "hack"))
from render_rbac import render  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def install(cluster: ClusterInfo) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))

    def established() -> bool:
        crd = cluster.client().get_or_none(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/enginebuilds.pitcrew.dev"
        )
        conds = (crd or {}).get("status", {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    wait_for("the CRD to be established", established, timeout=30)
    cluster.kubectl("create", "namespace", OPERATOR_NS, check=False)
    cluster.kubectl("apply", "-f", "-", input=render("pitcrew", OPERATOR_NS))


def seed_checkpoint(cluster: ClusterInfo) -> None:
    """The (fake) checkpoint the fake builder "builds": the controller lists it for the cache key."""
    assert cluster.s3 is not None
    s3 = cluster.s3_client()
    for key, data in (
        ("ckpt/tiny/config.json", b'{"hidden_size": 64}'),
        ("ckpt/tiny/model.safetensors", b"0" * 512),
    ):
        s3.put_object(Bucket=cluster.s3.bucket, Key=key, Body=data)


def operator_kubeconfig(cluster: ClusterInfo, path: Path) -> Path:
    token = cluster.kubectl("create", "token", "pitcrew", "-n", OPERATOR_NS, "--duration=6h").stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "dev",
                "cluster": {"server": cluster.server, "certificate-authority": str(cluster.ca_file)},
            }
        ],
        "users": [{"name": "pitcrew", "user": {"token": token}}],
        "contexts": [{"name": "pitcrew", "context": {"cluster": "dev", "user": "pitcrew"}}],
        "current-context": "pitcrew",
    }
    path.write_text(yaml.safe_dump(config))
    return path


class Operator:
    def __init__(
        self, cluster: ClusterInfo, workdir: Path, argv: list[str] | None = None, **env: str
    ) -> None:
        self.argv = argv or [sys.executable, "-m", "pitcrew"]
        self.cluster = cluster
        self.workdir = workdir
        self.kubeconfig = operator_kubeconfig(cluster, workdir / "operator.kubeconfig")
        self.metrics_port = free_port()
        assert cluster.s3 is not None
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG", "PITCREW_"))},
            "KUBECONFIG": str(self.kubeconfig),
            # The address the builder pods reach MinIO at (the node's bridge); this process too.
            "PITCREW_S3_ENDPOINT": cluster.pod_s3_endpoint(),
            "PITCREW_BUILDER_IMAGE": f"{FAKE}:ok",
            "PITCREW_CHECKPOINT_BUILDER_IMAGE": f"{FAKE}:ok",
            "PITCREW_POLL_SECONDS": "1",
            "PITCREW_RETRY_SECONDS": "2",
            "PITCREW_UNSCHEDULABLE_GRACE_SECONDS": "5",
            "PITCREW_METRICS_PORT": str(self.metrics_port),
            "PITCREW_HEALTH_PORT": "0",
            "PITCREW_LOG_FORMAT": "plain",
            "PITCREW_TENANT_POLICY": json.dumps(TEST_POLICY),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "operator.log"

    def start(self) -> Operator:
        offset = self.log.stat().st_size if self.log.exists() else 0  # a restart appends to the log
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.workdir, start_new_session=True,
            )  # fmt: skip
        # Importing kopf, aiohttp, boto3 and pydantic took over 30 s with the 2 cores loaded.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited: {self.tail()}")
            with open(self.log, "rb") as f:
                f.seek(offset)
                started = b"pitcrew operator starting" in f.read()
            if started:
                time.sleep(1.0)  # let the watches start
                return self
            time.sleep(0.2)
        raise RuntimeError(f"operator did not start: {self.tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def rss_mib(self, field: str = "VmRSS") -> float:
        """Resident memory now (VmRSS) or at its peak since start (VmHWM)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def new_namespace(cluster: ClusterInfo, prefix: str = "t") -> str:
    """A namespace with the Secret `s3` (MinIO's key) and its default ServiceAccount (until the
    ServiceAccount controller made it, admission refuses pods and the Job controller backs off)."""
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    wait_for(
        f"the default ServiceAccount of {ns}",
        lambda: cluster.client().get_or_none(f"/api/v1/namespaces/{ns}/serviceaccounts/default"),
    )
    assert cluster.s3 is not None
    cluster.kubectl(
        "-n", ns, "create", "secret", "generic", "s3",
        f"--from-literal=AWS_ACCESS_KEY_ID={cluster.s3.access_key}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={cluster.s3.secret_key}",
    )  # fmt: skip
    return ns


def engine_build(cluster: ClusterInfo, name: str, ns: str, mode: str = "ok", **spec: Any) -> dict[str, Any]:
    assert cluster.s3 is not None
    bucket = cluster.s3.bucket
    body: dict[str, Any] = {
        "apiVersion": "pitcrew.dev/v1alpha1",
        "kind": "EngineBuild",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "source": {
                "uri": f"s3://{bucket}/ckpt/tiny/",
                "format": "hf",
                "credentialsSecretRef": {"name": "s3"},
            },
            "target": {"gpuProduct": "NVIDIA-A100-SXM4-80GB"},
            "output": {"uri": f"s3://{bucket}/engines/{ns}", "credentialsSecretRef": {"name": "s3"}},
            "builderImage": f"{FAKE}:{mode}",
        },
    }
    for path, value in spec.items():
        node = body["spec"]
        parts = path.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return body


def apply(cluster: ClusterInfo, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(body))


def get_eb(cluster: ClusterInfo, ns: str, name: str) -> dict[str, Any] | None:
    return cluster.client().get_or_none(f"{EB_API}/namespaces/{ns}/enginebuilds/{name}")


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float = 60,
    interval: float = 0.25,
    op: Operator | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out waiting for {what}; last={last!r}\n--- operator log ---\n{op.tail() if op else ''}"
    )


def wait_phase(
    cluster: ClusterInfo,
    ns: str,
    name: str,
    phases: set[str],
    timeout: float = 60,
    op: Operator | None = None,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        eb = get_eb(cluster, ns, name)
        return eb if eb and (eb.get("status") or {}).get("phase") in phases else None

    try:
        result: dict[str, Any] = wait_for(f"{ns}/{name} in {phases}", check, timeout, op=op)
    except AssertionError as e:
        eb = get_eb(cluster, ns, name)
        raise AssertionError(f"{e}\n--- status ---\n{(eb or {}).get('status')}") from None
    return result


def container_id(pod: dict[str, Any]) -> str:
    """The id containerd knows the pod's (first) container by."""
    cid: str = pod["status"]["containerStatuses"][0]["containerID"]
    return cid.removeprefix("containerd://")


def running_containers(cluster: ClusterInfo) -> set[str]:
    """Ids of the containers the real node's containerd runs now (its tasks)."""
    out = ctr(Layout.of(cluster.state_dir), "tasks", "list", "--quiet", timeout=60).stdout
    return set(out.split())


def owned(cluster: ClusterInfo, kind: str, ns: str, uid: str) -> list[dict[str, Any]]:
    path = f"/apis/batch/v1/namespaces/{ns}/jobs" if kind == "jobs" else f"/api/v1/namespaces/{ns}/{kind}"
    items: list[dict[str, Any]] = cluster.client().get(
        path, labelSelector=f"pitcrew.dev/enginebuild-uid={uid}"
    )["items"]
    return items


class StatusRecorder:
    """Every status the API server stores for one EngineBuild, from a watch opened before it exists.

    Polling can miss a phase that lasts less than a poll; a watch from an earlier resourceVersion
    sees every write. Use as a context manager around the test's actions.
    """

    def __init__(self, cluster: ClusterInfo, ns: str, name: str) -> None:
        self.client = cluster.client()
        self.path = f"{EB_API}/namespaces/{ns}/enginebuilds"
        self.selector = f"metadata.name={name}"
        self.rv: str = self.client.get(self.path)["metadata"]["resourceVersion"]
        self.statuses: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch {ns}/{name}", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for event in self.client.watch(
                    self.path, self.rv, timeout_seconds=2, fieldSelector=self.selector
                ):
                    obj = event.get("object") or {}
                    self.rv = obj.get("metadata", {}).get("resourceVersion", self.rv)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self.statuses.append(obj.get("status") or {})
        except BaseException as e:  # reported by phases()/__exit__, not lost in the thread
            self.error = e

    def phases(self) -> list[str]:
        """The phases stored, in order, without repeats."""
        if self.error is not None:
            raise AssertionError(f"the status watch failed: {self.error!r}")
        out: list[str] = []
        for st in list(self.statuses):
            phase = st.get("phase")
            if phase and (not out or out[-1] != phase):
                out.append(phase)
        return out

    def __enter__(self) -> StatusRecorder:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
