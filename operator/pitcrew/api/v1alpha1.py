"""The EngineBuild API, pitcrew.dev/v1alpha1: the one source of truth for the CRD schema.

Field names follow Kubernetes API conventions (camelCase on the wire); each build option says which
Megatron-LM TRTLLMEngineBuilder / TensorRT-LLM option it maps to. `crds/` is generated from these
models by `python -m pitcrew.api.crdgen`; CEL rules (`x-kubernetes-validations`) refuse nonsense at
apply time, so the controller only checks what the API server cannot know.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP = "pitcrew.dev"
VERSION = "v1alpha1"
API_VERSION: Literal["pitcrew.dev/v1alpha1"] = "pitcrew.dev/v1alpha1"
KIND: Literal["EngineBuild"] = "EngineBuild"
PLURAL = "enginebuilds"
SINGULAR = "enginebuild"
SHORT_NAMES = ["eb"]
CATEGORIES = ["pitcrew"]


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One `x-kubernetes-validations` entry."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields refused (the API server prunes them)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_api(self) -> dict[str, Any]:
        """The wire form, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SourceFormat(StrEnum):
    MEGATRON = "megatron"
    HF = "hf"
    TRTLLM_CHECKPOINT = "trtllm-checkpoint"


class Backend(StrEnum):
    TENSORRT_LLM = "tensorrt-llm"
    TENSORRT_RTX = "tensorrt-rtx"
    CHECKPOINT = "checkpoint"


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    BUILDING = "Building"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class SecretReference(ApiModel):
    """S3 credentials held in a Secret of the EngineBuild's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, description="Name of the Secret.")]
    access_key_id_key: str = Field(
        "AWS_ACCESS_KEY_ID", min_length=1, description="Key in the Secret holding the access key id."
    )
    secret_access_key_key: str = Field(
        "AWS_SECRET_ACCESS_KEY", min_length=1, description="Key in the Secret holding the secret access key."
    )


_SOURCE_URI = r"^(s3://[a-z0-9][a-z0-9.\-]{1,62}(/.*)?|pvc://[a-z0-9][a-z0-9.\-]*(/.*)?|file:///.+)$"
_OUTPUT_URI = r"^(s3://[a-z0-9][a-z0-9.\-]{1,62}(/.*)?|pvc://[a-z0-9][a-z0-9.\-]*(/.*)?)$"


class SourceSpec(ApiModel):
    """Where the trained checkpoint is and what layout it has."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!self.uri.contains(',') && !self.uri.contains(' ')",
                    "source.uri names exactly one location (no lists, no spaces): "
                    "create one EngineBuild per checkpoint",
                    ".uri",
                ),
            ]
        }
    )
    uri: str = Field(
        ...,
        pattern=_SOURCE_URI,
        max_length=2048,
        description="Checkpoint location: s3://bucket/prefix, pvc://claim/path (a PersistentVolumeClaim "
        "in this namespace), or file:///path for development. Megatron: the directory holding "
        "mp_rank_* or a torch_dist checkpoint; hf: the directory with config.json and *.safetensors.",
    )
    format: SourceFormat = Field(
        SourceFormat.HF,
        description="Checkpoint layout: megatron (legacy mp_rank_XX or torch_dist), hf (Hugging Face), "
        "trtllm-checkpoint (config.json + rank{N}.safetensors, passed through after validation).",
    )
    revision: str | None = Field(
        None,
        max_length=256,
        description="Pinned revision or ETag of the checkpoint. Part of the cache key; when unset the "
        "controller derives the identity from the object listing (keys, sizes, ETags).",
    )
    endpoint: str | None = Field(
        None, pattern=r"^https?://", description="S3 endpoint URL; defaults to the operator's setting."
    )
    credentials_secret_ref: SecretReference | None = Field(
        None,
        description="Secret of this namespace with S3 credentials for the source. Needed for s3:// unless "
        "the operator's admin granted the prefix to this namespace (docs/controller.md#tenancy); none for "
        "pvc:// sources.",
    )


MegatronArgs = Annotated[
    dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=100)],
        str | int | float | bool,
    ],
    Field(max_length=200),
    # Values of several scalar types: Kubernetes' structural schema can only keep them unchecked.
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


