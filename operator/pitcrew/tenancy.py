"""Who may make the operator do what, per namespace. Pure: the admin's policy in, decisions out.

The operator runs builds for many namespaces with one identity (its ServiceAccount, and S3
credentials from its environment). A tenant must not borrow that identity, so:

- S3: the operator uses its own S3 identity for a tenant's URI only when the admin granted that URI's
  prefix to the namespace (`s3Prefixes`) and the URI is on the operator's default endpoint. Otherwise
  the build names a Secret in its own namespace (`credentialsSecretRef`), or it is refused before any
  S3 call (so the refusal reveals nothing about buckets).
- Endpoints: a spec's `endpoint` is a URL the operator calls from inside the cluster (SSRF); only the
  default endpoint and the namespace's `endpoints` are allowed.
- Pod settings on GPU nodes: `builderImage` (other than the operator's own image for the backend),
  `priorityClassName`, toleration keys, nodeSelector keys and resources are allowed only as listed.

The policy comes from `PITCREW_TENANT_POLICY` (JSON, set by the chart's `tenancy` values): a mapping
of namespace (or glob) to grants. An exact name wins over globs; globs are tried in file order. A
namespace that matches nothing is granted nothing (the strict default).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from pitcrew.api.reasons import Reason
from pitcrew.api.v1alpha1 import EngineBuildSpec
from pitcrew.validation import Problem

ENV = "PITCREW_TENANT_POLICY"
REASON = Reason.POLICY_VIOLATION
GPU_TOLERATION_KEY = "nvidia.com/gpu"  # the operator adds this toleration itself to GPU builds
DOCS = "docs/controller.md#tenancy"

_KEYS = {
    "s3Prefixes": "s3_prefixes",
    "endpoints": "endpoints",
    "builderImages": "builder_images",
    "priorityClassNames": "priority_class_names",
    "tolerationKeys": "toleration_keys",
    "nodeSelectorKeys": "node_selector_keys",
    "maxResources": "max_resources",
}


class PolicyError(ValueError):
    """PITCREW_TENANT_POLICY is malformed; the message names the place and the fix."""


@dataclass(frozen=True)
class Grants:
    """What one namespace may do. Every field empty: nothing granted."""

    s3_prefixes: tuple[str, ...] = ()  # s3://bucket/prefix, "{namespace}" substituted
    endpoints: tuple[str, ...] = ()  # exact URLs (trailing slash ignored)
    builder_images: tuple[str, ...] = ()  # globs, e.g. "registry.example/builder:*"
    priority_class_names: tuple[str, ...] = ()
    toleration_keys: tuple[str, ...] = ()  # globs; "*" also allows a toleration without a key
    node_selector_keys: tuple[str, ...] = ()  # globs
    max_resources: Mapping[str, Decimal] = field(default_factory=dict)  # resource -> max quantity


@dataclass(frozen=True)
class TenantPolicy:
    rules: tuple[tuple[str, Grants], ...] = ()

    @classmethod
    def parse(cls, text: str) -> TenantPolicy:
        if not text.strip():
            return cls()
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyError(f"{ENV}: not valid JSON ({e.msg} at line {e.lineno}): fix the chart's tenancy "
                              "values") from None  # fmt: skip
        if not isinstance(raw, dict):
            raise PolicyError(f'{ENV}: give an object of namespace -> grants, e.g. {{"team-a": {{...}}}}')
        rules = []
        for pattern, body in raw.items():
            where = f"{ENV}[{pattern!r}]"
            if not isinstance(body, dict):
                raise PolicyError(f"{where}: give an object with keys {', '.join(_KEYS)}")
            kwargs: dict[str, Any] = {}
            for key, value in body.items():
                if key not in _KEYS:
                    raise PolicyError(f"{where}.{key}: unknown key; use one of {', '.join(_KEYS)}")
                if key == "maxResources":
                    kwargs["max_resources"] = _parse_resources(f"{where}.{key}", value)
                    continue
                if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                    raise PolicyError(f"{where}.{key}: give a list of non-empty strings")
                if key == "s3Prefixes":
                    for v in value:
                        if not re.match(r"^s3://[A-Za-z0-9{][^/]*", v):
                            raise PolicyError(f"{where}.{key}: {v!r} is not an s3://bucket/prefix URI")
                if key == "endpoints":
                    for v in value:
                        if not v.startswith(("http://", "https://")):
                            raise PolicyError(f"{where}.{key}: {v!r}: give a URL starting with http(s)://")
                kwargs[_KEYS[key]] = tuple(value)
            rules.append((str(pattern), Grants(**kwargs)))
        return cls(tuple(rules))

    def grants(self, namespace: str) -> Grants:
        for pattern, grants in self.rules:
            if pattern == namespace:
                return grants
        for pattern, grants in self.rules:
            if fnmatch.fnmatchcase(namespace, pattern):
                return grants
        return Grants()


# -- quantities -------------------------------------------------------------------------------------

_SUFFIX = {
    "": Decimal(1), "m": Decimal("0.001"), "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9),
    "T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18), "Ki": Decimal(2**10),
    "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}  # fmt: skip
_QUANTITY = re.compile(
    r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$"
)


def parse_quantity(value: int | str) -> Decimal:
    """A Kubernetes resource quantity ("500m", "16Gi", "1e3", 4) as a number."""
    text = str(value).strip()
    m = _QUANTITY.match(text)
    if not m:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
    try:
        number = Decimal(m.group(1))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from None
    if m.group(2):
        number *= Decimal(10) ** int(m.group(2))
    return number * _SUFFIX[m.group(3) or ""]


def _parse_resources(where: str, value: Any) -> dict[str, Decimal]:
    if not isinstance(value, dict):
        raise PolicyError(f'{where}: give an object of resource -> quantity, e.g. {{"memory": "64Gi"}}')
    out = {}
    for name, q in value.items():
        try:
            out[str(name)] = parse_quantity(q)
        except ValueError as e:
            raise PolicyError(f"{where}.{name}: {e}") from None
    return out


# -- S3 access ----------------------------------------------------------------------------------------


def _segments(uri: str) -> list[str]:
    rest = uri[len("s3://") :] if uri.startswith("s3://") else uri
    parts = [p for p in rest.split("/") if p]
    if parts:
        parts[0] = parts[0].lower()
    return parts


def under_prefix(uri: str, prefix: str) -> bool:
    """`s3://b/team-a` covers `s3://b/team-a/x` but not `s3://b/team-ab` (whole path segments)."""
    want, have = _segments(prefix), _segments(uri)
    return bool(want) and have[: len(want)] == want and ".." not in have


def _same_endpoint(a: str | None, b: str | None) -> bool:
    return (a or "").rstrip("/") == (b or "").rstrip("/")


@dataclass(frozen=True)
class Access:
    """How the operator reaches one S3 location of a build."""

    field: str  # spec.source / spec.output
    operator_identity: bool  # True: the admin granted the prefix; False: the build's own Secret


def s3_access(
    spec: EngineBuildSpec, namespace: str, policy: TenantPolicy, default_endpoint: str | None
) -> tuple[dict[str, Access], list[Problem]]:
    """Per role ("source", "output") with an s3:// URI: which identity to use, or the problems."""
    grants = policy.grants(namespace)
    out: dict[str, Access] = {}
    problems: list[Problem] = []
    for role, loc in (("source", spec.source), ("output", spec.output)):
        endpoint = loc.endpoint
        if (
            endpoint
            and not _same_endpoint(endpoint, default_endpoint)
            and not any(_same_endpoint(endpoint, e) for e in grants.endpoints)
        ):
            problems.append(
                Problem(
                    f"spec.{role}.endpoint",
                    f"{endpoint} is not an endpoint namespace {namespace} may use: remove it to use the "
                    f"operator's default, or ask the operator's admin to allow it ({ENV}, see {DOCS})",
                )
            )
            continue
        if not loc.uri.startswith("s3://"):
            continue
        if loc.credentials_secret_ref is not None:
            out[role] = Access(f"spec.{role}", operator_identity=False)
            continue
        granted = [p.replace("{namespace}", namespace) for p in grants.s3_prefixes]
        on_default = endpoint is None or _same_endpoint(endpoint, default_endpoint)
        if on_default and any(under_prefix(loc.uri, p) for p in granted):
            out[role] = Access(f"spec.{role}", operator_identity=True)
            continue
        problems.append(
            Problem(
                f"spec.{role}.credentialsSecretRef",
                f"{loc.uri} is not a location the operator may access for namespace {namespace}: name a "
                f"Secret of this namespace with S3 credentials for it in spec.{role}.credentialsSecretRef, "
                f"or ask the operator's admin to grant its prefix ({ENV}, see {DOCS})",
            )
        )
    return out, problems


