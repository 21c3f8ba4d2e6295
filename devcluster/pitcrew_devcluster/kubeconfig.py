"""Writes and reads the (token-authenticated) kubeconfig files devcluster hands out."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONTEXT = "pitcrew-devcluster"


def render(server: str, ca_cert: Path, token: str, user: str = "admin") -> dict[str, Any]:
    # The CA is embedded so the file stays valid when copied elsewhere.
    ca_data = base64.b64encode(ca_cert.read_bytes()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user, "namespace": "default"}}
        ],
        "current-context": CONTEXT,
        "preferences": {},
    }


def write(path: Path, server: str, ca_cert: Path, token: str, user: str = "admin") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(render(server, ca_cert, token, user), sort_keys=False))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Endpoint:
    """What a client needs: the server URL, a bearer token and the CA bundle (PEM bytes)."""

    server: str
    token: str
    ca_pem: bytes | None


def read(path: Path) -> Endpoint:
    """Reads the current context of a token-based kubeconfig (the kind `write` produces)."""
    cfg = yaml.safe_load(path.read_text())
    ctx_name = cfg.get("current-context")
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
    ca: bytes | None = None
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"])
    elif "certificate-authority" in cluster:
        ca = (path.parent / cluster["certificate-authority"]).read_bytes()
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    if not token:
        raise ValueError(f"{path}: the current context's user has no token")
    return Endpoint(server=cluster["server"], token=token, ca_pem=ca)
