"""The chart renders with the real helm, and the API server accepts what it renders.

helm is built from Go modules by hack/build-tools.sh like the control plane (`make test` builds it).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pitcrew_devcluster import ClusterInfo

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "pitcrew"


@pytest.fixture(scope="module")
def helm() -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "build-tools.sh"), "--print", "helm"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    binary = Path(out.strip().partition("=")[2]) / "helm"
    if not binary.is_file():
        pytest.fail(f"no helm at {binary}: run `bash hack/build-tools.sh helm` (make test does)")
    return binary


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    argv = [str(helm), "template", "pitcrew", str(CHART), "--namespace", "pitcrew-system", "--include-crds"]
    out = subprocess.run([*argv, *args], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_lint_is_clean(helm: Path) -> None:
    proc = subprocess.run([str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_deployment_is_one_locked_down_replica(helm: Path) -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(helm)}
    deployment = docs[("Deployment", "pitcrew")]["spec"]
    # kopf --standalone: two operators must never overlap.
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"
    pod = deployment["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert ("CustomResourceDefinition", "enginebuilds.pitcrew.dev") in docs


def test_values_reach_the_operator(helm: Path) -> None:
    docs = render(helm, "--set", "env.PITCREW_NAMESPACES=ml-team")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PITCREW_NAMESPACES"] == "ml-team"


def test_api_server_accepts_the_chart(helm: Path, cluster: ClusterInfo, tmp_path: Path) -> None:
    docs = render(helm)
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    rest = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    cluster.kubectl("create", "namespace", "pitcrew-system", check=False)
    # Server-side dry run: admission, schema and RBAC validation by the real API server.
    for batch in (crds, rest):
        manifest = tmp_path / "chart.yaml"
        manifest.write_text(yaml.safe_dump_all(batch))
        cluster.kubectl("apply", "--dry-run=server", "-f", str(manifest))
