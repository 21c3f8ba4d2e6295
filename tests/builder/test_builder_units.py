"""Pure decisions of the builder: URIs, fetch/publish planning, progress, report, backend checks."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from builder_plans import make_plan

from pitcrew.api.plan import TERMINATION_MESSAGE_LIMIT, BuildResult, ProgressReport
from pitcrew_builder.backends.rtx import rtx_compute_capability, rtx_profile
from pitcrew_builder.errors import InvalidSpec
from pitcrew_builder.pipeline import work_dir_name
from pitcrew_builder.progress import ProgressReporter, overall_percent, should_flush
from pitcrew_builder.report import render_result
from pitcrew_builder.s3 import TransferSettings
from pitcrew_builder.stages.fetch import (
    PartState,
    RemoteObject,
    checksum_to_verify,
    head_can_help,
    part_ranges,
    plan_fetch,
    relative_name,
    resumable_parts,
)
from pitcrew_builder.stages.publish import needs_upload
from pitcrew_builder.store import ObjectInfo
from pitcrew_builder.uris import LocalLocation, S3Location, parse_location
from pitcrew_builder.validate import config_problems, expected_files, file_problems


def test_parse_locations(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_location("s3://bucket/a/b/") == S3Location("bucket", "a/b")
    assert parse_location("s3://bucket") == S3Location("bucket", "")
    assert S3Location("b", "p").uri("x.bin") == "s3://b/p/x.bin"
    assert parse_location("file:///data/m") == LocalLocation(Path("/data/m"))
    monkeypatch.setenv("PITCREW_PVC_ROOT", "/pvcs")
    assert parse_location("pvc://claim/models/llama") == LocalLocation(Path("/pvcs/claim/models/llama"))
    with pytest.raises(InvalidSpec, match="unsupported scheme"):
        parse_location("http://x/y")
    with pytest.raises(InvalidSpec, match=r"\.\."):
        parse_location("pvc://claim/../other")


def test_plan_fetch_skips_only_complete_matching_files() -> None:
    objs = [
        RemoteObject("p/a", "a", 10, "e1"),
        RemoteObject("p/b", "b", 20, "e2"),
        RemoteObject("p/c", "c", 5, "e3"),
    ]
    completed = {
        "a": {"etag": "e1", "size": 10},
        "b": {"etag": "OLD", "size": 20},
        "c": {"etag": "e3", "size": 5},
    }
    sizes = {"a": 10, "b": 20, "c": 4}  # c was truncated on disk after being recorded
    skip, todo = plan_fetch(objs, completed, sizes.get)
    assert [o.relative for o in skip] == ["a"]
    assert [o.relative for o in todo] == ["b", "c"]
    assert relative_name("p/x/y.bin", "p/") == "x/y.bin"


def test_part_ranges_and_resume_layout() -> None:
    assert part_ranges(10, 4) == [(0, 3), (4, 7), (8, 9)]
    assert part_ranges(8, 4) == [(0, 3), (4, 7)]
    prev = PartState("etag", 10, 4, {0, 2})
    assert resumable_parts(prev, "etag", 10, 4) is prev
    assert resumable_parts(prev, "other", 10, 4).done == set()  # object changed: start over
    assert resumable_parts(prev, "etag", 10, 8).done == set()  # part size changed: start over
    assert PartState.from_json(prev.to_json()) == prev


def test_checksum_to_verify_prefers_full_object_sha256() -> None:
    digest = hashlib.sha256(b"x").digest()
    sha_b64 = base64.b64encode(digest).decode()
    assert checksum_to_verify({"ChecksumSHA256": sha_b64, "ETag": '"abc"'}) == ("sha256", digest.hex())
    md5 = hashlib.md5(b"x").hexdigest()
    assert checksum_to_verify({"ETag": f'"{md5}"'}) == ("md5", md5)
    assert checksum_to_verify({"ETag": '"0123456789abcdef0123456789abcdef-3"'}) is None  # multipart
    assert checksum_to_verify({"ChecksumSHA256": sha_b64 + "-2", "ETag": '"x-2"'}) is None  # composite
    assert checksum_to_verify({"ETag": f'"{md5}"', "ServerSideEncryption": "aws:kms"}) is None


@pytest.mark.parametrize(
    ("etag", "head"),
    [
        ("0cc175b9c0f1b6a831c399e269772661", True),  # single part: MD5, maybe a full-object SHA-256
        ("d41d8cd98f00b204e9800998ecf8427e-12", False),  # multipart: neither, so no HEAD
        ("", True),  # unknown: ask
    ],
)
def test_head_only_where_it_can_offer_a_checksum(etag: str, head: bool) -> None:
    assert head_can_help(etag) is head
    if not head:  # whatever such an object's HEAD says, nothing in it is checked
        assert checksum_to_verify({"ETag": f'"{etag}"', "ChecksumSHA256": "abc=-12"}) is None


def test_progress_percent_and_throttle() -> None:
    assert overall_percent("fetch", 0) == 0
    assert overall_percent("fetch", 1) == 20
    assert overall_percent("publish", 1) == 100
    assert overall_percent("compile", 0.5) == 62
    assert should_flush(now=10, last_flush=None, stage_changed=False, interval=5)
    assert not should_flush(now=10, last_flush=8, stage_changed=False, interval=5)
    assert should_flush(now=10, last_flush=8, stage_changed=True, interval=5)

    now = [0.0]
    written: list[ProgressReport] = []
    rep = ProgressReporter(written.append, interval=5, clock=lambda: now[0])
    for i in range(100):
        now[0] = i * 0.1
        rep.update("fetch", i / 100)
    rep.update("convert", 0.0)
    # once at the start, once after 5 s, and once at the stage change
    assert [r.stage for r in written] == ["fetch", "fetch", "convert"]
    assert written[-1].percent == 20


def test_progress_sink_failure_does_not_fail_the_build() -> None:
    def broken(_: object) -> None:
        raise OSError("S3 down")

    rep = ProgressReporter(broken)
    rep.update("fetch", 0.5)
    assert rep.sink_errors == 1


def test_render_result_stays_under_the_kubelet_limit() -> None:
    result = BuildResult(ok=False, cache_key="k", reason="BuildError", message="é" * 10_000)
    text = render_result(result)
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = json.loads(text)
    assert parsed["reason"] == "BuildError" and parsed["message"].endswith("[truncated]")
    short = BuildResult(ok=True, cache_key="k")
    assert json.loads(render_result(short)) == {"ok": True, "cacheKey": "k"}


def test_needs_upload() -> None:
    from pitcrew_builder.stages.publish import LocalFile

    f = LocalFile(Path("x"), "x", 3, "aa")
    assert needs_upload(f, None)
    assert needs_upload(f, ObjectInfo(3, None))
    assert needs_upload(f, ObjectInfo(4, "aa"))
    assert not needs_upload(f, ObjectInfo(3, "aa"))


@pytest.mark.parametrize("cc", ["9.0", "10.0", "10.3", "11.0"])
def test_rtx_refuses_hopper_and_blackwell_datacenter(cc: str) -> None:
    with pytest.raises(InvalidSpec, match=rf"target.computeCapability {cc}.*tensorrt-llm"):
        rtx_compute_capability(cc)


def test_rtx_targets_and_profile() -> None:
    assert rtx_compute_capability("8.9") == "SM89"
    assert rtx_compute_capability("12.0") == "SM120"
    p = rtx_profile(4, 1024, 2048)
    assert (p.min, p.opt, p.max) == ((1, 1), (4, 1024), (4, 2048))


def test_work_dir_name_is_filesystem_safe() -> None:
    assert work_dir_name("sha256:ab/cd") == "sha256_ab_cd"


def test_validate_files_and_config(tmp_path: Path) -> None:
    from pitcrew_builder.checkpoint import CheckpointConfig, MappingConfig

    assert expected_files("tensorrt-llm", 2) == ["config.json", "rank0.engine", "rank1.engine"]  # type: ignore[arg-type]
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "rank0.engine").write_bytes(b"")
    assert file_problems(tmp_path, ["config.json", "rank0.engine", "rank1.engine"]) == [
        "rank0.engine is empty",
        "rank1.engine is missing",
    ]
    plan = make_plan(source_uri="file:///x", output_uri="s3://b/o", backend="tensorrt-llm", tp=2)
    cfg = CheckpointConfig(
        architecture="LlamaForCausalLM",
        dtype="float16",
        vocab_size=8,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_size=4,
        intermediate_size=8,
        hidden_act="silu",
        mapping=MappingConfig(2, 2, 1),
    )
    good = {
        "pretrained_config": {"dtype": "float16", "mapping": {"tp_size": 2, "pp_size": 1}},
        "build_config": {
            k: getattr(plan.sizes, k)
            for k in ("max_batch_size", "max_input_len", "max_seq_len", "max_beam_width", "max_num_tokens")
        },
    }
    assert config_problems(good, plan, cfg) == []
    bad = json.loads(json.dumps(good))
    bad["build_config"]["max_seq_len"] = 7
    bad["pretrained_config"]["mapping"]["tp_size"] = 1
    problems = config_problems(bad, plan, cfg)
    assert any("max_seq_len is 7" in p for p in problems) and any("tp_size is 1" in p for p in problems)


def test_convert_arguments_from_the_plan() -> None:
    from pitcrew.api.v1alpha1 import ModelOverrides, Quantization
    from pitcrew_builder.stages.convert import convert_arguments

    plan = make_plan(
        source_uri="file:///m",
        output_uri="s3://b/o",
        backend="tensorrt-llm",
        source_format="megatron",
        tp=2,
        pp=2,
        dtype=None,
    )
    plan.model = ModelOverrides(
        architecture="GPT2LMHeadModel",
        num_attention_heads=8,
        vocab_size=50257,
        megatron_args={"num_layers": 24, "swiglu": False},
    )
    plan.quantization = Quantization(weights="int4")
    args = convert_arguments(plan)
    assert args == {
        "source_format": "megatron",
        "tp": 2,
        "pp": 2,
        "dtype": "auto",
        "fields": {"num_attention_heads": 8, "vocab_size": 50257, "architecture": "GPTForCausalLM"},
        "quantization": "int4",
        "kv_cache": "none",
        "calibration": None,  # int4 weight-only measures no scales
        "megatron_args": {"num_layers": 24, "swiglu": False},
    }


def test_options_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from pitcrew_builder.pipeline import Options

    monkeypatch.delenv("PITCREW_WORK_DIR", raising=False)
    monkeypatch.setenv("PITCREW_SCRATCH", "/scratch2")
    monkeypatch.setenv("PITCREW_S3_CONCURRENCY", "3")
    opts = Options.from_env(None)
    assert opts.work_root == Path("/scratch2") and opts.settings.concurrency == 3
    assert Options.from_env("/w").work_root == Path("/w")


def test_s3_clients_share_the_model_loader_not_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from pitcrew.api.plan import CREDENTIAL_ENV
    from pitcrew_builder.s3 import TransferSettings, make_client

    for role, key in (("source", "src-key"), ("output", "out-key")):
        monkeypatch.setenv(CREDENTIAL_ENV[role][0], key)
        monkeypatch.setenv(CREDENTIAL_ENV[role][1], key + "-secret")
    source = make_client("source", "http://127.0.0.1:9", TransferSettings())
    output = make_client("output", "http://127.0.0.1:9", TransferSettings())
    assert source._request_signer._credentials.access_key == "src-key"
    assert output._request_signer._credentials.access_key == "out-key"
    loaders = {id(c._loader) for c in (source, output)}
    assert len(loaders) == 1  # the S3 model is parsed once per process


@pytest.mark.parametrize(
    ("value", "threshold"),
    [(None, None), ("", None), ("off", None), ("OFF", None), ("134217728", 128 * 1024 * 1024)],
)
def test_part_level_resume_is_off_unless_asked_for(
    monkeypatch: pytest.MonkeyPatch, value: str | None, threshold: int | None
) -> None:
    # The operator's pods restart on an empty emptyDir: whole-file GETs (CRT-written) by default.
    if value is None:
        monkeypatch.delenv("PITCREW_S3_RESUMABLE_THRESHOLD", raising=False)
    else:
        monkeypatch.setenv("PITCREW_S3_RESUMABLE_THRESHOLD", value)
    assert TransferSettings.from_env().resumable_threshold == threshold
