#!/usr/bin/env bash
# Installs the Pitcrew controller (`pitcrew[operator]` of this repository) into a Python environment
# and checks that it starts. operator/Dockerfile runs it into the image's Python; the test suite runs
# it into a fresh virtualenv, so the image recipe is exercised where no container engine exists.
#
#   install.sh [--venv DIR | --python PYTHON]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="" python="python3"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) venv="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    *) echo "install.sh: unknown argument $1 (use --venv DIR or --python PYTHON)" >&2; exit 2 ;;
  esac
done
if [[ -n "$venv" ]]; then
  [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
  python="$venv/bin/python"
fi
echo "install.sh: installing pitcrew[operator] into $python" >&2
if command -v uv >/dev/null 2>&1; then
  uv pip install --quiet --python "$python" "$repo[operator]"
else
  "$python" -m pip install --quiet --no-cache-dir "$repo[operator]"
fi
# The controller must import without the builder's heavy dependencies (torch, TensorRT).
"$python" -c 'import pitcrew.handlers, pitcrew.settings; import sys; assert "torch" not in sys.modules'
"$python" -m pitcrew --help >/dev/null
echo "install.sh: pitcrew operator OK"
