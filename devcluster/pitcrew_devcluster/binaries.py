"""Finds the control-plane binaries built by hack/build-tools.sh, building them when missing.

The script owns the versions and the cache layout (`$PITCREW_CACHE_DIR/bin/<component>-<version>/`,
complete when it holds a `.complete` file); `build-tools.sh --print` tells us the folders without
building anything, so both sides can never disagree on versions.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import DevclusterError

log = logging.getLogger(__name__)

# The binaries each build-tools component provides.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "etcd": ("etcd",),
    "kubernetes": ("kube-apiserver", "kube-controller-manager", "kube-scheduler"),
    "kubelet": ("kubelet",),
    "minio": ("minio",),
    "kwok": ("kwok",),
}
COLD_BUILD_HINT = "a cold build takes ~20 min on 2 cores"


def default_build_tools() -> Path:
    """$PITCREW_BUILD_TOOLS, else hack/build-tools.sh under the current directory (the checkout)."""
    return Path(os.environ.get("PITCREW_BUILD_TOOLS") or Path("hack") / "build-tools.sh").resolve()


@dataclass(frozen=True)
class Binaries:
    dirs: dict[str, Path]

    def path(self, binary: str) -> Path:
        for component, names in COMPONENTS.items():
            if binary in names and component in self.dirs:
                return self.dirs[component] / binary
        raise KeyError(binary)


def _parse(output: str) -> dict[str, Path]:
    dirs: dict[str, Path] = {}
    for line in output.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name in COMPONENTS:
            dirs[name] = Path(value)
    return dirs


def _script(script: Path, components: list[str], *, print_only: bool) -> dict[str, Path]:
    if not script.is_file():
        raise DevclusterError(
            f"cannot find {script} to locate the binaries: run from the checkout or set "
            "PITCREW_BUILD_TOOLS (UpOptions.build_tools) to hack/build-tools.sh",
            component="build-tools",
        )
    argv = ["bash", str(script), *(["--print"] if print_only else []), *components]
    # Build progress goes to our stderr so a person watching `up` sees it; stdout is name=dir lines.
    proc = subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=None if not print_only else subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stderr or "").strip() if print_only else "see the messages above"
        raise DevclusterError(f"`{' '.join(argv)}` failed: {detail}", component="build-tools")
    return _parse(proc.stdout)


def missing(dirs: dict[str, Path]) -> list[str]:
    """Components whose cache folder is absent, unfinished or lacks a binary (a stale cache)."""
    out = []
    for component, d in dirs.items():
        complete = (d / ".complete").is_file()
        if not complete or not all(os.access(d / b, os.X_OK) for b in COMPONENTS[component]):
            out.append(component)
    return out


def locate(components: list[str], *, build: bool = True, script: Path | None = None) -> Binaries:
    """The binaries' folders per `script` (hack/build-tools.sh; default: default_build_tools());
    builds missing components (loudly) when `build`, else raises."""
    script = script or default_build_tools()
    dirs = _script(script, components, print_only=True)
    absent = missing(dirs)
    if absent:
        if not build:
            raise DevclusterError(
                f"binaries missing for {', '.join(absent)} under {', '.join(str(dirs[c]) for c in absent)}; "
                f"build them with `{script} {' '.join(absent)}` ({COLD_BUILD_HINT})",
                component="build-tools",
            )
        print(
            f"devcluster: building {', '.join(absent)} from Go modules ({COLD_BUILD_HINT}; "
            f"logs in {dirs[absent[0]].parent.parent / 'logs'})",
            file=sys.stderr,
            flush=True,
        )
        dirs.update(_script(script, absent, print_only=False))
        still = missing({c: dirs[c] for c in absent})
        if still:
            raise DevclusterError(
                f"build finished but {', '.join(still)} is still incomplete", component="build-tools"
            )
    return Binaries(dirs)
