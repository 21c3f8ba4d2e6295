"""The chart's ClusterRole grants exactly pitcrew.rbac.PERMISSIONS, and PERMISSIONS is exactly what a
scan of the controller's API calls and kopf handlers finds (plus what kopf needs on its own)."""

import ast
import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any

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


# What kopf itself asks for, beyond the watches and patches our handlers imply (not visible in our
# code): its resource scanning lists/watches CRDs, and namespace patterns list/watch namespaces.
KOPF_INTERNAL = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
}
CLIENT_VERBS = {"get": "get", "list": "list", "create": "create", "merge_patch": "patch", "delete": "delete"}
NO_API = {"configure", "close"}  # Kube methods that send no request
HANDLER_DECORATORS = {"event", "create", "update", "resume", "delete"}
PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/(?:namespaces/[^/]+/)?(?P<resource>[^/]+)"
    r"(?:/[^/]+(?P<sub>/[a-z]+)?)?$"
)


class Placeholder(str):
    """A local variable of the scanned code: any attribute or item of it is itself a placeholder."""

    def __new__(cls) -> "Placeholder":
        return super().__new__(cls, "x")

    def __getattr__(self, _: str) -> "Placeholder":
        return Placeholder()

    def __getitem__(self, _: object) -> "Placeholder":  # type: ignore[override]
        return Placeholder()


class ModuleScope(dict[str, Any]):
    """Evaluation scope: the module's globals; names it lacks are the function's locals."""

    def __missing__(self, _: str) -> Placeholder:
        return Placeholder()


def resolve(path: str) -> tuple[str, str]:
    m = PATH.match(path)
    assert m, f"cannot map API path {path!r} to a resource: extend PATH in this test"
    return m["group"] or "", m["resource"] + (m["sub"] or "")


def used_permissions() -> tuple[set[tuple[str, str, str]], list[str]]:
    """(group, resource, verb) for every API call and kopf handler in operator/pitcrew/*.py.

    Client calls (`….kube.get/list/create/merge_patch/delete(path, …)`) have their path expression
    evaluated with the module's own helpers (eb_path, jobs_path, ns_path, GROUP …), locals standing
    in as placeholders. kopf handlers imply list+watch of their resource (and patch of the
    EngineBuild kopf keeps its annotations on); kopf.event() implies creating Events.
    """
    used: set[tuple[str, str, str]] = set()
    calls: list[str] = []
    for file in sorted((ROOT / "operator" / "pitcrew").glob("*.py")):
        module = importlib.import_module(f"pitcrew.{file.stem}") if file.stem != "__main__" else None
        scope = ModuleScope(vars(module) if module else {})
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                func = node.func
                owner = func.value
                if isinstance(owner, ast.Attribute) and owner.attr == "kube" and func.attr not in NO_API:
                    assert func.attr in CLIENT_VERBS, (
                        f"{file.name}:{node.lineno}: unknown call kube.{func.attr}"
                    )
                    path = eval(compile(ast.Expression(node.args[0]), file.name, "eval"), {}, scope)
                    group, resource = resolve(str(path))
                    used.add((group, resource, CLIENT_VERBS[func.attr]))
                    calls.append(f"{file.name}:{node.lineno} {func.attr} {path}")
                elif isinstance(owner, ast.Name) and owner.id == "kopf" and func.attr == "event":
                    used.add(("", "events", "create"))
            if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
                for deco in node.decorator_list:
                    if not (
                        isinstance(deco, ast.Call)
                        and isinstance(deco.func, ast.Attribute)
                        and ast.unparse(deco.func.value) == "kopf.on"
                        and deco.func.attr in HANDLER_DECORATORS
                    ):
                        continue
                    args: list[Any] = []
                    for a in deco.args:
                        value = eval(
                            compile(
                                ast.Expression(a.value if isinstance(a, ast.Starred) else a),
                                file.name,
                                "eval",
                            ),
                            {},
                            scope,
                        )
                        args.extend(value if isinstance(a, ast.Starred) else [value])
                    group, _, resource = args
                    used |= {(group, resource, "list"), (group, resource, "watch")}
                    if deco.func.attr != "event":
                        used.add((group, resource, "patch"))  # kopf's progress annotations, finalizer
                    calls.append(f"{file.name}:{node.lineno} kopf.on.{deco.func.attr} {resource}")
    return used, calls


def test_code_calls_are_covered_by_permissions() -> None:
    """Every API call the controller's code makes is granted, and every grant is used."""
    used, calls = used_permissions()
    assert len(calls) >= 15, calls  # the scan found the client calls and handlers
    granted = {(p.group, p.resource, v) for p in PERMISSIONS for v in p.verbs}
    assert used - granted == set(), "used by the code but missing from pitcrew.rbac.PERMISSIONS"
    assert granted - used - KOPF_INTERNAL == set(), "granted but never used: drop it"
    # The plan travels in the Job: no write to pods, secrets, services or configmaps.
    writes = {(r, v) for _, r, v in used if v not in ("get", "list", "watch")}
    assert not {(r, v) for r, v in writes if r in ("pods", "secrets", "services", "configmaps")}


def test_deployment_is_single_replica_recreate_standalone() -> None:
    text = (ROOT / "helm" / "pitcrew" / "templates" / "deployment.yaml").read_text()
    assert "replicas: 1" in text and "type: Recreate" in text and '"-m", "pitcrew"' in text
