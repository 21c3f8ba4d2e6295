"""The build: fetch -> convert -> compile -> validate -> publish, returning the BuildResult.

Restartable: a re-run with the same plan and work dir resumes the download, skips a conversion and a
compile whose recorded inputs match, re-uploads only what is missing, and succeeds at once when a
matching manifest is already published.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pitcrew.api.plan import BuildPlan, BuildResult, Manifest, ManifestFile, Versions
from pitcrew_builder import gpucheck
from pitcrew_builder.backends.base import CompileContext, CompileResult, get_backend
from pitcrew_builder.checkpoint import CheckpointConfig, CheckpointError, read_config
from pitcrew_builder.crt import CrtTransfer
from pitcrew_builder.errors import BuildFailed, InvalidCheckpoint
from pitcrew_builder.logging import StageTimer, log_event, now_iso
from pitcrew_builder.progress import ProgressReporter, store_sink
from pitcrew_builder.s3 import Role, TransferSettings, make_client
from pitcrew_builder.stages.convert import convert_arguments, run_convert
from pitcrew_builder.stages.fetch import FetchStats, S3Fetcher, fetch_local
from pitcrew_builder.stages.publish import existing_engine, publish
from pitcrew_builder.store import LocalStore, ObjectStore, S3Store
from pitcrew_builder.uris import LocalLocation, S3Location, parse_location
from pitcrew_builder.validate import validate

DEFAULT_WORK_DIR = "/scratch"


@dataclass(frozen=True)
class Options:
    work_root: Path
    settings: TransferSettings
    progress_interval: float = 5.0
    keep_work: bool = False

    @classmethod
    def from_env(cls, work_dir: str | None) -> Options:
        return cls(
            work_root=Path(
                work_dir
                or os.environ.get("PITCREW_WORK_DIR")
                or os.environ.get("PITCREW_SCRATCH")
                or DEFAULT_WORK_DIR
            ),
            settings=TransferSettings.from_env(),
            progress_interval=float(os.environ.get("PITCREW_PROGRESS_INTERVAL", "5")),
            keep_work=os.environ.get("PITCREW_KEEP_WORK", "") not in ("", "0", "false"),
        )


# ---- pure helpers -----------------------------------------------------------------------------


def work_dir_name(cache_key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", cache_key)[:120] or "build"


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def convert_inputs(plan: BuildPlan) -> dict[str, Any]:
    return {
        "source": plan.source.uri,
        "identity": plan.source.identity or plan.source.revision,
        "args": convert_arguments(plan),
    }


def compile_inputs(plan: BuildPlan) -> dict[str, Any]:
    return {"cache_key": plan.cache_key, "backend": plan.backend.value, "convert": convert_inputs(plan)}


def versions_of(compiled: CompileResult | None) -> Versions:
    try:
        pitcrew = metadata.version("pitcrew")
    except metadata.PackageNotFoundError:
        pitcrew = None
    try:
        import torch

        torch_version: str | None = str(torch.__version__)
    except ImportError:
        torch_version = None
    return Versions(
        pitcrew=pitcrew,
        tensorrt_llm=compiled.tensorrt_llm_version if compiled else None,
        tensorrt=compiled.tensorrt_version if compiled else None,
        torch=torch_version,
    )


def success_result(
    plan: BuildPlan, store: ObjectStore, manifest: Manifest, manifest_sha256: str
) -> BuildResult:
    return BuildResult(
        ok=True,
        cache_key=plan.cache_key,
        engine_uri=plan.output.engine_uri,
        manifest_uri=store.uri("manifest.json"),
        manifest_sha256=manifest_sha256,
        size_bytes=manifest.size_bytes,
        file_count=len(manifest.files),
        compute_capability=manifest.compute_capability,
        backend=manifest.backend.value,
        versions=manifest.versions,
    )


# ---- stage markers: a stage whose recorded inputs match is not redone after a restart -------


def _marker(work: Path, stage: str) -> Path:
    return work / "state" / f"{stage}.json"


def read_marker(work: Path, stage: str, inputs_digest: str) -> dict[str, Any] | None:
    try:
        data = json.loads(_marker(work, stage).read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("inputs") == inputs_digest else None


def write_marker(work: Path, stage: str, inputs_digest: str, extra: dict[str, Any]) -> None:
    path = _marker(work, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"inputs": inputs_digest, **extra}, default=str))
    os.replace(tmp, path)


def clear_marker(work: Path, stage: str) -> None:
    _marker(work, stage).unlink(missing_ok=True)


# ---- I/O --------------------------------------------------------------------------------------


def open_store(uri: str, role: Role, endpoint: str | None, settings: TransferSettings) -> ObjectStore:
    loc = parse_location(uri)
    if isinstance(loc, S3Location):
        return S3Store(loc, make_client(role, endpoint, settings), CrtTransfer.for_role(role, endpoint))
    return LocalStore(loc)


def _object_reader(plan: BuildPlan, opts: Options) -> Callable[[str], bytes | None]:
    """Reads single objects (the calibration dataset) with the source's endpoint and credentials."""

    def read(uri: str) -> bytes | None:
        loc = parse_location(uri)
        if not isinstance(loc, S3Location):
            return None
        store = S3Store(
            S3Location(loc.bucket, ""), make_client("source", plan.source.endpoint, opts.settings)
        )
        return store.get_bytes(loc.prefix)

    return read