class ModelOverrides(ApiModel):
    """Model facts for checkpoints that do not state them (Megatron torch_dist without args)."""

    architecture: (
        Literal[
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "GPTForCausalLM",
            "GPT2LMHeadModel",
            "GemmaForCausalLM",
            "FalconForCausalLM",
            "DeciLMForCausalLM",
        ]
        | None
    ) = Field(None, description="Model architecture (Megatron: the TRT-LLM model class it maps to).")
    dtype: Literal["float16", "bfloat16", "float32"] | None = Field(
        None, description="Weight and activation dtype of the built engine; default: the checkpoint's."
    )
    num_attention_heads: int | None = Field(
        None, ge=1, description="Attention heads; when given, tensor parallelism must divide it."
    )
    num_key_value_heads: int | None = Field(
        None, ge=1, description="Key/value heads (query groups for GQA); must divide numAttentionHeads."
    )
    vocab_size: int | None = Field(None, ge=1, description="Vocabulary size before TP padding.")
    megatron_args: MegatronArgs | None = Field(
        None,
        description=(
            "Megatron-LM training arguments by their Python names (num_layers, hidden_size, "
            "num_attention_heads, ffn_hidden_size, normalization, swiglu, position_embedding_type, "
            "layernorm_epsilon, ...), for a Megatron checkpoint whose saved args lack them or are "
            "wrong; they take precedence over the saved args. The builder names the ones it needs."
        ),
    )


class Parallelism(ApiModel):
    tensor: int = Field(1, ge=1, le=64, description="Tensor parallel size (TRT-LLM Mapping.tp_size).")
    pipeline: int = Field(1, ge=1, le=64, description="Pipeline parallel size (TRT-LLM Mapping.pp_size).")


PluginDtype = Literal["auto", "float16", "bfloat16", "float32", "disable"]


class LoraOptions(ApiModel):
    """Not supported: kept in the schema only so that a spec using it is refused with a reason."""

    enabled: bool = Field(
        False,
        description="Not supported: true is refused (TRT-LLM 1.2 needs real adapter checkpoints, "
        "LoraConfig.lora_dir, which Pitcrew does not fetch yet).",
    )
    max_lora_rank: int = Field(64, ge=1, le=1024, description="max_lora_rank (Megatron default 64).")
    target_modules: list[str] = Field(
        default_factory=list, description="lora_target_modules, e.g. attn_qkv, attn_dense, mlp_h_to_4h."
    )


