"""Builder conversion memory for Megatron sources: peak RSS of converting the same LLaMA saved as one
legacy rank (tp1 x pp1), as four legacy ranks (tp2 x pp2) and as torch_dist.

    .venv/bin/python bench/builder_convert_memory_megatron.py [--layers 12] [--hidden 1024] [--repeat 3]

The model is builder_convert_memory.py's random LLaMA (transformers, float16, same defaults). It is
laid out as Megatron-core with the tests' writer (tests/builder/tiny_models.py: llama_to_megatron,
save_megatron_legacy, save_megatron_torch_dist; Transformer Engine norm names), not by megatron-core
itself: megatron-core takes minutes per process to build and save a model this size on two CPU
cores. The reader is tested on checkpoints megatron-core saved (test_convert_megatron_real.py).

Each conversion, ``pitcrew_builder.convert.convert(src, "megatron", out, tp=1, pp=1,
dtype="float16")``, runs in a fresh subprocess (this file with --child); peak RSS from os.wait4's
ru_maxrss, VmHWM reported by the child. Baselines import the same modules without converting
(torch_dist also imports torch.distributed.checkpoint, so it has its own). Every output passes
validate_checkpoint. Prints a Markdown table of medians over --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from builder_convert_memory import MiB, make_model, spawn, vm_hwm_mib

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("legacy-tp1pp1", "legacy-tp2pp2", "torch_dist")
CHILDREN = ("baseline", "baseline-dcp", *SOURCES)


def self_argv(*args: str) -> list[str]:
    return [sys.executable, "-u", str(Path(__file__).resolve()), *args]


def make_megatron(model_dir: Path, root: Path) -> None:
    """The HF model in ``model_dir`` as every layout of SOURCES under ``root``."""
    import torch
    from transformers import LlamaForCausalLM

    sys.path.insert(0, str(REPO / "tests" / "builder"))
    from tiny_models import llama_to_megatron, save_megatron_legacy, save_megatron_torch_dist

    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float16)
    vocab = model.config.vocab_size
    full, args = llama_to_megatron(model, padded_vocab=-(-vocab // 128) * 128)
    del model
    save_megatron_legacy(full, args, root / "legacy-tp1pp1", tp=1, pp=1)
    save_megatron_legacy(full, args, root / "legacy-tp2pp2", tp=2, pp=2)
    save_megatron_torch_dist(full, args, root / "torch_dist")


def child(kind: str, src: Path, out: Path) -> None:
    import safetensors  # noqa: F401
    import torch

    import pitcrew_builder.convert  # noqa: F401

    if kind == "baseline-dcp":
        import torch.distributed.checkpoint  # noqa: F401
    elif kind in SOURCES:
        from pitcrew_builder.convert import convert

        convert(src, "megatron", out, tp=1, pp=1, dtype="float16")
    print(json.dumps({"vm_hwm_mib": vm_hwm_mib()}))


def measure(kind: str, src: Path, out: Path, timeout: float) -> tuple[float, float, float]:
    shutil.rmtree(out, ignore_errors=True)
    stdout, maxrss, seconds = spawn(self_argv("--child", kind, "--src", str(src), "--out", str(out)), timeout)
    hwm = float(json.loads(stdout.strip().splitlines()[-1])["vm_hwm_mib"])
    if kind in SOURCES:
        from pitcrew_builder.checkpoint import validate_checkpoint

        validate_checkpoint(out)
    shutil.rmtree(out, ignore_errors=True)
    print(f"{kind:14s}: peak RSS {maxrss:7.0f} MiB (VmHWM {hwm:.0f}), {seconds:5.1f} s", flush=True)
    return maxrss, hwm, seconds


def parent(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pitcrew-bench-megatron-", dir=args.tmp))
    try:
        model_dir = tmp / "hf"
        fields = ["--layers", str(args.layers), "--hidden", str(args.hidden), "--vocab", str(args.vocab)]
        spawn(self_argv("--make-model", "--src", str(model_dir), *fields), args.timeout)
        spawn(self_argv("--make-megatron", "--src", str(model_dir), "--out", str(tmp)), args.timeout)
        model_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
        sizes = {s: sum(f.stat().st_size for f in (tmp / s).rglob("*") if f.is_file()) for s in SOURCES}
        print(
            f"model: {model_bytes / MiB:.0f} MiB float16; "
            + ", ".join(f"{s} {n / MiB:.0f} MiB" for s, n in sizes.items())
        )
        runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in CHILDREN}
        for _ in range(args.repeat):
            for kind in CHILDREN:
                runs[kind].append(measure(kind, tmp / kind, tmp / "out", args.timeout))
        med = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in runs.items()}
        print()
        print(
            f"#### Megatron conversion peak RSS, LLaMA hidden {args.hidden}, {args.layers} layers, "
            f"vocab {args.vocab} ({model_bytes / MiB:.0f} MiB float16), to tp1 x pp1; "
            f"medians of {args.repeat}"
        )
        print()
        print("| source | ru_maxrss (range) | VmHWM | VmHWM above its baseline | wall |")
        print("|---|---|---|---|---|")
        for kind in CHILDREN:
            rss, hwm, secs = med[kind]
            base = med["baseline-dcp" if kind == "torch_dist" else "baseline"][1]
            above = "-" if kind.startswith("baseline") else f"{hwm - base:.0f} MiB"
            lo, hi = min(r[0] for r in runs[kind]), max(r[0] for r in runs[kind])
            print(f"| {kind} | {rss:.0f} MiB ({lo:.0f}-{hi:.0f}) | {hwm:.0f} MiB | {above} | {secs:.1f} s |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024, help="a multiple of 128")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    parser.add_argument("--repeat", type=int, default=3, help="runs of every measurement; medians reported")
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temp dir (default: $TMPDIR)")
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("--make-model", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--make-megatron", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args: Any = parser.parse_args(argv)
    started = time.monotonic()
    if args.make_model:
        make_model(args.src, args.layers, args.hidden, args.vocab)
    elif args.make_megatron:
        make_megatron(args.src, args.out)
    elif args.child:
        child(args.child, args.src, args.out)
    else:
        if args.hidden % 128:
            parser.error("--hidden must be a multiple of 128")
        parent(args)
        print(f"\nwhole run {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
