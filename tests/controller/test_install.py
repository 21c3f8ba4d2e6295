"""operator/install.sh, the script operator/Dockerfile runs, works on this machine too."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_install_sh_into_a_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    proc = subprocess.run(
        ["bash", str(REPO / "operator" / "install.sh"), "--venv", str(venv)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pitcrew operator OK" in proc.stdout
    # Installed into the venv, not imported from the work tree; and without the builder's torch.
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import pitcrew; print(pitcrew.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert str(venv) in where
    has_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True)
    assert has_torch.returncode != 0
