"""Transformer Engine FP8 state (Megatron `_extra_state`) -> TRT-LLM activation scales.

transformer_engine cannot be installed here (CUDA-only wheels), so the states are written in the
two layouts TE's get_extra_state produces (TE >= 1.6: pickled dict as a uint8 tensor; older: a
torch.save'd BytesIO), with the delayed-scaling fields it saves.
"""

from __future__ import annotations

import io
import pickle
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
