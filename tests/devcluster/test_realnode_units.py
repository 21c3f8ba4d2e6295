"""Unit tests of the real node's pure parts: configs for containerd, CNI and the kubelet; GPU
labels; OCI image archives."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from pitcrew_devcluster import images, realnode
from pitcrew_devcluster.errors import DevclusterError

LAYOUT = realnode.Layout.of(Path("/state"))


@pytest.mark.parametrize(
    ("index", "bridge", "subnet", "gateway"),
    [(0, "pcbr0", "10.213.0.0/24", "10.213.0.1"), (17, "pcbr17", "10.213.17.0/24", "10.213.17.1")],
)
def test_network_of_index(index: int, bridge: str, subnet: str, gateway: str) -> None:
    net = realnode.Network(index)
    assert (net.bridge, net.subnet, net.gateway, net.name) == (bridge, subnet, gateway, f"pitcrew-{index}")


@pytest.mark.parametrize(
    ("cc", "major", "minor"), [("8.0", "8", "0"), ("8.9", "8", "9"), ("9.0", "9", "0"), ("10", "10", "0")]
)
def test_gpu_labels(cc: str, major: str, minor: str) -> None:
    labels = realnode.GpuModel("NVIDIA-L4", cc, count=2).labels()
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-L4"
    assert labels["nvidia.com/gpu.count"] == "2"
    assert (labels["nvidia.com/gpu.compute.major"], labels["nvidia.com/gpu.compute.minor"]) == (major, minor)
    assert realnode.gpu_status_patch(realnode.GpuModel(count=2)) == {
        "status": {"capacity": {"nvidia.com/gpu": "2"}}
    }


@pytest.mark.parametrize("cc", ["", "eight", "8.x"])
def test_bad_compute_capability_names_the_value(cc: str) -> None:
    with pytest.raises(DevclusterError, match=rf"compute capability '{cc}': expected MAJOR.MINOR"):
        realnode.GpuModel(compute_capability=cc).labels()


def test_containerd_config_has_its_own_paths_and_this_machines_settings() -> None:
    cfg = tomllib.loads(realnode.containerd_config(LAYOUT, realnode.Network(3), "pitcrew.local/pause:1"))
    assert cfg["root"] == "/state/realnode/containerd-root"
    assert cfg["state"] == "/state/realnode/containerd-state"
    assert cfg["grpc"]["address"] == "/state/realnode/containerd.sock"
    cri = cfg["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "pitcrew.local/pause:1"
    assert cri["restrict_oom_score_adj"] is True
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["options"] == {"SystemdCgroup": False, "Root": "/state/realnode/runc"}
    assert cri["cni"]["conf_dir"] == "/state/realnode/cni"


def test_cni_network_is_the_clusters_bridge_without_iptables() -> None:
    (bridge,) = realnode.cni_conflist(LAYOUT, realnode.Network(5))["plugins"]
    assert (bridge["type"], bridge["bridge"], bridge["ipMasq"]) == ("bridge", "pcbr5", False)
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.213.5.0/24", "gateway": "10.213.5.1"}]]
    assert bridge["ipam"]["dataDir"] == "/state/realnode/ipam"


def test_kubelet_config_for_cgroup_v1_and_an_authenticated_api() -> None:
    cfg = realnode.kubelet_config(
        LAYOUT, realnode.Network(2), port=4321, healthz_port=4322, ca_file=Path("/pki/ca.crt")
    )
    assert (cfg["cgroupDriver"], cfg["failCgroupV1"], cfg["cgroupsPerQOS"]) == ("cgroupfs", False, False)
    assert cfg["failSwapOn"] is False and cfg["enforceNodeAllocatable"] == []
    assert cfg["containerRuntimeEndpoint"] == "unix:///state/realnode/containerd.sock"
    assert (cfg["address"], cfg["port"], cfg["readOnlyPort"]) == ("10.213.2.1", 4321, 0)
    assert cfg["authentication"]["anonymous"] == {"enabled": False}
    assert cfg["authentication"]["x509"] == {"clientCAFile": "/pki/ca.crt"}
    assert cfg["authorization"] == {"mode": "Webhook"}
    argv = realnode.kubelet_argv(
        Path("/bin/kubelet"),
        LAYOUT,
        realnode.Network(2),
        node_name="n1",
        kubeconfig=Path("/k"),
        labels={"b": "2", "a": "1"},
    )
    assert "--node-ip=10.213.2.1" in argv and "--node-labels=a=1,b=2" in argv
    assert "--root-dir=/state/realnode/kubelet" in argv


def test_long_state_dir_is_refused_before_anything_starts(tmp_path: Path) -> None:
    layout = realnode.Layout.of(tmp_path / ("x" * 80))
    with pytest.raises(DevclusterError, match=r"state dir path too long .* use a shorter --state-dir"):
        realnode.check_host(layout)


@pytest.fixture
def fake_busybox(tmp_path: Path) -> Path:
    # Same interface as busybox-static: `--list` prints the applets.
    path = tmp_path / "busybox"
    path.write_text("#!/bin/sh\nprintf 'sh\\nsleep\\nid\\n'\n")
    path.chmod(0o755)
    return path


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def _read(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def test_busybox_layer_has_applet_links_and_users(fake_busybox: Path) -> None:
    layer = images.busybox_layer(fake_busybox)
    members = _members(layer)
    assert members["bin/busybox"].isfile() and members["bin/busybox"].mode == 0o755
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["tmp"].mode == 0o1777
    assert "app:x:10001:10001:" in _read(layer, "etc/passwd").decode()
    assert layer == images.busybox_layer(fake_busybox)  # deterministic


def test_oci_archive_is_a_valid_layout_naming_the_image(fake_busybox: Path) -> None:
    spec = images.ImageSpec(
        name="pitcrew.local/x:2", layer=images.busybox_layer(fake_busybox), cmd=["/bin/sh"]
    )
    archive = images.oci_archive(spec)
    index = json.loads(_read(archive, "index.json"))
    (desc,) = index["manifests"]
    assert desc["annotations"]["io.containerd.image.name"] == "pitcrew.local/x:2"
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "2"
    # Every blob is stored under its digest and the manifest points at the config and the layer.
    manifest_raw = _read(archive, f"blobs/sha256/{desc['digest'].removeprefix('sha256:')}")
    assert hashlib.sha256(manifest_raw).hexdigest() == desc["digest"].removeprefix("sha256:")
    manifest = json.loads(manifest_raw)
    (layer,) = manifest["layers"]
    assert _read(archive, f"blobs/sha256/{layer['digest'].removeprefix('sha256:')}") == spec.layer
    config = json.loads(
        _read(archive, f"blobs/sha256/{manifest['config']['digest'].removeprefix('sha256:')}")
    )
    assert config["config"]["Cmd"] == ["/bin/sh"] and "User" not in config["config"]
    assert config["rootfs"]["diff_ids"] == [layer["digest"]]
    assert archive == images.oci_archive(spec)


def test_missing_busybox_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(DevclusterError, match="busybox-static"):
        images.busybox_applets(tmp_path / "nope")


def test_archive_image_names_from_containerd_or_podman_annotations(
    fake_busybox: Path, tmp_path: Path
) -> None:
    spec = images.ImageSpec(name="pitcrew.local/x:3", layer=images.busybox_layer(fake_busybox))
    (ours,) = images.write_archives(tmp_path, [spec])
    assert images.archive_image_names(ours) == ["pitcrew.local/x:3"]
    # podman save --format oci-archive: the full name in org.opencontainers.image.ref.name only.
    podman = tmp_path / "podman.tar"
    index = {"manifests": [{"annotations": {"org.opencontainers.image.ref.name": "pitcrew.local/op:abc"}}]}
    with tarfile.open(podman, "w") as tar:
        data = json.dumps(index).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert images.archive_image_names(podman) == ["pitcrew.local/op:abc"]
    not_oci = tmp_path / "x.tar"
    not_oci.write_bytes(b"nope")
    with pytest.raises(DevclusterError, match="is not an OCI image archive"):
        images.archive_image_names(not_oci)
