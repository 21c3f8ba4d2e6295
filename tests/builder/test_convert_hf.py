"""Hugging Face -> TRT-LLM checkpoint conversion, checked by running the reference model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_models import VOCAB, hf_logits, make_gpt2, make_llama, make_qwen2
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from pitcrew_builder.checkpoint import read_config, validate_checkpoint
from pitcrew_builder.convert import ModelOverrides, convert
from pitcrew_builder.convert.quantize import CalibrationSet
from pitcrew_builder.convert.trtllm import load_full_weights
from pitcrew_builder.model.reference import ReferenceModel

IDS = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, PreTrainedModel]]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "llama": (root / "llama", make_llama(root / "llama")),
        "qwen2": (root / "qwen2", make_qwen2(root / "qwen2")),
        "gpt2": (root / "gpt2", make_gpt2(root / "gpt2")),
    }


def _logits(ckpt: Path) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = ReferenceModel.from_checkpoint(ckpt)(IDS)
    return logits


@pytest.mark.parametrize(
    ("name", "tp", "pp"),
    [
        ("llama", 1, 1),
        ("llama", 2, 1),
        ("llama", 1, 2),
        ("llama", 2, 2),
        ("llama", 4, 1),
        ("qwen2", 2, 1),
        ("gpt2", 1, 1),
        ("gpt2", 2, 1),
        ("gpt2", 2, 2),
    ],
)
def test_logits_match_hf(
    models: dict[str, tuple[Path, PreTrainedModel]], tmp_path: Path, name: str, tp: int, pp: int
) -> None:
    src, model = models[name]
    config = convert(src, "hf", tmp_path, tp=tp, pp=pp, dtype="float32")
    assert (config.tp, config.pp, config.mapping.world_size) == (tp, pp, tp * pp)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["config.json"] + [f"rank{r}.safetensors" for r in range(tp * pp)]
    )
    validate_checkpoint(tmp_path)
    torch.testing.assert_close(_logits(tmp_path), hf_logits(model, IDS), rtol=1e-4, atol=1e-4)


def test_rank_layout_llama_tp4_duplicates_kv_heads(
    models: dict[str, tuple[Path, PreTrainedModel]], tmp_path: Path
) -> None:
    src, model = models["llama"]
    convert(src, "hf", tmp_path, tp=4, pp=1, dtype="float32")
    sd = model.state_dict()
    k = sd["model.layers.0.self_attn.k_proj.weight"]  # 2 KV heads of 16 over 4 ranks: ranks 0,1 share head 0
    for rank in range(4):
        with safe_open(str(tmp_path / f"rank{rank}.safetensors"), framework="pt") as f:
            qkv = f.get_tensor("transformer.layers.0.attention.qkv.weight")
            assert qkv.shape == (16 + 2 * 16, 64)
            head = rank // 2
            torch.testing.assert_close(qkv[16:32], k[head * 16 : (head + 1) * 16])
            # lm_head padded from 101 to 104 rows, 26 per rank; the padding rows are zero
            lm = f.get_tensor("lm_head.weight")
            assert lm.shape == (26, 64)
    with safe_open(str(tmp_path / "rank3.safetensors"), framework="pt") as f:
        assert torch.count_nonzero(f.get_tensor("lm_head.weight")[-3:]) == 0


def test_config_fields(models: dict[str, tuple[Path, PreTrainedModel]], tmp_path: Path) -> None:
    convert(models["qwen2"][0], "hf", tmp_path / "q", tp=2, pp=1, dtype="bfloat16", quantization="int8")
    data = json.loads((tmp_path / "q" / "config.json").read_text())
    assert data["architecture"] == "Qwen2ForCausalLM" and data["qwen_type"] == "qwen2"
    assert data["dtype"] == "bfloat16" and data["num_key_value_heads"] == 2 and data["head_size"] == 16
    assert data["mapping"] == {"world_size": 2, "tp_size": 2, "pp_size": 1}
    assert data["quantization"]["quant_algo"] == "W8A16" and data["qkv_bias"] and not data["dense_bias"]
    assert data["position_embedding_type"] == "rope_gpt_neox" and data["hidden_act"] == "silu"
    with safe_open(str(tmp_path / "q" / "rank0.safetensors"), framework="pt") as f:
        assert f.get_tensor("transformer.layers.0.attention.qkv.bias").dtype == torch.bfloat16
    calib = CalibrationSet((torch.arange(20) % VOCAB,), "test")
    convert(
        models["gpt2"][0],
        "hf",
        tmp_path / "g",
        tp=1,
        pp=1,
        dtype="fp16",
        quantization="fp8",
        calibration=calib,
    )
    g = read_config(tmp_path / "g")
    assert g.architecture == "GPTForCausalLM" and g.position_embedding_type == "learned_absolute"
    assert g.quantization.quant_algo == "FP8" and g.quantization.kv_cache_quant_algo == "FP8"
    assert g.dtype == "float16" and g.max_position_embeddings == 32
    assert json.loads((tmp_path / "g" / "config.json").read_text())["bias"] is True


def test_half_precision_logits_close(models: dict[str, tuple[Path, PreTrainedModel]], tmp_path: Path) -> None:
    src, model = models["llama"]
    convert(src, "hf", tmp_path, tp=2, pp=1, dtype="bfloat16")
    torch.testing.assert_close(_logits(tmp_path), hf_logits(model, IDS), rtol=0.05, atol=0.05)


def test_progress_reports_rising_fractions(
    models: dict[str, tuple[Path, PreTrainedModel]], tmp_path: Path
) -> None:
    seen: list[tuple[str, float]] = []
    convert(
        models["llama"][0],
        "hf",
        tmp_path,
        tp=1,
        pp=2,
        dtype="float32",
        progress=lambda msg, frac: seen.append((msg, frac)),
    )
    fracs = [f for _, f in seen]
    assert fracs == sorted(fracs) and fracs[0] == 0.0 and fracs[-1] == 1.0
    assert any(msg.startswith("layer 2/2") for msg, _ in seen)


def test_pytorch_bin_fallback(models: dict[str, tuple[Path, PreTrainedModel]], tmp_path: Path) -> None:
    src, model = models["gpt2"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((src / "config.json").read_text())
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    convert(bin_dir, "hf", tmp_path / "out", tp=2, pp=1, dtype="float32")
    torch.testing.assert_close(_logits(tmp_path / "out"), hf_logits(model, IDS), rtol=1e-4, atol=1e-4)


def test_trtllm_checkpoint_resharded_and_passed_through(
    models: dict[str, tuple[Path, PreTrainedModel]], tmp_path: Path
) -> None:
    src = models["llama"][0]
    convert(src, "hf", tmp_path / "tp1", tp=1, pp=1, dtype="float32")
    convert(src, "hf", tmp_path / "tp2pp2", tp=2, pp=2, dtype="float32")
    # Re-shard 2x2 -> 1x1 through the TRT-LLM source: identical to converting directly.
    convert(tmp_path / "tp2pp2", "trtllm-checkpoint", tmp_path / "back", tp=1, pp=1, dtype="float32")
    for name in ("config.json", "rank0.safetensors"):
        assert (tmp_path / "back" / name).read_bytes() == (tmp_path / "tp1" / name).read_bytes(), name
    # Same layout: a plain copy.
    convert(tmp_path / "tp2pp2", "trtllm-checkpoint", tmp_path / "copy", tp=2, pp=2, dtype="float32")
    assert (tmp_path / "copy" / "rank3.safetensors").read_bytes() == (
        tmp_path / "tp2pp2" / "rank3.safetensors"
    ).read_bytes()
    _, a = load_full_weights(tmp_path / "tp1")
    _, b = load_full_weights(tmp_path / "copy")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.parametrize("dim", [0, 1])
def test_parallel_embedding(
    models: dict[str, tuple[Path, PreTrainedModel]], tmp_path: Path, dim: int
) -> None:
    src, model = models["gpt2"]
    fields = {"use_parallel_embedding": True, "embedding_sharding_dim": dim}
    convert(src, "hf", tmp_path, tp=2, pp=1, dtype="float32", overrides=ModelOverrides(fields=fields))
    with safe_open(str(tmp_path / "rank1.safetensors"), framework="pt") as f:
        shape = tuple(f.get_slice("transformer.vocab_embedding.weight").get_shape())
    assert shape == ((51, 64) if dim == 0 else (VOCAB, 32))  # vocab 101 padded to 102 when split by rows
    torch.testing.assert_close(_logits(tmp_path), hf_logits(model, IDS), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
            "rope_theta": 500000.0,
        },
    ],
)
def test_rope_scaling(tmp_path: Path, rope: dict[str, object]) -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_parameters=rope,
    )
    model = LlamaForCausalLM(cfg)
    torch.nn.Module.eval(model)
    model.save_pretrained(tmp_path / "hf")
    config = convert(tmp_path / "hf", "hf", tmp_path / "out", tp=2, pp=1, dtype="float32")
    assert config.rotary_scaling is not None and config.rotary_scaling["type"] == rope["rope_type"]
    assert config.rotary_base == rope["rope_theta"]
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = ReferenceModel.from_checkpoint(tmp_path / "out")(ids)
    torch.testing.assert_close(got, hf_logits(model, ids), rtol=1e-4, atol=1e-4)
