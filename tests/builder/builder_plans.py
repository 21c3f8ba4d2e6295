"""BuildPlans for the builder tests, resolved the way the controller resolves them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pitcrew.api.plan import BuildPlan, PlanOutput, PlanSource, PlanTarget, plan_sizes
from pitcrew.api.v1alpha1 import BuildOptions, ModelOverrides, Parallelism, Quantization


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
