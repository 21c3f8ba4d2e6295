"""The contracts between the controller and the builder.

- BuildPlan: what the controller resolves from an EngineBuild and hands the builder (JSON in the
  Job's $PITCREW_PLAN_JSON; `--plan FILE` for local runs). Everything the builder needs except
  credentials, which arrive as env vars from Secret references (see CREDENTIAL_ENV).
- Manifest: manifest.json, written last under <output>/<cacheKey>/; its presence is the commit point
  of a published engine and what a cache hit reads.
- BuildResult: the builder's short report on the termination-message path (under 4 KiB).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pitcrew.api import sizing
from pitcrew.api.reasons import Reason
from pitcrew.api.v1alpha1 import (
    ApiModel,
    Backend,
    BuildOptions,
    ModelOverrides,
    Parallelism,
    Quantization,
    SourceFormat,
)

# The env var of the builder container that carries the BuildPlan JSON (set by the controller).
PLAN_JSON_ENV = "PITCREW_PLAN_JSON"
MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
TERMINATION_MESSAGE_LIMIT = 4096

# Env var names the builder reads credentials from; the controller fills them with secretKeyRef.
CREDENTIAL_ENV = {
    "source": ("PITCREW_SOURCE_ACCESS_KEY_ID", "PITCREW_SOURCE_SECRET_ACCESS_KEY"),
    "output": ("PITCREW_OUTPUT_ACCESS_KEY_ID", "PITCREW_OUTPUT_SECRET_ACCESS_KEY"),
}


class ResolvedSizes(ApiModel):
    max_input_len: int
    max_seq_len: int
    max_batch_size: int
    max_beam_width: int
    max_num_tokens: int
    opt_num_tokens: int | None = None


def plan_sizes(build: BuildOptions) -> ResolvedSizes:
    """The resolved sizes a plan carries for these build options."""
    sizes = sizing.sizes_for(build)
    return ResolvedSizes(
        max_input_len=sizes.max_input_len,
        max_seq_len=sizes.max_seq_len,
        max_batch_size=sizes.max_batch_size,
        max_beam_width=sizes.max_beam_width,
        max_num_tokens=sizes.max_num_tokens,
        opt_num_tokens=sizes.opt_num_tokens,
    )


class PlanSource(ApiModel):
    uri: str
    format: SourceFormat
    revision: str | None = None
    endpoint: str | None = None
    # The identity the cache key was computed from (revision, or a digest of the object listing).
    identity: str | None = None


class PlanOutput(ApiModel):
    uri: str = Field(..., description="Output prefix as the user gave it.")
    engine_uri: str = Field(..., description="<uri>/<cacheKey>/ : where this build publishes.")
    endpoint: str | None = None


class PlanTarget(ApiModel):
    compute_capability: str
    gpu_product: str | None = None
    gpu_count: int = 0


class BuildPlan(ApiModel):
    api_version: Literal["pitcrew.dev/v1alpha1"] = "pitcrew.dev/v1alpha1"
    kind: Literal["BuildPlan"] = "BuildPlan"
    name: str = Field(..., description="namespace/name of the EngineBuild, for logs.")
    generation: int = 0
    cache_key: str
    cache_key_inputs: dict[str, Any] = Field(default_factory=dict)
    builder_version: str = Field(..., description="Builder image the cache key was computed for.")
    source: PlanSource
    model: ModelOverrides | None = None
    parallelism: Parallelism
    build: BuildOptions
    sizes: ResolvedSizes
    quantization: Quantization
    backend: Backend
    target: PlanTarget
    output: PlanOutput


class ManifestFile(ApiModel):
    path: str
    size: int
    sha256: str


class Versions(ApiModel):
    pitcrew: str | None = None
    tensorrt_llm: str | None = None
    tensorrt: str | None = None
    torch: str | None = None


class Manifest(ApiModel):
    schema_version: int = MANIFEST_SCHEMA_VERSION
    cache_key: str
    cache_key_inputs: dict[str, Any] = Field(default_factory=dict)
    backend: Backend
    compute_capability: str
    files: list[ManifestFile]
    versions: Versions
    build: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    created_at: str

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)


class BuildResult(ApiModel):
    """Written to the termination-message path; kept small (the kubelet truncates at 4 KiB)."""

    ok: bool
    cache_key: str
    engine_uri: str | None = None
    manifest_uri: str | None = None
    manifest_sha256: str | None = None
    size_bytes: int | None = None
    file_count: int | None = None
    compute_capability: str | None = None
    backend: str | None = None
    versions: Versions | None = None
    # On failure: a reason the controller maps to status (InvalidCheckpoint, BuildError, ...).
    reason: str | None = None
    message: str | None = None


# Written by the builder under the engine prefix while it runs (not part of the manifest): the
# builder has no Kubernetes token, so the controller reads progress from here.
PROGRESS_FILE = ".pitcrew-progress.json"


class ProgressReport(ApiModel):
    stage: str
    percent: int
    message: str = ""
    updated_at: str


# Failure reasons the builder reports in BuildResult.reason (the controller adds OOMKilled,
# ImagePullError, DeadlineExceeded and Unschedulable from the Job and Pod state).
REASON_INVALID_CHECKPOINT = Reason.INVALID_CHECKPOINT
REASON_INVALID_SPEC = Reason.INVALID_SPEC
REASON_SOURCE_UNAVAILABLE = Reason.SOURCE_UNAVAILABLE
REASON_BUILD_ERROR = Reason.BUILD_ERROR
REASON_PUBLISH_ERROR = Reason.PUBLISH_ERROR
