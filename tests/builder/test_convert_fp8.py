"""FP8 checkpoints TensorRT-LLM 1.2 can load: fp8 weights, calibrated scales, KV-cache scales.

Checked three ways: the layout (names, dtypes, per-rank shapes) against what TRT-LLM's FP8 layers
declare; the numbers against the float conversion (dequantized weights within FP8 precision,
logits close); and the scales against NVIDIA Model Optimizer's own max calibration of the same
Hugging Face model on the same tokens.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_models import VOCAB, make_gpt2, make_llama
from transformers import PreTrainedModel

from pitcrew_builder.checkpoint import FP8_LINEARS, read_config, validate_checkpoint
from pitcrew_builder.convert import convert
from pitcrew_builder.convert.quantize import FP8_E4M3_MAX, INT8_MAX, CalibrationSet
from pitcrew_builder.convert.trtllm import load_full_weights
from pitcrew_builder.model.reference import ReferenceModel

GEN = torch.Generator().manual_seed(11)
CALIB = CalibrationSet(tuple(torch.randint(0, VOCAB, (24,), generator=GEN) for _ in range(6)), "test ids")
IDS = torch.randint(0, VOCAB, (2, 13), generator=GEN)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PreTrainedModel]:
    root = tmp_path_factory.mktemp("fp8")
    return root / "llama", make_llama(root / "llama")


@pytest.fixture(scope="module")
def converted(
    llama: tuple[Path, PreTrainedModel], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("out")
    src = llama[0]
    out = {"float": root / "float", "fp8": root / "fp8", "fp8tp2": root / "fp8tp2", "int8kv": root / "int8kv"}
    convert(src, "hf", out["float"], dtype="float32")
    convert(src, "hf", out["fp8"], dtype="float32", quantization="fp8", kv_cache="fp8", calibration=CALIB)
    convert(src, "hf", out["fp8tp2"], tp=2, dtype="bfloat16", quantization="fp8", calibration=CALIB)
    convert(src, "hf", out["int8kv"], dtype="float32", kv_cache="int8", calibration=CALIB)
    return out


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__


def test_fp8_layout_is_what_trtllm_fp8_layers_declare(converted: dict[str, Path]) -> None:
    cfg = validate_checkpoint(converted["fp8"])
    assert (cfg.quantization.quant_algo, cfg.quantization.kv_cache_quant_algo) == ("FP8", "FP8")
    t = _tensors(converted["fp8"] / "rank0.safetensors")
    for i in range(cfg.num_hidden_layers):
        p = f"transformer.layers.{i}."
        for linear in FP8_LINEARS:
            assert t[p + linear + ".weight"].dtype == torch.float8_e4m3fn
            for s in ("weights_scaling_factor", "activation_scaling_factor"):
                assert t[p + linear + "." + s].dtype == torch.float32
                assert t[p + linear + "." + s].shape == (1,)
        assert t[p + "attention.kv_cache_scaling_factor"].shape == (1,)
        assert t[p + "input_layernorm.weight"].dtype == torch.float32
    # lm_head and the embedding are excluded from FP8 (quantize_layers' exclude_modules).
    assert t["lm_head.weight"].dtype == t["transformer.vocab_embedding.weight"].dtype == torch.float32


def test_fp8_scales_are_global_per_tensor_and_shards_are_per_rank(converted: dict[str, Path]) -> None:
    full = _tensors(converted["float"] / "rank0.safetensors")
    ranks = [_tensors(converted["fp8tp2"] / f"rank{r}.safetensors") for r in range(2)]
    cfg = read_config(converted["fp8tp2"])
    assert cfg.quantization.kv_cache_quant_algo == "FP8"  # fp8 weights default to an FP8 KV cache
    p = "transformer.layers.1."
    for linear in FP8_LINEARS:
        s0, s1 = (r[p + linear + ".weights_scaling_factor"] for r in ranks)
        assert torch.equal(s0, s1)
        expected = full[p + linear + ".weight"].abs().max() / FP8_E4M3_MAX
        assert torch.allclose(s0, expected.reshape(1), rtol=1e-6)
    assert ranks[0][p + "mlp.fc.weight"].shape == (48, 64)  # intermediate 96 / tp 2
    assert ranks[0][p + "attention.dense.weight"].shape == (64, 32)  # row parallel: in / tp
    assert (
        ranks[0][p + "mlp.fc.bias" if cfg.mlp_bias else p + "post_layernorm.weight"].dtype == torch.bfloat16
    )


def test_dequantized_weights_match_float_within_fp8_precision(converted: dict[str, Path]) -> None:
    _, ref = load_full_weights(converted["float"])
    _, deq = load_full_weights(converted["fp8"])
    scales = _tensors(converted["fp8"] / "rank0.safetensors")
    assert set(ref) == set(deq)
    for name, w in ref.items():
        module = name.rpartition(".")[0]
        local = module.split(".", 3)[-1]
        if local not in ("attention.q", "attention.k", "attention.v", *FP8_LINEARS):
            assert torch.equal(deq[name], w), name  # untouched tensors stay exact
            continue
        fused = (
            module.rsplit(".", 1)[0] + ".qkv"
            if local.startswith("attention.") and local[-1] in "qkv"
            else module
        )
        s = float(scales[fused + ".weights_scaling_factor"])
        # E4M3 keeps 3 mantissa bits: rounding moves a normal value by at most 2^-4 of itself;
        # below 2^-6 (subnormals) the step is 2^-9, so at most half of it, 2^-10, times the scale.
        bound = w.abs() * 2**-4 + s * 2**-10 + 1e-12
        assert torch.all((deq[name] - w).abs() <= bound), name
        assert not torch.equal(deq[name], w), f"{name} was not quantized"


def test_fp8_logits_close_to_float(converted: dict[str, Path]) -> None:
    with torch.no_grad():
        ref = ReferenceModel.from_checkpoint(converted["float"])(IDS)
        got = ReferenceModel.from_checkpoint(converted["fp8"])(IDS)
    rel = float((got - ref).norm() / ref.norm())
    # Each weight carries up to 6.25% rounding error, independent between elements, so a dot
    # product over 64-96 terms averages it down to about 6.25% / sqrt(3) / sqrt(n) ~ 0.5% per
    # layer; two layers plus the head stay well under 5% (measured: about 1-2%).
    assert 0 < rel < 0.05, rel
    agree = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
    assert agree >= 0.9, agree


def test_int8_kv_cache_only_keeps_float_weights(converted: dict[str, Path]) -> None:
    cfg = validate_checkpoint(converted["int8kv"])
    assert (cfg.quantization.quant_algo, cfg.quantization.kv_cache_quant_algo) == (None, "INT8")
    t = _tensors(converted["int8kv"] / "rank0.safetensors")
    assert t["transformer.layers.0.attention.qkv.weight"].dtype == torch.float32
    assert not any("weights_scaling_factor" in k for k in t)
    assert float(t["transformer.layers.0.attention.kv_cache_scaling_factor"]) > 0


def test_gpt2_fp8_has_no_gate(tmp_path: Path) -> None:
    make_gpt2(tmp_path / "g")
    long = CalibrationSet((torch.arange(40) % VOCAB,), "40 tokens")  # GPT-2 here has 32 positions
    cfg = convert(tmp_path / "g", "hf", tmp_path / "o", quantization="fp8", calibration=long)
    t = _tensors(tmp_path / "o" / "rank0.safetensors")
    assert not cfg.gated_mlp and not any(".mlp.gate." in k for k in t)
    assert t["transformer.layers.0.mlp.fc.weight"].dtype == torch.float8_e4m3fn


def test_fp8_without_calibration_or_with_foreign_ids_is_refused(
    llama: tuple[Path, PreTrainedModel], tmp_path: Path
) -> None:
    from pitcrew_builder.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"quantization\.calibration"):
        convert(llama[0], "hf", tmp_path / "a", quantization="fp8")
    bad = CalibrationSet((torch.tensor([1, 2, VOCAB + 5]),), "ids.jsonl")
    with pytest.raises(CheckpointError, match=r"token id 106 outside the model's vocabulary"):
        convert(llama[0], "hf", tmp_path / "b", quantization="fp8", calibration=bad)


def test_scales_agree_with_nvidia_model_optimizer(
    llama: tuple[Path, PreTrainedModel], converted: dict[str, Path]
) -> None:
    mtq = pytest.importorskip("modelopt.torch.quantization")
    model = copy.deepcopy(llama[1]).float().eval()
    cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    cfg["quant_cfg"] = list(cfg["quant_cfg"]) + list(copy.deepcopy(mtq.FP8_KV_CFG)["quant_cfg"])

    def forward_loop(m: torch.nn.Module) -> None:
        with torch.no_grad():
            for ids in CALIB.samples:
                m(ids[None])

    model = mtq.quantize(model, cfg, forward_loop)
    ours = _tensors(converted["fp8"] / "rank0.safetensors")
    int8kv = _tensors(converted["int8kv"] / "rank0.safetensors")
    # HF names -> TRT-LLM names: gate_proj is TRT-LLM's mlp.fc, up_proj its mlp.gate.
    pairs = {"attention.qkv": "self_attn.q_proj", "attention.dense": "self_attn.o_proj"}
    pairs |= {"mlp.fc": "mlp.gate_proj", "mlp.gate": "mlp.up_proj", "mlp.proj": "mlp.down_proj"}
    for i in range(2):
        layer = model.model.layers[i]
        p = f"transformer.layers.{i}."
        for trt, hf in pairs.items():
            mod = layer.get_submodule(hf)
            act = float(mod.input_quantizer.amax) / FP8_E4M3_MAX
            assert float(ours[p + trt + ".activation_scaling_factor"]) == pytest.approx(act, rel=1e-4), trt
            if trt == "attention.qkv":
                w = max(
                    float(layer.self_attn.get_submodule(n).weight_quantizer.amax)
                    for n in ("q_proj", "k_proj", "v_proj")
                )
            else:
                w = float(mod.weight_quantizer.amax)
            assert float(ours[p + trt + ".weights_scaling_factor"]) == pytest.approx(
                w / FP8_E4M3_MAX, rel=1e-6
            )
        attn = layer.self_attn
        kv = max(float(attn.k_bmm_quantizer.amax), float(attn.v_bmm_quantizer.amax))
        # INT8 KV shows the raw amax; FP8 KV follows ModelOpt's clamp to at least 1.0.
        assert float(int8kv[p + "attention.kv_cache_scaling_factor"]) == pytest.approx(
            kv / INT8_MAX, rel=1e-4
        )
        assert float(ours[p + "attention.kv_cache_scaling_factor"]) == pytest.approx(
            max(kv / FP8_E4M3_MAX, 1.0)
        )


def test_validate_stage_checks_fp8_logits_against_the_source(
    llama: tuple[Path, PreTrainedModel], converted: dict[str, Path]
) -> None:
    from pitcrew_builder.validate import check_logits

    cfg = read_config(converted["fp8"])
    check = check_logits(llama[0], converted["fp8"], cfg)
    assert check.status == "passed" and check.max_abs_diff is not None and check.max_abs_diff > 0
    # The same weights with one FP8 tensor scaled wrongly must fail the check.
    path = converted["fp8"] / "rank0.safetensors"
    broken = path.parent.parent / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((converted["fp8"] / "config.json").read_text())
    t = _tensors(path)
    t["transformer.layers.0.mlp.proj.weights_scaling_factor"] = (
        t["transformer.layers.0.mlp.proj.weights_scaling_factor"] * 8
    )
    from safetensors.torch import save_file

    save_file(t, str(broken / "rank0.safetensors"))
    assert check_logits(llama[0], broken, cfg).status == "failed"
