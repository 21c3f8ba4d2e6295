"""Tenant isolation decisions (pitcrew.tenancy): table tests of the pure policy."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from pitcrew.settings import Settings, SettingsError
from pitcrew.tenancy import TenantPolicy, gpu_problems, parse_quantity, pod_problems, s3_access, under_prefix

from .helpers import spec

DEFAULT_EP = "http://minio.pitcrew-system:9000"
IMAGE = "ghcr.io/pitcrew/builder:0.1.0"

POLICY = TenantPolicy.parse(
    json.dumps(
        {
            "team-a": {
                "s3Prefixes": ["s3://models/team-a/", "s3://Engines/team-a"],
                "endpoints": ["https://s3.team-a.example/"],
                "builderImages": ["registry.team-a/builder:*"],
                "priorityClassNames": ["gpu-batch"],
                "tolerationKeys": ["dedicated", "pool/*"],
                "nodeSelectorKeys": ["pool", "nvidia.com/*"],
                "maxResources": {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": 4},
            },
            "team-*": {"s3Prefixes": ["s3://engines/{namespace}/"]},
        }
    )
)


def test_empty_policy_grants_nothing() -> None:
    assert TenantPolicy.parse("").grants("anything").s3_prefixes == ()
    assert Settings.from_env({}).tenant_policy.rules == ()


def test_exact_namespace_wins_over_globs_and_unmatched_gets_nothing() -> None:
    assert POLICY.grants("team-a").priority_class_names == ("gpu-batch",)
    assert POLICY.grants("team-b").s3_prefixes == ("s3://engines/{namespace}/",)
    assert POLICY.grants("other").s3_prefixes == ()


@pytest.mark.parametrize(
    ("uri", "prefix", "covered"),
    [
        ("s3://models/team-a/llama/", "s3://models/team-a/", True),
        ("s3://models/team-a", "s3://models/team-a/", True),
        ("s3://models/team-ab/llama", "s3://models/team-a", False),  # whole segments only
        ("s3://models//team-a//x", "s3://models/team-a", True),
        ("s3://MODELS/team-a/x", "s3://models/team-a", True),  # bucket names are lower-case
        ("s3://models/team-a/../team-b/x", "s3://models/team-a", False),
        ("s3://models/x", "s3://models", True),
        ("s3://other/team-a/x", "s3://models/team-a", False),
    ],
)
def test_under_prefix(uri: str, prefix: str, covered: bool) -> None:
    assert under_prefix(uri, prefix) is covered


def _access(ns: str, **overrides: Any) -> tuple[dict[str, bool], list[str]]:
    access, problems = s3_access(spec(**overrides), ns, POLICY, DEFAULT_EP)
    return {role: a.operator_identity for role, a in access.items()}, [str(p) for p in problems]


def test_no_secret_and_no_grant_is_refused_before_any_s3_call() -> None:
    """The confused deputy: the demo's spec without credentials in another namespace."""
    access, problems = _access("other")
    assert access == {}
    assert len(problems) == 2
    assert problems[0].startswith("spec.source.credentialsSecretRef: s3://models/llama/ is not a location")
    assert "name a Secret of this namespace" in problems[0] and "PITCREW_TENANT_POLICY" in problems[0]
    assert problems[1].startswith("spec.output.credentialsSecretRef:")


def test_a_secret_of_the_namespace_is_always_used_when_named() -> None:
    ref = {"name": "s3"}
    access, problems = _access(
        "other", **{"source.credentialsSecretRef": ref, "output.credentialsSecretRef": ref}
    )
    assert access == {"source": False, "output": False} and problems == []


def test_granted_prefixes_use_the_operator_identity() -> None:
    access, problems = _access(
        "team-a", **{"source.uri": "s3://models/team-a/llama", "output.uri": "s3://engines/team-a/out"}
    )
    assert access == {"source": True, "output": True} and problems == []
    # {namespace} in a glob rule grants each namespace its own prefix, not its neighbour's.
    access, problems = _access(
        "team-b",
        **{"output.uri": "s3://engines/team-b/x", "source.uri": "s3://engines/team-c/x",
           "source.credentialsSecretRef": {"name": "s3"}},
    )  # fmt: skip
    assert access == {"source": False, "output": True} and problems == []
    _, problems = _access("team-b", **{"output.uri": "s3://engines/team-c/x"})
    assert any(p.startswith("spec.output.credentialsSecretRef") for p in problems)


def test_operator_identity_never_goes_to_another_endpoint() -> None:
    """A granted prefix on an allowed but non-default endpoint still needs the tenant's Secret."""
    _, problems = _access(
        "team-a",
        **{"source.uri": "s3://models/team-a/x", "source.endpoint": "https://s3.team-a.example",
           "output.uri": "s3://engines/team-a/x"},
    )  # fmt: skip
    assert [p.split(":")[0] for p in problems] == ["spec.source.credentialsSecretRef"]


