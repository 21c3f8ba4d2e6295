"""Transformer Engine FP8 state (Megatron `_extra_state`) -> TRT-LLM activation scales.

transformer_engine cannot be installed here (CUDA-only wheels), so the states are written in the
two layouts TE's get_extra_state produces (TE >= 1.6: pickled dict as a uint8 tensor; older: a
torch.save'd BytesIO), with the delayed-scaling fields it saves.
"""

from __future__ import annotations

import enum
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_models import VOCAB, make_llama

from pitcrew_builder.checkpoint import CheckpointError
from pitcrew_builder.convert.api import _open_source
from pitcrew_builder.convert.quantize import FP8_E4M3_MAX, CalibrationSet
from pitcrew_builder.convert.te_fp8 import decode_extra_state, input_amax, layer_activation_amax
from pitcrew_builder.convert.writer import write_checkpoint


class Format(enum.Enum):  # stands in for transformer_engine.common.recipe.Format
    HYBRID = "hybrid"


@dataclass
class DelayedScaling:  # TE saves its recipe object in the state: it must not be executed on load
    fp8_format: Format = Format.HYBRID
    amax_history_len: int = 4


class Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/pitcrew-te-fp8-exploit",))


def te_state(input_history: list[float], weight: float = 0.5, history_len: int = 4) -> dict[str, object]:
    history = torch.zeros(history_len, 3)
    history[: len(input_history), 0] = torch.tensor(input_history)
    history[:, 1] = weight
    scale = torch.tensor([FP8_E4M3_MAX / max(input_history), FP8_E4M3_MAX / weight, 1.0])
    return {
        "scale_fwd": scale,
        "amax_history_fwd": history,
        "scale_bwd": torch.ones(2),
        "amax_history_bwd": torch.zeros(history_len, 2),
        "extra_fp8_variables": {"num_gemms": 1},
        "recipe": DelayedScaling(),
    }


def as_uint8_tensor(state: dict[str, object]) -> torch.Tensor:  # TE >= 1.6
    return torch.frombuffer(bytearray(pickle.dumps(state)), dtype=torch.uint8)


def as_bytesio(state: dict[str, object]) -> io.BytesIO:  # older TE
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf


@pytest.mark.parametrize("encode", [as_uint8_tensor, as_bytesio, lambda s: s])
def test_decode_and_input_amax(encode) -> None:  # type: ignore[no-untyped-def]
    state = decode_extra_state(encode(te_state([1.5, 3.25, 2.0])))
    assert input_amax(state) == 3.25  # the largest value of the input's history column
    assert input_amax(state, 1) == 0.5


def test_foreign_objects_in_the_state_are_not_run(tmp_path: Path) -> None:
    marker = Path("/tmp/pitcrew-te-fp8-exploit")
    marker.unlink(missing_ok=True)
    state = {**te_state([3.0]), "recipe": Exploit()}
    assert input_amax(decode_extra_state(as_uint8_tensor(state))) == 3.0
    assert not marker.exists()


def test_no_fp8_state_and_scale_only_state() -> None:
    assert decode_extra_state(torch.empty(0, dtype=torch.uint8)) is None  # TE without FP8 saves nothing
    assert decode_extra_state(None) is None
    assert input_amax({"scale_fwd": torch.tensor([FP8_E4M3_MAX / 6.0, 1.0, 1.0])}) == pytest.approx(6.0)
    assert input_amax({"scale_fwd": torch.ones(3)}) is None  # initial scale: nothing recorded
    with pytest.raises(CheckpointError, match="cannot be read"):
        decode_extra_state(torch.tensor([1, 2, 3], dtype=torch.uint8))


def test_layer_mapping_to_trtllm_linears() -> None:
    states = {
        "self_attention.linear_qkv._extra_state": as_uint8_tensor(te_state([2.0])),
        "self_attention.linear_proj._extra_state": as_uint8_tensor(te_state([0.75])),
        "mlp.linear_fc1._extra_state": as_uint8_tensor(te_state([4.0])),
        "mlp.linear_fc2._extra_state": torch.empty(0, dtype=torch.uint8),  # not FP8-trained
    }
    assert layer_activation_amax(states) == {
        "attention.qkv": 2.0,
        "attention.dense": 0.75,
        "mlp.fc": 4.0,
        "mlp.gate": 4.0,
    }


