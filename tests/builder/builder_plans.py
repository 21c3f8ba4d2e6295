"""BuildPlans for the builder tests, resolved the way the controller resolves them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pitcrew.api.plan import BuildPlan, PlanOutput, PlanSource, PlanTarget, plan_sizes
from pitcrew.api.v1alpha1 import BuildOptions, ModelOverrides, Parallelism, Quantization
from pitcrew_builder.backends.base import CompileContext, ProgressFn
from pitcrew_builder.checkpoint import read_config

# The TensorRT-LLM 1.2 CONTRACT DOUBLE (a stand-in: TensorRT-LLM needs a GPU), importable as
# tensorrt_llm with this directory first on the path (the ``trtllm`` fixture, PYTHONPATH_EXTRA).
TRTLLM_DOUBLE = Path(__file__).parent / "trtllm_contract_double"


def make_plan(
    *,
    source_uri: str,
    output_uri: str,
    cache_key: str = "k0",
    backend: str = "tensorrt-rtx",
    compute_capability: str = "8.6",
    source_format: str = "hf",
    build: dict[str, Any] | None = None,
    dtype: str | None = "float16",
    tp: int = 1,
    pp: int = 1,
    source_endpoint: str | None = None,
    output_endpoint: str | None = None,
) -> BuildPlan:
    defaults = {"maxInputLen": 16, "maxOutputLen": 16, "maxBatchSize": 2}
    options = BuildOptions.model_validate(defaults if build is None else build)
    return BuildPlan(
        name="default/test",
        cache_key=cache_key,
        cache_key_inputs={"test": True},
        builder_version="test",
        source=PlanSource(uri=source_uri, format=source_format, endpoint=source_endpoint),
        model=ModelOverrides(dtype=dtype) if dtype else None,
        parallelism=Parallelism(tensor=tp, pipeline=pp),
        build=options,
        sizes=plan_sizes(options),
        quantization=Quantization(),
        backend=backend,
        target=PlanTarget(compute_capability=compute_capability),
        output=PlanOutput(
            uri=output_uri, engine_uri=f"{output_uri.rstrip('/')}/{cache_key}", endpoint=output_endpoint
        ),
    )


def write_plan(plan: BuildPlan, path: Path) -> Path:
    path.write_text(plan.model_dump_json(by_alias=True))
    return path


def trtllm_plan(*, build: dict[str, Any] | None = None, **kw: Any) -> BuildPlan:
    """A tensorrt-llm plan for compiling directly (nothing fetched or published); ``build``
    defaults to none given, i.e. Megatron's build_and_save_engine defaults."""
    return make_plan(
        source_uri="file:///m", output_uri="s3://b/o", backend="tensorrt-llm", build=build or {}, **kw
    )


def compile_context(
    plan: BuildPlan, checkpoint: Path, tmp: Path, progress: ProgressFn | None = None
) -> CompileContext:
    """What the compile stage hands a backend: ``checkpoint`` in, engines to ``tmp/engine``."""
    (tmp / "work").mkdir(exist_ok=True)
    return CompileContext(
        plan=plan,
        checkpoint_dir=checkpoint,
        checkpoint_config=read_config(checkpoint),
        engine_dir=tmp / "engine",
        work_dir=tmp / "work",
        progress=progress or (lambda _m, _f: None),
    )