@pytest.mark.parametrize(
    ("ns", "endpoint", "allowed"),
    [
        ("team-a", "https://s3.team-a.example", True),
        ("team-a", DEFAULT_EP + "/", True),  # the default endpoint is always allowed
        ("team-a", "http://169.254.169.254", False),  # SSRF
        ("team-b", "https://s3.team-a.example", False),  # team-a's endpoint, not team-b's
    ],
)
def test_endpoints_are_allow_listed(ns: str, endpoint: str, allowed: bool) -> None:
    ref = {"name": "s3"}
    _, problems = _access(
        ns,
        **{
            "source.endpoint": endpoint,
            "source.credentialsSecretRef": ref,
            "output.credentialsSecretRef": ref,
        },
    )
    assert (problems == []) is allowed, problems
    if not allowed:
        assert problems[0].startswith(f"spec.source.endpoint: {endpoint} is not an endpoint")


def test_pvc_and_file_sources_need_no_s3_grant() -> None:
    access, problems = _access("other", **{"source.uri": "pvc://ckpt/llama", "output.uri": "pvc://engines/x"})
    assert access == {} and problems == []


def _pod(ns: str, **overrides: Any) -> list[str]:
    return [str(p) for p in pod_problems(spec(**overrides), ns, POLICY, IMAGE)]


@pytest.mark.parametrize(
    ("ns", "overrides", "field"),
    [
        ("team-a", {"builderImage": "registry.team-a/builder:2"}, None),
        ("team-a", {"builderImage": IMAGE}, None),  # the operator's own image is always fine
        ("other", {"builderImage": "registry.team-a/builder:2"}, "spec.builderImage"),
        ("other", {"builderImage": "evil/miner:1"}, "spec.builderImage"),
        ("team-a", {"target.priorityClassName": "gpu-batch"}, None),
        ("team-a", {"target.priorityClassName": "system-node-critical"}, "spec.target.priorityClassName"),
        ("team-a", {"target.tolerations": [{"key": "dedicated", "operator": "Exists"}]}, None),
        ("team-a", {"target.tolerations": [{"key": "pool/gpu", "operator": "Exists"}]}, None),
        ("other", {"target.tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}, None),
        ("team-a", {"target.tolerations": [{"operator": "Exists"}]}, "spec.target.tolerations[0].key"),
        ("other", {"target.tolerations": [{"key": "dedicated"}]}, "spec.target.tolerations[0].key"),
        ("team-a", {"target.nodeSelector": {"pool": "a100", "nvidia.com/gpu.memory": "80"}}, None),
        ("team-a", {"target.nodeSelector": {"kubernetes.io/hostname": "n1"}},
         "spec.target.nodeSelector.kubernetes.io/hostname"),
        ("team-a", {"target.resources": {"requests": {"cpu": "8", "memory": "64Gi"}}}, None),
        ("team-a", {"target.resources": {"limits": {"memory": "65Gi"}}},
         "spec.target.resources.limits.memory"),
        ("team-a", {"target.resources": {"requests": {"cpu": "16500m"}}},
         "spec.target.resources.requests.cpu"),
        ("team-a", {"target.resources": {"requests": {"ephemeral-storage": "1Gi"}}},
         "spec.target.resources.requests.ephemeral-storage"),
        ("other", {"target.resources": {"requests": {"cpu": "1"}}}, "spec.target.resources.requests.cpu"),
    ],
)  # fmt: skip
def test_pod_settings(ns: str, overrides: dict[str, Any], field: str | None) -> None:
    problems = _pod(ns, **overrides)
    if field is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(field + ":"), problems
        assert "remove it" in problems[0] or "lower it" in problems[0]


def test_gpu_count_cap() -> None:
    assert gpu_problems(4, "team-a", POLICY) == []
    (problem,) = gpu_problems(8, "team-a", POLICY)
    assert problem.field == "spec.target.gpuCount" and "maximum 4" in problem.message
    assert gpu_problems(8, "other", POLICY) == []  # no cap set: the GPU count follows the parallelism


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4", 4),
        ("500m", Decimal("0.5")),
        ("16Gi", 16 * 2**30),
        ("1e3", 1000),
        ("1.5G", 1_500_000_000),
        (2, 2),
    ],
)
def test_parse_quantity(text: str | int, value: int | Decimal) -> None:
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[1]", "give an object of namespace"),
        ("{bad", "not valid JSON"),
        ('{"a": {"s3Prefix": []}}', "PITCREW_TENANT_POLICY['a'].s3Prefix: unknown key"),
        ('{"a": {"s3Prefixes": ["models/x"]}}', "is not an s3://bucket/prefix URI"),
        ('{"a": {"endpoints": ["minio:9000"]}}', "http(s)://"),
        ('{"a": {"maxResources": {"memory": "lots"}}}', "PITCREW_TENANT_POLICY['a'].maxResources.memory"),
        ('{"a": {"builderImages": "x"}}', "give a list"),
    ],
)
def test_bad_policy_names_the_place(text: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as e:
        Settings.from_env({"PITCREW_TENANT_POLICY": text})
    assert fragment in str(e.value)
