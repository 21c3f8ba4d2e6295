"""tensorrt-llm backend: Megatron's TRTLLMEngineBuilder options on TensorRT-LLM 1.2's build API.

Per rank: `<Class>.from_checkpoint(ckpt_dir, rank=r)`, `tensorrt_llm.build(model, build_config)`,
`engine.save(engine_dir)` (rank{r}.engine; rank 0 also writes config.json). The option mapping is
pure (`plugin_settings`, `build_config_dict`) so it is tested without TensorRT-LLM; tensorrt_llm is
imported only inside the build, which runs in the TRT-LLM release image.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pitcrew.api.gpus import supports_fp8
from pitcrew.api.plan import BuildPlan
from pitcrew.api.sizing import sizes_for
from pitcrew.api.v1alpha1 import BuildOptions
from pitcrew_builder.backends.base import CompileContext, CompileResult
from pitcrew_builder.errors import BuildFailed, InvalidSpec
from pitcrew_builder.logging import log_event

LORA_UNSUPPORTED = (
    "build.lora is not supported: TensorRT-LLM 1.2 builds a LoRA engine only from real adapter "
    "checkpoints (LoraConfig.lora_dir; NeMo adapters cover attn_qkv only), which Pitcrew does not "
    "fetch yet. Remove build.lora"
)

# Checkpoint architecture -> TensorRT-LLM model class (tensorrt_llm.models.<name>).
_MODEL_CLASSES = {
    "LlamaForCausalLM": "LLaMAForCausalLM",
    "MistralForCausalLM": "LLaMAForCausalLM",
    "Qwen2ForCausalLM": "QWenForCausalLM",
    "GPT2LMHeadModel": "GPTForCausalLM",
}
TIMING_CACHE = "timing.cache"


def model_class_name(architecture: str) -> str:
    """LlamaForCausalLM -> LLaMAForCausalLM; GPT/Gemma/Falcon/DeciLM keep their names."""
    return _MODEL_CLASSES.get(architecture, architecture)


def _plugin_dtype(value: str) -> str | None:
    # The API's "disable" is TRT-LLM's None (plugin off); "auto" lets TRT-LLM pick the model dtype.
    return None if value == "disable" else value


@dataclass(frozen=True)
class PluginSettings:
    """What to set on a fresh PluginConfig, in order. `paged_kv_tokens_per_block` None = paging off."""

    attributes: dict[str, Any]
    paged_kv_tokens_per_block: int | None


# TensorRT-LLM 1.2 tensorrt_llm/builder.py build(): "Overriding reduce_fusion to False" unless
# mapping.tp_size > 1 and the checkpoint's architecture is LlamaForCausalLM (or Gemma2/Medusa,
# which Pitcrew does not convert). Mistral and Qwen2 checkpoints keep their own architecture name.
REDUCE_FUSION_ARCHITECTURES = frozenset({"LlamaForCausalLM"})


def reduce_fusion_problem(requested: bool, architecture: str, tp: int) -> str | None:
    """Why TRT-LLM would silently drop a requested reduceFusion; None when it is really built."""
    if not requested:
        return None
    if tp <= 1:
        return "build.reduceFusion needs parallelism.tensor > 1 (TensorRT-LLM turns it off): set it to false"
    if architecture not in REDUCE_FUSION_ARCHITECTURES:
        return (
            f"build.reduceFusion: TensorRT-LLM 1.2 applies it only to LlamaForCausalLM checkpoints, this one "
            f"is {architecture} (it would be turned off silently): set it to false"
        )
    return None


def plugin_settings(build: BuildOptions, architecture: str) -> PluginSettings:
    attrs: dict[str, Any] = {
        "gpt_attention_plugin": _plugin_dtype(build.gpt_attention_plugin),
        "gemm_plugin": _plugin_dtype(build.gemm_plugin),
        "remove_input_padding": build.remove_input_padding,
        "use_paged_context_fmha": build.paged_context_fmha,
        "multiple_profiles": build.multiple_profiles,
        "reduce_fusion": build.reduce_fusion,
    }
    if architecture == "DeciLMForCausalLM":
        attrs["use_fused_mlp"] = False  # DeciLM's variable FFN widths break the fused MLP
    return PluginSettings(attrs, build.tokens_per_block if build.paged_kv_cache else None)


def build_config_dict(
    plan: BuildPlan, architecture: str, timing_cache: Path, input_timing_cache: Path | None = None
) -> dict[str, Any]:
    """The dict BuildConfig.from_dict receives: sizes resolved as check_max_num_tokens does."""
    b = plan.build
    sizes = sizes_for(b)
    return {
        "max_input_len": sizes.max_input_len,
        "max_seq_len": sizes.max_seq_len,
        "max_batch_size": sizes.max_batch_size,
        "max_beam_width": sizes.max_beam_width,
        "max_num_tokens": sizes.max_num_tokens,
        "opt_num_tokens": sizes.opt_num_tokens,
        "max_prompt_embedding_table_size": b.max_prompt_embedding_table_size,
        "gather_context_logits": False,
        "gather_generation_logits": False,
        # Megatron builds weakly typed (precision flags); DeciLM needs strong typing.
        "strongly_typed": architecture == "DeciLMForCausalLM",
        "use_refit": b.use_refit,
        "multiple_profiles": b.multiple_profiles,
        # Explicit, inside the work dir: the default "model.cache" lands in the CWD.
        "output_timing_cache": str(timing_cache),
        "input_timing_cache": str(input_timing_cache) if input_timing_cache else None,
    }


def sizes_warnings(plan: BuildPlan, build_dict: dict[str, Any]) -> list[str]:
    """Differences between the controller's resolved sizes and ours (both use pitcrew.api.sizing)."""
    out = []
    for name in (
        "max_input_len",
        "max_seq_len",
        "max_batch_size",
        "max_beam_width",
        "max_num_tokens",
        "opt_num_tokens",
    ):
        planned = getattr(plan.sizes, name)
        if planned != build_dict[name]:
            out.append(f"plan.sizes.{name}={planned} but the build options resolve to {build_dict[name]}")
    return out


