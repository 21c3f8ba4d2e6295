"""Registers the Node object and keeps it Ready: a Lease renewed often, status heartbeats less often."""

from __future__ import annotations

import logging
import platform
import threading
from datetime import UTC, datetime
from typing import Any

from ..kubeapi import STRATEGIC_PATCH, ApiError, KubeClient
from .config import LocalNodeConfig
from .podspec import LOCAL_IP
from .status import now

log = logging.getLogger(__name__)

Obj = dict[str, Any]
LEASE_NS = "kube-node-lease"
CONDITION_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
VERSION = "v0.1.0-pitcrew-localnode"


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def resources(cfg: LocalNodeConfig) -> dict[str, str]:
    return {
        "cpu": cfg.cpu,
        "memory": cfg.memory,
        "pods": str(cfg.pods),
        "ephemeral-storage": "1Ti",
        "nvidia.com/gpu": str(cfg.gpus),
    }


def node_object(cfg: LocalNodeConfig) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": cfg.node_name,
            "labels": cfg.node_labels(),
            "annotations": {"pitcrew.dev/localnode": "a local test node, not a kubelet"},
        },
        "spec": {},
    }


def node_status(cfg: LocalNodeConfig, ready: bool = True, since: str | None = None) -> Obj:
    """The node's status; `since` is when the conditions last changed (default: now)."""
    t = now()

    def cond(ctype: str, status: bool, reason: str, message: str) -> Obj:
        return {
            "type": ctype,
            "status": "True" if status else "False",
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": t,
            "lastTransitionTime": since or t,
        }

    res = resources(cfg)
    return {
        "capacity": res,
        "allocatable": res,
        "conditions": [
            cond("MemoryPressure", False, "KubeletHasSufficientMemory", "localnode does not measure memory"),
            cond("DiskPressure", False, "KubeletHasNoDiskPressure", "localnode does not measure disk"),
            cond("PIDPressure", False, "KubeletHasSufficientPID", "localnode does not measure pids"),
            cond(
                "Ready",
                ready,
                "KubeletReady" if ready else "KubeletNotReady",
                "pitcrew localnode is posting ready status" if ready else "localnode stopped",
            ),
        ],
        "addresses": [
            {"type": "InternalIP", "address": LOCAL_IP},
            {"type": "Hostname", "address": cfg.node_name},
        ],
        # Where the API server fetches `kubectl logs` from (see logserver); 0 when not serving.
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.log_port}},
        "nodeInfo": {
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": platform.release(),
            "osImage": "pitcrew localnode",
            "containerRuntimeVersion": "localnode://" + VERSION,
            "kubeletVersion": VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


class NodeAgent:
    def __init__(self, client: KubeClient, cfg: LocalNodeConfig) -> None:
        self.client = client
        self.cfg = cfg
        self.uid = ""
        self._ready_since: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)

    def register(self) -> None:
        """Creates (or adopts) the Node and reports it Ready; retries until the API server answers."""
        delay = 0.2
        while True:
            try:
                self._register_once()
                log.info("node registered", extra={"node": self.cfg.node_name, "gpus": self.cfg.gpus})
                return
            except Exception as e:
                log.warning("node registration failed, retrying: %s", e, extra={"node": self.cfg.node_name})
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 5)

    def _register_once(self) -> None:
        body = node_object(self.cfg)
        try:
            node = self.client.create("/api/v1/nodes", body)
        except ApiError as e:
            if e.status != 409:
                raise
            node = self.client.patch(f"/api/v1/nodes/{self.cfg.node_name}", {"metadata": body["metadata"]})
        self.uid = node["metadata"]["uid"]
        self._post_status()
        self._untaint(node)
        self._renew_lease()

    def _untaint(self, node: Obj) -> None:
        # The TaintNodesByCondition admission plugin taints every new node not-ready; the node
        # lifecycle controller (not run here) would lift it once the node is Ready, so we do.
        taints = node.get("spec", {}).get("taints") or []
        keep = [t for t in taints if t.get("key") not in CONDITION_TAINTS]
        if len(keep) != len(taints):
            self.client.patch(f"/api/v1/nodes/{self.cfg.node_name}", {"spec": {"taints": keep or None}})

    def _post_status(self, ready: bool = True) -> None:
        if not ready or self._ready_since is None:
            self._ready_since = now()
        self.client.patch(
            f"/api/v1/nodes/{self.cfg.node_name}/status",
            {"status": node_status(self.cfg, ready, self._ready_since)},
            STRATEGIC_PATCH,
        )

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases/{self.cfg.node_name}"
        spec = {
            "holderIdentity": self.cfg.node_name,
            "leaseDurationSeconds": self.cfg.lease_seconds,
            "renewTime": micro_now(),
        }
        try:
            self.client.patch(path, {"spec": spec})
        except ApiError as e:
            if e.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.cfg.node_name, "uid": self.uid}
            self.client.create(
                f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.cfg.node_name,
                        "namespace": LEASE_NS,
                        "ownerReferences": [owner],
                    },
                    "spec": spec,
                },
            )

    def start_heartbeats(self) -> None:
        self._thread.start()

    def _heartbeat_loop(self) -> None:
        # The Lease is the cheap liveness signal; a full status post every few leases refreshes
        # lastHeartbeatTime for humans reading `kubectl describe node`.
        n = 0
        while not self._stop.wait(self.cfg.heartbeat_seconds):
            n += 1
            try:
                self._renew_lease()
                if n % 4 == 0:
                    self._post_status()
            except Exception as e:
                log.warning("heartbeat failed: %s", e, extra={"node": self.cfg.node_name})

    def halt(self) -> None:
        """Ends registration retries and heartbeats (signal-safe: only sets an event)."""
        self._stop.set()

    def stop(self, mark_not_ready: bool = True) -> None:
        self._stop.set()
        if mark_not_ready:
            try:
                self._post_status(ready=False)
            except Exception as e:  # the API server may already be gone at shutdown
                log.info("could not mark node NotReady: %s", e)
