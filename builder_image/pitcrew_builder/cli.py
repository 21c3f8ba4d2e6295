"""`pitcrew-builder build [--plan FILE | --plan-json JSON]`: run one build and report it on the
termination-message path.

The controller's Job passes the plan inline in $PITCREW_PLAN_JSON; `--plan FILE` / $PITCREW_PLAN
read it from a file (local runs). An explicit option wins over the environment; --plan wins over
--plan-json when both are given.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from pitcrew.api.plan import PLAN_JSON_ENV, BuildPlan, BuildResult
from pitcrew_builder.errors import EXIT_OK, BuilderError, BuildFailed, InvalidSpec
from pitcrew_builder.logging import log_event
from pitcrew_builder.pipeline import Options, run_build
from pitcrew_builder.report import termination_log_path, write_result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pitcrew-builder",
        description="Build a TensorRT engine from an LLM checkpoint (a Pitcrew BuildPlan).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="fetch, convert, compile, validate and publish one engine")
    b.add_argument(
        "--plan",
        default=os.environ.get("PITCREW_PLAN") or None,
        help="BuildPlan JSON file (default: $PITCREW_PLAN)",
    )
    b.add_argument(
        "--plan-json",
        default=os.environ.get(PLAN_JSON_ENV) or None,
        help=f"the BuildPlan as a JSON string, as the controller's Job passes it (default: ${PLAN_JSON_ENV})",
    )
    b.add_argument(
        "--work-dir", help="scratch directory (default: $PITCREW_WORK_DIR, $PITCREW_SCRATCH or /scratch)"
    )
    b.add_argument(
        "--termination-log",
        help="where the BuildResult goes (default: $PITCREW_TERMINATION_LOG or /dev/termination-log)",
    )
    return p


def load_plan(path: Path) -> BuildPlan:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidSpec(f"cannot read plan {path}: {exc}") from exc
    return parse_plan(text, f"plan {path}")


def parse_plan(text: str, where: str = "the inline plan") -> BuildPlan:
    try:
        return BuildPlan.model_validate_json(text)
    except ValidationError as exc:
        raise InvalidSpec(f"{where} is invalid: {exc}") from exc


def plan_from_args(args: argparse.Namespace) -> BuildPlan:
    if args.plan:
        return load_plan(Path(args.plan))
    return parse_plan(args.plan_json, f"--plan-json (${PLAN_JSON_ENV})")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Kubernetes sends SIGTERM at the deadline or on eviction: fail with a report instead of vanishing.
    raise BuildFailed(f"terminated by signal {signum}")


def build(args: argparse.Namespace) -> int:
    result_path = termination_log_path(args.termination_log)
    cache_key = "unknown"
    try:
        plan = plan_from_args(args)
        cache_key = plan.cache_key
        result = run_build(plan, Options.from_env(args.work_dir))
        write_result(result, result_path)
        return EXIT_OK
    except BuilderError as exc:
        error: BuilderError = exc
    except Exception as exc:
        log_event("build", "crash", level="error", traceback=traceback.format_exc()[-4000:])
        error = BuildFailed(f"{type(exc).__name__}: {exc}")
    log_event(error.stage or "build", "error", level="error", reason=error.reason, message=str(error)[:2000])
    write_result(
        BuildResult(ok=False, cache_key=cache_key, reason=error.reason, message=str(error)), result_path
    )
    return error.exit_code


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "build" and not args.plan and not args.plan_json:
        p.error(f"build needs --plan FILE or --plan-json JSON (or $PITCREW_PLAN / ${PLAN_JSON_ENV})")
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.command == "build":
        return build(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
