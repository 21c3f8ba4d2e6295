#!/usr/bin/env bash
# Installs pitcrew_builder (the `pitcrew[builder]` package of this repository) into a Python
# environment and checks that it works. The Dockerfile runs it into the TensorRT-LLM image's
# Python; CI runs it into a fresh virtualenv on the build machine.
#
#   install.sh [--venv DIR | --python PYTHON] [--extras builder,rtx] [--editable] [--offline]
#
#   --venv DIR       create (or reuse) a virtualenv at DIR and install into it
#   --python PYTHON  install into this interpreter's environment (default: python3)
#   --extras LIST    optional dependency groups of pyproject.toml (default: builder)
#   --editable       install the working tree in editable mode (development)
#   --offline        use only the local package cache (uv --offline / pip --no-index is not implied)
#
# Uses uv when available (fast, cached), else pip.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="" python="" extras="builder" editable=0 offline=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) venv="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --extras) extras="$2"; shift 2 ;;
    --editable) editable=1; shift ;;
    --offline) offline=1; shift ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

have_uv=0
command -v uv >/dev/null 2>&1 && have_uv=1

if [[ -n "$venv" ]]; then
  base="${python:-python3}"
  if [[ ! -x "$venv/bin/python" ]]; then
    if [[ $have_uv == 1 ]]; then
      uv venv --quiet --python "$base" "$venv"
    else
      "$base" -m venv "$venv"
    fi
  fi
  python="$venv/bin/python"
fi
python="${python:-python3}"
python="$(command -v "$python")"

target="$repo[$extras]"
args=()
[[ $editable == 1 ]] && args+=(--editable)

echo "install.sh: installing pitcrew[$extras] into $python" >&2
if [[ $have_uv == 1 ]]; then
  uv_args=(pip install --quiet --python "$python")
  [[ $offline == 1 ]] && uv_args+=(--offline)
  uv "${uv_args[@]}" "${args[@]}" "$target"
else
  pip_args=(-m pip install --quiet --no-cache-dir)
  "$python" "${pip_args[@]}" "${args[@]}" "$target"
fi

# Verify: the console script runs and the pipeline imports (backends import their compilers lazily).
bindir="$(dirname "$python")"
entry="$bindir/pitcrew-builder"
if [[ ! -x "$entry" ]]; then
  entry="$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/pitcrew-builder"
fi
"$entry" --help >/dev/null
"$entry" build --help >/dev/null
"$python" - <<'PY'
import importlib

for name in ("pitcrew_builder.cli", "pitcrew_builder.pipeline", "pitcrew_builder.stages.fetch",
             "pitcrew_builder.stages.publish", "pitcrew_builder.backends.trtllm", "pitcrew_builder.backends.rtx",
             "pitcrew_builder.convert.api", "pitcrew.api.plan", "boto3", "torch", "safetensors"):
    importlib.import_module(name)
print("install.sh: pitcrew_builder OK")
PY
