"""Pitcrew's checkpoints against the TensorRT-LLM 1.2 contract double's from_checkpoint/load.

The double declares, per architecture and quantization, the parameter set TRT-LLM 1.2's model has
after quantize() and fails as its load() does. The negative cases are the checkpoints earlier
Pitcrew versions wrote (FP8 without scales, Qwen2 without seq_length, LLaMA with a QKV-only
bias): each must fail exactly as TensorRT-LLM would.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors import safe_open
from tiny_models import VOCAB, make_gpt2, make_llama, make_qwen2
from transformers import PreTrainedModel

from pitcrew_builder.backends.trtllm import model_class_name
from pitcrew_builder.convert import convert
from pitcrew_builder.convert.quantize import CalibrationSet

CALIB = CalibrationSet((torch.arange(24) % VOCAB, (torch.arange(24) * 7) % VOCAB), "test ids")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, PreTrainedModel]]:
    root = tmp_path_factory.mktemp("src")
    return {
        "llama": (root / "llama", make_llama(root / "llama")),
        "llama-mqa": (root / "mqa", make_llama(root / "mqa", kv_heads=1)),
        "qwen2": (root / "qwen2", make_qwen2(root / "qwen2")),
        "gpt2": (root / "gpt2", make_gpt2(root / "gpt2")),
    }


def _load_all(trtllm: ModuleType, ckpt: Path) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cls = getattr(trtllm.models, model_class_name(cfg["architecture"]))
    for rank in range(cfg["mapping"]["world_size"]):
        cls.from_checkpoint(str(ckpt), rank=rank)


@pytest.mark.parametrize(
    ("name", "tp", "pp", "quant", "kv"),
    [
        ("llama", 1, 1, None, None),
        ("llama", 2, 2, None, None),
        ("llama-mqa", 2, 1, "fp8", "fp8"),
        ("llama", 2, 1, "fp8", None),
        ("llama", 1, 2, "int8", "int8"),
        ("qwen2", 2, 1, None, None),
        ("qwen2", 1, 1, "fp8", "fp8"),
        ("gpt2", 2, 1, None, None),
        ("gpt2", 1, 1, "fp8", "int8"),
    ],
)
def test_converted_checkpoints_load_in_trtllm(
    trtllm: ModuleType,
    sources: dict[str, tuple[Path, PreTrainedModel]],
    tmp_path: Path,
    name: str,
    tp: int,
    pp: int,
    quant: str | None,
    kv: str | None,
) -> None:
    calib = CALIB if (quant == "fp8" or kv) else None
    convert(
        sources[name][0], "hf", tmp_path, tp=tp, pp=pp, quantization=quant, kv_cache=kv, calibration=calib
    )
    _load_all(trtllm, tmp_path)
    from tensorrt_llm._contract import CALLS

    assert not [c for c in CALLS if c["call"] == "warning"], "provided but not required tensors"


def _edit_config(ckpt: Path, **changes: object) -> None:
    path = ckpt / "config.json"
    data = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(json.dumps(data))


def test_fp8_config_over_float_weights_fails_like_trtllm(
    trtllm: ModuleType, sources: dict[str, tuple[Path, PreTrainedModel]], tmp_path: Path
) -> None:
    # What Pitcrew wrote before: quant_algo FP8 in config.json, bf16 weights, no scales.
    convert(sources["llama"][0], "hf", tmp_path, dtype="bfloat16")
    _edit_config(tmp_path, quantization={"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"})
    with pytest.raises(RuntimeError, match="Required but not provided tensors") as err:
        _load_all(trtllm, tmp_path)
    assert "weights_scaling_factor" in str(err.value) and "kv_cache_scaling_factor" in str(err.value)


def test_fp8_weight_stored_in_bf16_is_refused(
    trtllm: ModuleType, sources: dict[str, tuple[Path, PreTrainedModel]], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    convert(sources["llama"][0], "hf", tmp_path, quantization="fp8", calibration=CALIB)
    path = tmp_path / "rank0.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["transformer.layers.0.mlp.fc.weight"] = tensors["transformer.layers.0.mlp.fc.weight"].float()
    save_file(tensors, str(path))
    from tensorrt_llm._contract import ContractViolation

    with pytest.raises(ContractViolation, match=r"mlp\.fc\.weight is F32, TRT-LLM declares fp8"):
        _load_all(trtllm, tmp_path)


def test_qwen2_needs_seq_length_and_qwen_type(
    trtllm: ModuleType, sources: dict[str, tuple[Path, PreTrainedModel]], tmp_path: Path
) -> None:
    convert(sources["qwen2"][0], "hf", tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["seq_length"] == data["max_position_embeddings"] and data["qwen_type"] == "qwen2"
    _load_all(trtllm, tmp_path)
    _edit_config(tmp_path, seq_length=None)  # what Pitcrew wrote before
    with pytest.raises(AttributeError, match="seq_length"):
        _load_all(trtllm, tmp_path)
    _edit_config(tmp_path, seq_length=64, qwen_type=None)  # QWenConfig's default 'qwen' halves the MLP
    with pytest.raises(
        RuntimeError, match=r"Encounter error .* for parameter 'transformer.layers.0.mlp.fc.weight'"
    ):
        _load_all(trtllm, tmp_path)


def test_llama_with_qkv_only_bias_gets_a_zero_dense_bias(
    trtllm: ModuleType, sources: dict[str, tuple[Path, PreTrainedModel]], tmp_path: Path
) -> None:
    # A LLaMA-architecture checkpoint with a bias on QKV only (Megatron add_qkv_bias without
    # add_bias_linear), laid out as Pitcrew wrote it before: attn_bias true, no dense bias.
    old = tmp_path / "old"
    convert(sources["qwen2"][0], "hf", old)
    _edit_config(old, architecture="LlamaForCausalLM", qwen_type=None, seq_length=None)
    with pytest.raises(RuntimeError, match=r"Required but not provided tensors.*attention\.dense\.bias"):
        _load_all(trtllm, old)
    new = tmp_path / "new"
    cfg = convert(old, "trtllm-checkpoint", new, tp=2)  # re-written with TRT-LLM's bias layout
    assert (cfg.qkv_bias, cfg.dense_bias) == (True, True)
    _load_all(trtllm, new)
    with safe_open(str(new / "rank1.safetensors"), "pt") as f:
        assert torch.count_nonzero(f.get_tensor("transformer.layers.1.attention.dense.bias")) == 0
        assert torch.count_nonzero(f.get_tensor("transformer.layers.1.attention.qkv.bias")) > 0


def test_a_missing_tensor_is_named_like_trtllm_load(
    trtllm: ModuleType, sources: dict[str, tuple[Path, PreTrainedModel]], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    convert(sources["gpt2"][0], "hf", tmp_path)
    path = tmp_path / "rank0.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "transformer.ln_f.weight"}  # noqa: SIM118
    save_file(tensors, str(path))
    with pytest.raises(
        RuntimeError, match=r"Required but not provided tensors:\{'transformer.ln_f.weight'\}"
    ):
        _load_all(trtllm, tmp_path)


@pytest.mark.parametrize(("name", "built"), [("llama", True), ("qwen2", False)])
def test_reduce_fusion_is_built_or_refused_never_dropped(
    trtllm: ModuleType,
    sources: dict[str, tuple[Path, PreTrainedModel]],
    tmp_path: Path,
    name: str,
    built: bool,
) -> None:
    from builder_plans import compile_context, trtllm_plan
    from tensorrt_llm._contract import CALLS

    from pitcrew_builder.backends.trtllm import BACKEND
    from pitcrew_builder.errors import InvalidSpec

    ckpt = tmp_path / "ckpt"
    convert(sources[name][0], "hf", ckpt, tp=2)
    ctx = compile_context(trtllm_plan(tp=2, build={"reduceFusion": True}), ckpt, tmp_path)
    if not built:
        with pytest.raises(
            InvalidSpec, match=r"reduceFusion: TensorRT-LLM 1\.2 applies it only to LlamaForCausalLM"
        ):
            BACKEND.compile(ctx)
        return
    result = BACKEND.compile(ctx)
    builds = [c for c in CALLS if c["call"] == "build"]
    assert all(b["build_config"]["plugin_config"]["reduce_fusion"] is True for b in builds)
    assert not [c for c in CALLS if c.get("message") == "Overriding reduce_fusion to False"]
    assert result.build_options["plugin_config"]["reduce_fusion"] is True
