"""Builder conversion memory: peak RSS of pitcrew_builder's streaming HF -> TRT-LLM conversion
against converters that hold the whole state dict, same run.

    .venv/bin/python bench/builder_convert_memory.py [--layers 12] [--hidden 1024] [--tp 1 2] [--repeat 3]

Makes a random LLaMA checkpoint with transformers (hidden 1024, 12 layers, intermediate 2816,
vocab 32000, float16, untied lm_head: ~440 MB as model.safetensors) in a temp dir, then runs each
converter in a fresh subprocess (this file with --child) and reads its peak RSS from os.wait4's
ru_maxrss (the child also reports /proc/self/status VmHWM; both include file-backed pages it had
mapped). Converters, each at every --tp:

- pitcrew:           pitcrew_builder.convert.convert(model_dir, "hf", out, tp=tp, dtype="float16")
- naive-load_file:   safetensors.torch.load_file of every weight file (whole state dict in memory),
                     then for each rank: its tensors (pitcrew's sharding functions, same names and
                     layout) gathered into a dict and written with safetensors.torch.save_file
- naive-from_pretrained: as above but the state dict comes from
                     AutoModelForCausalLM.from_pretrained(dir, torch_dtype=float16)
- transformers-resave: a peer no one here wrote: transformers' own AutoModelForCausalLM.from_pretrained
                     (torch_dtype=float16) + save_pretrained(out, max_shard_size=model/4), i.e.
                     what resharding a checkpoint with the HF library costs (no TP split, so it is run
                     once, not per --tp; its output is checked by loading the shard index and sizes)
- baseline:          only the imports (torch, safetensors, pitcrew_builder.convert), no work

Every TRT-LLM output is checked with pitcrew_builder.checkpoint.validate_checkpoint. Each measurement
is repeated --repeat times (all converters in turn, then again) and the table gives the median peak
RSS, with the range of the repeats. Prints a Markdown table: peak RSS in MiB, the ratio pitcrew/peer
(<1 means pitcrew uses less), and the model size. The temp dir is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
CONVERTERS = ("baseline", "pitcrew", "naive-load_file", "naive-from_pretrained", "transformers-resave")
PER_TP = CONVERTERS[1:4]


@dataclass(frozen=True)
class Run:
    converter: str
    tp: int
    maxrss_mib: float
    hwm_mib: float
    seconds: float


# ---- child side (a fresh interpreter per measurement) ------------------------------------------


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_model(model_dir: Path, layers: int, hidden: int, vocab: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    fields: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 128,  # GQA, as in current LLaMA-family models
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        torch_dtype="float16",
    )
    model: Any = LlamaForCausalLM(LlamaConfig(**fields))
    model = model.to(torch.float16)
    model.save_pretrained(model_dir, safe_serialization=True)


def naive_convert(model_dir: Path, out_dir: Path, tp: int, loader: str) -> None:
    """The obvious converter: whole state dict in memory, then each rank's dict, then save_file."""
    import torch
    from safetensors.torch import load_file, save_file

    from pitcrew_builder.checkpoint import rank_file, write_config
    from pitcrew_builder.convert.api import output_config, quant_config
    from pitcrew_builder.convert.hf import HFSource
    from pitcrew_builder.convert.sharding import shard_embeddings, shard_final, shard_layer

    state: dict[str, torch.Tensor] = {}
    if loader == "load_file":
        for path in sorted(model_dir.glob("*.safetensors")):
            state.update(load_file(str(path)))
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float16)
        state = dict(model.state_dict())

    class InMemory:
        """HFSource's tensor lookup, served from the loaded state dict."""

        def __contains__(self, name: str) -> bool:
            return name in state

        def names(self) -> set[str]:
            return set(state)

        def get(self, name: str) -> torch.Tensor:
            return state[name]

        def close(self) -> None:
            pass

    source = HFSource(model_dir)  # reads config.json and the tensor names only
    source.store = InMemory()  # type: ignore[assignment]
    config = output_config(
        source.config, tp=tp, pp=1, dtype="float16", quant=quant_config(None), overrides=None
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    emb, fin = source.embeddings(), source.final()
    layers = [source.layer(i) for i in range(config.num_hidden_layers)]
    for rank in range(tp):
        tensors = dict(shard_embeddings(emb, config, rank))
        for i, full in enumerate(layers):
            tensors.update(
                {f"transformer.layers.{i}.{k}": v for k, v in shard_layer(full, config, rank).items()}
            )
        tensors.update(shard_final(fin, config, rank))
        save_file(
            {k: v.to(torch.float16).contiguous() for k, v in tensors.items()}, str(rank_file(out_dir, rank))
        )
        del tensors
    write_config(config, out_dir)


def child(converter: str, model_dir: Path, out_dir: Path, tp: int) -> None:
    import safetensors  # noqa: F401
    import torch

    import pitcrew_builder.convert  # noqa: F401

    if converter == "pitcrew":
        from pitcrew_builder.convert import convert

        convert(model_dir, "hf", out_dir, tp=tp, pp=1, dtype="float16")
    elif converter == "naive-load_file":
        naive_convert(model_dir, out_dir, tp, "load_file")
    elif converter == "naive-from_pretrained":
        naive_convert(model_dir, out_dir, tp, "from_pretrained")
    elif converter == "transformers-resave":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float16)
        shard = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) // 4
        model.save_pretrained(out_dir, max_shard_size=shard, safe_serialization=True)
    elif converter != "baseline":
        raise SystemExit(f"unknown converter {converter}")
    print(json.dumps({"vm_hwm_mib": vm_hwm_mib()}))


