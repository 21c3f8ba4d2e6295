"""The convert stage hands the plan's quantization, KV cache included, to the converter."""

from pathlib import Path

import pytest
from builder_plans import make_plan
from tiny_models import make_llama
from tiny_tokenizer import save_word_tokenizer

from pitcrew.api.v1alpha1 import Quantization
from pitcrew_builder.checkpoint import read_config
from pitcrew_builder.stages.convert import run_convert
from pitcrew_devcluster.s3server import S3Info


@pytest.mark.parametrize(
    ("weights", "kv_cache", "quant_algo", "kv_algo"),
    [("int8", "fp8", "W8A16", "FP8"), ("none", "int8", None, "INT8"), ("fp8", "none", "FP8", None)],
)
def test_kv_cache_quantization_reaches_the_checkpoint(
    tmp_path: Path, weights: str, kv_cache: str, quant_algo: str | None, kv_algo: str | None
) -> None:
    source = tmp_path / "hf"
    make_llama(source)
    save_word_tokenizer(source, 101)
    plan = make_plan(source_uri=source.as_uri(), output_uri="s3://unused/out", source_format="hf")
    plan.quantization = Quantization(weights=weights, kv_cache=kv_cache)  # type: ignore[arg-type]
    run_convert(plan, source, tmp_path / "ckpt", lambda _message, _fraction: None)
    quantization = read_config(tmp_path / "ckpt").quantization
    assert (quantization.quant_algo, quantization.kv_cache_quant_algo) == (quant_algo, kv_algo)


def test_calibration_dataset_file_with_input_ids_and_a_missing_tokenizer(tmp_path: Path) -> None:
    from pitcrew_builder.checkpoint import CheckpointError
    from pitcrew_builder.errors import InvalidCheckpoint

    source = tmp_path / "hf"
    make_llama(source)  # no tokenizer: the built-in text cannot be tokenized
    plan = make_plan(source_uri=source.as_uri(), output_uri="s3://unused/out", source_format="hf")
    plan.quantization = Quantization(weights="fp8")  # type: ignore[arg-type]
    with pytest.raises((InvalidCheckpoint, CheckpointError), match="source has no tokenizer"):
        run_convert(plan, source, tmp_path / "a", lambda _m, _f: None)
    ids = tmp_path / "calib.jsonl"
    ids.write_text("\n".join(f'{{"input_ids": [{i}, {i + 1}, {i + 2}, 7, 9]}}' for i in range(10)))
    plan.quantization = Quantization.model_validate(
        {"weights": "fp8", "calibration": {"dataset": ids.as_uri(), "samples": 4, "seqLen": 8}}
    )
    run_convert(plan, source, tmp_path / "b", lambda _m, _f: None)
    assert read_config(tmp_path / "b").quantization.quant_algo == "FP8"


def test_calibration_dataset_read_from_s3(
    s3: S3Info, s3_prefix: str, clean_env: None, tmp_path: Path
) -> None:
    from pitcrew_builder.pipeline import Options, _object_reader

    source = tmp_path / "hf"
    make_llama(source)
    key = f"{s3_prefix}/calib/ids.jsonl"
    body = "\n".join(f'{{"input_ids": [{i}, {i + 3}, 5, 8]}}' for i in range(12))
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=body.encode())
    plan = make_plan(source_uri=source.as_uri(), output_uri="s3://unused/out", source_format="hf")
    plan.quantization = Quantization.model_validate(
        {"kvCache": "int8", "calibration": {"dataset": f"s3://{s3.bucket}/{key}", "samples": 6}}
    )
    reader = _object_reader(plan, Options.from_env(str(tmp_path / "work")))
    run_convert(plan, source, tmp_path / "ckpt", lambda _m, _f: None, reader)
    assert read_config(tmp_path / "ckpt").quantization.kv_cache_quant_algo == "INT8"
    assert (tmp_path / "calibration.jsonl").read_text() == body
    missing = Quantization.model_validate(
        {"kvCache": "int8", "calibration": {"dataset": f"s3://{s3.bucket}/{s3_prefix}/nope.jsonl"}}
    )
    plan.quantization = missing
    from pitcrew_builder.errors import InvalidSpec

    with pytest.raises(
        InvalidSpec, match=r"quantization\.calibration\.dataset: s3://.*nope\.jsonl does not exist"
    ):
        run_convert(plan, source, tmp_path / "ckpt2", lambda _m, _f: None, reader)