def test_recorded_ranges_take_precedence_over_calibration(tmp_path: Path) -> None:
    make_llama(tmp_path / "hf")
    calib = CalibrationSet((torch.arange(20) % VOCAB,), "test ids")
    with _open_source(tmp_path / "hf", "hf", None) as source:
        source.activation_amax = lambda index: {"attention.dense": 10.0 + index}  # type: ignore[method-assign]
        from pitcrew_builder.convert.api import output_config, quant_config

        cfg = output_config(
            source.config, tp=1, pp=1, dtype="float32", quant=quant_config("fp8"), overrides=None
        )
        write_checkpoint(source, cfg, tmp_path / "out", calibration=calib)
    with safe_open(str(tmp_path / "out" / "rank0.safetensors"), "pt") as f:
        for i in range(2):
            got = float(f.get_tensor(f"transformer.layers.{i}.attention.dense.activation_scaling_factor"))
            assert got == pytest.approx((10.0 + i) / FP8_E4M3_MAX)
            assert (
                float(f.get_tensor(f"transformer.layers.{i}.mlp.fc.activation_scaling_factor"))
                < 10 / FP8_E4M3_MAX
            )


# Layer 0 of the Megatron checkpoints carries TE FP8 state, layer 1 none (TE saved an empty tensor).
RECORDED = {"self_attention.linear_qkv": 2.5, "self_attention.linear_proj": 0.75, "mlp.linear_fc1": 4.0}
LINEARS = {"attention.qkv": 2.5, "attention.dense": 0.75, "mlp.fc": 4.0, "mlp.gate": 4.0}


def _convert_fp8(ckpt: Path, out: Path) -> dict[str, float]:
    from pitcrew_builder.convert.api import output_config, quant_config

    calib = CalibrationSet((torch.arange(20) % VOCAB,), "test ids")
    with _open_source(ckpt, "megatron", None) as source:
        cfg = output_config(
            source.config, tp=1, pp=1, dtype="float32", quant=quant_config("fp8"), overrides=None
        )
        write_checkpoint(source, cfg, out, calibration=calib)
    with safe_open(str(out / "rank0.safetensors"), "pt") as f:
        return {
            k.removeprefix("transformer.layers.").removesuffix(".activation_scaling_factor"): float(
                f.get_tensor(k)
            )
            for k in f.keys()  # noqa: SIM118 - safe_open has no __iter__
            if k.endswith(".activation_scaling_factor")
        }


def test_megatron_checkpoints_with_te_fp8_state(tmp_path: Path) -> None:
    """Hand-written Megatron checkpoints (tiny_models; Transformer Engine cannot be installed, so
    megatron-core cannot save TE modules here) in both layouts: the converter takes layer 0's input
    ranges from TE's state and calibrates the rest."""
    from tiny_models import llama_to_megatron, save_megatron_legacy, save_megatron_torch_dist

    full, args = llama_to_megatron(make_llama(tmp_path / "hf"), 104)
    legacy: dict[str, list[object]] = {}
    dist: dict[str, object] = {}
    for module, amax in RECORDED.items():
        name = f"decoder.layers.0.{module}._extra_state"
        # Legacy: one state per TP rank, older TE encoding on rank 0; the larger amax counts.
        legacy[name] = [as_bytesio(te_state([amax / 2, amax * 0.9])), as_uint8_tensor(te_state([amax]))]
        dist[name] = as_uint8_tensor(te_state([amax, amax / 3]))
    for module in ("mlp.linear_fc2", *RECORDED):
        legacy.setdefault(f"decoder.layers.0.{module}._extra_state", [torch.empty(0, dtype=torch.uint8)] * 2)
        for layer in range(1, args["num_layers"]):
            legacy[f"decoder.layers.{layer}.{module}._extra_state"] = [torch.empty(0, dtype=torch.uint8)] * 2
            dist[f"decoder.layers.{layer}.{module}._extra_state"] = torch.empty(0, dtype=torch.uint8)
    dist["decoder.layers.0.mlp.linear_fc2._extra_state"] = torch.empty(0, dtype=torch.uint8)

    baseline = _convert_fp8(save_megatron_legacy(full, args, tmp_path / "plain", tp=2, pp=1), tmp_path / "o0")
    got = {
        "legacy": _convert_fp8(
            save_megatron_legacy(full, args, tmp_path / "legacy", tp=2, pp=1, te_states=legacy),
            tmp_path / "o1",
        ),
        "torch_dist": _convert_fp8(
            save_megatron_torch_dist(full, args, tmp_path / "dist", te_states=dist), tmp_path / "o2"
        ),
    }
    recorded = {f"0.{linear}": amax / FP8_E4M3_MAX for linear, amax in LINEARS.items()}
    assert set(recorded) <= set(baseline)
    for layout, scales in got.items():
        assert set(scales) == set(baseline), layout
        for key, value in scales.items():
            want = recorded.get(key, baseline[key])  # calibrated where TE recorded nothing
            assert value == pytest.approx(want, rel=1e-6), (layout, key)
        assert scales["0.attention.dense"] != pytest.approx(baseline["0.attention.dense"]), layout
