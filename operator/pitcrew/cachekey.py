"""The content address of an engine build. Pure.

Two EngineBuilds get the same key exactly when they would build the same engine: same source bytes
(revision/ETag, or a digest of the object listing), format, model overrides, parallelism, build
options after default resolution (so `maxSeqLen: 2048` and "unset with 1024+1024" agree),
quantization, backend, builder image (its digest when pinned, or once seen running: pitcrew.images)
and target compute capability.
Output location, credentials, scheduling and `workers` do not change the engine and are left out.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pitcrew.api.sizing import sizes_for
from pitcrew.api.v1alpha1 import EngineBuildSpec

KEY_SCHEMA = 2  # bump when the inputs change meaning, so old engines are not mistaken for new ones


def normalize_uri(uri: str) -> str:
    """Scheme and bucket/claim lower-cased, no trailing or doubled slashes."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri.rstrip("/")
    parts = [p for p in rest.split("/") if p]
    if not parts:
        return f"{scheme.lower()}://"
    if scheme.lower() != "file":
        parts[0] = parts[0].lower()
    return f"{scheme.lower()}://" + ("/" if scheme.lower() == "file" else "") + "/".join(parts)


def image_identity(image: str) -> str:
    """A pinned image is identified by its digest alone (the tag is decoration)."""
    if "@sha256:" in image:
        return "sha256:" + image.split("@sha256:", 1)[1]
    return image


def normalize_endpoint(endpoint: str | None) -> str:
    """Scheme and host lower-cased, no trailing slash; "" for the SDK's default (AWS)."""
    if not endpoint:
        return ""
    scheme, sep, rest = endpoint.rstrip("/").partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}{sep}{host.lower()}{slash}{path}"


def key_inputs(
    spec: EngineBuildSpec,
    *,
    source_identity: str,
    builder_image: str,
    compute_capability: str,
    source_endpoint: str | None = None,
) -> dict[str, Any]:
    """The normalised inputs the key is the hash of (also recorded in the plan and manifest).

    `source_identity` is what the bytes are: the listing digest of an s3:// source (which the
    builder checks before it builds), `pvc:<namespace>:<claim uid>` for a pvc:// source, or
    "unpinned". `spec.source.revision` is only a label on top of it (it is not verified), and the
    effective source endpoint (`source_endpoint`: the spec's or the operator's default) is part of
    the key: the same bucket name on two S3 servers is two sources.
    """
    build = spec.build.model_dump(mode="json", exclude={"workers", "lora"})
    sizes = sizes_for(spec.build)
    build.update(
        max_seq_len=sizes.max_seq_len,
        max_num_tokens=sizes.max_num_tokens,
        opt_num_tokens=sizes.opt_num_tokens,
    )
    # max_output_len only matters through max_seq_len once that is resolved.
    build.pop("max_output_len", None)
    if not spec.build.paged_kv_cache:
        build.pop("tokens_per_block", None)
    lora = spec.build.lora
    build["lora"] = (
        {"max_lora_rank": lora.max_lora_rank, "target_modules": sorted(lora.target_modules)}
        if lora.enabled
        else None
    )
    quant = spec.quantization.model_dump(mode="json")
    if quant["weights"] != "int4":
        quant.pop("group_size")
    if not spec.quantization.calibrated():
        quant.pop("calibration")  # read only when scales are measured
    model = spec.model.model_dump(mode="json", exclude_none=True) if spec.model else {}
    return {
        "schema": KEY_SCHEMA,
        "source": {
            "uri": normalize_uri(spec.source.uri),
            "format": str(spec.source.format),
            "identity": source_identity,
            "revision": spec.source.revision,
            "endpoint": normalize_endpoint(source_endpoint) if spec.source.uri.startswith("s3://") else "",
        },
        "model": model,
        "parallelism": spec.parallelism.model_dump(mode="json"),
        "build": build,
        "quantization": quant,
        "backend": str(spec.backend),
        "builder": image_identity(builder_image),
        "computeCapability": compute_capability,
    }


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def cache_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(inputs).encode()).hexdigest()
