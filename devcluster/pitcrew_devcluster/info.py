"""What a running devcluster hands to its users: addresses, credentials and a few helpers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kubeapi import KubeClient
from .s3server import S3Info


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl run whose message includes kubectl's stderr."""

    def __str__(self) -> str:
        return (
            f"{' '.join(map(str, self.cmd[1:]))} exited with {self.returncode}: {(self.stderr or '').strip()}"
        )


@dataclass(frozen=True)
class ClusterInfo:
    state_dir: Path
    kubeconfig: Path
    server: str
    token: str
    ca_file: Path
    node_name: str
    s3: S3Info | None = None
    kwok_nodes: tuple[str, ...] = field(default_factory=tuple)
    # "real": kubelet + containerd (the only kind of node).
    node: str = "real"
    # The host's address as pods see it: their bridge's gateway.
    pod_host: str = "127.0.0.1"

    def to_json(self) -> dict[str, Any]:
        return {
            "state_dir": str(self.state_dir),
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "token": self.token,
            "ca_file": str(self.ca_file),
            "node_name": self.node_name,
            "s3": self.s3.to_json() if self.s3 else None,
            "kwok_nodes": list(self.kwok_nodes),
            "node": self.node,
            "pod_host": self.pod_host,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClusterInfo:
        return cls(
            state_dir=Path(d["state_dir"]),
            kubeconfig=Path(d["kubeconfig"]),
            server=d["server"],
            token=d["token"],
            ca_file=Path(d["ca_file"]),
            node_name=d["node_name"],
            s3=S3Info.from_json(d["s3"]) if d.get("s3") else None,
            kwok_nodes=tuple(d.get("kwok_nodes", ())),
            node=d.get("node", "real"),
            pod_host=d.get("pod_host", "127.0.0.1"),
        )

    def pod_api_env(self) -> dict[str, str]:
        """In-cluster API address for pods (no kube-proxy runs, so the `kubernetes` Service IP does
        not route): KUBERNETES_SERVICE_HOST/PORT pointing at the API server itself."""
        host_port = self.server.removeprefix("https://")
        host, _, port = host_port.rpartition(":")
        return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}

    def pod_s3_endpoint(self) -> str:
        """The S3 endpoint as a pod on the cluster's node reaches it (MinIO on the host)."""
        if self.s3 is None:
            raise RuntimeError("this devcluster runs without S3 (started with --no-s3)")
        port = self.s3.endpoint.rsplit(":", 1)[1]
        return f"http://{self.pod_host}:{port}"

    def env(self) -> dict[str, str]:
        """Environment for clients: KUBECONFIG, AWS_* and PITCREW_S3_* (as `devcluster env` prints)."""
        out = {"KUBECONFIG": str(self.kubeconfig), "PITCREW_STATE_DIR": str(self.state_dir)}
        if self.s3:
            out.update(self.s3.env())
        return out

    def client(self) -> KubeClient:
        return KubeClient(self.server, self.token, self.ca_file.read_bytes())

    def s3_client(self) -> Any:
        if self.s3 is None:
            raise RuntimeError("this devcluster runs without S3 (started with --no-s3)")
        return self.s3.client()

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Runs kubectl against this cluster; on failure (with check) the error carries stderr."""
        kubectl = shutil.which("kubectl") or "kubectl"
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        proc = subprocess.run(
            [kubectl, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def kubectl_json(self, *args: str, timeout: float = 60) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json", timeout=timeout).stdout)
