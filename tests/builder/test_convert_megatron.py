"""Megatron-core layouts that megatron-core on this machine cannot write -> TRT-LLM checkpoint.

Checkpoints Megatron itself writes (legacy and torch_dist, tp1/tp2/pp2/tp2 x pp2, GPT and
LLaMA-style) are tested in test_convert_megatron_real.py against Megatron's own logits. The
hand-written writer in tiny_models.py stays only for what megatron-core cannot produce here, checked
against Hugging Face's forward pass (its legacy tp2 x pp2 copy is the baseline the torch_dist
variants below are compared with):

- unstacked torch_dist tensors;
- torch_dist with ``common.pt`` (megatron-core <= 0.18 wrote one; 0.19 does not);
- Transformer Engine's fused norm names (``linear_qkv.layer_norm_weight``) and zero-centred gamma
  (``apply_layernorm_1p``): both need Transformer Engine or Apex, which do not run on a CPU;
- checkpoints without saved args (Megatron always saves them; a plan may still give them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from builder_plans import make_plan
from tiny_models import (
    VOCAB,
    gpt2_to_megatron,
    hf_logits,
    llama_to_megatron,
    make_gpt2,
    make_llama,
    save_megatron_legacy,
    save_megatron_torch_dist,
)
from transformers import PreTrainedModel

from pitcrew.api.v1alpha1 import ModelOverrides as ApiModelOverrides
from pitcrew_builder.checkpoint import CheckpointError, read_config
from pitcrew_builder.convert import ModelOverrides, convert
from pitcrew_builder.convert.trtllm import load_full_weights
from pitcrew_builder.errors import InvalidCheckpoint
from pitcrew_builder.model.reference import ReferenceModel
from pitcrew_builder.stages.convert import convert_arguments, run_convert

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")

IDS = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
PADDED = 104  # Megatron pads the vocabulary (here to a multiple of 8)
LAYOUTS = ["legacy_tp2pp2", "dist", "dist_unstacked"]
Full = dict[str, torch.Tensor]


def _write_all(root: Path, full: Full, args: dict[str, Any]) -> dict[str, Path]:
    return {
        "legacy_tp2pp2": save_megatron_legacy(full, args, root / "legacy_tp2pp2", tp=2, pp=2),
        "dist": save_megatron_torch_dist(full, args, root / "dist"),
        "dist_unstacked": save_megatron_torch_dist(full, args, root / "dist_unstacked", stacked=False),
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[PreTrainedModel, dict[str, Path]]]:
    root = tmp_path_factory.mktemp("megatron")
    llama = make_llama(root / "hf_llama", kv_heads=2)
    gpt2 = make_gpt2(root / "hf_gpt2")
    return {
        "llama": (llama, _write_all(root / "llama", *llama_to_megatron(llama, PADDED))),
        "gpt2": (gpt2, _write_all(root / "gpt2", *gpt2_to_megatron(gpt2, PADDED))),
    }


def _logits(ckpt: Path) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = ReferenceModel.from_checkpoint(ckpt)(IDS)
    return logits


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_every_layout_gives_the_same_weights_and_matches_hf(
    sources: dict[str, tuple[PreTrainedModel, dict[str, Path]]], tmp_path: Path, model: str
) -> None:
    hf, layouts = sources[model]
    want = hf_logits(hf, IDS)
    reference: Full | None = None
    for layout in LAYOUTS:
        out = tmp_path / layout
        config = convert(
            layouts[layout],
            "megatron",
            out,
            tp=1,
            pp=1,
            dtype="float32",
            overrides=ModelOverrides(fields={"vocab_size": VOCAB}),
        )
        assert config.vocab_size == VOCAB
        _, weights = load_full_weights(out)
        if reference is None:
            reference = weights
            # Padded vocab rows are dropped, so logits compare with HF's directly.
            torch.testing.assert_close(_logits(out)[..., :VOCAB], want, rtol=1e-4, atol=1e-4)
        else:
            assert weights.keys() == reference.keys(), layout
            for k in weights:
                torch.testing.assert_close(weights[k], reference[k], rtol=0, atol=0, msg=f"{layout}: {k}")


@pytest.mark.parametrize(
    ("model", "layout", "tp", "pp"),
    [
        ("llama", "legacy_tp2pp2", 2, 1),
        ("llama", "dist", 4, 1),
        ("gpt2", "legacy_tp2pp2", 1, 2),
        ("gpt2", "dist", 2, 2),
    ],
)
def test_resharded_outputs(
    sources: dict[str, tuple[PreTrainedModel, dict[str, Path]]],
    tmp_path: Path,
    model: str,
    layout: str,
    tp: int,
    pp: int,
) -> None:
    hf, layouts = sources[model]
    # No vocab override: the padded vocabulary (104) stays, and lm_head is padded for tp as well.
    config = convert(layouts[layout], "megatron", tmp_path, tp=tp, pp=pp, dtype="float32")
    assert config.vocab_size == PADDED and config.architecture == (
        "LlamaForCausalLM" if model == "llama" else "GPTForCausalLM"
    )
    torch.testing.assert_close(_logits(tmp_path)[..., :VOCAB], hf_logits(hf, IDS), rtol=1e-4, atol=1e-4)


def test_config_from_megatron_args(
    sources: dict[str, tuple[PreTrainedModel, dict[str, Path]]], tmp_path: Path
) -> None:
    convert(sources["llama"][1]["dist"], "megatron", tmp_path / "l", tp=2, pp=1, dtype="bfloat16")
    c = read_config(tmp_path / "l")
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_size, c.intermediate_size) == (4, 2, 16, 96)
    assert c.hidden_act == "silu" and c.position_embedding_type == "rope_gpt_neox" and not c.qkv_bias
    convert(sources["gpt2"][1]["legacy_tp2pp2"], "megatron", tmp_path / "g", tp=1, pp=1, dtype="float16")
    g = read_config(tmp_path / "g")
    assert g.position_embedding_type == "learned_absolute" and g.hidden_act == "gelu" and g.mlp_bias
    assert g.max_position_embeddings == 32


def test_zero_centred_gamma(
    sources: dict[str, tuple[PreTrainedModel, dict[str, Path]]], tmp_path: Path
) -> None:
    hf = sources["llama"][0]
    full, args = llama_to_megatron(hf, PADDED)  # type: ignore[arg-type]
    shifted = {k: (t - 1.0 if "norm" in k else t) for k, t in full.items()}
    src = save_megatron_legacy(shifted, {**args, "apply_layernorm_1p": True}, tmp_path / "src", tp=2, pp=1)
    convert(src, "megatron", tmp_path / "out", tp=1, pp=1, dtype="float32")
    torch.testing.assert_close(
        _logits(tmp_path / "out")[..., :VOCAB], hf_logits(hf, IDS), rtol=1e-4, atol=1e-4
    )


def test_torch_dist_without_args_lists_the_fields_a_plan_must_give(
    sources: dict[str, tuple[PreTrainedModel, dict[str, Path]]], tmp_path: Path
) -> None:
    hf = sources["gpt2"][0]
    full, args = gpt2_to_megatron(hf, PADDED)  # type: ignore[arg-type]
    src = save_megatron_torch_dist(full, args, tmp_path / "src")
    (src / "common.pt").unlink()
    with pytest.raises(CheckpointError) as err:
        convert(src, "megatron", tmp_path / "out", tp=1, pp=1, dtype="float32")
    message = str(err.value)
    assert "spec.model.megatronArgs" in message and "holds no training args" in message
    listed = message.split(" needs ", 1)[1].split(":", 1)[0]
    assert listed.split(", ") == [
        "num_layers",
        "hidden_size",
        "num_attention_heads",
        "ffn_hidden_size",
        "normalization",
        "swiglu",
        "position_embedding_type",
        "layernorm_epsilon",
    ]
    # Given some, the message lists exactly the rest.
    some = {k: args[k] for k in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size")}
    some["position_embedding_type"] = "learned_absolute"
    with pytest.raises(
        CheckpointError,
        match=r"needs normalization, swiglu, layernorm_epsilon, "
        r"max_position_embeddings: give them in spec.model.megatronArgs",
    ):
        convert(src, "megatron", tmp_path / "out", overrides=ModelOverrides(megatron_args=some))
    convert(
        src,
        "megatron",
        tmp_path / "out",
        tp=1,
        pp=1,
        dtype="float32",
        overrides=ModelOverrides(megatron_args=args),
    )
    torch.testing.assert_close(
        _logits(tmp_path / "out")[..., :VOCAB], hf_logits(hf, IDS), rtol=1e-4, atol=1e-4
    )


def test_megatron_args_only_for_megatron_sources(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="megatronArgs applies to Megatron sources only"):
        convert(
            tiny_llama,
            "hf",
            tmp_path / "out",
            overrides=ModelOverrides(megatron_args={"num_layers": 2}),
        )


def test_torch_dist_config_from_spec_fields(
    sources: dict[str, tuple[PreTrainedModel, dict[str, Path]]], tmp_path: Path
) -> None:
    """Without saved args, the facts a build spec states are enough for a LLaMA-style model."""
    hf = sources["llama"][0]
    full, args = llama_to_megatron(hf, PADDED)  # type: ignore[arg-type]
    src = save_megatron_torch_dist(full, args, tmp_path / "src")
    (src / "common.pt").unlink()
    fields = {
        "architecture": "LlamaForCausalLM",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 96,
        "vocab_size": VOCAB,
        "norm_epsilon": 1e-6,
        "max_position_embeddings": 64,
    }
    config = convert(
        src,
        "megatron",
        tmp_path / "out",
        tp=2,
        pp=1,
        dtype="float32",
        overrides=ModelOverrides(fields=fields),
    )
    assert config.vocab_size == VOCAB and config.num_key_value_heads == 2
    torch.testing.assert_close(_logits(tmp_path / "out"), hf_logits(hf, IDS), rtol=1e-4, atol=1e-4)


def test_gpt_with_transformer_engine_norm_names(
    sources: dict[str, tuple[PreTrainedModel, dict[str, Path]]], tmp_path: Path
) -> None:
    hf = sources["gpt2"][0]
    full, args = gpt2_to_megatron(hf, PADDED)  # type: ignore[arg-type]
    te_names = {
        "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
        "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
    }
    renamed: Full = {}
    for name, t in full.items():
        for old, new in te_names.items():
            name = name.replace(old, new)
        renamed[name] = t
    assert "decoder.layers.0.mlp.linear_fc1.layer_norm_bias" in renamed
    src = save_megatron_legacy(renamed, args, tmp_path / "src", tp=2, pp=2)
    convert(src, "megatron", tmp_path / "out", tp=2, pp=1, dtype="float32")
    torch.testing.assert_close(
        _logits(tmp_path / "out")[..., :VOCAB], hf_logits(hf, IDS), rtol=1e-4, atol=1e-4
    )


def test_plan_megatron_args_reach_the_converter(
    sources: dict[str, tuple[PreTrainedModel, dict[str, Path]]], tmp_path: Path
) -> None:
    """spec.model.megatronArgs -> BuildPlan -> convert stage: a checkpoint without args converts."""
    hf = sources["llama"][0]
    full, args = llama_to_megatron(hf, PADDED)  # type: ignore[arg-type]
    src = save_megatron_torch_dist(full, args, tmp_path / "src")
    (src / "common.pt").unlink()
    plan = make_plan(source_uri=src.as_uri(), output_uri="pvc://o/e", source_format="megatron", dtype=None)
    with pytest.raises(InvalidCheckpoint, match="needs num_layers, hidden_size"):
        run_convert(plan, src, tmp_path / "out", lambda *a: None)
    given = {k: v for k, v in args.items() if isinstance(v, str | int | float | bool)}
    plan.model = ApiModelOverrides(megatron_args=given, dtype="float32")
    assert convert_arguments(plan)["megatron_args"] == given  # hashed for resumes too
    run_convert(plan, src, tmp_path / "out", lambda *a: None)
    torch.testing.assert_close(
        _logits(tmp_path / "out")[..., :VOCAB], hf_logits(hf, IDS), rtol=1e-4, atol=1e-4
    )
