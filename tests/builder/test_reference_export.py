"""The reference model exports to ONNX with dynamic batch and sequence axes (TensorRT-RTX path)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from tiny_models import VOCAB, hf_logits, make_llama

from pitcrew_builder.convert import convert
from pitcrew_builder.model.reference import ReferenceModel


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_onnx_export_with_dynamic_shapes(tmp_path: Path) -> None:
    hf = make_llama(tmp_path / "hf", kv_heads=2)
    convert(tmp_path / "hf", "hf", tmp_path / "ckpt", tp=2, pp=1, dtype="float32")
    model = ReferenceModel.from_checkpoint(tmp_path / "ckpt")
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    batch, seq = torch.export.Dim("batch", max=8), torch.export.Dim("seq", max=64)
    program = torch.export.export(model, (ids,), dynamic_shapes={"input_ids": {0: batch, 1: seq}})
    # The exported graph is shape-generic: other batch/sequence sizes give the HF logits.
    other = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(other), hf_logits(hf, other), rtol=1e-4, atol=1e-4)
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model,
        (ids,),
        str(path),
        dynamo=True,
        input_names=["input_ids"],
        output_names=["logits"],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}},
        verbose=False,
    )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, True]
