"""The convert stage hands the plan's quantization, KV cache included, to the converter."""

from pathlib import Path

import pytest
from builder_plans import make_plan
from tiny_models import make_llama

from pitcrew.api.v1alpha1 import Quantization
from pitcrew_builder.checkpoint import read_config
from pitcrew_builder.stages.convert import run_convert


@pytest.mark.parametrize(
    ("weights", "kv_cache", "quant_algo", "kv_algo"),
    [("int8", "fp8", "W8A16", "FP8"), ("none", "int8", None, "INT8"), ("fp8", "none", "FP8", None)],
)
def test_kv_cache_quantization_reaches_the_checkpoint(
    tmp_path: Path, weights: str, kv_cache: str, quant_algo: str | None, kv_algo: str | None
) -> None:
    source = tmp_path / "hf"
    make_llama(source)
    plan = make_plan(source_uri=source.as_uri(), output_uri="s3://unused/out", source_format="hf")
    plan.quantization = Quantization(weights=weights, kv_cache=kv_cache)  # type: ignore[arg-type]
    run_convert(plan, source, tmp_path / "ckpt", lambda _message, _fraction: None)
    quantization = read_config(tmp_path / "ckpt").quantization
    assert (quantization.quant_algo, quantization.kv_cache_quant_algo) == (quant_algo, kv_algo)
