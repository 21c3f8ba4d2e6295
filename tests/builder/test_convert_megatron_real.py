"""Checkpoints written by Megatron-LM itself (megatron-core from PyPI, CPU, gloo) -> TRT-LLM checkpoint.

megatron_save.py builds tiny GPT (LayerNorm, learned positions, GELU, biases, tied embeddings) and
LLaMA-style (GQA, SwiGLU, RMSNorm, rope, untied) models from a pretrain_gpt command line, saves
them with Megatron's own ``save_checkpoint`` in the legacy (mp_rank_XX[_YYY]) and the torch_dist
format at tp1, tp2, pp2 and tp2 x pp2, and records Megatron's own forward logits. Pitcrew's
conversion, as a library call and through the builder CLI, must reproduce those logits (evaluated
by the TRT-LLM-semantics reference model).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from builder_plans import make_plan
from builder_run import Run, run_builder
from megatron_real import FORMATS, LAYOUTS, MODELS, VOCAB, Saved
from safetensors.torch import load_file, save_file

from pitcrew.api.v1alpha1 import SourceFormat
from pitcrew_builder.checkpoint import CheckpointError, read_config
from pitcrew_builder.convert import convert
from pitcrew_builder.convert.megatron import open_megatron
from pitcrew_builder.convert.torch_load import load_pt
from pitcrew_builder.convert.trtllm import load_full_weights
from pitcrew_builder.model.megatron_reference import MegatronForward
from pitcrew_builder.model.reference import ReferenceModel
from pitcrew_builder.validate import TOLERANCE, check_logits

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),
    # The first test also runs Megatron (megatron_saved): minutes on a loaded machine, unless cached.
    pytest.mark.timeout(1800),
]
Saved_ = dict[tuple[str, str], Saved]


def _logits(ckpt: Path, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = ReferenceModel.from_checkpoint(ckpt)(ids)
    return logits[..., :VOCAB]


def _close_to_megatron(got: torch.Tensor, want: torch.Tensor) -> None:
    # float32 on both sides, same operations: only summation order differs.
    scale = float(want.abs().max())
    assert scale > 1.0, "logits too small to tell a mapping mistake from rounding"
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("model", MODELS)
def test_converts_what_megatron_saved(
    megatron_saved: Saved_, tmp_path: Path, model: str, layout: str, fmt: str
) -> None:
    saved = megatron_saved[(model, layout)]
    src = saved.checkpoint(fmt)
    if fmt == "torch_dist":  # megatron-core 0.19 keeps the args in the .distcp common_state item
        assert not list(src.rglob("common.pt")) and list(src.rglob("*.distcp"))
    else:
        tp, pp = LAYOUTS[layout]
        want = {f"mp_rank_{t:02d}" + (f"_{p:03d}" if pp > 1 else "") for t in range(tp) for p in range(pp)}
        assert {d.name for d in (src / "iter_0000010").iterdir()} == want
    config = convert(src, "megatron", tmp_path, tp=1, pp=1, dtype="float32")
    ids, want_logits = saved.reference()
    got = _logits(tmp_path, ids)
    if model == "gpt_erf":
        # TRT-LLM's only GELU is the tanh form; Megatron unfused computes erf GELU. The engine
        # differs by that approximation: visible, but within validate's float32 tolerance.
        diff = float((got - want_logits).abs().max())
        assert 1e-6 < diff < TOLERANCE["float32"] * float(want_logits.abs().max()), diff
    else:
        _close_to_megatron(got, want_logits)
    # Facts from Megatron's saved args, not from any override.
    assert config.vocab_size == (104 if LAYOUTS[layout][0] == 1 else 112)  # padded to 8 x tp
    if model.startswith("gpt"):
        assert config.architecture == "GPTForCausalLM" and config.hidden_act == "gelu"
        assert config.position_embedding_type == "learned_absolute" and config.mlp_bias
    else:
        assert config.architecture == "LlamaForCausalLM" and config.hidden_act == "silu"
        heads = (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size)
        assert heads == (4, 2, 96)
        assert config.norm_epsilon == 1e-6 and not config.qkv_bias
        want_scaling = {"type": "linear", "factor": 2.0} if model == "llama_interp" else None
        assert config.rotary_scaling == want_scaling


@pytest.mark.parametrize(
    ("model", "layout", "fmt", "tp", "pp"),
    [
        ("llama", "tp2", "torch", 2, 2),
        ("gpt", "pp2", "torch_dist", 2, 1),
        ("llama", "pp2", "torch_dist", 1, 2),
        ("llama", "tp2pp2", "torch", 1, 2),
        ("gpt", "tp2pp2", "torch_dist", 2, 1),
    ],
)
def test_resharded_to_another_layout(
    megatron_saved: Saved_, tmp_path: Path, model: str, layout: str, fmt: str, tp: int, pp: int
) -> None:
    saved = megatron_saved[(model, layout)]
    convert(saved.checkpoint(fmt), "megatron", tmp_path, tp=tp, pp=pp, dtype="float32")
    ids, want = saved.reference()
    _close_to_megatron(_logits(tmp_path, ids), want)


def test_both_formats_give_identical_weights(megatron_saved: Saved_, tmp_path: Path) -> None:
    saved = megatron_saved[("llama", "tp2")]
    convert(saved.checkpoint("torch"), "megatron", tmp_path / "a", tp=1, pp=1, dtype="float32")
    convert(saved.checkpoint("torch_dist"), "megatron", tmp_path / "b", tp=1, pp=1, dtype="float32")
    _, a = load_full_weights(tmp_path / "a")
    _, b = load_full_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def _run_cli(src: Path, tmp_path: Path, tp: int, pp: int) -> tuple[Run, Path]:
    """The builder CLI as the Job runs it (fetch, convert, validate, publish) to a pvc:// output."""
    plan = make_plan(
        source_uri=src.as_uri(),
        output_uri="pvc://out/engines",
        backend="checkpoint",
        source_format="megatron",
        dtype="float32",
        tp=tp,
        pp=pp,
    )
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.model_dump_json(by_alias=True))
    pvc = tmp_path / "pvc"
    run = run_builder(plan_file, tmp_path / "work", tmp_path / "term.json", {"PITCREW_PVC_ROOT": str(pvc)})
    return run, pvc / "out" / "engines" / plan.cache_key


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("model", ["gpt", "llama"])
def test_cli_converts_what_megatron_saved(
    megatron_saved: Saved_, tmp_path: Path, model: str, layout: str, fmt: str
) -> None:
    """Every saved layout and format through the CLI, the engine at the training layout: the
    published checkpoint gives Megatron's own logits, and the validate stage passed."""
    saved = megatron_saved[(model, layout)]
    tp, pp = LAYOUTS[layout]
    run, published = _run_cli(saved.checkpoint(fmt), tmp_path, tp, pp)
    assert run.code == 0, run.stderr[-2000:]
    [check] = run.find("validate", "logits-check")
    assert check["status"] == "passed" and check["max_abs_diff"] < 1e-4, check
    config = read_config(published)
    assert (config.mapping.tp_size, config.mapping.pp_size) == (tp, pp)
    assert sorted(f.name for f in published.glob("rank*.safetensors")) == [
        f"rank{r}.safetensors" for r in range(tp * pp)
    ]
    ids, want = saved.reference()
    _close_to_megatron(_logits(published, ids), want)


