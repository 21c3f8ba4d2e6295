"""The chart's ClusterRole grants exactly what operator/pitcrew/rbac.py says the code uses."""

import importlib.util
import re
from pathlib import Path

import yaml

from pitcrew.rbac import PERMISSIONS

ROOT = Path(__file__).resolve().parents[2]


def render() -> str:
    spec = importlib.util.spec_from_file_location("render_rbac", ROOT / "hack" / "render_rbac.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text: str = module.render("pc", "ops")
    return text


def test_clusterrole_matches_the_code() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all(render())}
    granted = {
        (group, resource): sorted(rule["verbs"])
        for rule in docs["ClusterRole"]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    needed = {(p.group, p.resource): sorted(p.verbs) for p in PERMISSIONS}
    assert granted == needed
    assert not any("*" in verbs for verbs in granted.values())
    binding = docs["ClusterRoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pc", "namespace": "ops"}]


def test_code_calls_are_covered_by_permissions() -> None:
    """Every resource the controller's client touches appears in PERMISSIONS with the verb used."""
    source = "\n".join(p.read_text() for p in (ROOT / "operator" / "pitcrew").glob("*.py"))
    verbs = {("get", "secrets"), ("create", "jobs"), ("delete", "jobs")}
    for verb, resource in verbs:
        assert any(p.resource == resource and verb in p.verbs for p in PERMISSIONS), (verb, resource)
    # No write to pods, secrets, services or configmaps anywhere in the controller (the plan travels
    # in the Job).
    assert not re.search(r'(create|delete)\(ns_path\([^)]*"(pods|secrets|services|configmaps)"', source)
    assert not any(p.resource == "configmaps" for p in PERMISSIONS)


def test_deployment_is_single_replica_recreate_standalone() -> None:
    text = (ROOT / "helm" / "pitcrew" / "templates" / "deployment.yaml").read_text()
    assert "replicas: 1" in text and "type: Recreate" in text and '"-m", "pitcrew"' in text
