"""Real Megatron checkpoints for the tests: megatron_save.py run by megatron-core in .venv-megatron.

``save_all`` launches one run per parallel layout (tp1: 1 process, tp2 and pp2: 2 processes,
tp2pp2: 4 processes, over gloo), all at once; each run saves every model of ``MODELS`` in the
legacy (``torch``) and the ``torch_dist`` format and records Megatron's own logits.

Megatron takes minutes to import and save on a loaded 2-core machine, so each layout's result is
kept in ``$PITCREW_CACHE_DIR/megatron-fixtures/<layout>-<key>``, the key hashing megatron_save.py,
the layout, the models and the installed megatron-core and torch versions: any change to how a
layout's checkpoints are made makes new ones, and adding a layout saves only that layout.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
MEGATRON_PY = REPO / ".venv-megatron" / "bin" / "python"
SCRIPT = Path(__file__).with_name("megatron_save.py")
MODELS = ("gpt", "llama", "llama_interp", "gpt_erf")
LAYOUTS = {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2), "tp2pp2": (2, 2)}
FORMATS = ("torch", "torch_dist")  # legacy mp_rank_XX[_YYY] files, and dist_checkpointing
VOCAB = 101


@dataclass(frozen=True)
class Saved:
    """One model saved by Megatron at one parallel layout."""

    root: Path  # holds torch/, torch_dist/, logits.pt

    def checkpoint(self, fmt: str) -> Path:
        return self.root / fmt  # the --save directory (tracker file + iter_0000010/)

    def reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [1, S], Megatron's logits [1, S, VOCAB])."""
        blob = torch.load(self.root / "logits.pt")
        return blob["ids"], blob["logits"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _versions() -> bytes:
    site = sorted((REPO / ".venv-megatron" / "lib").glob("python*/site-packages"))
    dists = sorted(p.name for d in site for p in d.glob("*.dist-info"))
    return "\n".join(d for d in dists if d.startswith(("megatron_core-", "torch-"))).encode()


def _cache_name(layout: str) -> str:
    """``<layout>-<key>``: the key covers everything that decides what this layout's run saves."""
    h = hashlib.sha256(SCRIPT.read_bytes())
    h.update(f"{layout}={LAYOUTS[layout]};{','.join(MODELS)}\n".encode())
    h.update(_versions())
    return f"{layout}-{h.hexdigest()[:16]}"


# Entries unused this long are pruned; younger ones may belong to another worktree's session.
STALE_SECONDS = 3 * 24 * 3600


def saved_checkpoints(tmp: Path) -> dict[tuple[str, str], Saved]:
    """``save_all``'s result, each layout from the cache when the same code and versions made it."""
    if not MEGATRON_PY.is_file():
        pytest.fail(f"{MEGATRON_PY} is missing: run `make megatron-venv` (megatron-core needs Python 3.12)")
    base = Path(os.environ.get("PITCREW_CACHE_DIR", Path.home() / ".cache" / "pitcrew"))
    cache = base / "megatron-fixtures"
    cache.mkdir(parents=True, exist_ok=True)
    done = {layout: cache / _cache_name(layout) for layout in LAYOUTS}
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent session waits for the same checkpoints
        missing = [layout for layout, d in done.items() if not (d / ".complete").is_file()]
        if missing:
            fresh = tmp / "fresh"
            fresh.mkdir()
            save_all(fresh, layouts=missing)
            for layout in missing:
                (fresh / layout / ".complete").touch()
                staging = cache / f".{done[layout].name}.{os.getpid()}"
                shutil.copytree(fresh / layout, staging)
                shutil.rmtree(done[layout], ignore_errors=True)
                os.replace(staging, done[layout])
        now = time.time()
        for d in done.values():
            os.utime(d / ".complete", (now, now))  # marks the entry as in use
        for old in cache.iterdir():
            complete = old / ".complete"
            stale = not complete.is_file() or now - complete.stat().st_mtime > STALE_SECONDS
            if old.is_dir() and old not in done.values() and stale:
                shutil.rmtree(old, ignore_errors=True)
    return {(m, layout): Saved(done[layout] / m) for m in MODELS for layout in LAYOUTS}


def save_all(
    out: Path, models: tuple[str, ...] = MODELS, layouts: list[str] | None = None
) -> dict[tuple[str, str], Saved]:
    """Run Megatron for the given layouts of LAYOUTS (all by default); returns {(model, layout): Saved}."""
    layouts = list(LAYOUTS) if layouts is None else layouts
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    for layout in layouts:
        tp, pp = LAYOUTS[layout]
        port = _free_port()
        for rank in range(tp * pp):
            log = out / f"{layout}.rank{rank}.log"
            env = {
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(tp * pp),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "OMP_NUM_THREADS": "1",
            }
            argv = [str(MEGATRON_PY), str(SCRIPT), str(out / layout), str(tp), str(pp), ",".join(models)]
            with log.open("wb") as f:
                proc = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT)
            procs.append((layout, proc, log))
    deadline = time.monotonic() + 1500
    failed = []
    try:
        for layout, proc, log in procs:
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = -9
            if code != 0:
                failed.append(f"{layout} ({log}) exited {code}:\n" + log.read_text(errors="replace")[-3000:])
                break
    finally:  # also on a test timeout or ^C: no Megatron process outlives the session
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if failed:
        raise RuntimeError("Megatron could not save the test checkpoints:\n" + "\n".join(failed))
    return {(m, layout): Saved(out / layout / m) for m in models for layout in layouts}
