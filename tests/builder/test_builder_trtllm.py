"""The tensorrt-llm backend against the TensorRT-LLM CONTRACT DOUBLE (trtllm_contract_double/).

The double checks what TensorRT-LLM 1.2's API would receive; these tests pin the Megatron
TRTLLMEngineBuilder defaults as they reach BuildConfig and PluginConfig.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from builder_plans import TRTLLM_DOUBLE, compile_context, make_plan, trtllm_plan, write_plan
from builder_run import run_builder

from pitcrew_builder.backends.trtllm import (
    BACKEND,
    build_config_dict,
    model_class_name,
    plugin_settings,
)

# trtllm_plan() without build options: Megatron's build_and_save_engine defaults (input 1024,
# output 1024, batch 4, tokens_per_block 128).


def test_megatron_defaults_reach_build_config(tmp_path: Path) -> None:
    d = build_config_dict(trtllm_plan(), "LlamaForCausalLM", tmp_path / "timing.cache")
    assert d["max_input_len"] == 1024 and d["max_seq_len"] == 2048
    assert d["max_batch_size"] == 4 and d["max_beam_width"] == 1
    assert d["max_num_tokens"] == 8192 and d["opt_num_tokens"] == 4
    assert d["gather_context_logits"] is False and d["gather_generation_logits"] is False
    assert d["strongly_typed"] is False and d["use_refit"] is False and d["multiple_profiles"] is False
    assert d["max_prompt_embedding_table_size"] == 0
    assert d["output_timing_cache"] == str(tmp_path / "timing.cache")
    assert build_config_dict(trtllm_plan(), "DeciLMForCausalLM", tmp_path / "t")["strongly_typed"] is True


def test_megatron_defaults_reach_plugin_config() -> None:
    p = plugin_settings(trtllm_plan().build, "LlamaForCausalLM")
    assert p.paged_kv_tokens_per_block == 128
    assert p.attributes == {
        "gpt_attention_plugin": "auto",
        "gemm_plugin": "auto",
        "remove_input_padding": True,
        "use_paged_context_fmha": False,
        "multiple_profiles": False,
        "reduce_fusion": False,
    }
    off = trtllm_plan(
        build={"pagedKvCache": False, "gemmPlugin": "disable"},
    )
    p = plugin_settings(off.build, "DeciLMForCausalLM")
    assert p.paged_kv_tokens_per_block is None and p.attributes["gemm_plugin"] is None
    assert p.attributes["use_fused_mlp"] is False and "lora_plugin" not in p.attributes


def test_sizes_without_input_padding_and_with_explicit_values(tmp_path: Path) -> None:
    padded = trtllm_plan(
        build={"removeInputPadding": False, "maxNumTokens": 99},
    )
    d = build_config_dict(padded, "LlamaForCausalLM", tmp_path / "t")
    assert d["max_num_tokens"] == 4 * 2048 and d["opt_num_tokens"] is None
    explicit = trtllm_plan(
        build={"maxNumTokens": 100, "optNumTokens": 500, "maxBatchSize": 8},
    )
    d = build_config_dict(explicit, "LlamaForCausalLM", tmp_path / "t")
    assert d["max_num_tokens"] == 128  # raised to tokens_per_block (context FMHA on)
    assert d["opt_num_tokens"] == 128  # never above max_num_tokens


def test_check_refuses_lora_and_size_skew() -> None:
    from pitcrew_builder.errors import InvalidSpec

    lora = trtllm_plan(
        build={"lora": {"enabled": True}},
    )
    with pytest.raises(InvalidSpec, match=r"build\.lora is not supported: TensorRT-LLM 1\.2 builds a LoRA"):
        BACKEND.check(lora)
    skewed = trtllm_plan()
    skewed.sizes.max_num_tokens = 1234  # the controller resolved something else: version skew
    with pytest.raises(InvalidSpec, match="max_num_tokens=1234"):
        BACKEND.check(skewed)
    BACKEND.check(trtllm_plan())


def test_model_classes() -> None:
    assert model_class_name("LlamaForCausalLM") == "LLaMAForCausalLM"
    assert model_class_name("MistralForCausalLM") == "LLaMAForCausalLM"
    assert model_class_name("GPTForCausalLM") == "GPTForCausalLM"
    assert model_class_name("DeciLMForCausalLM") == "DeciLMForCausalLM"


@pytest.fixture(scope="module")
def tp2_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    from pitcrew_builder.convert.api import convert

    out = tmp_path_factory.mktemp("ckpt-tp2")
    convert(tiny_llama, "hf", out, tp=2, dtype="float16")
    return out


def test_compile_per_rank_through_the_double(
    trtllm: ModuleType, tp2_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorrt_llm._contract import CALLS

    monkeypatch.chdir(tmp_path)  # a stray default timing cache would land here
    plan = trtllm_plan(tp=2)
    progress: list[float] = []
    ctx = compile_context(plan, tp2_checkpoint, tmp_path, lambda _m, f: progress.append(f))
    result = BACKEND.compile(ctx)

    loads = [c for c in CALLS if c["call"] == "from_checkpoint"]
    builds = [c for c in CALLS if c["call"] == "build"]
    assert [(c["class"], c["rank"], c["ckpt_dir"]) for c in loads] == [
        ("LLaMAForCausalLM", 0, str(tp2_checkpoint)),
        ("LLaMAForCausalLM", 1, str(tp2_checkpoint)),
    ]
    bc = builds[0]["build_config"]
    assert (bc["max_seq_len"], bc["max_num_tokens"], bc["opt_num_tokens"], bc["max_batch_size"]) == (
        2048,
        8192,
        4,
        4,
    )
    assert bc["strongly_typed"] is False and bc["output_timing_cache"] == str(
        tmp_path / "work" / "timing.cache"
    )
    assert bc["input_timing_cache"] is None
    assert builds[1]["build_config"]["input_timing_cache"] == str(
        tmp_path / "work" / "timing.cache"
    )  # reused
    pc = bc["plugin_config"]
    assert pc["tokens_per_block"] == 128 and pc["paged_kv_cache"] is True
    assert pc["gpt_attention_plugin"] == "auto" and pc["gemm_plugin"] == "auto"
    assert pc["use_paged_context_fmha"] is False and pc["context_fmha"] is True
    assert (
        pc["remove_input_padding"] is True
        and pc["reduce_fusion"] is False
        and pc["multiple_profiles"] is False
    )
    assert not (tmp_path / "model.cache").exists()

    assert sorted(p.name for p in (tmp_path / "engine").iterdir()) == [
        "config.json",
        "rank0.engine",
        "rank1.engine",
    ]
    config = json.loads((tmp_path / "engine" / "config.json").read_text())
    assert config["version"] == "1.2.0" and config["pretrained_config"]["mapping"]["tp_size"] == 2
    assert result.tensorrt_llm_version == "1.2.0"
    assert result.build_options["plugin_config"]["tokens_per_block"] == 128
    assert progress[-1] == 1.0


def test_parallel_ranks_with_workers(trtllm: ModuleType, tp2_checkpoint: Path, tmp_path: Path) -> None:
    plan = trtllm_plan(tp=2, build={"workers": 2})
    ctx = compile_context(plan, tp2_checkpoint, tmp_path)
    jobs = BACKEND.jobs(ctx)
    assert [j.build["output_timing_cache"] for j in jobs] == [
        str(tmp_path / "work" / "timing-rank0.cache"),
        str(tmp_path / "work" / "timing-rank1.cache"),
    ]
    result = BACKEND.compile(ctx)  # two spawned processes, each importing the double
    assert result.build_options["workers"] == 2
    assert (tmp_path / "engine" / "rank1.engine").read_bytes().startswith(b"CONTRACT-DOUBLE engine rank 1")


@pytest.mark.slow
def test_cli_build_with_the_double_publishes_engines(tiny_llama: Path, tmp_path: Path) -> None:
    plan = make_plan(
        source_uri=tiny_llama.as_uri(),
        output_uri="pvc://engines/llama",
        backend="tensorrt-llm",
        cache_key="trtllm-tp2",
        tp=2,
        compute_capability="9.0",
    )
    pvc = tmp_path / "pvc"
    run = run_builder(
        write_plan(plan, tmp_path / "plan.json"),
        tmp_path / "work",
        tmp_path / "term.json",
        {"PITCREW_PVC_ROOT": str(pvc), "PYTHONPATH_EXTRA": str(TRTLLM_DOUBLE)},
    )
    assert run.code == 0, run.stderr[-3000:]
    manifest = json.loads((pvc / "engines/llama/trtllm-tp2/manifest.json").read_text())
    assert sorted(f["path"] for f in manifest["files"]) == ["config.json", "rank0.engine", "rank1.engine"]
    assert manifest["versions"]["tensorrtLlm"] == "1.2.0" and manifest["computeCapability"] == "9.0"
    assert manifest["build"]["build_config"]["max_num_tokens"] == 128
    assert run.result["versions"]["tensorrtLlm"] == "1.2.0"


@pytest.mark.parametrize(
    ("requested", "architecture", "tp", "problem"),
    [
        (False, "MistralForCausalLM", 1, None),
        (True, "LlamaForCausalLM", 2, None),  # the one case TRT-LLM 1.2 builds
        (True, "LlamaForCausalLM", 1, "needs parallelism.tensor > 1"),
        (
            True,
            "MistralForCausalLM",
            2,
            "only to LlamaForCausalLM checkpoints, this one is MistralForCausalLM",
        ),
        (True, "Qwen2ForCausalLM", 4, "this one is Qwen2ForCausalLM"),
        (True, "GPTForCausalLM", 2, "this one is GPTForCausalLM"),
    ],
)
def test_reduce_fusion_is_refused_where_trtllm_drops_it(
    requested: bool, architecture: str, tp: int, problem: str | None
) -> None:
    from pitcrew_builder.backends.trtllm import reduce_fusion_problem

    got = reduce_fusion_problem(requested, architecture, tp)
    assert got is None if problem is None else (got is not None and problem in got and "reduceFusion" in got)


def test_build_config_is_constructed_for_dataclass_and_pydantic_forms() -> None:
    import dataclasses

    import pydantic

    from pitcrew_builder.backends.trtllm import make_build_config
    from pitcrew_builder.errors import BuildFailed

    @dataclasses.dataclass
    class DataclassBuildConfig:  # TensorRT-LLM <= 1.1
        max_input_len: int = 1024
        max_num_tokens: int = 8192
        plugin_config: object = None

    class PydanticBuildConfig(pydantic.BaseModel):  # TensorRT-LLM 1.2.x: unknown keys are errors
        model_config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)
        max_input_len: int = 1024
        max_num_tokens: int = 8192
        plugin_config: object = None

    values = {"max_input_len": 512, "max_num_tokens": 300, "multiple_profiles": False}
    for cls in (DataclassBuildConfig, PydanticBuildConfig):
        built = make_build_config(cls, values, plugin_config="plugins")
        assert (built.max_input_len, built.max_num_tokens, built.plugin_config) == (512, 300, "plugins")
        with pytest.raises(BuildFailed, match=r"no field\(s\) \['max_seq_len'\]: version skew"):
            make_build_config(cls, {**values, "max_seq_len": 1}, plugin_config=None)


@pytest.mark.slow
def test_cli_fp8_build_through_the_double(tiny_llama: Path, tmp_path: Path) -> None:
    """The whole builder on an FP8 plan: built-in calibration text through the model's tokenizer,
    fp8 checkpoint loaded by the double's FP8 LLaMA (every scale required), logits validated."""
    import shutil

    from tiny_models import VOCAB
    from tiny_tokenizer import save_word_tokenizer

    source = tmp_path / "src"
    shutil.copytree(tiny_llama, source)
    save_word_tokenizer(source, VOCAB)
    plan = make_plan(
        source_uri=source.as_uri(),
        output_uri="pvc://engines/llama",
        backend="tensorrt-llm",
        cache_key="trtllm-fp8",
        tp=2,
        compute_capability="9.0",
    )
    plan.quantization = plan.quantization.model_validate(
        {"weights": "fp8", "kvCache": "fp8", "calibration": {"samples": 8, "seqLen": 32}}
    )
    pvc = tmp_path / "pvc"
    run = run_builder(
        write_plan(plan, tmp_path / "plan.json"),
        tmp_path / "work",
        tmp_path / "term.json",
        {"PITCREW_PVC_ROOT": str(pvc), "PYTHONPATH_EXTRA": str(TRTLLM_DOUBLE)},
    )
    assert run.code == 0, run.stderr[-3000:]
    engine_config = json.loads((pvc / "engines/llama/trtllm-fp8/config.json").read_text())
    assert engine_config["pretrained_config"]["quantization"]["quant_algo"] == "FP8"
    assert engine_config["build_config"]["strongly_typed"] is True  # build() forces it for FP8
    checks = [e for e in run.events if e.get("event") == "logits-check"]
    assert [c["status"] for c in checks] == ["passed"], checks
