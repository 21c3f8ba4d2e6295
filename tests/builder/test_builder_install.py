"""builder_image/install.sh, the script the Dockerfile runs, works on this machine too."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "builder_image" / "install.sh"


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is needed for a fast, cached install")
def test_install_sh_into_a_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    proc = subprocess.run(
        ["bash", str(INSTALL), "--venv", str(venv), "--extras", "builder"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pitcrew_builder OK" in proc.stdout
    help_text = subprocess.run(
        [str(venv / "bin" / "pitcrew-builder"), "build", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--plan" in help_text and "--termination-log" in help_text
    # Installed, not imported from the work tree.
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import pitcrew_builder; print(pitcrew_builder.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert str(venv) in where


def test_dockerfile_pins_trtllm_and_runs_as_non_root() -> None:
    text = (REPO / "builder_image" / "Dockerfile").read_text()
    assert "nvcr.io/nvidia/tensorrt-llm/release:1.2." in text
    assert "builder_image/install.sh" in text
    user_lines = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user_lines and user_lines[-1].split()[1].split(":")[0] not in ("0", "root")