# ---- parent side --------------------------------------------------------------------------------


def spawn(argv: list[str], timeout: float) -> tuple[str, float, float]:
    """Runs argv; returns (stdout, peak RSS in MiB from wait4, seconds). Raises on failure/timeout."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise TimeoutError(f"{argv[3:]} ran longer than {timeout} s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[3:]} exited {proc.returncode}: {stderr[-3000:]}")
    return stdout, usage.ru_maxrss / 1024, seconds  # ru_maxrss is KiB on Linux


def self_argv(*args: str) -> list[str]:
    return [sys.executable, "-u", str(Path(__file__).resolve()), *args]


def measure(converter: str, model_dir: Path, out_dir: Path, tp: int, timeout: float) -> Run:
    shutil.rmtree(out_dir, ignore_errors=True)
    stdout, maxrss, seconds = spawn(
        self_argv(
            "--child", converter, "--model-dir", str(model_dir), "--out-dir", str(out_dir), "--tp", str(tp)
        ),
        timeout,
    )
    hwm = float(json.loads(stdout.strip().splitlines()[-1])["vm_hwm_mib"])
    if converter == "transformers-resave":
        index = json.loads((out_dir / "model.safetensors.index.json").read_text())
        shards = set(index["weight_map"].values())
        if len(shards) < 2 or not all((out_dir / name).is_file() for name in shards):
            raise RuntimeError(f"transformers-resave wrote {sorted(shards)}: expected several shards")
    elif converter != "baseline":
        from pitcrew_builder.checkpoint import validate_checkpoint

        cfg = validate_checkpoint(out_dir)
        if cfg.tp != tp:
            raise RuntimeError(f"{converter} wrote tp={cfg.tp}, asked {tp}")
    shutil.rmtree(out_dir, ignore_errors=True)
    run = Run(converter, tp, maxrss, hwm, seconds)
    print(
        f"{converter:22s} tp={tp}: peak RSS {maxrss:7.0f} MiB (VmHWM {hwm:.0f}), {seconds:5.1f} s", flush=True
    )
    return run


def median_run(runs: list[Run]) -> Run:
    return Run(
        runs[0].converter,
        runs[0].tp,
        statistics.median(r.maxrss_mib for r in runs),
        statistics.median(r.hwm_mib for r in runs),
        statistics.median(r.seconds for r in runs),
    )


def report(args: argparse.Namespace, model_bytes: int, params: int, runs: list[Run]) -> None:
    grouped: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        grouped.setdefault((r.converter, r.tp), []).append(r)
    by = {k: median_run(v) for k, v in grouped.items()}

    def spread(key: tuple[str, int]) -> str:
        values = [r.maxrss_mib for r in grouped[key]]
        return f"{min(values):.0f}-{max(values):.0f}"

    base = by[("baseline", 0)].maxrss_mib
    print()
    print(
        f"### Conversion peak RSS, LLaMA hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}: "
        f"~{params / 1e6:.0f} M params, model.safetensors {model_bytes / MiB:.0f} MiB (float16); "
        f"medians of {args.repeat} runs"
    )
    print()
    hwm_base = by[("baseline", 0)].hwm_mib
    print(
        f"Baseline (imports only: torch, safetensors, pitcrew_builder.convert): {base:.0f} MiB "
        f"(VmHWM {hwm_base:.0f} MiB; runs {spread(('baseline', 0))} MiB)"
    )
    print()
    print(
        "Median peak RSS from wait4 ru_maxrss, VmHWM in brackets, median subprocess wall time "
        "(interpreter start and imports included) after the slash; range of ru_maxrss over the runs below."
    )
    print()
    print(
        "| tp | pitcrew | naive load_file | naive from_pretrained | ratio pitcrew/load_file "
        "| ratio pitcrew/from_pretrained | VmHWM above baseline: pitcrew / load_file / from_pretrained |"
    )
    print("|---|---|---|---|---|---|---|")

    def cell(r: Run) -> str:
        return f"{r.maxrss_mib:.0f} MiB [{r.hwm_mib:.0f}] / {r.seconds:.1f} s"

    for tp in args.tp:
        p, lf, fp = (by[(c, tp)] for c in PER_TP)
        print(
            f"| {tp} | {cell(p)} | {cell(lf)} | {cell(fp)} "
            f"| {p.maxrss_mib / lf.maxrss_mib:.2f} [{p.hwm_mib / lf.hwm_mib:.2f}] "
            f"| {p.maxrss_mib / fp.maxrss_mib:.2f} [{p.hwm_mib / fp.hwm_mib:.2f}] "
            f"| {p.hwm_mib - hwm_base:.0f} / {lf.hwm_mib - hwm_base:.0f} / {fp.hwm_mib - hwm_base:.0f} MiB |"
        )
    print()
    t = by[("transformers-resave", 0)]
    p1 = by[("pitcrew", args.tp[0])]
    print(
        f"Peer not written here: transformers from_pretrained + save_pretrained(max_shard_size=model/4): "
        f"{cell(t)}, VmHWM above baseline {t.hwm_mib - hwm_base:.0f} MiB; "
        f"ratio pitcrew (tp={args.tp[0]}) / transformers-resave {p1.maxrss_mib / t.maxrss_mib:.2f} "
        f"[{p1.hwm_mib / t.hwm_mib:.2f}]"
    )
    print()
    print(
        "ru_maxrss range over the runs (MiB): "
        + ", ".join(f"{c} tp={tp}: {spread((c, tp))}" for c, tp in grouped)
    )


def parent(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pitcrew-bench-convert-", dir=args.tmp))
    try:
        model_dir = tmp / "hf"
        started = time.monotonic()
        spawn(
            self_argv(
                "--make-model",
                "--model-dir",
                str(model_dir),
                "--layers",
                str(args.layers),
                "--hidden",
                str(args.hidden),
                "--vocab",
                str(args.vocab),
            ),
            args.timeout,
        )
        model_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
        params = model_bytes // 2
        print(
            f"model: {model_bytes / MiB:.0f} MiB of safetensors, made in {time.monotonic() - started:.0f} s"
        )
        runs = []
        for _ in range(args.repeat):
            runs.append(measure("baseline", model_dir, tmp / "out", 0, args.timeout))
            for tp in args.tp:
                for converter in PER_TP:
                    runs.append(measure(converter, model_dir, tmp / "out", tp, args.timeout))
            runs.append(measure("transformers-resave", model_dir, tmp / "out", 0, args.timeout))
        report(args, model_bytes, params, runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024, help="a multiple of 128")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--timeout", type=float, default=600, help="seconds per subprocess")
    parser.add_argument("--repeat", type=int, default=3, help="runs of every measurement; medians reported")
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temp dir (default: $TMPDIR)")
    parser.add_argument("--child", choices=CONVERTERS, help=argparse.SUPPRESS)
    parser.add_argument("--make-model", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    args: Any = parser.parse_args(argv)
    if args.make_model:
        make_model(args.model_dir, args.layers, args.hidden, args.vocab)
    elif args.child:
        child(args.child, args.model_dir, args.out_dir, args.tp[0])
    else:
        if args.hidden % 128:
            parser.error("--hidden must be a multiple of 128")
        parent(args)


if __name__ == "__main__":
    main()
