"""Credentials for the control plane: a CA, one serving certificate, the service-account key, tokens.

Made with the openssl CLI (always present on Debian) so the package needs no crypto dependency.
ECDSA P-256 keeps generation fast; the service-account key is RSA as Kubernetes documents it.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import DevclusterError

# Names the apiserver's in-cluster clients use, besides loopback.
SERVING_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
SERVING_IPS = ("127.0.0.1", "10.0.0.1")


@dataclass(frozen=True)
class Credentials:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path
    token_file: Path
    admin_token: str
    # The API server's client certificate for kubelets (logs, exec), in group system:masters.
    kubelet_client_cert: Path
    kubelet_client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DevclusterError(f"`openssl {' '.join(args)}` failed: {proc.stderr.strip()}", component="certs")


def token_line(token: str, user: str, uid: str, groups: list[str]) -> str:
    """A line of the apiserver's --token-auth-file (CSV: token,user,uid,"group1,group2")."""
    return f'{token},{user},{uid},"{",".join(groups)}"'


def generate(directory: Path, extra_ips: tuple[str, ...] = ()) -> Credentials:
    """CA, serving cert (SERVING_DNS, SERVING_IPS and `extra_ips`), kubelet client cert, SA key, token."""
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=pitcrew-devcluster-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )
    sans = ",".join([*(f"DNS:{n}" for n in SERVING_DNS), *(f"IP:{ip}" for ip in (*SERVING_IPS, *extra_ips))])
    # OpenSSL 3 signs with a CA straight from `req -x509 -CA`, copying the -addext extensions.
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "serving.key",
        "-out",
        "serving.crt",
        "-days",
        "3650",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-subj",
        "/CN=kube-apiserver",
        "-addext",
        f"subjectAltName={sans}",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-addext",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "-addext",
        "extendedKeyUsage=serverAuth",
        cwd=d,
    )
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "kubelet-client.key",
        "-out",
        "kubelet-client.crt",
        "-days",
        "3650",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-subj",
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-addext",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "-addext",
        "extendedKeyUsage=clientAuth",
        cwd=d,
    )
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=d)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    admin_token = secrets.token_hex(24)
    token_file = d / "tokens.csv"
    token_file.write_text(token_line(admin_token, "admin", "admin", ["system:masters"]) + "\n")
    for name in ("ca.key", "serving.key", "sa.key", "tokens.csv", "kubelet-client.key"):
        (d / name).chmod(0o600)
    return Credentials(
        ca_cert=d / "ca.crt",
        ca_key=d / "ca.key",
        serving_cert=d / "serving.crt",
        serving_key=d / "serving.key",
        sa_key=d / "sa.key",
        sa_pub=d / "sa.pub",
        token_file=token_file,
        admin_token=admin_token,
        kubelet_client_cert=d / "kubelet-client.crt",
        kubelet_client_key=d / "kubelet-client.key",
    )
