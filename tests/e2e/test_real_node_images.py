"""Images built here without a registry (hack/build-images.sh: mmdebstrap base, podman build of
operator/Dockerfile), loaded into the real node's containerd and run by the kubelet.

The first run builds the base (~4 min) and the operator image (~2 min) into $PITCREW_CACHE_DIR/images;
later runs find them by content hash.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from controller.harness import ROOT, wait_for
from e2e.realnode_support import host_problem
from pitcrew_devcluster import ClusterInfo
from pitcrew_devcluster.cluster import load_images


def _problem() -> str | None:
    missing = [t for t in ("mmdebstrap", "podman") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} missing (Debian packages; run hack/install-node-deps.sh as root)"
    return host_problem()


pytestmark = [
    pytest.mark.skipif(_problem() is not None, reason=str(_problem())),
    pytest.mark.cluster,
    pytest.mark.slow,
]


def build_images(*names: str) -> tuple[dict[str, Path], str]:
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-images.sh"), *names],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    built = {}
    for line in proc.stdout.splitlines():
        name, _, archive = line.partition("=")
        built[name] = Path(archive)
    return built, proc.stderr


@pytest.fixture(scope="module")
def operator_image(cluster: ClusterInfo) -> str:
    built, _ = build_images("operator")
    ((name, archive),) = built.items()
    assert name.startswith("pitcrew.local/operator:") and archive.is_file()
    load_images([archive], cluster.state_dir)
    return name


def test_image_builds_are_cached_by_content(operator_image: str) -> None:
    built, log = build_images("operator")
    assert list(built) == [operator_image]
    assert "building" not in log, log


def test_operator_image_runs_under_the_charts_security_context(
    cluster: ClusterInfo, operator_image: str
) -> None:
    client = cluster.client()
    ns = f"img-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    wait_for(
        "default ServiceAccount",
        lambda: client.get_or_none(f"/api/v1/namespaces/{ns}/serviceaccounts/default"),
    )
    script = (
        "import os, pitcrew.handlers, pitcrew.settings\n"
        "open('/dev/termination-log', 'w').write(f'uid={os.getuid()} ok')\n"
    )
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator-image"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            # As helm/pitcrew/templates/deployment.yaml.
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "operator",
                    "image": operator_image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", script],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    client.create(f"/api/v1/namespaces/{ns}/pods", pod)

    def done() -> dict[str, Any] | None:
        status: dict[str, Any] = client.get(f"/api/v1/namespaces/{ns}/pods/operator-image")["status"]
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for("the operator image's pod", done, timeout=120)
    (cs,) = status["containerStatuses"]
    assert status["phase"] == "Succeeded", cs
    assert cs["state"]["terminated"]["message"] == "uid=1000 ok"
    assert cs["imageID"].startswith("sha256:") and cs["image"] == operator_image
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
