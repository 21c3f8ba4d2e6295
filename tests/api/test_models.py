"""The models' defaults are Megatron's TRTLLMEngineBuilder defaults; bad input names the field."""

import pytest
from pydantic import ValidationError

from pitcrew.api.sizing import resolve_sizes, sizes_for
from pitcrew.api.v1alpha1 import BuildOptions, EngineBuildSpec

MINIMAL = {
    "source": {"uri": "s3://models/llama"},
    "target": {"gpuProduct": "NVIDIA-A100-SXM4-80GB"},
    "output": {"uri": "s3://engines/llama"},
}


def test_defaults_match_megatron_builder() -> None:
    build = BuildOptions()
    assert (build.max_input_len, build.max_output_len, build.max_batch_size) == (1024, 1024, 4)
    assert (build.max_beam_width, build.tokens_per_block, build.lora.max_lora_rank) == (1, 128, 64)
    assert build.paged_kv_cache and build.remove_input_padding
    assert not (build.paged_context_fmha or build.use_refit or build.multiple_profiles or build.reduce_fusion)
    assert (build.gpt_attention_plugin, build.gemm_plugin) == ("auto", "auto")
    assert build.max_prompt_embedding_table_size == 0


def test_megatron_default_sizes() -> None:
    sizes = sizes_for(BuildOptions())
    assert (sizes.max_seq_len, sizes.max_num_tokens, sizes.opt_num_tokens) == (2048, 8192, 4)


@pytest.mark.parametrize(
    ("padding", "fmha", "given", "expected"),
    [
        (False, True, 100, 4 * 2048),  # padded inputs ignore the given value
        (True, True, 100_000, 4 * 2048),  # clamped to batch x seq
        (True, True, 16, 128),  # raised to tokens_per_block with context FMHA
        (True, False, 16, 1024),  # raised to max_input_len without it
    ],
)
def test_max_num_tokens_rules(padding: bool, fmha: bool, given: int, expected: int) -> None:
    sizes = resolve_sizes(
        max_input_len=1024,
        max_output_len=1024,
        max_seq_len=None,
        max_batch_size=4,
        max_beam_width=1,
        max_num_tokens=given,
        opt_num_tokens=None,
        remove_input_padding=padding,
        context_fmha=fmha,
        tokens_per_block=128,
        multiple_profiles=False,
    )
    assert sizes.max_num_tokens == expected
    assert sizes.opt_num_tokens is None or sizes.opt_num_tokens <= sizes.max_num_tokens


# Rows computed by hand from tensorrt_llm/_common.py:check_max_num_tokens (TensorRT-LLM 1.2.x):
# (padding, fmha, batch, beam, input, seq, given max, given opt, multiple profiles) -> (max, opt)
CHECK_MAX_NUM_TOKENS_TABLE = [
    # opt defaults from the *given* max (32) before max is raised to tokens_per_block (128)
    ((True, True, 64, 1, 1024, 2048, 32, None, False), (128, 32)),
    ((True, True, 4, 1, 1024, 2048, None, None, False), (8192, 4)),  # Megatron defaults
    ((True, True, 4, 2, 1024, 2048, None, None, False), (8192, 8)),  # beam widens opt
    ((True, True, 4, 1, 1024, 2048, None, None, True), (8192, None)),  # multiple profiles: no opt
    ((True, True, 4, 1, 1024, 2048, 100_000, None, False), (8192, 4)),  # clamped to batch x seq
    ((True, True, 8, 1, 1024, 2048, 100, 500, False), (128, 128)),  # opt clamped to the raised max
    ((True, False, 64, 1, 1024, 2048, 32, None, False), (1024, 32)),  # no FMHA: raised to input len
    ((True, True, 1, 1, 64, 100, None, None, False), (128, 1)),  # product 100 < tokens_per_block
    ((True, True, 3000, 1, 1024, 2048, None, None, False), (3000 * 2048, 3000)),  # no cap at 16384
    ((False, True, 4, 1, 1024, 2048, 99, 7, False), (8192, 7)),  # padded: max = product, opt kept
    ((False, True, 4, 1, 1024, 2048, None, None, False), (8192, None)),
]


@pytest.mark.parametrize(("args", "expected"), CHECK_MAX_NUM_TOKENS_TABLE)
def test_sizes_follow_check_max_num_tokens(
    args: tuple[bool, bool, int, int, int, int, int | None, int | None, bool],
    expected: tuple[int, int | None],
) -> None:
    padding, fmha, batch, beam, input_len, seq_len, given_max, given_opt, profiles = args
    sizes = resolve_sizes(
        max_input_len=input_len,
        max_output_len=seq_len - input_len,
        max_seq_len=seq_len,
        max_batch_size=batch,
        max_beam_width=beam,
        max_num_tokens=given_max,
        opt_num_tokens=given_opt,
        remove_input_padding=padding,
        context_fmha=fmha,
        tokens_per_block=128,
        multiple_profiles=profiles,
    )
    assert (sizes.max_num_tokens, sizes.opt_num_tokens) == expected


def test_camel_case_wire_form_round_trips() -> None:
    spec = EngineBuildSpec.model_validate({**MINIMAL, "build": {"maxInputLen": 512, "maxSeqLen": 600}})
    wire = spec.to_api()
    assert wire["build"]["maxInputLen"] == 512 and wire["build"]["maxSeqLen"] == 600
    assert EngineBuildSpec.model_validate(wire) == spec


def test_unknown_field_is_named() -> None:
    with pytest.raises(ValidationError) as err:
        EngineBuildSpec.model_validate({**MINIMAL, "build": {"maxInputLength": 512}})
    assert "maxInputLength" in str(err.value)


@pytest.mark.parametrize("uri", ["http://x/y", "s3:/missing", "gs://bucket/x"])
def test_output_uri_must_be_s3_or_pvc(uri: str) -> None:
    with pytest.raises(ValidationError) as err:
        EngineBuildSpec.model_validate({**MINIMAL, "output": {"uri": uri}})
    assert "output" in str(err.value) and "uri" in str(err.value)


def test_megatron_args_by_python_name_with_scalar_values() -> None:
    args = {"num_layers": 2, "swiglu": True, "layernorm_epsilon": 1e-6, "normalization": "RMSNorm"}
    spec = EngineBuildSpec.model_validate({**MINIMAL, "model": {"megatronArgs": args}})
    assert spec.model is not None and spec.model.megatron_args == args
    assert spec.to_api()["model"]["megatronArgs"] == args  # names are Megatron's, not camel-cased
    for bad in ({"numLayers": 2}, {"num_layers": [2]}, {"num_layers": {"x": 1}}):
        with pytest.raises(ValidationError) as err:
            EngineBuildSpec.model_validate({**MINIMAL, "model": {"megatronArgs": bad}})
        assert "megatronArgs" in str(err.value)
