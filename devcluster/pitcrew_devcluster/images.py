"""Container images made here without a registry: OCI image archives (`ctr images import` reads them).

The real node needs a pause image (the pod sandbox) and a small image for tests; both are a
busybox-static root filesystem (Debian package `busybox-static`) with different entrypoints. They are
named under `pitcrew.local/`, a name no registry answers to, so nobody mistakes them for upstream
images. Archives are deterministic (fixed mtimes, sorted entries), so the same busybox gives the
same digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DevclusterError

BUSYBOX_BIN = Path("/bin/busybox")
PAUSE_IMAGE = "pitcrew.local/pause:1"
BUSYBOX_IMAGE = "pitcrew.local/busybox:1"
# A sandbox only has to exist until it is killed: sleep for 68 years.
PAUSE_ENTRYPOINT = ["/bin/busybox", "sleep", "2147483647"]

LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class ImageSpec:
    """An image of one uncompressed layer: `name` (with tag), the layer tar, and its run config."""

    name: str
    layer: bytes
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=lambda: ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"])
    user: str = ""


def blob_digest(data: bytes) -> str:
    """The OCI digest of a blob."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def add_tar_entry(
    tar: tarfile.TarFile, name: str, *, data: bytes | None = None, mode: int = 0o755, link: str = ""
) -> None:
    """A reproducible tar entry (mtime 0, root-owned): a directory, a file or a symlink."""
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.mode = mode
    if link:
        info.type = tarfile.SYMTYPE
        info.linkname = link
        tar.addfile(info)
    elif data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def busybox_applets(busybox: Path = BUSYBOX_BIN) -> list[str]:
    """The applets the static busybox provides (`busybox --list`)."""
    try:
        out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise DevclusterError(
            f"cannot run {busybox} ({e}); install the Debian package busybox-static "
            "(hack/install-node-deps.sh)",
            component="images",
        ) from e
    return sorted(a for a in out.split() if a and a != "busybox")


def busybox_layer(busybox: Path = BUSYBOX_BIN) -> bytes:
    """A root filesystem: /bin/busybox, a symlink per applet, /tmp, and /etc/passwd and /etc/group
    with root, nobody and uid 10001 ("app"), so `id` and runAsUser look like a normal image."""
    binary = busybox.read_bytes()
    applets = busybox_applets(busybox)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "etc", "tmp", "root", "home", "home/app", "proc", "sys", "dev", "var", "var/tmp"):
            add_tar_entry(tar, d, mode=0o1777 if d in ("tmp", "var/tmp") else 0o755)
        add_tar_entry(tar, "bin/busybox", data=binary)
        for applet in applets:
            add_tar_entry(tar, f"bin/{applet}", link="busybox")
        passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:10001:10001:app:/home/app:/bin/sh\n"
        passwd += "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        add_tar_entry(tar, "etc/passwd", data=passwd.encode(), mode=0o644)
        add_tar_entry(tar, "etc/group", data=b"root:x:0:\napp:x:10001:\nnogroup:x:65534:\n", mode=0o644)
    return buf.getvalue()


def _config(spec: ImageSpec) -> dict[str, Any]:
    run: dict[str, Any] = {"Env": spec.env, "WorkingDir": "/"}
    if spec.entrypoint:
        run["Entrypoint"] = spec.entrypoint
    if spec.cmd:
        run["Cmd"] = spec.cmd
    if spec.user:
        run["User"] = spec.user
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": run,
        "rootfs": {"type": "layers", "diff_ids": [blob_digest(spec.layer)]},
        "history": [{"created_by": "pitcrew_devcluster.images", "comment": "built locally, no registry"}],
    }


def oci_archive(spec: ImageSpec) -> bytes:
    """An OCI image layout as a tar; the image name is in the index annotations containerd reads."""
    config = json.dumps(_config(spec), sort_keys=True).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA,
            "config": {"mediaType": CONFIG_MEDIA, "digest": blob_digest(config), "size": len(config)},
            "layers": [
                {"mediaType": LAYER_MEDIA, "digest": blob_digest(spec.layer), "size": len(spec.layer)}
            ],
        },
        sort_keys=True,
    ).encode()
    _, _, tag = spec.name.rpartition(":")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MANIFEST_MEDIA,
                    "digest": blob_digest(manifest),
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": spec.name,
                        "org.opencontainers.image.ref.name": tag,
                    },
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        },
        sort_keys=True,
    ).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add_tar_entry(tar, "oci-layout", data=b'{"imageLayoutVersion":"1.0.0"}', mode=0o644)
        add_tar_entry(tar, "index.json", data=index, mode=0o644)
        add_tar_entry(tar, "blobs", mode=0o755)
        add_tar_entry(tar, "blobs/sha256", mode=0o755)
        for blob in sorted({spec.layer, config, manifest}, key=blob_digest):
            add_tar_entry(
                tar, f"blobs/sha256/{blob_digest(blob).removeprefix('sha256:')}", data=blob, mode=0o644
            )
    return buf.getvalue()


def node_images(busybox: Path = BUSYBOX_BIN) -> list[ImageSpec]:
    """The pause image (the sandbox) and the busybox image tests run (no USER: it runs as root)."""
    layer = busybox_layer(busybox)
    return [
        ImageSpec(name=PAUSE_IMAGE, layer=layer, entrypoint=PAUSE_ENTRYPOINT),
        ImageSpec(name=BUSYBOX_IMAGE, layer=layer, cmd=["/bin/sh"]),
    ]


def archive_image_names(archive: Path) -> list[str]:
    """The image names an OCI archive carries (containerd's name annotation, else a full
    `org.opencontainers.image.ref.name` as podman writes it)."""
    try:
        with tarfile.open(archive) as tar:
            f = tar.extractfile("index.json")
            index = json.loads(f.read()) if f else {}
    except (OSError, KeyError, tarfile.TarError, ValueError) as e:
        raise DevclusterError(f"{archive} is not an OCI image archive ({e})", component="images") from e
    names = []
    for desc in index.get("manifests", []):
        ann = desc.get("annotations") or {}
        name = ann.get("io.containerd.image.name") or ann.get("org.opencontainers.image.ref.name", "")
        if "/" in name or ":" in name:
            names.append(name)
    return names


def write_archives(directory: Path, specs: list[ImageSpec]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in specs:
        path = directory / (spec.name.replace("/", "_").replace(":", "_") + ".oci.tar")
        path.write_bytes(oci_archive(spec))
        paths.append(path)
    return paths
