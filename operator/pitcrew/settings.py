"""Operator settings from environment variables (documented in docs/configuration.md).

Pure: `Settings.from_env(mapping)` parses a mapping, so tests need no real environment. Bad values
raise SettingsError naming the variable, so a misconfigured Deployment fails once with a clear log
instead of crash-looping with a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from pitcrew.api.v1alpha1 import Backend

if TYPE_CHECKING:
    from pitcrew.tenancy import TenantPolicy

DEFAULT_BUILDER_IMAGE = "ghcr.io/pitcrew/builder:0.1.0"
DEFAULT_RTX_BUILDER_IMAGE = "ghcr.io/pitcrew/builder-rtx:0.1.0"


class SettingsError(ValueError):
    """A setting has a value the operator cannot use; the message names the variable."""


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    help: str


# The single table of settings: docs/configuration.md is checked against it by a test.
ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("PITCREW_BUILDER_IMAGE", DEFAULT_BUILDER_IMAGE, "Builder image for backend tensorrt-llm."),
    EnvVar(
        "PITCREW_CHECKPOINT_BUILDER_IMAGE", DEFAULT_BUILDER_IMAGE, "Builder image for backend checkpoint."
    ),
    EnvVar("PITCREW_RTX_BUILDER_IMAGE", DEFAULT_RTX_BUILDER_IMAGE, "Builder image for backend tensorrt-rtx."),
    EnvVar("PITCREW_IMAGE_PULL_POLICY", "IfNotPresent", "imagePullPolicy of builder containers."),
    EnvVar("PITCREW_S3_ENDPOINT", "", "Default S3 endpoint URL when a spec gives none (empty: AWS)."),
    EnvVar("PITCREW_S3_REGION", "us-east-1", "S3 region used for signing."),
    EnvVar(
        "PITCREW_NAMESPACES",
        "",
        "Comma-separated namespaces to watch (globs allowed); empty: all namespaces (cluster-wide).",
    ),
    EnvVar("PITCREW_JOB_TTL_SECONDS", "86400", "ttlSecondsAfterFinished of builder Jobs."),
    EnvVar(
        "PITCREW_UNSCHEDULABLE_GRACE_SECONDS",
        "300",
        "How long a builder pod may stay unschedulable (Queued) before the build fails as Unschedulable.",
    ),
    EnvVar("PITCREW_POLL_SECONDS", "10", "Interval of the per-build timer: progress, grace expiry, resync."),
    EnvVar(
        "PITCREW_MAX_ACTIVE_BUILDS",
        "8",
        "Cap on builder Jobs running at once, cluster-wide (creates, spec changes and builder upgrades "
        "alike); builds over it wait as Queued/WaitingForBuildSlot. 0: no cap.",
    ),
    EnvVar(
        "PITCREW_MAX_ACTIVE_GPUS",
        "0",
        "Cap on the GPUs of builder Jobs running at once, cluster-wide (a build's GPUs: gpuCount, else "
        "tensor x pipeline parallelism). 0: no cap.",
    ),
    EnvVar(
        "PITCREW_MAX_ACTIVE_BUILDS_PER_NAMESPACE",
        "0",
        "Cap on builder Jobs running at once in any one namespace. 0: no cap.",
    ),
    EnvVar(
        "PITCREW_MAX_ACTIVE_GPUS_PER_NAMESPACE",
        "0",
        "Cap on the GPUs of builder Jobs running at once in any one namespace. 0: no cap.",
    ),
    EnvVar("PITCREW_RETRY_SECONDS", "30", "Delay before retrying a transient error (S3 or API)."),
    EnvVar("PITCREW_METRICS_PORT", "8080", "Port of the Prometheus /metrics endpoint; 0 disables it."),
    EnvVar("PITCREW_HEALTH_PORT", "8081", "Port of kopf's liveness endpoint /healthz; 0 disables it."),
    EnvVar("PITCREW_RUN_AS_USER", "1000", "runAsUser (and runAsGroup, fsGroup) of builder pods."),
    EnvVar("PITCREW_SCRATCH_SIZE_LIMIT", "", "sizeLimit of the /scratch emptyDir (e.g. 200Gi); empty: none."),
    EnvVar("PITCREW_LOG_FORMAT", "json", "Log format: json (structured) or plain."),
    EnvVar(
        "PITCREW_TENANT_POLICY",
        "",
        "Per-namespace grants (JSON, from the chart's `tenancy` values): S3 prefixes the operator may "
        "access with its own identity, endpoints, builder images, priority classes, toleration and "
        "nodeSelector keys, maximum resources. Empty: nothing granted (see docs/controller.md#tenancy).",
    ),
)


def _no_grants() -> TenantPolicy:
    from pitcrew.tenancy import TenantPolicy

    return TenantPolicy()


@dataclass(frozen=True)
class Settings:
    builder_images: Mapping[Backend, str] = field(
        default_factory=lambda: {
            Backend.TENSORRT_LLM: DEFAULT_BUILDER_IMAGE,
            Backend.CHECKPOINT: DEFAULT_BUILDER_IMAGE,
            Backend.TENSORRT_RTX: DEFAULT_RTX_BUILDER_IMAGE,
        }
    )
    image_pull_policy: str = "IfNotPresent"
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    namespaces: tuple[str, ...] = ()
    job_ttl_seconds: int = 86400
    unschedulable_grace_seconds: int = 300
    poll_seconds: float = 10.0
    retry_seconds: float = 30.0
    max_active_builds: int = 8
    max_active_gpus: int = 0
    max_active_builds_per_namespace: int = 0
    max_active_gpus_per_namespace: int = 0
    metrics_port: int = 8080
    health_port: int = 8081
    run_as_user: int = 1000
    scratch_size_limit: str | None = None
    log_format: str = "json"
    tenant_policy: TenantPolicy = field(default_factory=_no_grants)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        raw = {v.name: (env.get(v.name) or v.default).strip() for v in ENV_VARS}
        policy = raw["PITCREW_IMAGE_PULL_POLICY"]
        if policy not in ("Always", "IfNotPresent", "Never"):
            raise SettingsError(f"PITCREW_IMAGE_PULL_POLICY={policy!r}: use Always, IfNotPresent or Never")
        endpoint = raw["PITCREW_S3_ENDPOINT"] or None
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise SettingsError(
                f"PITCREW_S3_ENDPOINT={endpoint!r}: give a URL starting with http:// or https://"
            )
        log_format = raw["PITCREW_LOG_FORMAT"]
        if log_format not in ("json", "plain"):
            raise SettingsError(f"PITCREW_LOG_FORMAT={log_format!r}: use json or plain")
        for name in (
            "PITCREW_BUILDER_IMAGE",
            "PITCREW_CHECKPOINT_BUILDER_IMAGE",
            "PITCREW_RTX_BUILDER_IMAGE",
        ):
            if not raw[name] or " " in raw[name]:
                raise SettingsError(
                    f"{name}={raw[name]!r}: give an image reference such as {DEFAULT_BUILDER_IMAGE}"
                )
        from pitcrew.tenancy import PolicyError, TenantPolicy

        try:
            tenant_policy = TenantPolicy.parse(env.get("PITCREW_TENANT_POLICY") or "")
        except PolicyError as e:
            raise SettingsError(str(e)) from None
        return cls(
            builder_images={
                Backend.TENSORRT_LLM: raw["PITCREW_BUILDER_IMAGE"],
                Backend.CHECKPOINT: raw["PITCREW_CHECKPOINT_BUILDER_IMAGE"],
                Backend.TENSORRT_RTX: raw["PITCREW_RTX_BUILDER_IMAGE"],
            },
            image_pull_policy=policy,
            s3_endpoint=endpoint,
            s3_region=raw["PITCREW_S3_REGION"] or "us-east-1",
            namespaces=tuple(ns.strip() for ns in raw["PITCREW_NAMESPACES"].split(",") if ns.strip()),
            job_ttl_seconds=_int(raw, "PITCREW_JOB_TTL_SECONDS", minimum=0),
            unschedulable_grace_seconds=_int(raw, "PITCREW_UNSCHEDULABLE_GRACE_SECONDS", minimum=0),
            poll_seconds=_float(raw, "PITCREW_POLL_SECONDS", minimum=0.1),
            retry_seconds=_float(raw, "PITCREW_RETRY_SECONDS", minimum=0.1),
            max_active_builds=_int(raw, "PITCREW_MAX_ACTIVE_BUILDS", minimum=0),
            max_active_gpus=_int(raw, "PITCREW_MAX_ACTIVE_GPUS", minimum=0),
            max_active_builds_per_namespace=_int(raw, "PITCREW_MAX_ACTIVE_BUILDS_PER_NAMESPACE", minimum=0),
            max_active_gpus_per_namespace=_int(raw, "PITCREW_MAX_ACTIVE_GPUS_PER_NAMESPACE", minimum=0),
            metrics_port=_int(raw, "PITCREW_METRICS_PORT", minimum=0, maximum=65535),
            health_port=_int(raw, "PITCREW_HEALTH_PORT", minimum=0, maximum=65535),
            run_as_user=_int(raw, "PITCREW_RUN_AS_USER", minimum=1),
            scratch_size_limit=raw["PITCREW_SCRATCH_SIZE_LIMIT"] or None,
            log_format=log_format,
            tenant_policy=tenant_policy,
        )

    def exact_namespaces(self) -> tuple[str, ...] | None:
        """The watched namespaces when they are plain names (no globs, no negation): then every
        LIST is per namespace, so a namespaced install (Roles only) suffices. None: cluster-wide."""
        if not self.namespaces or any(c in ns for ns in self.namespaces for c in "*?[]!"):
            return None
        return self.namespaces

    def builder_image(self, backend: Backend) -> str:
        return self.builder_images[backend]

    def describe(self) -> dict[str, Any]:
        """For the startup log line."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["builder_images"] = {str(k): v for k, v in self.builder_images.items()}
        out["tenant_policy"] = [pattern for pattern, _ in self.tenant_policy.rules]
        return out


def _int(raw: Mapping[str, str], name: str, *, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(raw[name])
    except ValueError:
        raise SettingsError(f"{name}={raw[name]!r}: give a whole number") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise SettingsError(f"{name}={value}: must be {bound}")
    return value


def _float(raw: Mapping[str, str], name: str, *, minimum: float) -> float:
    try:
        value = float(raw[name])
    except ValueError:
        raise SettingsError(f"{name}={raw[name]!r}: give a number of seconds") from None
    if value < minimum:
        raise SettingsError(f"{name}={value}: must be at least {minimum}")
    return value
