"""Peak memory of a conversion stays near one layer, not the whole model.

A ~100 MB LLaMA-shaped checkpoint is converted in a fresh interpreter; the peak resident set
(VmHWM, reset after imports through /proc/self/clear_refs) above the post-import baseline must
stay well under the model size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import save_megatron_legacy

HIDDEN, FFN, LAYERS, VOCAB = 512, 1536, 8, 1000

_CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
from pitcrew_builder.convert import convert

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)

torch.set_num_threads(1)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
base = status("VmRSS")
start = time.perf_counter()
convert(Path(sys.argv[1]), sys.argv[3], Path(sys.argv[2]), tp=2, pp=1, dtype="float32")
print(json.dumps({"peak_delta": status("VmHWM") - base, "seconds": time.perf_counter() - start}))
"""


def _write_model(path: Path) -> int:
    path.mkdir()
    (path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "hidden_size": HIDDEN,
                "intermediate_size": FFN,
                "num_hidden_layers": LAYERS,
                "num_attention_heads": 8,
                "num_key_value_heads": 4,
                "vocab_size": VOCAB,
                "max_position_embeddings": 256,
                "rms_norm_eps": 1e-6,
                "hidden_act": "silu",
                "dtype": "float32",
            }
        )
    )
    g = torch.Generator().manual_seed(0)
    kv = HIDDEN // 2
    shapes = {
        "model.embed_tokens.weight": (VOCAB, HIDDEN),
        "model.norm.weight": (HIDDEN,),
        "lm_head.weight": (VOCAB, HIDDEN),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (kv, HIDDEN),
            p + "self_attn.v_proj.weight": (kv, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (FFN, HIDDEN),
            p + "mlp.up_proj.weight": (FFN, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, FFN),
        }
    # Two shard files, like real checkpoints.
    names = list(shapes)
    total = 0
    for part, chunk in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        tensors = {n: torch.randn(shapes[n], generator=g) for n in chunk}
        total += sum(t.numel() * 4 for t in tensors.values())
        save_file(tensors, path / f"model-{part:05d}.safetensors")
    return total


def _write_megatron(path: Path) -> int:
    """The same shapes as a legacy Megatron checkpoint saved at tp=2, pp=2."""
    g = torch.Generator().manual_seed(0)
    full: dict[str, torch.Tensor] = {}
    for i in range(LAYERS):
        m = f"decoder.layers.{i}."
        full |= {
            m + "self_attention.linear_qkv.layer_norm_weight": torch.randn(HIDDEN, generator=g),
            m + "self_attention.linear_qkv.weight": torch.randn(2 * HIDDEN, HIDDEN, generator=g),
            m + "self_attention.linear_proj.weight": torch.randn(HIDDEN, HIDDEN, generator=g),
            m + "mlp.linear_fc1.layer_norm_weight": torch.randn(HIDDEN, generator=g),
            m + "mlp.linear_fc1.weight": torch.randn(2 * FFN, HIDDEN, generator=g),
            m + "mlp.linear_fc2.weight": torch.randn(HIDDEN, FFN, generator=g),
        }
    full["decoder.final_layernorm.weight"] = torch.randn(HIDDEN, generator=g)
    full["embedding.word_embeddings.weight"] = torch.randn(VOCAB, HIDDEN, generator=g)
    full["output_layer.weight"] = torch.randn(VOCAB, HIDDEN, generator=g)
    args = {
        "num_layers": LAYERS,
        "hidden_size": HIDDEN,
        "num_attention_heads": 8,
        "group_query_attention": True,
        "num_query_groups": 4,
        "ffn_hidden_size": FFN,
        "swiglu": True,
        "normalization": "RMSNorm",
        "position_embedding_type": "rope",
        "max_position_embeddings": 256,
        "padded_vocab_size": VOCAB,
        "add_bias_linear": False,
        "untie_embeddings_and_output_weights": True,
    }
    save_megatron_legacy(full, args, path, tp=2, pp=2)
    return sum(t.numel() * 4 for t in full.values())


@pytest.mark.slow
@pytest.mark.parametrize("source_format", ["hf", "megatron"])
def test_peak_memory_is_about_one_layer(tmp_path: Path, source_format: str) -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS counter here")
    writer = _write_model if source_format == "hf" else _write_megatron
    model_bytes = writer(tmp_path / "src")
    layer_bytes = 4 * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * HIDDEN // 2 + 3 * HIDDEN * FFN)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "src"), str(tmp_path / "out"), source_format],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = result["peak_delta"]
    print(
        f"{source_format}: model {model_bytes / 2**20:.1f} MiB, layer {layer_bytes / 2**20:.1f} MiB, "
        f"peak above baseline {peak / 2**20:.1f} MiB, {result['seconds']:.2f} s"
    )
    # One full layer, its cast shards and (Megatron) the mapped pages of the source layer.
    assert peak < 4 * layer_bytes < model_bytes / 2
