"""Unit tests of devcluster's pure parts: ports, certificates and kubeconfig, binaries."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pitcrew_devcluster import binaries, certs, kubeconfig, ports
from pitcrew_devcluster.errors import DevclusterError

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


# -- certificates, kubeconfig, binaries ----------------------------------------------------------


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
