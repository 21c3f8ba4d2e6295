"""The FAKE builder's container image for the real node (test-side only, never shipped).

The operator image (hack/build-images.sh: Python, pydantic, boto3 and pitcrew.api, the contract
the fake builder speaks) plus one layer with tests/controller/fake_builder.py as the ENTRYPOINT.
The fake builder picks its behaviour from the image tag, so one image carries a name per mode
(`pitcrew.test/fake-builder:MODE`); a test needing another mode adds it to FAKE_MODES.

Made in Python from the operator image's OCI archive (no podman run), cached by content in
$PITCREW_CACHE_DIR/images like the images it derives from.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from pitcrew_devcluster.images import add_tar_entry, blob_digest

ROOT = Path(__file__).resolve().parents[2]
FAKE = "pitcrew.test/fake-builder"
FAKE_BUILDER_SCRIPT = Path(__file__).resolve().parent / "fake_builder.py"
SCRIPT_IN_IMAGE = "/opt/pitcrew-test/fake_builder.py"
# Every tag a test uses (the fake builder's modes; sleep-N takes N seconds).
FAKE_MODES = (
    "ok", "invalid", "oom", "crash", "failonce", "badsha", "nomanifest", "foreign", "fill-scratch",
    "sleep-3", "sleep-8", "sleep-45", "sleep-60", "sleep-300", "sleep-600",
)  # fmt: skip

LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"


def cache_dir() -> Path:
    base = os.environ.get("PITCREW_CACHE_DIR") or str(Path.home() / ".cache" / "pitcrew")
    return Path(base) / "images"


def file_layer(files: dict[str, bytes]) -> bytes:
    """An uncompressed, deterministic layer with `files` (absolute paths, mode 0644) and their dirs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(p) for f in files for p in Path(f.lstrip("/")).parents if str(p) != "."})
        for d in dirs:
            add_tar_entry(tar, d)
        for path in sorted(files):
            add_tar_entry(tar, path.lstrip("/"), data=files[path], mode=0o644)
    return buf.getvalue()


def derive(base: Path, out: Path, names: list[str], files: dict[str, bytes], entrypoint: list[str]) -> Path:
    """Writes an OCI archive of `base`'s image plus a layer with `files`, with `entrypoint` (no CMD),
    named `names` (one index entry each, one manifest)."""
    with tarfile.open(base) as src:

        def blob(digest: str) -> bytes:
            f = src.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert f is not None, digest
            return f.read()

        index = json.loads(src.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest: dict[str, Any] = json.loads(blob(index["manifests"][0]["digest"]))
        config: dict[str, Any] = json.loads(blob(manifest["config"]["digest"]))
        layer = file_layer(files)
        config["config"]["Entrypoint"] = entrypoint
        config["config"].pop("Cmd", None)
        config["rootfs"]["diff_ids"].append(blob_digest(layer))
        config.setdefault("history", []).append({"created_by": "tests/controller/fake_image.py"})
        config_bytes = json.dumps(config, sort_keys=True).encode()
        manifest["config"] = {
            "mediaType": CONFIG_MEDIA, "digest": blob_digest(config_bytes), "size": len(config_bytes)
        }  # fmt: skip
        manifest["layers"].append(
            {"mediaType": LAYER_MEDIA, "digest": blob_digest(layer), "size": len(layer)}
        )
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        new_index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MANIFEST_MEDIA,
                    "digest": blob_digest(manifest_bytes),
                    "size": len(manifest_bytes),
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name,
                    },
                }
                for name in names
            ],
        }
        tmp = out.with_name(out.name + ".tmp")
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as dst:
            add_tar_entry(dst, "oci-layout", data=b'{"imageLayoutVersion":"1.0.0"}', mode=0o644)
            add_tar_entry(dst, "index.json", data=json.dumps(new_index).encode(), mode=0o644)
            add_tar_entry(dst, "blobs")
            add_tar_entry(dst, "blobs/sha256")
            kept = [d["digest"] for d in manifest["layers"][:-1]]
            for digest in kept:
                add_tar_entry(
                    dst, f"blobs/sha256/{digest.removeprefix('sha256:')}", data=blob(digest), mode=0o644
                )
            for data in (layer, config_bytes, manifest_bytes):
                add_tar_entry(
                    dst, f"blobs/sha256/{blob_digest(data).removeprefix('sha256:')}", data=data, mode=0o644
                )
    tmp.rename(out)
    return out


def build_operator_image() -> tuple[str, Path]:
    """hack/build-images.sh operator (cached by content): the image name and its OCI archive."""
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-images.sh"), "operator"],
        capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"hack/build-images.sh operator failed: {proc.stderr[-4000:]}")
    name, _, archive = proc.stdout.strip().splitlines()[-1].partition("=")
    return name, Path(archive)


def fake_builder_archive(operator_archive: Path) -> Path:
    """The fake builder image (every FAKE_MODES name) derived from the operator image's archive."""
    script = FAKE_BUILDER_SCRIPT.read_bytes()
    key = hashlib.sha256(
        b"\0".join([operator_archive.name.encode(), script, " ".join(FAKE_MODES).encode(), b"v1"])
    ).hexdigest()[:12]
    out = cache_dir() / f"fake-builder-{key}.oci.tar"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return derive(
        operator_archive,
        out,
        [f"{FAKE}:{mode}" for mode in FAKE_MODES],
        {SCRIPT_IN_IMAGE: script},
        ["python3", SCRIPT_IN_IMAGE],
    )
