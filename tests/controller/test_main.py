"""`python -m pitcrew` refuses to start without credentials instead of retrying login forever."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pitcrew.__main__ import credentials_problem


def test_no_credentials_at_all(tmp_path: Path) -> None:
    problem = credentials_problem({}, tmp_path, token=tmp_path / "no-token")
    assert problem is not None and "KUBECONFIG" in problem


def test_kubeconfig_that_does_not_exist_is_named(tmp_path: Path) -> None:
    problem = credentials_problem({"KUBECONFIG": "/nope/config"}, tmp_path, token=tmp_path / "no-token")
    assert problem is not None and "/nope/config" in problem


def test_existing_credentials_pass(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("apiVersion: v1\n")
    assert credentials_problem({"KUBECONFIG": str(config)}, tmp_path, token=tmp_path / "no-token") is None
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("apiVersion: v1\n")
    assert credentials_problem({}, tmp_path, token=tmp_path / "no-token") is None
    token = tmp_path / "token"
    token.write_text("t")
    assert credentials_problem({}, tmp_path / "elsewhere", token=token) is None


def test_process_exits_with_a_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pitcrew"],
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no Kubernetes credentials" in proc.stderr


def test_help_lists_every_setting() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pitcrew", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "PITCREW_BUILDER_IMAGE" in out and "PITCREW_NAMESPACES" in out


@pytest.mark.parametrize(
    ("env", "server"),
    [
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, "https://10.96.0.1:443"),
        ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, "https://[fd00::1]:6443"),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, None),
        ({}, None),
    ],
)
def test_in_cluster_server_follows_the_service_env_like_client_go(
    env: dict[str, str], server: str | None
) -> None:
    from pitcrew.handlers import in_cluster_server

    assert in_cluster_server(env) == server