class BuildOptions(ApiModel):
    """The options of Megatron-LM's TRTLLMEngineBuilder.build_and_save_engine, same meaning and defaults."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.maxSeqLen) || self.maxSeqLen >= self.maxInputLen",
                    "build.maxSeqLen must be at least build.maxInputLen (it is the prompt plus the output)",
                    ".maxSeqLen",
                ),
                cel(
                    "!has(self.lora) || !has(self.lora.enabled) || !self.lora.enabled",
                    "build.lora is not supported yet: TensorRT-LLM 1.2 builds LoRA engines only from real "
                    "adapter checkpoints (lora_dir), which Pitcrew does not fetch; remove build.lora",
                    ".lora.enabled",
                ),
                cel(
                    "!has(self.optNumTokens) || !has(self.maxNumTokens) || "
                    "self.optNumTokens <= self.maxNumTokens",
                    "build.optNumTokens must not exceed build.maxNumTokens",
                    ".optNumTokens",
                ),
            ]
        }
    )
    max_input_len: int = Field(1024, ge=1, le=1048576, description="max_input_len: longest prompt.")
    max_output_len: int = Field(1024, ge=1, le=1048576, description="max_output_len: longest generation.")
    max_seq_len: int | None = Field(
        None, ge=1, le=2097152, description="max_seq_len; default maxInputLen + maxOutputLen."
    )
    max_batch_size: int = Field(4, ge=1, le=65536, description="max_batch_size (Megatron default 4).")
    max_beam_width: int = Field(1, ge=1, le=64, description="max_beam_width.")
    max_num_tokens: int | None = Field(
        None, ge=1, description="max_num_tokens; default computed as TRT-LLM's check_max_num_tokens does."
    )
    opt_num_tokens: int | None = Field(
        None, ge=1, description="opt_num_tokens; default min(maxBatchSize * maxBeamWidth, maxNumTokens)."
    )
    paged_kv_cache: bool = Field(True, description="paged_kv_cache (PluginConfig paged KV cache).")
    tokens_per_block: int = Field(
        128, ge=1, le=1024, multiple_of=1, description="tokens_per_block of the paged KV cache."
    )
    remove_input_padding: bool = Field(True, description="remove_input_padding (packed inputs).")
    paged_context_fmha: bool = Field(False, description="paged_context_fmha (use_paged_context_fmha).")
    gpt_attention_plugin: PluginDtype = Field("auto", description="gpt_attention_plugin dtype.")
    gemm_plugin: PluginDtype = Field("auto", description="gemm_plugin dtype.")
    multiple_profiles: bool = Field(False, description="multiple_profiles (several TensorRT profiles).")
    reduce_fusion: bool = Field(
        False,
        description="reduce_fusion (fused all-reduce). TRT-LLM 1.2 applies it only to LlamaForCausalLM "
        "checkpoints with parallelism.tensor > 1; other cases are refused rather than silently dropped.",
    )
    use_refit: bool = Field(False, description="use_refit (refittable engine).")
    lora: LoraOptions = Field(
        default_factory=LoraOptions, description="Not supported (enabled: true is refused with the reason)."
    )
    max_prompt_embedding_table_size: int = Field(
        0, ge=0, description="max_prompt_embedding_table_size (p-tuning); 0 turns it off."
    )
    workers: int = Field(
        1, ge=1, le=64, description="Ranks built in parallel; serial (1) is the robust default."
    )


BUILTIN_CALIBRATION = "builtin:tiny-text"


class Calibration(ApiModel):
    """Text the builder runs through the model to measure activation and KV-cache ranges (max
    calibration), for FP8 weights/activations and FP8/INT8 KV cache."""

    dataset: str = Field(
        BUILTIN_CALIBRATION,
        min_length=1,
        max_length=2048,
        pattern=r"^(builtin:tiny-text|(s3|file|pvc)://.+)$",
        description="builtin:tiny-text (a small English text set shipped in the builder) or the URI "
        "(s3://, file://, pvc://) of a .txt file (one sample per line) or a .jsonl file whose lines "
        "hold 'text' (tokenized with the source's tokenizer) or 'input_ids' (used as they are).",
    )
    samples: int = Field(64, ge=1, le=4096, description="Number of calibration samples used.")
    seq_len: int = Field(256, ge=8, le=32768, description="Tokens per sample (longer ones are cut).")


class Quantization(ApiModel):
    weights: Literal["none", "fp8", "int8", "int4"] = Field(
        "none",
        description="Weight quantization: fp8 (FP8 weights and activations, Megatron's FP8 path), "
        "int8 / int4 (weight-only W8A16 / W4A16, quantized by TRT-LLM at build).",
    )
    kv_cache: Literal["none", "fp8", "int8"] = Field("none", description="KV cache quantization.")
    group_size: int = Field(128, ge=1, description="Group size for int4 weight-only quantization.")
    calibration: Calibration = Field(
        default_factory=Calibration,
        description="Calibration set for weights fp8 and kvCache fp8/int8 (ignored otherwise).",
    )

    def calibrated(self) -> bool:
        """Whether the build measures activation or KV-cache scales (and so reads the calibration)."""
        return self.weights == "fp8" or self.kv_cache != "none"


class Toleration(ApiModel):
    key: str | None = Field(None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal.")
    value: str | None = Field(None, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(None, description="How long a NoExecute taint is tolerated.")


Quantity = Annotated[int | str, Field(json_schema_extra={"x-kubernetes-int-or-string": True})]


class Resources(ApiModel):
    requests: dict[str, Quantity] | None = Field(None, description="Builder container requests.")
    limits: dict[str, Quantity] | None = Field(
        None, description="Builder container limits; the GPU limit is set from target.gpuCount."
    )


class TargetSpec(ApiModel):
    """The GPU the engine is for; engines only load on the compute capability they were built for."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.gpuProduct) || has(self.computeCapability)",
                    "target needs gpuProduct (e.g. NVIDIA-A100-SXM4-80GB) or computeCapability (e.g. 8.0)",
                ),
            ]
        }
    )
    gpu_product: str | None = Field(
        None,
        max_length=128,
        description="GPU product label value; becomes a nodeSelector on nvidia.com/gpu.product.",
    )
    compute_capability: str | None = Field(
        None,
        pattern=r"^[0-9]{1,2}\.[0-9]$",
        description="Compute capability (SM) the engine is for, e.g. 8.0, 8.9, 9.0; "
        "default: looked up from gpuProduct. Part of the cache key.",
    )
    gpu_count: int | None = Field(
        None,
        ge=0,
        le=64,
        description="GPUs requested; default tensor x pipeline (0 for the checkpoint backend).",
    )
    node_selector: dict[str, str] | None = Field(None, description="Extra nodeSelector for the builder pod.")
    tolerations: list[Toleration] | None = Field(None, description="Tolerations for the builder pod.")
    resources: Resources | None = Field(None, description="Extra resources for the builder container.")
    priority_class_name: str | None = Field(None, description="priorityClassName of the builder pod.")