# -- pod settings ------------------------------------------------------------------------------------


def pod_problems(
    spec: EngineBuildSpec, namespace: str, policy: TenantPolicy, default_image: str
) -> list[Problem]:
    """Tenant-chosen settings of the builder pod that the namespace's grants do not allow."""
    g = policy.grants(namespace)
    ask = f"ask the operator's admin to allow it for namespace {namespace} ({ENV}, see {DOCS})"
    problems: list[Problem] = []
    image = spec.builder_image
    if image and image != default_image and not any(fnmatch.fnmatchcase(image, p) for p in g.builder_images):
        problems.append(
            Problem("spec.builderImage", f"{image} is not an allowed builder image: remove it to use "
                    f"{default_image}, or {ask}")
        )  # fmt: skip
    target = spec.target
    pc = target.priority_class_name
    if pc and pc not in g.priority_class_names:
        problems.append(
            Problem("spec.target.priorityClassName", f"{pc!r} is not allowed: remove it, or {ask}")
        )
    for i, t in enumerate(target.tolerations or ()):
        key = t.key
        if key == GPU_TOLERATION_KEY:
            continue
        allowed = "*" in g.toleration_keys if not key else any(
            fnmatch.fnmatchcase(key, p) for p in g.toleration_keys
        )  # fmt: skip
        if not allowed:
            shown = repr(key) if key else "(no key: tolerates every taint)"
            problems.append(
                Problem(f"spec.target.tolerations[{i}].key", f"{shown} is not allowed: remove it, or {ask}")
            )
    for key in sorted(target.node_selector or {}):
        if not any(fnmatch.fnmatchcase(key, p) for p in g.node_selector_keys):
            problems.append(
                Problem(
                    f"spec.target.nodeSelector.{key}", f"the key {key!r} is not allowed: remove it, or {ask}"
                )
            )
    res = target.resources
    for kind, values in (
        ("requests", res.requests if res else None),
        ("limits", res.limits if res else None),
    ):
        for name, q in sorted((values or {}).items()):
            where = f"spec.target.resources.{kind}.{name}"
            cap = g.max_resources.get(name)
            if cap is None:
                problems.append(Problem(where, f"setting {name} is not allowed: remove it, or {ask}"))
                continue
            try:
                amount = parse_quantity(q)
            except ValueError as e:
                problems.append(Problem(where, str(e)))
                continue
            if amount > cap:
                problems.append(Problem(where, f"{q} is over the namespace's maximum {_fmt(cap)}: lower it"))
    return problems


def gpu_problems(gpu_count: int, namespace: str, policy: TenantPolicy) -> list[Problem]:
    """The GPUs a build asks for (spec.target.gpuCount or tensor x pipeline) against maxResources."""
    cap = policy.grants(namespace).max_resources.get(GPU_TOLERATION_KEY)
    if cap is None or gpu_count <= cap:
        return []
    return [
        Problem(
            "spec.target.gpuCount",
            f"{gpu_count} GPUs is over namespace {namespace}'s maximum {_fmt(cap)}: lower gpuCount or "
            "the parallelism",
        )
    ]


def _fmt(value: Decimal) -> str:
    return format(value.normalize(), "f")
