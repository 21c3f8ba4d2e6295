"""Checks the API server cannot make (it does not know GPUs, images or Secrets). Pure.

Every problem names the field and says how to fix it; the controller turns them into a Failed
status with reason InvalidSpec instead of retrying.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pitcrew.api import gpus
from pitcrew.api.v1alpha1 import Backend, EngineBuildSpec, SecretReference
from pitcrew.settings import Settings


@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class Resolved:
    """What the controller derives from a valid spec."""

    compute_capability: str
    builder_image: str
    gpu_count: int


class InvalidSpec(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def resolve_compute_capability(spec: EngineBuildSpec) -> tuple[str | None, list[Problem]]:
    target = spec.target
    looked_up = gpus.compute_capability(target.gpu_product) if target.gpu_product else None
    if target.compute_capability:
        if looked_up and looked_up != target.compute_capability:
            return None, [
                Problem(
                    "spec.target.computeCapability",
                    f"{target.compute_capability} does not match gpuProduct {target.gpu_product!r} "
                    f"(compute capability {looked_up}); an engine built for one does not load on the other. "
                    "Remove computeCapability or fix it",
                )
            ]
        return target.compute_capability, []
    if looked_up is None:
        return None, [
            Problem(
                "spec.target.gpuProduct",
                f"unknown GPU product {target.gpu_product!r}: set spec.target.computeCapability "
                "(e.g. 8.9) for it",
            )
        ]
    return looked_up, []


def default_gpu_count(spec: EngineBuildSpec) -> int:
    if spec.target.gpu_count is not None:
        return spec.target.gpu_count
    if spec.backend == Backend.CHECKPOINT:
        return 0  # conversion runs on CPU
    return spec.parallelism.tensor * spec.parallelism.pipeline


def secret_refs(spec: EngineBuildSpec) -> dict[str, SecretReference]:
    """Field path -> Secret reference, for every Secret the build needs."""
    refs: dict[str, SecretReference] = {}
    if spec.source.credentials_secret_ref:
        refs["spec.source.credentialsSecretRef"] = spec.source.credentials_secret_ref
    if spec.output.credentials_secret_ref:
        refs["spec.output.credentialsSecretRef"] = spec.output.credentials_secret_ref
    return refs


def validate(
    spec: EngineBuildSpec,
    settings: Settings,
    *,
    secret_keys: Mapping[str, frozenset[str] | None],
) -> Resolved:
    """`secret_keys`: Secret name -> its data keys, None when the Secret does not exist."""
    problems: list[Problem] = []
    sm, found = resolve_compute_capability(spec)
    problems += found
    if sm is not None and not gpus.backend_supports(spec.backend, sm):
        problems.append(
            Problem(
                "spec.backend",
                f"backend {spec.backend} cannot build for compute capability {sm}"
                + (
                    " (TensorRT-RTX has no Hopper or datacenter Blackwell support): use tensorrt-llm"
                    if spec.backend == Backend.TENSORRT_RTX
                    else ""
                ),
            )
        )
    if sm is not None and not gpus.supports_fp8(sm):
        for field_path, value in (
            ("spec.quantization.weights", spec.quantization.weights),
            ("spec.quantization.kvCache", spec.quantization.kv_cache),
        ):
            if value == "fp8":
                problems.append(
                    Problem(
                        field_path,
                        f"fp8 needs compute capability 8.9 or newer (Ada, Hopper, Blackwell); the target "
                        f"is {sm}: use int8 (or none), or target a newer GPU",
                    )
                )
    gpu_count = default_gpu_count(spec)
    if spec.backend == Backend.TENSORRT_LLM and spec.target.gpu_count == 0:
        problems.append(
            Problem("spec.target.gpuCount", "tensorrt-llm builds need a GPU: set gpuCount to 1 or more")
        )
    if spec.build.reduce_fusion and spec.parallelism.tensor == 1:
        problems.append(
            Problem(
                "spec.build.reduceFusion", "needs parallelism.tensor > 1: set it to false or raise tensor"
            )
        )
    if spec.build.lora.enabled:
        problems.append(
            Problem(
                "spec.build.lora.enabled",
                "LoRA is not supported yet (TensorRT-LLM 1.2 needs real adapter checkpoints): "
                "remove build.lora",
            )
        )
    arch = spec.model.architecture if spec.model else None
    if spec.build.reduce_fusion and arch is not None and arch != "LlamaForCausalLM":
        problems.append(
            Problem(
                "spec.build.reduceFusion",
                f"TensorRT-LLM 1.2 applies reduce fusion only to LlamaForCausalLM, not {arch}: "
                "set it to false",
            )
        )
    for field_path, ref in secret_refs(spec).items():
        keys = secret_keys.get(ref.name)
        if keys is None:
            problems.append(
                Problem(
                    field_path, f"Secret {ref.name!r} not found in this namespace: create it or fix the name"
                )
            )
            continue
        for key in (ref.access_key_id_key, ref.secret_access_key_key):
            if key not in keys:
                problems.append(Problem(field_path, f"Secret {ref.name!r} has no key {key!r}"))
    if problems or sm is None:
        raise InvalidSpec(problems)
    image = spec.builder_image or settings.builder_image(spec.backend)
    return Resolved(compute_capability=sm, builder_image=image, gpu_count=gpu_count)