def fetch_source(
    plan: BuildPlan, work: Path, opts: Options, reporter: ProgressReporter
) -> tuple[Path, FetchStats]:
    loc = parse_location(plan.source.uri)
    if isinstance(loc, LocalLocation):
        reporter.update("fetch", 1.0, "local source used in place")
        return fetch_local(loc)

    def progress(fraction: float, done: int) -> None:
        reporter.update("fetch", fraction, "downloading", bytes=done)

    assert isinstance(loc, S3Location)
    client = make_client("source", plan.source.endpoint, opts.settings)
    transfer = CrtTransfer.for_role("source", plan.source.endpoint)
    fetcher = S3Fetcher(client, transfer, loc, work / "source", opts.settings, progress, plan.source.identity)
    return fetcher.run()


def run_build(plan: BuildPlan, opts: Options) -> BuildResult:
    timings: dict[str, float] = {}
    backend = get_backend(plan.backend)
    backend.check(plan)  # refuse what cannot be built before downloading anything
    gpucheck.check(plan)  # and a GPU other than the planned one
    output = open_store(plan.output.engine_uri, "output", plan.output.endpoint, opts.settings)
    reporter = ProgressReporter(store_sink(output.put_bytes), opts.progress_interval)

    hit = existing_engine(output, plan.cache_key)
    if hit is not None:
        log_event("publish", "already-published", manifest=output.uri("manifest.json"))
        return success_result(plan, output, *hit)

    work = opts.work_root / work_dir_name(plan.cache_key)
    work.mkdir(parents=True, exist_ok=True)
    log_event(
        "build",
        "start",
        name=plan.name,
        cache_key=plan.cache_key,
        backend=plan.backend.value,
        source=plan.source.uri,
        engine_uri=plan.output.engine_uri,
        work_dir=str(work),
    )

    with StageTimer("fetch", timings) as t:
        reporter.update("fetch", 0.0, "starting")
        source_dir, fstats = fetch_source(plan, work, opts, reporter)
        t.extra = {
            "bytes": fstats.bytes_total,
            "files": fstats.files,
            "bytes_downloaded": fstats.bytes_downloaded,
            "bytes_resumed": fstats.bytes_resumed,
            "files_skipped": fstats.skipped,
            "mib_per_s": round(fstats.bytes_downloaded / 2**20 / fstats.seconds, 1)
            if fstats.seconds
            else None,
        }

    ckpt_dir = work / "checkpoint"
    with StageTimer("convert", timings):
        reporter.update("convert", 0.0, "starting")
        conv_digest = digest(convert_inputs(plan))
        cfg: CheckpointConfig
        if read_marker(work, "convert", conv_digest) and (ckpt_dir / "config.json").is_file():
            log_event("convert", "skipped", reason="converted checkpoint from an earlier attempt")
            try:
                cfg = read_config(ckpt_dir)
            except CheckpointError as exc:
                raise InvalidCheckpoint(str(exc), stage="convert") from exc
        else:
            clear_marker(work, "compile")
            cfg = run_convert(
                plan, source_dir, ckpt_dir, reporter.stage_callback("convert"), _object_reader(plan, opts)
            )
            write_marker(work, "convert", conv_digest, {})

    engine_dir = work / "engine"
    with StageTimer("compile", timings):
        reporter.update("compile", 0.0, "starting")
        comp_digest = digest(compile_inputs(plan))
        done = read_marker(work, "compile", comp_digest)
        if done:
            log_event("compile", "skipped", reason="engine from an earlier attempt")
            compiled = CompileResult(**{**done["result"], "engine_dir": Path(done["result"]["engine_dir"])})
        else:
            shutil.rmtree(engine_dir, ignore_errors=True)
            ctx = CompileContext(
                plan=plan,
                checkpoint_dir=ckpt_dir,
                checkpoint_config=cfg,
                engine_dir=engine_dir,
                work_dir=work,
                progress=reporter.stage_callback("compile"),
            )
            try:
                compiled = backend.compile(ctx)
            except (BuildFailed, InvalidCheckpoint):
                raise
            except CheckpointError as exc:
                raise InvalidCheckpoint(str(exc), stage="compile") from exc
            write_marker(work, "compile", comp_digest, {"result": asdict(compiled)})

    with StageTimer("validate", timings):
        reporter.update("validate", 0.0, "checking engine")
        problems, logits = validate(plan, compiled.engine_dir, source_dir, ckpt_dir, cfg)
        if problems:
            raise BuildFailed("validation failed: " + "; ".join(problems), stage="validate")

    versions = versions_of(compiled)

    def make_manifest(files: list[ManifestFile]) -> Manifest:
        return Manifest(
            cache_key=plan.cache_key,
            cache_key_inputs=plan.cache_key_inputs,
            backend=plan.backend,
            compute_capability=plan.target.compute_capability,
            files=files,
            versions=versions,
            build={
                **compiled.build_options,
                "spec": plan.build.to_api(),
                "sizes": plan.sizes.to_api(),
                "parallelism": plan.parallelism.to_api(),
                "quantization": plan.quantization.to_api(),
                "source": {
                    "uri": plan.source.uri,
                    "format": plan.source.format.value,
                    "identity": plan.source.identity or plan.source.revision,
                },
                "logits_check": {
                    "status": logits.status,
                    "reason": logits.reason or None,
                    "max_abs_diff": logits.max_abs_diff,
                    "tolerance": logits.tolerance,
                },
                "builder_version": plan.builder_version,
            },
            timings=dict(timings),
            created_at=now_iso(),
        )

    with StageTimer("publish", timings) as t:
        reporter.update("publish", 0.0, "uploading")

        def progress(fraction: float, done_bytes: int) -> None:
            reporter.update("publish", fraction, "uploading", bytes=done_bytes)

        published = publish(
            compiled.engine_dir,
            output,
            make_manifest,
            concurrency=opts.settings.concurrency,
            progress=progress,
        )
        s = published.stats
        t.extra = {
            "bytes": s.bytes_total,
            "files": s.files,
            "bytes_uploaded": s.bytes_uploaded,
            "files_skipped": s.skipped,
            "mib_per_s": round(s.bytes_uploaded / 2**20 / s.seconds, 1) if s.seconds else None,
        }
    reporter.update("publish", 1.0, "published")
    if not opts.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log_event("build", "end", seconds=sum(timings.values()), manifest=published.manifest_uri)
    return success_result(plan, output, published.manifest, published.manifest_sha256)
