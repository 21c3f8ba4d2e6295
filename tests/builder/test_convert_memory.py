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
convert(Path(sys.argv[1]), "hf", Path(sys.argv[2]), tp=2, pp=1, dtype="float32")
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


@pytest.mark.slow
def test_peak_memory_is_about_one_layer(tmp_path: Path) -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS counter here")
    model_bytes = _write_model(tmp_path / "src")
    layer_bytes = 4 * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * HIDDEN // 2 + 3 * HIDDEN * FFN)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "src"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = result["peak_delta"]
    print(
        f"model {model_bytes / 2**20:.1f} MiB, layer {layer_bytes / 2**20:.1f} MiB, "
        f"peak above baseline {peak / 2**20:.1f} MiB, {result['seconds']:.2f} s"
    )
    assert peak < 3 * layer_bytes < model_bytes / 2
