"""Unit tests of devcluster's pure parts: ports, command mapping, env, volumes, path rewriting."""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Any

import pytest

from controller.harness import builder_image_rule
from pitcrew_devcluster import binaries, certs, kubeconfig, ports
from pitcrew_devcluster.errors import DevclusterError
from pitcrew_devcluster.localnode import podspec
from pitcrew_devcluster.localnode.config import DEFAULT_LOCAL_IMAGES, LocalNodeConfig, default_image_rules
from pitcrew_devcluster.localnode.podspec import ConfigMissing, ImageRule, PodSpecError
from pitcrew_devcluster.localnode.status import ContainerState, terminal_phase

Obj = dict[str, Any]


class FakeLookup:
    def __init__(
        self, configmaps: dict[str, Obj] | None = None, secrets: dict[str, Obj] | None = None
    ) -> None:
        self.configmaps = configmaps or {}
        self.secrets = secrets or {}

    def configmap(self, namespace: str, name: str) -> Obj | None:
        return self.configmaps.get(name)

    def secret(self, namespace: str, name: str) -> Obj | None:
        return self.secrets.get(name)

    def service_account_token(self, namespace: str, sa: str, audience: str | None, exp: int) -> str:
        return f"token-for-{namespace}-{sa}"


def pod(**spec: Any) -> Obj:
    return {
        "metadata": {"name": "p1", "namespace": "ns1", "uid": "0123456789abcdef", "labels": {"app": "x"}},
        "spec": {"nodeName": "pitcrew-local", **spec},
    }


# -- ports -------------------------------------------------------------------------------------


def test_pick_free_ports_distinct_and_bindable() -> None:
    picked = ports.pick_free_ports(6)
    assert len(set(picked)) == 6
    assert all(ports.port_is_free(p) for p in picked)


def test_port_in_use_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not ports.port_is_free(port)
        with pytest.raises(
            DevclusterError, match=rf"kube-apiserver: port 127.0.0.1:{port} is already in use"
        ):
            ports.require_free(port, "kube-apiserver")


# -- command mapping ---------------------------------------------------------------------------

RULES = [ImageRule(**r) for r in [builder_image_rule(Path("/venv/bin")), *default_image_rules()]]


def test_builder_image_runs_venv_console_script() -> None:
    rule = podspec.match_rule("ghcr.io/pitcrew/builder:0.1.0", RULES)
    assert rule is not None
    argv = podspec.container_argv({"name": "b", "args": ["build", "--spec", "/spec/x.yaml"]}, rule)
    assert argv == ["/venv/bin/pitcrew-builder", "build", "--spec", "/spec/x.yaml"]


def test_command_replaces_entrypoint_and_args_replace_cmd() -> None:
    builder = podspec.match_rule("ghcr.io/pitcrew/builder@sha256:abc", RULES)
    assert podspec.container_argv({"command": ["sh", "-c"], "args": ["true"]}, builder) == [
        "sh",
        "-c",
        "true",
    ]
    py = podspec.match_rule("python:3.11-slim", RULES)
    assert podspec.container_argv({"name": "c"}, py) == ["python3"]
    assert podspec.container_argv({"name": "c", "args": ["-V"]}, py) == ["-V"]


def test_unknown_image_without_command_is_an_error() -> None:
    assert podspec.match_rule("busybox", RULES) is None
    assert podspec.container_argv({"command": ["echo", "hi"]}, None) == ["echo", "hi"]
    with pytest.raises(PodSpecError, match="no local program"):
        podspec.container_argv({"name": "c", "image": "busybox"}, None)


def test_resolve_program_uses_pod_path(tmp_path: Path) -> None:
    exe = tmp_path / "bin" / "tool"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert podspec.resolve_program(["tool", "-x"], f"{exe.parent}:/usr/bin", tmp_path) == [str(exe), "-x"]
    with pytest.raises(PodSpecError, match="executable file not found"):
        podspec.resolve_program(["no-such-tool-xyz"], "/usr/bin", tmp_path)


# -- env ---------------------------------------------------------------------------------------


def test_env_resolution_sources_and_expansion() -> None:
    lookup = FakeLookup(
        configmaps={"cm": {"data": {"greeting": "hello", "k2": "v2"}}},
        secrets={"sec": {"data": {"password": base64.b64encode(b"s3cret").decode()}}},
    )
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "A", "value": "a"},
            {"name": "B", "value": "$(A)-b-$$(A)-$(UNDEFINED)"},
            {"name": "G", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "greeting"}}},
            {"name": "P", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
            {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "O", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": True}}},
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
        ],
        "resources": {"limits": {"memory": "2Gi"}},
    }
    env = podspec.resolve_env(pod(), container, lookup, {"BASE": "1"})
    assert env["BASE"] == "1"
    assert env["CM_greeting"] == "hello"
    assert env["B"] == "a-b-$(A)-$(UNDEFINED)"
    assert env["G"] == "hello"
    assert env["P"] == "s3cret"
    assert (env["N"], env["NS"], env["L"]) == ("p1", "ns1", "x")
    assert "O" not in env
    assert env["MEM"] == "2048"


