"""The chart's namespaced install mode (rbac.namespaced) and its tenancy values, with the real helm.

Namespaced: a Role and RoleBinding per namespace of PITCREW_NAMESPACES carrying exactly the
namespaced permissions of pitcrew.rbac, and a ClusterRole with only cluster-scoped reads (no
cluster-wide Secret read). The cluster test runs the operator under that RBAC and builds.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_chart import CHART, helm, render

from controller.harness import (
    Operator,
    apply,
    engine_build,
    install,
    new_namespace,
    seed_checkpoint,
    wait_phase,
)
from pitcrew.rbac import PERMISSIONS
from pitcrew.tenancy import TenantPolicy
from pitcrew_devcluster import ClusterInfo

__all__ = ["helm"]  # the fixture, shared with test_chart

CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}


def _rules(doc: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    return {
        (group, resource): sorted(rule["verbs"])
        for rule in doc["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def namespaced(helm: Path, namespaces: str, release: str = "pitcrew") -> list[dict[str, Any]]:
    argv = [str(helm), "template", release, str(CHART), "--namespace", "pitcrew-system"]
    escaped = namespaces.replace(",", "\\,")  # --set splits at commas
    argv += ["--set", "rbac.namespaced=true", "--set", f"env.PITCREW_NAMESPACES={escaped}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_namespaced_mode_grants_per_namespace_only(helm: Path) -> None:
    docs = namespaced(helm, "team-a, team-b")
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert set(_rules(cluster_role)) == CLUSTER_SCOPED  # no Secrets, Jobs, Pods cluster-wide
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    wanted = {
        (p.group, p.resource): sorted(p.verbs)
        for p in PERMISSIONS
        if (p.group, p.resource) not in CLUSTER_SCOPED
    }
    for ns, role in roles.items():
        assert _rules(role) == wanted, ns
        assert bindings[ns]["subjects"] == [
            {"kind": "ServiceAccount", "name": "pitcrew", "namespace": "pitcrew-system"}
        ]
    # The default (cluster-wide) mode still grants everything in one ClusterRole.
    (default_role,) = [d for d in render(helm) if d["kind"] == "ClusterRole"]
    assert _rules(default_role) == {(p.group, p.resource): sorted(p.verbs) for p in PERMISSIONS}


@pytest.mark.parametrize(
    ("namespaces", "message"), [("", "needs env.PITCREW_NAMESPACES"), ("team-*", "is a pattern")]
)
def test_namespaced_mode_needs_plain_namespace_names(helm: Path, namespaces: str, message: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as err:
        namespaced(helm, namespaces)
    assert message in err.value.stderr


def test_tenancy_values_reach_the_operator(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    policy = {"ml-*": {"s3Prefixes": ["s3://engines/{namespace}/"], "maxResources": {"memory": "64Gi"}}}
    values.write_text(yaml.safe_dump({"tenancy": policy}))
    docs = render(helm, "-f", str(values))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env["PITCREW_TENANT_POLICY"]) == policy
    assert TenantPolicy.parse(env["PITCREW_TENANT_POLICY"]).grants("ml-x").s3_prefixes == (
        "s3://engines/{namespace}/",
    )
    # No tenancy values: no variable (the operator's strict default).
    deployment = next(d for d in render(helm) if d["kind"] == "Deployment")
    names = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "PITCREW_TENANT_POLICY" not in names


def test_operator_builds_under_namespaced_rbac(helm: Path, cluster: ClusterInfo, tmp_path: Path) -> None:
    install(cluster)
    seed_checkpoint(cluster)
    ns, other = new_namespace(cluster, "nsmode"), new_namespace(cluster, "nsother")
    release = "pcns"
    docs = [
        d
        for d in namespaced(helm, ns, release)
        if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    ]
    cluster.kubectl("apply", "-f", "-", input="---\n".join(yaml.safe_dump(d) for d in docs))
    sa = f"system:serviceaccount:pitcrew-system:{release}"
    can = cluster.kubectl("auth", "can-i", "get", "secrets", "-n", other, f"--as={sa}", check=False)
    assert can.stdout.strip() == "no"  # another namespace's Secrets are out of reach
    can = cluster.kubectl("auth", "can-i", "get", "secrets", "-n", ns, f"--as={sa}", check=False)
    assert can.stdout.strip() == "yes"

    op = Operator(cluster, tmp_path, PITCREW_NAMESPACES=ns)
    token = cluster.kubectl(
        "create", "token", release, "-n", "pitcrew-system", "--duration=1h"
    ).stdout.strip()
    config = yaml.safe_load(op.kubeconfig.read_text())
    config["users"][0]["user"]["token"] = token
    op.kubeconfig.write_text(yaml.safe_dump(config))
    op.start()
    try:
        apply(cluster, engine_build(cluster, "model", ns))
        st = wait_phase(cluster, ns, "model", {"Succeeded", "Failed"}, timeout=90, op=op)["status"]
        assert st["phase"] == "Succeeded", st
        assert "Forbidden" not in op.tail(400) and " 403" not in op.tail(400), op.tail(100)
    finally:
        op.stop()
        for name in (ns, other):
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
