import pytest

from pitcrew.settings import Settings
from pitcrew.validation import InvalidSpec, validate

from .helpers import spec

S = Settings()


def problems(s, secrets=None) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidSpec) as e:
        validate(s, S, secret_keys=secrets or {})
    return str(e.value)


def test_resolves_defaults() -> None:
    r = validate(spec(**{"parallelism.tensor": 2, "parallelism.pipeline": 2}), S, secret_keys={})
    assert r.compute_capability == "8.0"
    assert r.gpu_count == 4
    assert r.builder_image == "ghcr.io/pitcrew/builder:0.1.0"
    assert validate(spec(backend="checkpoint"), S, secret_keys={}).gpu_count == 0
    rtx = validate(
        spec(backend="tensorrt-rtx", **{"target.gpuProduct": "NVIDIA-GeForce-RTX-4090"}), S, secret_keys={}
    )
    assert rtx.builder_image == "ghcr.io/pitcrew/builder-rtx:0.1.0" and rtx.compute_capability == "8.9"
    assert validate(spec(builderImage="x/y:1"), S, secret_keys={}).builder_image == "x/y:1"


def test_unknown_product_names_the_field_and_fix() -> None:
    msg = problems(spec(**{"target.gpuProduct": "ACME-9000"}))
    assert "spec.target.gpuProduct" in msg and "computeCapability" in msg
    # ...and the fix works:
    ok = validate(
        spec(**{"target.gpuProduct": "ACME-9000", "target.computeCapability": "8.9"}), S, secret_keys={}
    )
    assert ok.compute_capability == "8.9"


def test_product_and_capability_must_agree() -> None:
    assert "does not match" in problems(spec(**{"target.computeCapability": "9.0"}))


def test_rtx_cannot_target_hopper_via_product() -> None:
    msg = problems(spec(backend="tensorrt-rtx", **{"target.gpuProduct": "NVIDIA-H100-80GB-HBM3"}))
    assert "spec.backend" in msg and "tensorrt-llm" in msg


def test_tensorrt_llm_needs_a_gpu() -> None:
    assert "spec.target.gpuCount" in problems(spec(**{"target.gpuCount": 0}))


def test_reduce_fusion_needs_tp() -> None:
    assert "spec.build.reduceFusion" in problems(spec(**{"build.reduceFusion": True}))


def test_secrets_must_exist_with_keys() -> None:
    s = spec(**{"output.credentialsSecretRef": {"name": "s3"}})
    assert "Secret 's3' not found" in problems(s, {"s3": None})
    assert "no key 'AWS_SECRET_ACCESS_KEY'" in problems(s, {"s3": frozenset({"AWS_ACCESS_KEY_ID"})})
    validate(s, S, secret_keys={"s3": frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"})})


@pytest.mark.parametrize(
    ("target", "field"),
    [
        (
            {"target.gpuProduct": "NVIDIA-A100-SXM4-80GB", "quantization.weights": "fp8"},
            "quantization.weights",
        ),
        ({"target.gpuProduct": "NVIDIA-A10G", "quantization.kvCache": "fp8"}, "quantization.kvCache"),
        (
            {"target.gpuProduct": "ACME-1", "target.computeCapability": "8.7", "quantization.weights": "fp8"},
            "quantization.weights",
        ),
    ],
)
def test_fp8_below_sm89_is_refused_naming_the_field(target: dict[str, str], field: str) -> None:
    msg = problems(spec(**target))
    assert f"spec.{field}: fp8 needs compute capability 8.9" in msg and "use int8" in msg


@pytest.mark.parametrize(
    "target",
    [
        {"target.gpuProduct": "NVIDIA-L40S", "quantization.weights": "fp8", "quantization.kvCache": "fp8"},
        {"target.gpuProduct": "NVIDIA-H100-80GB-HBM3", "quantization.weights": "fp8"},
        {
            "target.gpuProduct": "NVIDIA-A100-SXM4-80GB",
            "quantization.kvCache": "int8",
        },  # INT8 KV works on Ampere
    ],
)
def test_fp8_on_sm89_and_newer_and_int8_kv_on_ampere_are_accepted(target: dict[str, str]) -> None:
    validate(spec(**target), S, secret_keys={})


def test_lora_is_refused_with_the_reason() -> None:
    msg = problems(spec(**{"build.lora.enabled": True}))
    assert "spec.build.lora.enabled: LoRA is not supported yet" in msg


def test_reduce_fusion_only_for_llama_architecture() -> None:
    msg = problems(
        spec(
            **{
                "build.reduceFusion": True,
                "parallelism.tensor": 2,
                "model.architecture": "MistralForCausalLM",
            }
        )
    )
    assert "spec.build.reduceFusion: TensorRT-LLM 1.2 applies reduce fusion only to LlamaForCausalLM" in msg
    validate(
        spec(
            **{"build.reduceFusion": True, "parallelism.tensor": 2, "model.architecture": "LlamaForCausalLM"}
        ),
        S,
        secret_keys={},
    )
