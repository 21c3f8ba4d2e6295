"""The real node: kubelet v1.34 + containerd + runc + bridge CNI, started by `up --node real`.

Everything here is done by the real components: the kernel OOM-kills, the kubelet refuses
runAsNonRoot, reads the termination log, injects Secrets and enforces activeDeadlineSeconds, and
pods reach MinIO over the cluster's bridge. Skipped only when this host cannot run a node (not
root, or the Debian packages of hack/install-node-deps.sh are missing).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.harness import BUILD_TOOLS, wait_for
from e2e.realnode_support import GPU_PRODUCT, host_problem
from pitcrew_devcluster import ClusterInfo, UpOptions, down, up
from pitcrew_devcluster.images import BUSYBOX_IMAGE
from pitcrew_devcluster.kubeapi import KubeClient
from pitcrew_devcluster.realnode import Layout, Network

Obj = dict[str, Any]


pytestmark = [
    pytest.mark.skipif(host_problem() is not None, reason=str(host_problem())),
    pytest.mark.cluster,
    pytest.mark.slow,
]


@pytest.fixture
def ns(cluster: ClusterInfo) -> Iterator[str]:
    name = f"rn-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    # The ServiceAccount admission plugin refuses pods until the namespace's default SA exists.
    wait_for(
        "default ServiceAccount",
        lambda: cluster.client().get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pod_spec(script: str, **extra: Any) -> Obj:
    container: Obj = {
        "name": "main",
        "image": BUSYBOX_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", script],
        **extra.pop("container", {}),
    }
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "containers": [container],
        **extra,
    }


def run_job(cluster: ClusterInfo, ns: str, name: str, spec: Obj, timeout: float = 120) -> tuple[str, Obj]:
    """Creates a Job (no retries) and returns its final condition type and its pod."""
    client = cluster.client()
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": spec}},
    }
    client.create(f"/apis/batch/v1/namespaces/{ns}/jobs", body)

    def finished() -> str | None:
        job = client.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
        for c in job.get("status", {}).get("conditions") or []:
            if c["type"] in ("Complete", "Failed") and c["status"] == "True":
                return str(c["type"])
        return None

    condition = wait_for(f"job {name}", finished, timeout=timeout)
    pods = client.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=f"job-name={name}")["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return condition, pods[0]


def terminated(pod: Obj) -> Obj:
    (status,) = pod["status"]["containerStatuses"]
    state: Obj = status["state"]["terminated"]
    return state


def test_node_is_a_kubelet_on_containerd_with_gpu_labels(cluster: ClusterInfo) -> None:
    node = cluster.client().get(f"/api/v1/nodes/{cluster.node_name}")
    info = node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://1.")
    assert info["kubeletVersion"] == "v1.34.4"
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == GPU_PRODUCT
    assert (labels["nvidia.com/gpu.compute.major"], labels["nvidia.com/gpu.compute.minor"]) == ("8", "0")
    (address,) = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
    assert address == cluster.pod_host and address.startswith("10.213.")


def test_job_runs_as_uid_10001_and_returns_its_termination_message(cluster: ClusterInfo, ns: str) -> None:
    spec = pod_spec(
        'echo "uid=$(id -u) gid=$(id -g)" > /dev/termination-log',
        securityContext={"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
    )
    condition, pod = run_job(cluster, ns, "uid", spec)
    assert condition == "Complete"
    t = terminated(pod)
    assert (t["exitCode"], t["message"].strip()) == (0, "uid=10001 gid=10001")
    assert pod["status"]["podIP"].startswith(cluster.pod_host.rsplit(".", 1)[0] + ".")
    assert pod["status"]["containerStatuses"][0]["imageID"].startswith("sha256:")


def test_memory_limit_is_a_real_oom_kill(cluster: ClusterInfo, ns: str) -> None:
    # dd allocates a 400 MiB buffer and fills it from /dev/zero: the kernel kills it at 64 MiB.
    spec = pod_spec(
        "dd if=/dev/zero of=/dev/null bs=400M count=1",
        container={"resources": {"limits": {"memory": "64Mi", "cpu": "1"}}},
    )
    condition, pod = run_job(cluster, ns, "oom", spec)
    assert condition == "Failed"
    t = terminated(pod)
    assert (t["reason"], t["exitCode"]) == ("OOMKilled", 137)


def test_run_as_non_root_refuses_a_root_image(cluster: ClusterInfo, ns: str) -> None:
    client = cluster.client()
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "rootimg"},
        "spec": pod_spec("true", securityContext={"runAsNonRoot": True}),
    }
    client.create(f"/api/v1/namespaces/{ns}/pods", body)

    def refused() -> Obj | None:
        pod = client.get(f"/api/v1/namespaces/{ns}/pods/rootimg")
        for s in pod.get("status", {}).get("containerStatuses") or []:
            waiting = s.get("state", {}).get("waiting") or {}
            if waiting.get("reason") == "CreateContainerConfigError":
                return waiting
        return None

    waiting = wait_for("runAsNonRoot refusal", refused, timeout=90)
    assert "runAsNonRoot and image will run as root" in waiting["message"]


def test_secret_is_injected_as_env_and_nothing_else_leaks(cluster: ClusterInfo, ns: str) -> None:
    client = cluster.client()
    client.create(
        f"/api/v1/namespaces/{ns}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "stringData": {"AWS_ACCESS_KEY_ID": "from-the-secret"},
        },
    )
    with_ref = pod_spec(
        'echo "$AWS_ACCESS_KEY_ID" > /dev/termination-log',
        container={"envFrom": [{"secretRef": {"name": "creds"}}]},
    )
    condition, pod = run_job(cluster, ns, "with-secret", with_ref)
    assert condition == "Complete" and terminated(pod)["message"].strip() == "from-the-secret"

    # The kubelet runs with this process's environment (S3 credentials, devcluster variables); a
    # pod without a Secret reference sees none of it (only its spec, the image's ENV, service vars).
    condition, pod = run_job(
        cluster, ns, "no-secret", pod_spec("env | cut -d= -f1 | sort > /dev/termination-log")
    )
    assert condition == "Complete"
    names = set(terminated(pod)["message"].split())
    assert "PATH" in names and "HOSTNAME" in names
    leaked = {n for n in names if n.startswith(("AWS_", "PITCREW_", "KUBECONFIG"))}
    assert not leaked, leaked


def test_active_deadline_is_enforced_by_the_kubelet(cluster: ClusterInfo, ns: str) -> None:
    client = cluster.client()
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "deadline"},
        "spec": pod_spec("sleep 300", activeDeadlineSeconds=3),
    }
    client.create(f"/api/v1/namespaces/{ns}/pods", body)

    def failed() -> Obj | None:
        status: Obj = client.get(f"/api/v1/namespaces/{ns}/pods/deadline")["status"]
        return status if status.get("phase") == "Failed" else None

    status = wait_for("pod past its deadline", failed, timeout=90)
    assert status["reason"] == "DeadlineExceeded"


def test_empty_dir_size_limit_evicts_on_disk_and_fills_in_memory(cluster: ClusterInfo, ns: str) -> None:
    # On disk: the kubelet measures the volume and evicts the pod once it holds more than sizeLimit.
    def scratch(medium: str) -> Obj:
        return {"name": "scratch", "emptyDir": {"sizeLimit": "4Mi", **({"medium": medium} if medium else {})}}

    mount = {"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}
    client = cluster.client()
    disk = pod_spec("dd if=/dev/zero of=/scratch/f bs=1M count=16 && sleep 300", container=mount,
                    volumes=[scratch("")])  # fmt: skip
    client.create(f"/api/v1/namespaces/{ns}/pods", {"apiVersion": "v1", "kind": "Pod",
                                                    "metadata": {"name": "disk"}, "spec": disk})  # fmt: skip
    # In memory: a tmpfs of sizeLimit bytes; the kernel refuses the write past it (ENOSPC).
    condition, pod = run_job(
        cluster, ns, "memory",
        pod_spec("dd if=/dev/zero of=/scratch/f bs=1M count=16 2>/dev/termination-log; df -k /scratch | "
                 "tail -1 | awk '{print $2}' >> /dev/termination-log", container=mount,
                 volumes=[scratch("Memory")]),
    )  # fmt: skip
    assert condition == "Complete"
    message = terminated(pod)["message"]
    assert "No space left on device" in message and message.split()[-1] == "4096", message

    def evicted() -> Obj | None:
        status: Obj = client.get(f"/api/v1/namespaces/{ns}/pods/disk")["status"]
        return status if status.get("phase") == "Failed" else None

    status = wait_for("the kubelet to evict the pod", evicted, timeout=120)
    assert status["reason"] == "Evicted", status
    assert status["message"].startswith('Usage of EmptyDir volume "scratch" exceeds the limit "4Mi"'), status


def test_pod_reaches_minio_through_the_bridge(cluster: ClusterInfo, ns: str) -> None:
    endpoint = cluster.pod_s3_endpoint()
    assert endpoint.startswith(f"http://{cluster.pod_host}:")
    spec = pod_spec(
        f"wget -q -O /dev/null {endpoint}/minio/health/live && echo reached > /dev/termination-log"
    )
    condition, pod = run_job(cluster, ns, "s3", spec)
    assert condition == "Complete" and terminated(pod)["message"].strip() == "reached"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def test_second_cluster_runs_beside_and_down_leaves_nothing(cluster: ClusterInfo) -> None:
    # A short path: unix sockets (the kubelet's under its root dir) have a 107-character limit.
    sd = Path(tempfile.mkdtemp(prefix="pitcrew-rn-"))
    info = up(
        UpOptions(state_dir=sd, node="real", build=False, build_tools=BUILD_TOOLS, s3=False, timeout=120)
    )
    try:
        assert info.pod_host != cluster.pod_host  # its own bridge and subnet
        client = KubeClient(info.server, info.token, info.ca_file.read_bytes())
        wait_for(
            "default ServiceAccount",
            lambda: client.get_or_none("/api/v1/namespaces/default/serviceaccounts/default"),
        )
        client.create(
            "/api/v1/namespaces/default/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "sleeper"},
                "spec": pod_spec("sleep 600"),
            },
        )
        wait_for(
            "sleeper running",
            lambda: client.get("/api/v1/namespaces/default/pods/sleeper")["status"].get("phase") == "Running",
            timeout=90,
        )
        bridge = Network(int(info.pod_host.split(".")[2])).bridge
        assert Path("/sys/class/net", bridge).exists()
    finally:
        down(sd)
    layout = Layout.of(sd)
    assert _processes_mentioning(str(sd)) == []
    mounts = subprocess.run(["cat", "/proc/self/mountinfo"], capture_output=True, text=True).stdout
    assert str(sd) not in mounts
    assert not Path("/sys/class/net", bridge).exists()
    assert not layout.socket.exists() and not layout.kubelet_dir.exists()
    # The first cluster is untouched.
    assert cluster.client().get(f"/api/v1/nodes/{cluster.node_name}")["metadata"]["name"] == cluster.node_name
    shutil.rmtree(sd)