class OutputSpec(ApiModel):
    uri: str = Field(
        ...,
        pattern=_OUTPUT_URI,
        max_length=2048,
        description="Where engines go: s3://bucket/prefix (or pvc://claim/path). The engine is published "
        "under <uri>/<cacheKey>/ with manifest.json written last.",
    )
    endpoint: str | None = Field(
        None, pattern=r"^https?://", description="S3 endpoint URL; defaults to the operator's setting."
    )
    credentials_secret_ref: SecretReference | None = Field(
        None,
        description="Secret of this namespace with S3 credentials for the output (the controller uses it "
        "too). Needed for s3:// unless the operator's admin granted the prefix to this namespace.",
    )
    deletion_policy: DeletionPolicy = Field(
        DeletionPolicy.RETAIN,
        description="Retain (default) keeps published engines when the EngineBuild is deleted; "
        "Delete removes them.",
    )


class EngineBuildSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.model) || !has(self.model.numAttentionHeads) || "
                    "self.model.numAttentionHeads % self.parallelism.tensor == 0",
                    "parallelism.tensor must divide model.numAttentionHeads",
                    ".parallelism.tensor",
                ),
                cel(
                    "!has(self.model) || !has(self.model.numKeyValueHeads) || "
                    "self.model.numKeyValueHeads % self.parallelism.tensor == 0 || "
                    "self.parallelism.tensor % self.model.numKeyValueHeads == 0",
                    "parallelism.tensor must divide model.numKeyValueHeads or be a multiple of it",
                    ".parallelism.tensor",
                ),
                cel(
                    "self.backend != 'tensorrt-rtx' || !has(self.target.computeCapability) || "
                    "!(self.target.computeCapability in ['9.0', '10.0', '10.3'])",
                    "TensorRT-RTX cannot build for Hopper (9.0) or Blackwell datacenter (10.x) GPUs: "
                    "use backend tensorrt-llm",
                    ".target.computeCapability",
                ),
                cel(
                    "self.backend != 'tensorrt-rtx' || "
                    "(self.parallelism.tensor == 1 && self.parallelism.pipeline == 1)",
                    "tensorrt-rtx builds single-GPU engines: set parallelism.tensor and pipeline to 1",
                    ".backend",
                ),
                cel(
                    "!has(self.target.computeCapability) || "
                    "!(self.target.computeCapability in ['7.0', '7.5', '8.0', '8.6', '8.7']) || "
                    "(self.quantization.weights != 'fp8' && self.quantization.kvCache != 'fp8')",
                    "quantization fp8 (weights or kvCache) needs compute capability 8.9 or newer: "
                    "use int8 or target a newer GPU",
                    ".quantization",
                ),
                cel(
                    "self.quantization.weights != 'fp8' || self.backend != 'tensorrt-rtx'",
                    "quantization.weights fp8 needs backend tensorrt-llm",
                    ".quantization.weights",
                ),
            ]
        }
    )
    source: SourceSpec = Field(..., description="The trained checkpoint.")
    model: ModelOverrides | None = Field(None, description="Model facts the checkpoint does not state.")
    parallelism: Parallelism = Field(
        default_factory=Parallelism, description="Tensor and pipeline parallelism."
    )
    build: BuildOptions = Field(default_factory=BuildOptions, description="Engine build options.")
    quantization: Quantization = Field(default_factory=Quantization, description="Quantization.")
    backend: Backend = Field(
        Backend.TENSORRT_LLM,
        description="tensorrt-llm (TRT-LLM 1.2 engine build), tensorrt-rtx (TensorRT for RTX, single GPU, "
        "SM75-SM89 and SM120), or checkpoint (convert only: publish the TRT-LLM checkpoint).",
    )
    target: TargetSpec = Field(..., description="The GPU the engine is built for.")
    output: OutputSpec = Field(..., description="Where the engine is published.")
    builder_image: str | None = Field(
        None,
        max_length=512,
        description="Builder image override; default: the operator's image for the backend. Part of the "
        "cache key, so a new image rebuilds.",
    )
    timeout_seconds: int = Field(
        14400, ge=60, le=604800, description="Build deadline (the Job's activeDeadlineSeconds)."
    )
    retry_limit: int = Field(1, ge=0, le=10, description="Retries of a failed build pod (Job backoffLimit).")


