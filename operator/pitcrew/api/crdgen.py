"""Generates the EngineBuild CustomResourceDefinition from the typed models.

`python -m pitcrew.api.crdgen` writes crds/enginebuilds.pitcrew.dev.yaml and the chart's copy
(or prints it with `-`).
Pydantic's JSON schema is turned into a Kubernetes structural schema: references inlined, optionals
made plain (not nullable), titles dropped, `x-kubernetes-*` extensions kept.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from pitcrew.api import v1alpha1 as api

CRD_FILE = f"{api.PLURAL}.{api.GROUP}.yaml"
# Keywords a structural schema may carry; anything else pydantic emits is dropped.
_KEPT = {
    "type", "description", "default", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern",
    "items", "properties", "required", "additionalProperties", "minItems", "maxItems", "multipleOf",
    "x-kubernetes-validations", "x-kubernetes-int-or-string", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-preserve-unknown-fields",
}  # fmt: skip


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**_resolve(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:
            return _resolve({**options[0], **rest}, defs)
        if {o.get("type") for o in options} == {"integer", "string"}:
            return _resolve({**rest, "x-kubernetes-int-or-string": True}, defs)
        raise ValueError(f"cannot express anyOf {options} in a structural schema")
    if "allOf" in node and len(node["allOf"]) == 1:
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return _resolve({**node["allOf"][0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        elif key == "x-kubernetes-validations":
            out[key] = value  # CEL rules are data, not schema
        elif key == "const":
            out["enum"] = [value]
        elif key in _KEPT:
            out[key] = _resolve(value, defs)
    if out.get("additionalProperties") is False:
        del out["additionalProperties"]  # structural schemas prune unknown fields instead
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if out.get("default") is None:
        out.pop("default", None)
    return out


def _object_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """Give optional objects with defaulted fields a `{}` default.

    The API server applies a field's default only when its parent object exists; `{}` on the parent
    makes `kubectl get -o yaml` show every build option with its effective value.
    """
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        if prop.get("type") != "object" or "properties" not in prop:
            continue
        _object_defaults(prop)
        all_defaulted = not prop.get("required") and any("default" in p for p in prop["properties"].values())
        if name not in required and all_defaulted and "default" not in prop:
            prop["default"] = {}
    return schema


def structural_schema(model: type[api.ApiModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _resolve(raw, defs)
    return schema


def build_crd() -> dict[str, Any]:
    spec_schema = _object_defaults(structural_schema(api.EngineBuildSpec))
    status_schema = structural_schema(api.EngineBuildStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "annotations": {"pitcrew.dev/generated-by": "python -m pitcrew.api.crdgen"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": api.CATEGORIES,
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": api.PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (api.EngineBuild.__doc__ or "").strip(),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": {
                                    **spec_schema,
                                    "description": "What to build, for which GPU, and where.",
                                },
                                "status": {
                                    **status_schema,
                                    "description": "Observed state, written by Pitcrew.",
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = (
        "# Generated by `python -m pitcrew.api.crdgen` from operator/pitcrew/api/v1alpha1.py. Do not edit.\n"
    )
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def default_paths() -> list[Path]:
    """crds/ for kubectl users, and the chart's crds/ (helm installs those before the templates)."""
    repo = Path(__file__).resolve().parents[3]
    return [repo / "crds" / CRD_FILE, repo / "helm" / "pitcrew" / "crds" / CRD_FILE]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if args and args[0] == "-":
        sys.stdout.write(text)
        return 0
    for path in [Path(a) for a in args] or default_paths():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
