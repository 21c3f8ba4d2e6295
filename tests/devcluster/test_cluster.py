"""Integration tests of the devcluster: real control plane, Jobs run by the real node, GC, S3."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from controller.harness import BUILD_TOOLS, container_id, running_containers
from pitcrew_devcluster import ClusterInfo, DevclusterError, UpOptions, up
from pitcrew_devcluster import kwok as kwok_mod
from pitcrew_devcluster.images import BUSYBOX_IMAGE

pytestmark = pytest.mark.cluster

T = TypeVar("T")
Obj = dict[str, Any]


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


@pytest.fixture
def ns(cluster: ClusterInfo) -> Any:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    wait_for(
        "the default ServiceAccount",
        lambda: cluster.client().get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def job(name: str, script: str, *, restart: str = "Never", backoff: int = 0, **container: Any) -> Obj:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff,
            "template": {
                "spec": {
                    "restartPolicy": restart,
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "main",
                            "image": BUSYBOX_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/bin/sh", "-c", script],
                            **container,
                        }
                    ],
                }
            },
        },
    }


def apply(cluster: ClusterInfo, ns: str, *objs: Obj) -> None:
    cluster.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}),
    )


def job_condition(cluster: ClusterInfo, ns: str, name: str) -> str | None:
    j = cluster.client().get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
    for c in j.get("status", {}).get("conditions", []):
        if c["type"] in ("Complete", "Failed") and c["status"] == "True":
            return str(c["type"])
    return None


def job_pods(cluster: ClusterInfo, ns: str, name: str) -> list[Obj]:
    items: list[Obj] = cluster.client().get(
        f"/api/v1/namespaces/{ns}/pods", labelSelector=f"job-name={name}"
    )["items"]
    return items


def terminated(pod: Obj) -> Obj:
    state: Obj = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    return state


def test_kubectl_and_node(cluster: ClusterInfo) -> None:
    names = cluster.kubectl("get", "ns", "-o", "name").stdout.split()
    assert "namespace/kube-system" in names
    node = cluster.kubectl_json("get", "node", cluster.node_name)
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert labels["pitcrew.dev/compute-capability"] == "8.0"
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True"
    lease = cluster.kubectl_json("get", "lease", "-n", "kube-node-lease", cluster.node_name)
    assert lease["spec"]["holderIdentity"] == cluster.node_name


def test_jobs_report_exit_code_and_termination_message(cluster: ClusterInfo, ns: str) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"greeting": "hello from a configmap", "spec.yaml": "model: tiny\n"},
    }
    ok = job(
        "ok",
        'printf "%s | %s | %s" "$GREETING" "$(cat /etc/pitcrew/spec.yaml)" "$POD" > /dev/termination-log',
        env=[
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        volumeMounts=[{"name": "spec", "mountPath": "/etc/pitcrew"}],
    )
    ok["spec"]["template"]["spec"]["volumes"] = [{"name": "spec", "configMap": {"name": "settings"}}]
    bad = job("bad", "printf 'failed on purpose' > /dev/termination-log; exit 3")
    apply(cluster, ns, cm, ok, bad)

    assert wait_for("job ok to finish", lambda: job_condition(cluster, ns, "ok")) == "Complete"
    assert wait_for("job bad to finish", lambda: job_condition(cluster, ns, "bad")) == "Failed"

    (pod,) = job_pods(cluster, ns, "ok")
    assert pod["status"]["phase"] == "Succeeded"
    t = terminated(pod)
    assert (t["exitCode"], t["reason"]) == (0, "Completed")
    assert t["message"] == f"hello from a configmap | model: tiny | {ns}"

    (pod,) = job_pods(cluster, ns, "bad")
    assert pod["status"]["phase"] == "Failed"
    t = terminated(pod)
    assert (t["exitCode"], t["reason"], t["message"]) == (3, "Error", "failed on purpose")
    conds = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conds["PodScheduled"] == "True" and conds["Initialized"] == "True" and conds["Ready"] == "False"


def test_fallback_to_logs_and_restart_on_failure(cluster: ClusterInfo, ns: str) -> None:
    logs = job(
        "logs",
        "echo 'line one'; echo 'the real error'; exit 7",
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    # Fails on the first run, succeeds on the restart (the emptyDir survives container restarts).
    flaky_script = "if [ ! -e /scratch/ran-once ]; then touch /scratch/ran-once; exit 1; fi"
    flaky = job(
        "flaky",
        flaky_script,
        restart="OnFailure",
        backoff=3,
        volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
    )
    flaky["spec"]["template"]["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    apply(cluster, ns, logs, flaky)

    assert wait_for("job logs", lambda: job_condition(cluster, ns, "logs")) == "Failed"
    t = terminated(job_pods(cluster, ns, "logs")[0])
    assert t["exitCode"] == 7
    assert "the real error" in t["message"]
    assert cluster.kubectl("logs", "job/logs", "-n", ns).stdout == "line one\nthe real error\n"

    assert wait_for("job flaky", lambda: job_condition(cluster, ns, "flaky")) == "Complete"
    (pod,) = job_pods(cluster, ns, "flaky")
    # One failed run, then the restart found the marker (the kubelet may already have removed the
    # first container, and with it lastState).
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 1


def test_job_deletion_garbage_collects_and_kills_pods(cluster: ClusterInfo, ns: str) -> None:
    apply(cluster, ns, job("sleeper", "sleep 600"))

    def running_pod() -> Obj | None:
        pods = job_pods(cluster, ns, "sleeper")
        return pods[0] if pods and pods[0].get("status", {}).get("phase") == "Running" else None

    pod = wait_for("the sleeper pod to run", running_pod)
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
    container = container_id(pod)
    assert container in running_containers(cluster)

    cluster.kubectl("delete", "job", "sleeper", "-n", ns, "--cascade=background", "--wait=false")
    wait_for(
        "the job's pods to be garbage-collected", lambda: not job_pods(cluster, ns, "sleeper"), timeout=60
    )
    wait_for(
        "the pod's container to be gone", lambda: container not in running_containers(cluster), timeout=30
    )


def test_s3_bucket(cluster: ClusterInfo) -> None:
    assert cluster.s3 is not None
    s3 = cluster.s3_client()
    s3.put_object(Bucket=cluster.s3.bucket, Key="probe/hello.txt", Body=b"hi")
    assert s3.get_object(Bucket=cluster.s3.bucket, Key="probe/hello.txt")["Body"].read() == b"hi"
    env = cluster.env()
    assert env["AWS_ENDPOINT_URL_S3"] == env["PITCREW_S3_ENDPOINT"] == cluster.s3.endpoint
    assert env["PITCREW_S3_BUCKET"] == "pitcrew"


def test_second_up_is_refused(cluster: ClusterInfo) -> None:
    state_file = cluster.state_dir / "state.json"
    before = state_file.read_bytes()
    with pytest.raises(DevclusterError, match="already running") as err:
        up(UpOptions(state_dir=cluster.state_dir, build=False, build_tools=BUILD_TOOLS))
    assert "down" in str(err.value) and str(cluster.state_dir) in str(err.value)
    # Refused before touching anything (a start is recorded in the state file at once), and the
    # running cluster still answers.
    assert state_file.read_bytes() == before
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_port_in_use_is_reported(short_state_dir: Path, cluster: ClusterInfo) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(
            DevclusterError, match=rf"kube-apiserver: port 127.0.0.1:{port} is already in use"
        ):
            up(
                UpOptions(
                    state_dir=short_state_dir, apiserver_port=port, build=False, build_tools=BUILD_TOOLS
                )
            )
    assert not (short_state_dir / "state.json").exists()


@pytest.mark.skipif(os.environ.get("PITCREW_SKIP_KWOK") == "1", reason="PITCREW_SKIP_KWOK=1")
def test_kwok_fake_nodes_complete_job_pods(
    cluster: ClusterInfo, ns: str, fake_gpu_nodes: Callable[[int], list[str]]
) -> None:
    names = fake_gpu_nodes(2)
    assert len(names) == 2
    fake = job("fake", "raise SystemExit(1)")  # never runs: kwok only pretends
    spec = fake["spec"]["template"]["spec"]
    spec["nodeSelector"] = {kwok_mod.LABEL: kwok_mod.LABEL_VALUE}
    spec["tolerations"] = [kwok_mod.TOLERATION]
    apply(cluster, ns, fake)
    assert wait_for("job fake", lambda: job_condition(cluster, ns, "fake")) == "Complete"
    (pod,) = job_pods(cluster, ns, "fake")
    assert pod["spec"]["nodeName"] in names