def test_missing_configmap_key_is_retryable() -> None:
    lookup = FakeLookup(configmaps={"cm": {"data": {}}})
    c = {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "missing"}}}]}
    with pytest.raises(ConfigMissing, match="couldn't find key missing"):
        podspec.resolve_env(pod(), c, lookup, {})
    with pytest.raises(ConfigMissing, match='configmap "absent" not found'):
        podspec.resolve_env(
            pod(),
            {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}]},
            lookup,
            {},
        )


def test_parse_quantity() -> None:
    assert podspec.parse_quantity("500m") * 1000 == 500
    assert podspec.parse_quantity("2Gi") == 2 * 2**30
    assert podspec.parse_quantity("1k") == 1000
    assert podspec.parse_quantity(4) == 4


# -- volumes and paths -------------------------------------------------------------------------


def test_volumes_and_mounts(tmp_path: Path) -> None:
    lookup = FakeLookup(
        configmaps={
            "spec": {
                "data": {"build.yaml": "model: x\n"},
                "binaryData": {"blob": base64.b64encode(b"\x00\x01").decode()},
            }
        }
    )
    p = pod(
        volumes=[
            {"name": "spec", "configMap": {"name": "spec"}},
            {"name": "work", "emptyDir": {}},
            {
                "name": "api",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"path": "token"}},
                        {
                            "downwardAPI": {
                                "items": [
                                    {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                                ]
                            }
                        },
                    ]
                },
            },
            {"name": "claim", "persistentVolumeClaim": {"claimName": "engines"}},
        ]
    )
    vols = podspec.materialize_volumes(p, tmp_path / "pod", lookup, tmp_path / "pvcs")
    assert (vols["spec"] / "build.yaml").read_text() == "model: x\n"
    assert (vols["spec"] / "blob").read_bytes() == b"\x00\x01"
    assert vols["work"].is_dir()
    assert (vols["api"] / "token").read_text() == "token-for-ns1-default"
    assert (vols["api"] / "namespace").read_text() == "ns1"
    assert vols["claim"] == tmp_path / "pvcs" / "ns1" / "engines"

    root = tmp_path / "pod" / "root"
    term = tmp_path / "pod" / "containers" / "c" / "termination-log"
    container = {
        "volumeMounts": [
            {"name": "spec", "mountPath": "/etc/pitcrew"},
            {"name": "work", "mountPath": "/work/"},
            {"name": "work", "mountPath": "/work/sub/dir", "subPath": "nested"},
        ]
    }
    mounts = podspec.plan_mounts(container, vols, root, term, {})
    assert (root / "etc" / "pitcrew" / "build.yaml").read_text() == "model: x\n"  # symlinked view
    assert mounts.env["PITCREW_VOLUME_SPEC"] == str(vols["spec"])
    assert mounts.env["PITCREW_VOLUME_WORK"] == str(vols["work"])
    assert mounts.env["PITCREW_TERMINATION_LOG"] == str(term)
    rw = mounts.rewrites
    assert podspec.rewrite_paths("--spec=/etc/pitcrew/build.yaml", rw) == f"--spec={vols['spec']}/build.yaml"
    assert podspec.rewrite_paths("/work", rw) == str(vols["work"])
    assert podspec.rewrite_paths("/work/sub/dir/x", rw) == f"{vols['work']}/nested/x"
    assert podspec.rewrite_paths("/workspace /etc/pitcrewx", rw) == "/workspace /etc/pitcrewx"
    code = "open('/dev/termination-log','w').write('done')"
    assert podspec.rewrite_paths(code, rw) == f"open('{term}','w').write('done')"
    assert podspec.rewrite_paths("PATH=/a:/work/bin", rw) == f"PATH=/a:{vols['work']}/bin"

    pvc = podspec.plan_mounts(
        {"volumeMounts": [{"name": "claim", "mountPath": "/mnt/pvc/engines"}]}, vols, root, term, {}
    ).rewrites
    assert podspec.rewrite_paths("/mnt/pvc", pvc) == f"{root}/mnt/pvc"  # a parent, as a whole token
    assert (root / "mnt" / "pvc" / "engines").resolve() == vols["claim"]
    assert podspec.rewrite_paths("/mnt/pvc/engines/e1", pvc) == f"{vols['claim']}/e1"
    assert podspec.rewrite_paths("/mnt/pvc/other /mnt/x", pvc) == "/mnt/pvc/other /mnt/x"


def test_unsupported_volume_is_an_error(tmp_path: Path) -> None:
    p = pod(volumes=[{"name": "x", "iscsi": {}}])
    with pytest.raises(PodSpecError, match="type iscsi is not supported"):
        podspec.materialize_volumes(p, tmp_path, FakeLookup(), tmp_path)