@dataclass(frozen=True)
class RankJob:
    """Everything one rank's build needs, as plain data (it may run in a spawned process)."""

    rank: int
    class_name: str
    checkpoint_dir: str
    engine_dir: str
    plugin: PluginSettings
    build: dict[str, Any]
    visible_device: str | None


def build_rank(job: RankJob) -> dict[str, str | None]:
    """Build and save one rank's engine with TensorRT-LLM. Returns the versions used."""
    if job.visible_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.visible_device
    import tensorrt_llm
    from tensorrt_llm.builder import BuildConfig
    from tensorrt_llm.plugin import PluginConfig

    try:
        model_cls = getattr(tensorrt_llm.models, job.class_name)
    except AttributeError as exc:
        raise BuildFailed(
            f"TensorRT-LLM {tensorrt_llm.__version__} has no model class {job.class_name}"
        ) from exc
    plugin_config = PluginConfig()
    for name, value in job.plugin.attributes.items():
        setattr(plugin_config, name, value)
    if job.plugin.paged_kv_tokens_per_block is not None:
        plugin_config.enable_paged_kv_cache(tokens_per_block=job.plugin.paged_kv_tokens_per_block)
    else:
        plugin_config.paged_kv_cache = False
    build_config = make_build_config(BuildConfig, job.build, plugin_config)
    model = model_cls.from_checkpoint(job.checkpoint_dir, rank=job.rank)
    engine = tensorrt_llm.build(model, build_config)
    engine.save(job.engine_dir)
    return {"tensorrt_llm": getattr(tensorrt_llm, "__version__", None), "tensorrt": _tensorrt_version()}


# Keys of build_config_dict that are not BuildConfig fields in every 1.x release:
# multiple_profiles is a PluginConfig field (set there); TRT-LLM's from_dict never read it.
PLUGIN_SIDE_KEYS = frozenset({"multiple_profiles"})


def make_build_config(cls: Any, values: dict[str, Any], plugin_config: Any) -> Any:
    """``BuildConfig(**values, plugin_config=...)`` with keys checked against the class's own fields.

    TensorRT-LLM up to 1.1 declares BuildConfig as a dataclass (``from_dict`` pops known keys and
    ignores the rest); 1.2.x makes it a pydantic model that rejects unknown keys. Calling the
    constructor with exactly the declared fields works for both and fails loudly on version skew
    instead of dropping a size silently.
    """
    known = accepted_fields(cls)
    kwargs = {k: v for k, v in values.items() if k not in PLUGIN_SIDE_KEYS}
    if known is not None:
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise BuildFailed(f"this TensorRT-LLM's BuildConfig has no field(s) {unknown}: version skew")
    return cls(**kwargs, plugin_config=plugin_config)


def accepted_fields(cls: Any) -> set[str] | None:
    """Field names of a dataclass or pydantic config class; None when it declares neither."""
    fields = getattr(cls, "model_fields", None)
    if isinstance(fields, dict):
        return set(fields)
    fields = getattr(cls, "__dataclass_fields__", None)
    return set(fields) if isinstance(fields, dict) else None


def _tensorrt_version() -> str | None:
    try:
        import tensorrt  # type: ignore[import-not-found]

        return str(tensorrt.__version__)
    except ImportError:
        return None


