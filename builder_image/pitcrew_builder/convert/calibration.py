"""The calibration set an EngineBuild names (``quantization.calibration``), as token ids.

``builtin:tiny-text`` is ``pitcrew_builder/data/calibration_tiny.txt`` (forty short English,
code and multilingual lines written for Pitcrew). A dataset URI names a ``.txt`` file (one sample
per line) or a ``.jsonl`` file whose lines hold ``text`` or ``input_ids``. Text is tokenized with
the source checkpoint's own tokenizer (``tokenizer.json``, or whatever transformers'
AutoTokenizer loads); ``input_ids`` are used as given, for sources without a tokenizer (Megatron).
Samples are cut to ``seq_len`` tokens; the first ``samples`` non-empty ones are used.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from pitcrew_builder.checkpoint import CheckpointError
from pitcrew_builder.convert.quantize import CalibrationSet

BUILTIN = "builtin:tiny-text"
FIELD = "quantization.calibration.dataset"


def builtin_lines() -> list[str]:
    text = resources.files("pitcrew_builder").joinpath("data/calibration_tiny.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip()]


def read_dataset(path: Path, origin: str) -> list[str | list[int]]:
    """Samples of a local .txt / .jsonl file: strings to tokenize or lists of token ids."""
    if not path.is_file():
        raise CheckpointError(f"{FIELD}: {origin} does not exist")
    out: list[str | list[int]] = []
    lines = path.read_text("utf-8").splitlines()
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{FIELD}: {origin} line {n} is not JSON: {exc}") from exc
        if isinstance(row, dict) and isinstance(row.get("input_ids"), list):
            out.append([int(i) for i in row["input_ids"]])
        elif isinstance(row, dict) and isinstance(row.get("text"), str):
            out.append(row["text"])
        else:
            raise CheckpointError(f"{FIELD}: {origin} line {n} has neither 'text' nor 'input_ids'")
    return out


def load_tokenizer(source_dir: Path) -> Any:
    """The source's tokenizer (an object with ``encode(text) -> ids``), or None."""
    if (source_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(source_dir / "tokenizer.json"))
        return lambda text: tok.encode(text).ids
    if any((source_dir / n).is_file() for n in ("tokenizer.model", "vocab.json", "tokenizer_config.json")):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            return None
        hf = AutoTokenizer.from_pretrained(str(source_dir))
        return lambda text: hf.encode(text, add_special_tokens=False)
    return None


def calibration_set(
    samples_in: list[str | list[int]], origin: str, source_dir: Path, *, samples: int, seq_len: int
) -> CalibrationSet:
    encode = None
    out: list[torch.Tensor] = []
    for s in samples_in:
        if isinstance(s, str):
            if encode is None:
                encode = load_tokenizer(source_dir)
                if encode is None:
                    raise CheckpointError(
                        f"{FIELD}: {origin} holds text but the source has no tokenizer (tokenizer.json, "
                        "tokenizer.model): give a .jsonl dataset with 'input_ids' instead"
                    )
            ids = list(encode(s))
        else:
            ids = s
        if ids:
            out.append(torch.tensor(ids[:seq_len], dtype=torch.int64))
        if len(out) == samples:
            break
    return CalibrationSet(tuple(out), origin)


def load_calibration(
    dataset: str, local_file: Path | None, source_dir: Path, *, samples: int, seq_len: int
) -> CalibrationSet:
    """``local_file``: where a dataset URI was fetched to (None for the built-in set)."""
    if dataset == BUILTIN:
        lines: list[str | list[int]] = list(builtin_lines())
        return calibration_set(lines, BUILTIN, source_dir, samples=samples, seq_len=seq_len)
    if local_file is None:
        raise CheckpointError(f"{FIELD}: {dataset} was not fetched")
    return calibration_set(
        read_dataset(local_file, dataset), dataset, source_dir, samples=samples, seq_len=seq_len
    )