@pytest.mark.parametrize(("model", "layout"), [("llama_interp", "tp2")])
def test_cli_builds_a_megatron_torch_dist_checkpoint_and_validates_its_logits(
    megatron_saved: Saved_, tmp_path: Path, model: str, layout: str
) -> None:
    """The builder CLI, as the Job runs it: fetch, convert, validate (logits vs. MegatronForward), publish."""
    run, _ = _run_cli(megatron_saved[(model, layout)].checkpoint("torch_dist"), tmp_path, 2, 1)
    assert run.code == 0, run.stderr[-2000:]
    check = run.find("validate", "logits-check")[0]
    assert check["status"] == "passed", check
    assert check["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("model", ["gpt", "llama", "gpt_erf"])
def test_validation_reference_is_megatron_and_catches_a_wrong_conversion(
    megatron_saved: Saved_, tmp_path: Path, model: str
) -> None:
    saved = megatron_saved[(model, "tp2")]
    src = saved.checkpoint("torch")
    ids, want = saved.reference()
    with open_megatron(src) as source:
        got = MegatronForward(source.reader)(ids)[..., :VOCAB]
    _close_to_megatron(got, want)  # the validate stage's reference reproduces Megatron's forward

    config = convert(src, "megatron", tmp_path / "ok", tp=2, pp=1, dtype="float32")
    check = check_logits(src, tmp_path / "ok", config, SourceFormat.MEGATRON)
    assert check.status == "passed" and check.max_abs_diff is not None
    assert check.max_abs_diff < (1e-3 if model == "gpt_erf" else 1e-4)
    # Swapping K and V heads (a plausible mapping mistake) must fail the check.
    shutil.copytree(tmp_path / "ok", tmp_path / "bad")
    path = tmp_path / "bad" / "rank0.safetensors"
    tensors = load_file(path)
    name = "transformer.layers.0.attention.qkv.weight"
    q, k, v = tensors[name].split(
        [32, (tensors[name].shape[0] - 32) // 2, (tensors[name].shape[0] - 32) // 2]
    )
    tensors[name] = torch.cat([q, v, k]).contiguous()
    save_file(tensors, path)
    assert check_logits(src, tmp_path / "bad", config, SourceFormat.MEGATRON).status == "failed"


def test_legacy_reader_loads_each_rank_file_once_when_opened(
    megatron_saved: Saved_, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first rank's file gives the saved args and the first stage's tensors: one load, not two."""
    from pitcrew_builder.convert import megatron_readers

    loaded: list[Path] = []

    def counting_load_pt(path: Path, **kw: Any) -> Any:
        loaded.append(path)
        return load_pt(path, **kw)

    monkeypatch.setattr(megatron_readers, "load_pt", counting_load_pt)
    src = megatron_saved[("llama", "tp2pp2")].checkpoint("torch") / "iter_0000010"
    reader = megatron_readers.LegacyReader(src)
    assert (reader.tp, reader.pp, reader.num_layers) == (2, 2, 2)
    assert sorted(p.parent.name for p in loaded) == [
        "mp_rank_00_000",
        "mp_rank_00_001",
        "mp_rank_01_000",
        "mp_rank_01_001",
    ]
    assert reader.get("decoder.layers.1.self_attention.linear_qkv.weight") is not None


# ---- bad input: damaged copies of what Megatron saved ------------------------------------------


def _damaged_copy(saved: Saved, fmt: str, tmp_path: Path, remove: str) -> Path:
    src = shutil.copytree(saved.checkpoint(fmt), tmp_path / "src")
    victim = src / "iter_0000010" / remove
    assert victim.exists()
    if victim.is_dir():
        shutil.rmtree(victim)
    else:
        victim.unlink()
    return src


@pytest.mark.parametrize(
    ("layout", "remove", "message"),
    [
        ("tp2", "mp_rank_01", "lacks mp_rank_01: the checkpoint was saved with tensor_model_parallel_size=2"),
        ("pp2", "mp_rank_00_001", "lacks mp_rank_00_001: the checkpoint was saved with "),
        (
            "tp2pp2",
            "mp_rank_01_001",
            "lacks mp_rank_01_001: the checkpoint was saved with "
            "tensor_model_parallel_size=2, pipeline_model_parallel_size=2",
        ),
    ],
)
def test_missing_rank_directory_is_named(
    megatron_saved: Saved_, tmp_path: Path, layout: str, remove: str, message: str
) -> None:
    src = _damaged_copy(megatron_saved[("gpt", layout)], "torch", tmp_path, remove)
    with pytest.raises(CheckpointError, match=message):
        convert(src, "megatron", tmp_path / "out", tp=1, pp=1, dtype="float32")


@pytest.mark.parametrize("shard", ["__0_0.distcp", "__1_0.distcp"])
def test_missing_distcp_shard_is_named(megatron_saved: Saved_, tmp_path: Path, shard: str) -> None:
    src = _damaged_copy(megatron_saved[("llama", "tp2")], "torch_dist", tmp_path, shard)
    with pytest.raises(CheckpointError, match=f"shard file {shard} .* is missing"):
        convert(src, "megatron", tmp_path / "out", tp=1, pp=1, dtype="float32")
    assert not (tmp_path / "out" / "config.json").exists()
