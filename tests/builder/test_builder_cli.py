"""How the builder CLI receives its plan: inline JSON ($PITCREW_PLAN_JSON / --plan-json) or a file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from builder_plans import make_plan
from builder_run import subprocess_env

from pitcrew.api.plan import PLAN_JSON_ENV
from pitcrew_builder import cli
from pitcrew_builder.errors import EXIT_INVALID_INPUT, InvalidSpec


def _plan_json() -> str:
    plan = make_plan(source_uri="file:///nowhere", output_uri="pvc://out/engines", cache_key="cli")
    return plan.model_dump_json(by_alias=True, exclude_none=True)


def test_plan_json_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PITCREW_PLAN", raising=False)
    monkeypatch.setenv(PLAN_JSON_ENV, _plan_json())
    args = cli.parser().parse_args(["build"])
    assert args.plan is None and cli.plan_from_args(args).cache_key == "cli"


def test_plan_json_argument_and_file_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PITCREW_PLAN", raising=False)
    monkeypatch.delenv(PLAN_JSON_ENV, raising=False)
    text = _plan_json()
    args = cli.parser().parse_args(["build", "--plan-json", text])
    assert cli.plan_from_args(args).cache_key == "cli"
    # --plan FILE still works, and wins over an inline plan from the environment.
    other = json.loads(text) | {"cacheKey": "from-file"}
    f = tmp_path / "plan.json"
    f.write_text(json.dumps(other))
    monkeypatch.setenv(PLAN_JSON_ENV, text)
    args = cli.parser().parse_args(["build", "--plan", str(f)])
    assert cli.plan_from_args(args).cache_key == "from-file"


def test_bad_inline_plan_is_invalid_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PITCREW_PLAN", raising=False)
    args = cli.parser().parse_args(["build", "--plan-json", '{"kind": "BuildPlan"}'])
    with pytest.raises(InvalidSpec, match="--plan-json"):
        cli.plan_from_args(args)


def test_no_plan_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PITCREW_PLAN", raising=False)
    monkeypatch.delenv(PLAN_JSON_ENV, raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main(["build"])
    assert exc.value.code == 2


def test_subprocess_reports_a_bad_inline_plan(tmp_path: Path) -> None:
    term = tmp_path / "term.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pitcrew_builder", "build", "--termination-log", str(term)],
        env=subprocess_env({PLAN_JSON_ENV: '{"kind": "BuildPlan"}'}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_INVALID_INPUT, proc.stderr
    result = json.loads(term.read_text())
    assert result["ok"] is False and result["reason"] == "InvalidSpec"
    assert PLAN_JSON_ENV in result["message"]