class TrtllmBackend:
    name = "tensorrt-llm"

    def check(self, plan: BuildPlan) -> None:
        if plan.build.reduce_fusion and plan.parallelism.tensor == 1:
            raise InvalidSpec(str(reduce_fusion_problem(True, "", 1)))
        if plan.build.lora.enabled:
            raise InvalidSpec(LORA_UNSUPPORTED)
        if plan.build.workers > 1 and plan.target.gpu_count and plan.build.workers > plan.target.gpu_count:
            log_event(
                "compile",
                "workers-capped",
                level="warning",
                workers=plan.build.workers,
                gpus=plan.target.gpu_count,
            )
        mismatches = sizes_warnings(plan, build_config_dict(plan, "", Path(TIMING_CACHE)))
        if mismatches:
            # Controller and builder resolve sizes with the same function; a difference is version skew.
            raise InvalidSpec("; ".join(mismatches))
        sm = plan.target.compute_capability
        if sm and not supports_fp8(sm):
            for name, value in (
                ("weights", plan.quantization.weights),
                ("kvCache", plan.quantization.kv_cache),
            ):
                if value == "fp8":
                    raise InvalidSpec(
                        f"quantization.{name} fp8 needs compute capability 8.9 or newer; "
                        f"target.computeCapability is {sm}: use int8 or a newer GPU"
                    )

    def jobs(self, ctx: CompileContext) -> list[RankJob]:
        plan, cfg = ctx.plan, ctx.checkpoint_config
        problem = reduce_fusion_problem(plan.build.reduce_fusion, cfg.architecture, cfg.tp)
        if problem:
            raise InvalidSpec(problem)
        class_name = model_class_name(cfg.architecture)
        world = cfg.mapping.world_size
        parallel = plan.build.workers > 1 and world > 1
        gpus = plan.target.gpu_count
        jobs = []
        for rank in range(world):
            # Serial ranks share one timing cache (later ranks reuse the tactics); parallel ones
            # each write their own so they never race on a file.
            cache = ctx.work_dir / (f"timing-rank{rank}.cache" if parallel else TIMING_CACHE)
            build = build_config_dict(plan, cfg.architecture, cache, cache if cache.exists() else None)
            jobs.append(
                RankJob(
                    rank=rank,
                    class_name=class_name,
                    checkpoint_dir=str(ctx.checkpoint_dir),
                    engine_dir=str(ctx.engine_dir),
                    plugin=plugin_settings(plan.build, cfg.architecture),
                    build=build,
                    visible_device=str(rank % gpus) if parallel and gpus else None,
                )
            )
        return jobs

    def compile(self, ctx: CompileContext) -> CompileResult:
        jobs = self.jobs(ctx)
        ctx.engine_dir.mkdir(parents=True, exist_ok=True)
        workers = min(ctx.plan.build.workers, len(jobs))
        versions: dict[str, str | None] = {}
        if workers <= 1:
            for i, job in enumerate(jobs):
                # Serial: later ranks read the timing cache the earlier ones wrote.
                job = _with_input_cache(job)
                ctx.progress(f"rank {job.rank}", i / len(jobs))
                log_event("compile", "rank-start", rank=job.rank)
                versions = build_rank(job)
                log_event("compile", "rank-end", rank=job.rank)
        else:
            mp = multiprocessing.get_context("spawn")  # CUDA state must not be forked
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp) as pool:
                futures = [pool.submit(build_rank, job) for job in jobs]
                for i, fut in enumerate(futures):
                    versions = fut.result()
                    ctx.progress(f"rank {i} built", (i + 1) / len(jobs))
        ctx.progress("engines built", 1.0)
        first = jobs[0]
        return CompileResult(
            engine_dir=ctx.engine_dir,
            tensorrt_llm_version=versions.get("tensorrt_llm"),
            tensorrt_version=versions.get("tensorrt"),
            build_options={
                "model_class": first.class_name,
                "plugin_config": dict(
                    first.plugin.attributes,
                    paged_kv_cache=first.plugin.paged_kv_tokens_per_block is not None,
                    tokens_per_block=first.plugin.paged_kv_tokens_per_block,
                ),
                "build_config": {k: v for k, v in first.build.items() if "timing_cache" not in k},
                "workers": workers,
            },
        )


def _with_input_cache(job: RankJob) -> RankJob:
    cache = Path(job.build["output_timing_cache"])
    if job.build.get("input_timing_cache") or not cache.exists():
        return job
    return RankJob(**{**job.__dict__, "build": {**job.build, "input_timing_cache": str(cache)}})


BACKEND = TrtllmBackend()