class Condition(ApiModel):
    type: str = Field(..., description="Ready, Reconciling or Stalled (kstatus).")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field(..., description="CamelCase reason.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str = Field(..., description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="Generation the condition was computed for.")


class EngineRecord(ApiModel):
    uri: str = Field(..., description="Engine directory URI (<output>/<cacheKey>/).")
    manifest_uri: str = Field(..., description="URI of manifest.json.")
    size_bytes: int = Field(..., description="Total size of the published files.")
    file_count: int = Field(..., description="Number of published files (manifest excluded).")
    manifest_sha256: str = Field(..., description="sha256 of manifest.json.")
    compute_capability: str | None = Field(None, description="GPU compute capability the engine is for.")
    trtllm_version: str | None = Field(None, description="TensorRT-LLM version that built it.")
    tensorrt_version: str | None = Field(None, description="TensorRT (or TensorRT-RTX) version.")
    backend: str | None = Field(None, description="Backend that built it.")


class Progress(ApiModel):
    stage: str = Field(..., description="fetch, convert, compile, validate or publish.")
    percent: int = Field(..., ge=0, le=100, description="Overall percent done.")


class JobRecord(ApiModel):
    name: str = Field(..., description="Name of the builder Job.")
    attempts: int = Field(0, description="Builder pods started (retries included).")


MAX_PUBLISHED_ENGINES = 16  # status.publishedEngines keeps the newest this many


class PublishedEngine(ApiModel):
    uri: str = Field(..., description="Engine directory URI (<output>/<cacheKey>/).")
    endpoint: str = Field("", description="S3 endpoint it was published on (empty: AWS).")


class EngineBuildStatus(ApiModel):
    phase: Phase | None = Field(None, description="Pending, Queued, Building, Succeeded or Failed.")
    message: str | None = Field(None, description="What is happening, or why it failed.")
    reason: str | None = Field(None, description="Machine-readable reason of the last transition.")
    observed_generation: int | None = Field(None, description="Spec generation this status describes.")
    conditions: list[Condition] | None = Field(
        None,
        description="kstatus conditions (Ready, Reconciling, Stalled).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    cache_key: str | None = Field(None, description="Content address of the build (sha256).")
    cache_hit: bool | None = Field(None, description="True when served from a published engine.")
    builder_image: str | None = Field(None, description="Builder image the build used.")
    engine: EngineRecord | None = Field(None, description="The published engine.")
    published_engines: list[PublishedEngine] | None = Field(
        None,
        max_length=MAX_PUBLISHED_ENGINES,
        description="Engines this object's builds published, newest last (at most 16): with "
        "deletionPolicy Delete each is removed when the object is deleted, unless another EngineBuild "
        "uses it.",
    )
    job: JobRecord | None = Field(None, description="The builder Job.")
    start_time: str | None = Field(None, description="When the build started (RFC 3339).")
    completion_time: str | None = Field(None, description="When the build finished (RFC 3339).")
    progress: Progress | None = Field(None, description="Stage and percent of a running build.")


class EngineBuild(ApiModel):
    """An engine build: a checkpoint, how to build it, for which GPU, and where the engine goes."""

    model_config = ConfigDict(extra="allow")
    api_version: Literal["pitcrew.dev/v1alpha1"] = API_VERSION
    kind: Literal["EngineBuild"] = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: EngineBuildSpec
    status: EngineBuildStatus | None = None


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.source.uri", "priority": 0},
    {"name": "Backend", "type": "string", "jsonPath": ".spec.backend"},
    {"name": "GPU", "type": "string", "jsonPath": ".spec.target.gpuProduct"},
    {"name": "Engine", "type": "string", "jsonPath": ".status.engine.uri"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
