"""Unusable inputs fail with CheckpointError naming the tensor or field, and leave no half checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import llama_to_megatron, make_llama, save_megatron_legacy, save_megatron_torch_dist
from transformers import LlamaForCausalLM

from pitcrew_builder.checkpoint import CheckpointError, MappingConfig, read_config, validate_checkpoint
from pitcrew_builder.convert import ModelOverrides, convert
from pitcrew_builder.convert.quantize import CalibrationSet

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LlamaForCausalLM]:
    root = tmp_path_factory.mktemp("err")
    return root / "hf", make_llama(root / "hf")


def _copy_hf(src: Path, dst: Path, edit: dict[str, torch.Tensor | None] | None = None) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(src / "model.safetensors")
    for name, value in (edit or {}).items():
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    save_file(tensors, dst / "model.safetensors")
    return dst


def test_hf_missing_tensor(llama: tuple[Path, LlamaForCausalLM], tmp_path: Path) -> None:
    src = _copy_hf(llama[0], tmp_path / "src", {"model.layers.1.mlp.up_proj.weight": None})
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight"):
        convert(src, "hf", out, tp=2, pp=1, dtype="float32")
    # Nothing half-written is left behind: no config.json, no rank files.
    assert list(out.iterdir()) == []


def test_hf_wrong_shape(llama: tuple[Path, LlamaForCausalLM], tmp_path: Path) -> None:
    src = _copy_hf(
        llama[0], tmp_path / "src", {"model.layers.0.self_attn.k_proj.weight": torch.zeros(48, 64)}
    )
    with pytest.raises(
        CheckpointError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight has shape \(48, 64\)"
    ):
        convert(src, "hf", tmp_path / "out", tp=1, pp=1, dtype="float32")


def test_unknown_architecture(llama: tuple[Path, LlamaForCausalLM], tmp_path: Path) -> None:
    src = _copy_hf(llama[0], tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["FalconForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="FalconForCausalLM"):
        convert(src, "hf", tmp_path / "out", tp=1, pp=1, dtype="float32")


def test_tp_that_cannot_split_heads(llama: tuple[Path, LlamaForCausalLM], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="num_attention_heads=4 is not divisible by tp=3"):
        convert(llama[0], "hf", tmp_path / "out", tp=3, pp=1, dtype="float32")
    with pytest.raises(CheckpointError, match="num_hidden_layers=2 is not divisible by pp=4"):
        convert(llama[0], "hf", tmp_path / "out", tp=1, pp=4, dtype="float32")


def test_kv_heads_tp_cannot_split(llama: tuple[Path, LlamaForCausalLM], tmp_path: Path) -> None:
    convert(llama[0], "hf", tmp_path / "ok", tp=1, pp=1, dtype="float32")
    config = read_config(tmp_path / "ok")
    bad = dataclasses.replace(
        config,
        num_attention_heads=12,
        num_key_value_heads=3,
        mapping=MappingConfig(world_size=2, tp_size=2, pp_size=1),
    )
    with pytest.raises(CheckpointError, match="num_key_value_heads=3 cannot be split over tp=2"):
        bad.check()


def test_bad_arguments(llama: tuple[Path, LlamaForCausalLM], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="dtype 'int8'"):
        convert(llama[0], "hf", tmp_path / "out", dtype="int8")
    with pytest.raises(CheckpointError, match="quantization 'int3'"):
        convert(llama[0], "hf", tmp_path / "out", quantization="int3")
    with pytest.raises(CheckpointError, match="source_format 'onnx'"):
        convert(llama[0], "onnx", tmp_path / "out")  # type: ignore[arg-type]


def test_megatron_missing_and_misshapen(llama: tuple[Path, LlamaForCausalLM], tmp_path: Path) -> None:
    full, args = llama_to_megatron(llama[1], 104)
    name = "decoder.layers.1.mlp.linear_fc2.weight"
    src = save_megatron_legacy({k: v for k, v in full.items() if k != name}, args, tmp_path / "a", tp=1, pp=1)
    with pytest.raises(CheckpointError, match=r"missing tensor decoder\.layers\.1\.mlp\.linear_fc2\.weight"):
        convert(src, "megatron", tmp_path / "out", tp=1, pp=1, dtype="float32")
    qkv = "decoder.layers.0.self_attention.linear_qkv.weight"
    src = save_megatron_torch_dist({**full, qkv: full[qkv][:-16]}, args, tmp_path / "b", stacked=False)
    with pytest.raises(
        CheckpointError, match=r"decoder\.layers\.0\.self_attention\.linear_qkv\.weight has shape"
    ):
        convert(src, "megatron", tmp_path / "out", tp=1, pp=1, dtype="float32")
    with pytest.raises(
        CheckpointError, match=r"saved training args lack hidden_size: give them in spec\.model\.megatronArgs"
    ):
        convert(
            src,
            "megatron",
            tmp_path / "out",
            tp=1,
            pp=1,
            dtype="float32",
            overrides=ModelOverrides(megatron_args={"hidden_size": None}),
        )


def test_validator_names_problems(llama: tuple[Path, LlamaForCausalLM], tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    convert(llama[0], "hf", ckpt, tp=2, pp=1, dtype="float16")
    assert validate_checkpoint(ckpt).tp == 2
    tensors = load_file(ckpt / "rank1.safetensors")
    tensors["transformer.layers.1.mlp.gate.weight"] = torch.zeros(3, 64, dtype=torch.float16)
    save_file(tensors, ckpt / "rank1.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"rank1\.safetensors: tensor transformer\.layers\.1\.mlp\.gate\.weight"
        r" has shape \(3, 64\), expected \(48, 64\)",
    ):
        validate_checkpoint(ckpt)
    del tensors["transformer.layers.1.mlp.gate.weight"]
    save_file(tensors, ckpt / "rank1.safetensors")
    with pytest.raises(
        CheckpointError, match=r"rank1\.safetensors lacks tensor transformer\.layers\.1\.mlp\.gate"
    ):
        validate_checkpoint(ckpt)
    (ckpt / "rank1.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"rank file rank1\.safetensors is missing"):
        validate_checkpoint(ckpt)
    data = json.loads((ckpt / "config.json").read_text())
    data["mapping"]["world_size"] = 3
    (ckpt / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="world_size=3"):
        validate_checkpoint(ckpt)
    del data["hidden_size"]
    (ckpt / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="'hidden_size'"):
        convert(ckpt, "trtllm-checkpoint", tmp_path / "out", tp=2, pp=1, dtype="float16")


def test_overrides_checked(llama: tuple[Path, LlamaForCausalLM], tmp_path: Path) -> None:
    with pytest.raises(
        CheckpointError, match=r"override num_attention_heads=8 contradicts the source checkpoint \(4\)"
    ):
        convert(llama[0], "hf", tmp_path / "a", overrides=ModelOverrides(fields={"num_attention_heads": 8}))
    with pytest.raises(CheckpointError, match="override vocab_size=500 exceeds"):
        convert(llama[0], "hf", tmp_path / "a", overrides=ModelOverrides(fields={"vocab_size": 500}))
    with pytest.raises(CheckpointError, match="override field 'colour'"):
        convert(llama[0], "hf", tmp_path / "a", overrides=ModelOverrides(fields={"colour": 1}))
    config = convert(
        llama[0],
        "hf",
        tmp_path / "b",
        quantization="int4",
        kv_cache="int8",
        overrides=ModelOverrides(fields={"num_attention_heads": 4, "max_position_embeddings": 128}),
        calibration=CalibrationSet((torch.arange(16),), "test ids"),
    )
    assert config.quantization.quant_algo == "W4A16" and config.quantization.kv_cache_quant_algo == "INT8"
    assert config.max_position_embeddings == 128
    with pytest.raises(CheckpointError, match="kv_cache 'int2'"):
        convert(llama[0], "hf", tmp_path / "a", kv_cache="int2")
