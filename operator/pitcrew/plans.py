"""From a validated spec and the source identity to the cache key and BuildPlan. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from pitcrew import cachekey
from pitcrew.api.plan import BuildPlan, PlanOutput, PlanSource, PlanTarget, plan_sizes
from pitcrew.api.v1alpha1 import EngineBuildSpec
from pitcrew.settings import Settings
from pitcrew.validation import Resolved

# Identity of a file:// source (development only: the controller cannot see it): the key then
# follows the URI (and spec.source.revision), so change the revision to rebuild on new bytes.
UNPINNED = "unpinned"


def pvc_identity(namespace: str, claim_uid: str) -> str:
    """A pvc:// source: that claim of that namespace (another namespace's claim of the same name, or
    a re-created claim, is another source). Its bytes are not seen by the controller: change
    spec.source.revision to rebuild on new bytes in the same claim."""
    return f"pvc:{namespace}:{claim_uid}"


@dataclass(frozen=True)
class Planned:
    key: str
    plan: BuildPlan


def engine_uri(output_uri: str, key: str) -> str:
    return f"{output_uri.rstrip('/')}/{key}/"


def manifest_uri(output_uri: str, key: str) -> str:
    return engine_uri(output_uri, key) + "manifest.json"


def make_plan(
    spec: EngineBuildSpec,
    resolved: Resolved,
    settings: Settings,
    *,
    namespace: str,
    name: str,
    generation: int,
    source_identity: str,
) -> Planned:
    inputs = cachekey.key_inputs(
        spec,
        source_identity=source_identity,
        builder_image=resolved.builder_image,
        compute_capability=resolved.compute_capability,
        source_endpoint=spec.source.endpoint or settings.s3_endpoint,
    )
    key = cachekey.cache_key(inputs)
    plan = BuildPlan(
        name=f"{namespace}/{name}",
        generation=generation,
        cache_key=key,
        cache_key_inputs=inputs,
        builder_version=resolved.builder_image,
        source=PlanSource(
            uri=spec.source.uri,
            format=spec.source.format,
            revision=spec.source.revision,
            endpoint=spec.source.endpoint or settings.s3_endpoint,
            identity=source_identity,
        ),
        model=spec.model,
        parallelism=spec.parallelism,
        build=spec.build,
        sizes=plan_sizes(spec.build),
        quantization=spec.quantization,
        backend=spec.backend,
        target=PlanTarget(
            compute_capability=resolved.compute_capability,
            gpu_product=spec.target.gpu_product,
            gpu_count=resolved.gpu_count,
        ),
        output=PlanOutput(
            uri=spec.output.uri,
            engine_uri=engine_uri(spec.output.uri, key),
            endpoint=spec.output.endpoint or settings.s3_endpoint,
        ),
    )
    return Planned(key=key, plan=plan)
