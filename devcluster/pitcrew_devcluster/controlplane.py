"""Command lines of etcd, kube-apiserver, kube-controller-manager and kube-scheduler (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .binaries import Binaries
from .certs import Credentials
from .ports import LOOPBACK

SERVICE_CIDR = "10.0.0.0/24"
# job + GC + namespace + TTL are what Jobs need; the service-account controllers are cheap and let
# the ServiceAccount admission plugin stay on, so pods look like they do in a real cluster.
CONTROLLERS = (
    "job-controller",
    # The chart's Deployment (helm install on the real node).
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "ttl-after-finished-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
)


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int


def etcd(bins: Binaries, ports: Ports, data_dir: Path) -> list[str]:
    client = f"http://{LOOPBACK}:{ports.etcd_client}"
    peer = f"http://{LOOPBACK}:{ports.etcd_peer}"
    return [
        str(bins.path("etcd")),
        "--name=default",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=default={peer}",
        # A throwaway test store: durability buys nothing and fsync is the slowest part of etcd.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver(
    bins: Binaries, ports: Ports, creds: Credentials, cert_dir: Path, address: str = LOOPBACK
) -> list[str]:
    """`address`: where it listens (loopback; the real node's bridge gateway so its pods reach it)."""
    return [
        str(bins.path("kube-apiserver")),
        f"--etcd-servers=http://{LOOPBACK}:{ports.etcd_client}",
        f"--bind-address={address}",
        f"--advertise-address={address}",
        f"--secure-port={ports.apiserver}",
        f"--cert-dir={cert_dir}",
        f"--tls-cert-file={creds.serving_cert}",
        f"--tls-private-key-file={creds.serving_key}",
        f"--client-ca-file={creds.ca_cert}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        "--authorization-mode=RBAC",
        f"--token-auth-file={creds.token_file}",
        f"--service-account-issuer=https://{LOOPBACK}:{ports.apiserver}",
        f"--service-account-key-file={creds.sa_pub}",
        f"--service-account-signing-key-file={creds.sa_key}",
        # Flow control only adds latency and memory for a single-user test cluster.
        "--enable-priority-and-fairness=false",
        # `kubectl logs` goes to the node's InternalIP (127.0.0.1, or the real node's bridge address);
        # its Hostname does not resolve.
        "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-client-certificate={creds.kubelet_client_cert}",
        f"--kubelet-client-key={creds.kubelet_client_key}",
        "--profiling=false",
    ]


def _serving(port: int, creds: Credentials, kubeconfig: Path) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=false",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={port}",
        f"--tls-cert-file={creds.serving_cert}",
        f"--tls-private-key-file={creds.serving_key}",
        "--profiling=false",
    ]


def controller_manager(bins: Binaries, ports: Ports, creds: Credentials, kubeconfig: Path) -> list[str]:
    return [
        str(bins.path("kube-controller-manager")),
        *_serving(ports.controller_manager, creds, kubeconfig),
        f"--controllers={','.join(CONTROLLERS)}",
        f"--service-account-private-key-file={creds.sa_key}",
        f"--root-ca-file={creds.ca_cert}",
        # Scale tests create hundreds of Jobs; the default 20 QPS would be the bottleneck.
        "--kube-api-qps=200",
        "--kube-api-burst=400",
    ]


def scheduler(bins: Binaries, ports: Ports, creds: Credentials, kubeconfig: Path) -> list[str]:
    return [str(bins.path("kube-scheduler")), *_serving(ports.scheduler, creds, kubeconfig)]
