"""The builder refuses a tensorrt-llm build on a GPU other than the planned one (pitcrew_builder.gpucheck).

This machine has no GPU: the visible-GPU probe is replaced (stand-in for torch.cuda on a GPU node);
the decision and the pipeline's use of it are the real ones.
"""

from __future__ import annotations

import pytest

from pitcrew.api.plan import BuildPlan
from pitcrew_builder import gpucheck
from pitcrew_builder.errors import EXIT_INVALID_INPUT, InvalidSpec


@pytest.mark.parametrize(
    ("planned", "visible", "bad"),
    [
        ("8.0", [], None),  # no GPU visible: nothing to check
        ("8.0", [(8, 0)], None),
        ("8.0", [(8, 0), (8, 0)], None),
        ("9.0", [(8, 0)], "8.0"),
        ("8.9", [(8, 9), (8, 6)], "8.6"),
        ("12.0", [(12, 0)], None),
    ],
)
def test_mismatch(planned: str, visible: list[tuple[int, int]], bad: str | None) -> None:
    message = gpucheck.mismatch(planned, visible)
    if bad is None:
        assert message is None
    else:
        assert message is not None and f"compute capability {bad}" in message
        assert message.startswith(f"target.computeCapability is {planned}")


def test_check_raises_invalid_input_for_tensorrt_llm_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from builder_plans import make_plan as factory  # the builder tests' plan factory

    def make_plan(**kw: str) -> BuildPlan:
        return factory(source_uri="s3://m/x", output_uri="s3://e/y", **kw)

    monkeypatch.setattr(gpucheck, "visible_capabilities", lambda: [(8, 0)])
    sm90 = make_plan(backend="tensorrt-llm", compute_capability="9.0")
    with pytest.raises(InvalidSpec) as err:
        gpucheck.check(sm90)
    assert err.value.exit_code == EXIT_INVALID_INPUT
    gpucheck.check(make_plan(backend="tensorrt-llm", compute_capability="8.0"))
    gpucheck.check(make_plan(backend="checkpoint", compute_capability="9.0"))  # conversion: CPU work