def test_rewrite_can_be_disabled() -> None:
    p = pod()
    assert podspec.rewriting_enabled(p)
    p["metadata"]["annotations"] = {podspec.REWRITE_ANNOTATION: "false"}
    assert not podspec.rewriting_enabled(p)


# -- status, config, credentials ---------------------------------------------------------------


def test_terminal_phase_and_container_status() -> None:
    a, b = ContainerState("a", "img"), ContainerState("b", "img")
    assert terminal_phase([a, b]) is None
    a.running("t0", 42)
    assert a.to_status()["state"] == {"waiting": None, "running": {"startedAt": "t0"}, "terminated": None}
    assert a.to_status()["ready"] is True
    a.terminated(0, "Completed", "", "t0", "t1")
    b.terminated(3, "Error", "boom", "t0", "t1")
    assert terminal_phase([a]) == "Succeeded"
    assert terminal_phase([a, b]) == "Failed"
    assert b.to_status()["state"]["terminated"]["message"] == "boom"


def test_localnode_config_labels() -> None:
    cfg = LocalNodeConfig.from_json(
        {
            "kubeconfig": "/k",
            "gpus": 2,
            "compute_capability": "9.0",
            "gpu_product": "NVIDIA-H100-80GB-HBM3",
            "image_rules": [{"prefix": "x/", "entrypoint": ["/bin/true"]}],
        }
    )
    labels = cfg.node_labels()
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert (labels["nvidia.com/gpu.compute.major"], labels["nvidia.com/gpu.compute.minor"]) == ("9", "0")
    assert cfg.image_rules == [ImageRule(prefix="x/", entrypoint=["/bin/true"])]
    with pytest.raises(ValueError, match="unknown localnode config key"):
        LocalNodeConfig.from_json({"kubeconfig": "/k", "gpu": 1})


def test_certs_and_kubeconfig_round_trip(tmp_path: Path) -> None:
    creds = certs.generate(tmp_path / "pki")
    assert creds.token_file.read_text().startswith(f'{creds.admin_token},admin,admin,"system:masters"')
    path = kubeconfig.write(
        tmp_path / "kubeconfig", "https://127.0.0.1:1234", creds.ca_cert, creds.admin_token
    )
    ep = kubeconfig.read(path)
    assert (ep.server, ep.token, ep.ca_pem) == (
        "https://127.0.0.1:1234",
        creds.admin_token,
        creds.ca_cert.read_bytes(),
    )


def test_missing_binaries_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITCREW_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DevclusterError, match=r"binaries missing for etcd .*build-tools.sh etcd.*~20 min"):
        binaries.locate(["etcd"], build=False)


def test_missing_binaries_are_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A stand-in for hack/build-tools.sh with the same contract: --print lists folders, a plain
    # run builds into them (here: fake binaries plus the .complete marker).
    script = tmp_path / "build-tools.sh"
    script.write_text(
        "#!/usr/bin/env bash\nset -e\nd=$PITCREW_CACHE_DIR/bin/etcd-v0\n"
        'if [ "$1" != --print ]; then mkdir -p $d; printf "#!/bin/sh\\n" > $d/etcd; chmod +x $d/etcd;'
        " touch $d/.complete; echo 'build-tools: built' >&2; fi\necho etcd=$d\n"
    )
    monkeypatch.setenv("PITCREW_BUILD_TOOLS", str(script))
    monkeypatch.setenv("PITCREW_CACHE_DIR", str(tmp_path / "cache"))
    bins = binaries.locate(["etcd"], build=True)
    assert bins.path("etcd") == tmp_path / "cache" / "bin" / "etcd-v0" / "etcd"
    assert "building etcd from Go modules" in capsys.readouterr().err
    assert binaries.missing(bins.dirs) == []


def test_image_availability_rules_and_local_images() -> None:
    local = DEFAULT_LOCAL_IMAGES
    for image in ("ghcr.io/pitcrew/builder:0.1.0", "python:3.11-slim", "busybox", "busybox:1.36"):
        assert podspec.image_available(image, RULES, local), image
    for image in ("registry.invalid/nope:1", "ubuntu:24.04", "pitcrew.test/fake-builder:ok"):
        assert not podspec.image_available(image, RULES, local), image
    # The package knows no test images: they come as rules (tests/conftest.py) or patterns.
    assert podspec.image_available("pitcrew.test/fake-builder:ok", RULES, ("pitcrew.test/*",))
    message = podspec.pull_error_message("registry.invalid/nope:1")
    assert "registry.invalid/nope:1" in message and "no local mapping" in message


def test_localnode_config_local_images() -> None:
    assert LocalNodeConfig.from_json({"kubeconfig": "/k"}).local_images == DEFAULT_LOCAL_IMAGES
    cfg = LocalNodeConfig.from_json({"kubeconfig": "/k", "local_images": ["ubuntu:*"]})
    assert cfg.local_images == ("ubuntu:*",)
