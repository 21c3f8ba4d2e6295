from pitcrew import cachekey
from pitcrew.api.listing import ListedObject, listing_digest

from .helpers import spec

IMAGE = "ghcr.io/pitcrew/builder:0.1.0"


def key(s, identity="revision:r1", image=IMAGE, sm="8.0"):  # type: ignore[no-untyped-def]
    return cachekey.cache_key(
        cachekey.key_inputs(s, source_identity=identity, builder_image=image, compute_capability=sm)
    )


def test_stable_and_hex() -> None:
    k = key(spec())
    assert k == key(spec()) and len(k) == 64 and int(k, 16) >= 0


def test_defaults_and_explicit_values_agree() -> None:
    # maxSeqLen defaults to maxInputLen + maxOutputLen; maxNumTokens to TRT-LLM's computation.
    assert key(spec()) == key(spec(**{"build.maxSeqLen": 2048}))
    assert key(spec()) == key(spec(**{"build.maxNumTokens": 8192}))
    assert key(spec()) == key(spec(**{"build.maxInputLen": 1024, "build.maxOutputLen": 1024}))


def test_things_that_do_not_change_the_engine_are_ignored() -> None:
    base = key(spec())
    assert base == key(spec(**{"build.workers": 4}))
    assert base == key(spec(**{"output.uri": "s3://elsewhere/x"}))
    assert base == key(spec(**{"target.gpuCount": 3, "target.priorityClassName": "high"}))
    assert base == key(spec(**{"timeoutSeconds": 999, "retryLimit": 3}))
    assert base == key(spec(**{"source.uri": "s3://models//llama"}))  # normalised
    assert base == key(spec(**{"quantization.groupSize": 64}))  # only matters for int4
    assert base == key(spec(**{"build.lora.maxLoraRank": 8}))  # LoRA off


def test_things_that_change_the_engine_change_the_key() -> None:
    base = key(spec())
    variants = [
        key(spec(), identity="revision:r2"),
        key(spec(), image="ghcr.io/pitcrew/builder:0.2.0"),
        key(spec(), sm="9.0"),
        key(spec(**{"parallelism.tensor": 2})),
        key(spec(**{"build.maxBatchSize": 8})),
        key(spec(**{"quantization.weights": "fp8"})),
        key(spec(**{"backend": "checkpoint"})),
        key(spec(**{"source.format": "megatron"})),
        key(spec(**{"model.dtype": "bfloat16"})),
        key(spec(**{"build.lora.enabled": True})),
        key(spec(**{"source.uri": "s3://models/llama-2/"})),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_pinned_image_is_identified_by_digest() -> None:
    digest = "sha256:" + "1" * 64
    a = key(spec(), image=f"ghcr.io/pitcrew/builder:0.1.0@{digest}")
    b = key(spec(), image=f"mirror.local/pitcrew/builder:latest@{digest}")
    assert a == b


def test_listing_digest_is_order_independent_and_content_sensitive() -> None:
    objs = [
        ListedObject("llama/config.json", 10, '"e1"'),
        ListedObject("llama/model.safetensors", 99, '"e2"'),
    ]
    d = listing_digest(objs, "llama/")
    assert d == listing_digest(list(reversed(objs)), "llama")
    assert d != listing_digest([objs[0], ListedObject("llama/model.safetensors", 99, '"e3"')], "llama/")
    # The same files under another prefix have the same identity (a copied checkpoint).
    moved = [ListedObject(o.key.replace("llama/", "copy/"), o.size, o.etag) for o in objs]
    assert d == listing_digest(moved, "copy/")


def test_normalize_uri() -> None:
    assert cachekey.normalize_uri("S3://Bucket/a//b/") == "s3://bucket/a/b"
    assert cachekey.normalize_uri("pvc://claim/dir/") == "pvc://claim/dir"
    assert cachekey.normalize_uri("file:///data/Model/") == "file:///data/Model"


def test_calibration_enters_the_key_only_when_scales_are_measured() -> None:
    from pitcrew.cachekey import key_inputs

    def key(**kw: object) -> str:
        return cachekey.cache_key(
            key_inputs(spec(**kw), source_identity="etag:1", builder_image="img:1", compute_capability="9.0")
        )

    calib = {"quantization.calibration": {"samples": 8}}
    assert key(**calib) == key()  # no fp8/int8 KV: calibration is not read
    assert key(**{"quantization.weights": "fp8", **calib}) != key(**{"quantization.weights": "fp8"})
    assert key(**{"quantization.kvCache": "int8", **calib}) != key(**{"quantization.kvCache": "int8"})


def test_listing_digest_is_stable_across_releases() -> None:
    """The builder compares its own listing's digest with the key's: the value must never drift
    (this is the digest the function gave before it moved to pitcrew.api.listing)."""
    objs = [ListedObject("m/config.json", 10, '"e1"'), ListedObject("m/é.safetensors", 99, '"e2"')]
    assert listing_digest(objs, "m/") == (
        "listing:sha256:0149cdbcf01b265344181a2e832c579bd542e0d45374f26bf9e4fab7fafb724c"
    )


def test_the_builder_imports_only_the_api_from_the_controller_package() -> None:
    """Contracts shared with the builder live in pitcrew.api; the builder image need not carry the
    controller (kopf, its clients) and cannot depend on its internals."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "builder_image" / "pitcrew_builder"
    bad = []
    for path in root.rglob("*.py"):
        for m in re.finditer(r"^\s*(?:from|import)\s+(pitcrew(?:\.\w+)*)\b", path.read_text(), re.M):
            if m.group(1) != "pitcrew.api" and not m.group(1).startswith("pitcrew.api."):
                bad.append(f"{path.name}: {m.group(1)}")
    assert not bad, bad
