#!/usr/bin/env bash
# Builds the project's container images here, without any registry: Debian root filesystems with
# Python (mmdebstrap), then the operator image (operator/Dockerfile) and the builder image
# (builder_image/Dockerfile) on top of them with podman (BASE_IMAGE build-arg; the release images
# stay FROM python:3.11-slim and the TensorRT-LLM release). Each image is saved as an OCI archive
# in $PITCREW_CACHE_DIR/images, named by a hash of everything that goes into it, so a second run
# with the same inputs builds nothing. The real node imports the archives into containerd.
#
# Images:
#   base          Debian bookworm + python3 (3.11, as python:3.11-slim): the operator's base
#   operator      operator/Dockerfile FROM base
#   builder-base  Debian trixie + python3-torch: Debian's CPU-only PyTorch 2.6 (Python 3.13), no
#                 CUDA libraries (PyPI's torch brings 3 GB of them, and PyTorch's CPU wheel index
#                 is not reachable from here). Enough for the tensorrt-rtx backend, which compiles
#                 on the CPU, and for the checkpoint backend (conversion only).
#   builder       builder_image/Dockerfile FROM builder-base (+ a venv over Debian's packages, see
#                 builder_venv), WITH_RTX=1: TensorRT-RTX and the other wheels from PyPI
#
# Usage: hack/build-images.sh [--print] [base|operator|builder-base|builder ...]   (default: base operator)
# Prints one line per image: NAME=ARCHIVE (NAME is pitcrew.local/<image>:<hash>).
# Needs root and the Debian packages mmdebstrap and podman (hack/install-node-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

PRINT_ONLY=0
if [ "${1:-}" = "--print" ]; then PRINT_ONLY=1; shift; fi
CACHE=${PITCREW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pitcrew}
OUT=$CACHE/images
LOGS=$CACHE/logs
SUITE=${PITCREW_DEBIAN_SUITE:-bookworm}  # Python 3.11, as python:3.11-slim
BUILDER_SUITE=trixie                     # the first with a PyTorch 2 (2.6, CPU-only)
MIRROR=${PITCREW_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_PACKAGES=python3,python3-pip,python-is-python3,ca-certificates
BUILDER_BASE_PACKAGES=$BASE_PACKAGES,python3-torch,python3-numpy
# This machine's extra CAs (e.g. a TLS-inspecting proxy in front of PyPI): the base image trusts
# them too, so pip inside an image build reaches PyPI as the host does.
LOCAL_CAS=/usr/local/share/ca-certificates
mkdir -p "$OUT" "$LOGS"
die() { echo "build-images: $*" >&2; exit 1; }

# podman with its own storage under the cache (not the machine's), runc and cgroupfs (crun
# refuses hybrid cgroups), ulimits within the machine's hard limits.
podman_() {
  podman --root "$CACHE/podman/storage" --runroot /run/pitcrew-podman \
    --runtime runc --cgroup-manager cgroupfs "$@"
}

# sha256 of the named files and folders' contents (paths included; caches excluded).
tree_hash() {
  find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 | sort -z |
    xargs -0 sha256sum | sha256sum | cut -c1-12
}

local_cas_hash() {
  [ -d "$LOCAL_CAS" ] && find "$LOCAL_CAS" -type f -print0 | sort -z | xargs -0 -r cat | sha256sum
  return 0
}
base_hash() { printf '%s\n' "v1 $SUITE $MIRROR $BASE_PACKAGES $(local_cas_hash)" | sha256sum | cut -c1-12; }
builder_base_hash() {
  printf '%s\n' "v1 $BUILDER_SUITE $MIRROR $BUILDER_BASE_PACKAGES $(local_cas_hash)" | sha256sum | cut -c1-12
}
operator_hash() { { base_hash; tree_hash operator/Dockerfile pyproject.toml README.md operator builder_image; } | sha256sum | cut -c1-12; }
builder_hash() { { builder_base_hash; echo "WITH_RTX=1 venv /opt/pitcrew"; tree_hash builder_image/Dockerfile pyproject.toml README.md operator/pitcrew builder_image; } | sha256sum | cut -c1-12; }

# Image names on the command line have dashes, shell functions underscores.
key_of() { echo "${1//-/_}"; }
name_of() { echo "pitcrew.local/$1:$("$(key_of "$1")_hash")"; }
archive_of() { echo "$OUT/$1-$("$(key_of "$1")_hash").oci.tar"; }

# Runs a step with its output in a log; on failure names the image and the log.
step() {
  local what=$1; shift
  local log=$LOGS/image-$what.log start=$SECONDS
  echo "build-images: building $what (log: $log)" >&2
  if ! ( "$@" ) >"$log" 2>&1; then tail -n 20 "$log" >&2; die "building $what failed; read $log"; fi
  echo "build-images: $what built in $((SECONDS - start)) s" >&2
}

# Saves a podman image as an OCI archive, atomically (a half-written archive never counts).
save() {
  local name=$1 archive=$2
  rm -f "$archive.tmp"
  podman_ save --format oci-archive -o "$archive.tmp" "$name"
  mv "$archive.tmp" "$archive"
}

# A base image must be in podman's storage for FROM; reload it from its archive if needed.
ensure_loaded() {
  local name; name=$(name_of "$1")
  podman_ image exists "$name" && return 0
  podman_ load -i "$(archive_of "$1")" >&2
}

# A Debian root filesystem as an image: build_rootfs IMAGE SUITE PACKAGES (comma-separated).
build_rootfs() {
  local image=$1 suite=$2 packages=$3
  local name archive; name=$(name_of "$image"); archive=$(archive_of "$image")
  [ -f "$archive" ] && return 0
  _rootfs() {
    local tmp; tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    local hooks=(--customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED')
    if [ -d "$LOCAL_CAS" ] && [ -n "$(ls -A "$LOCAL_CAS")" ]; then
      hooks+=(--customize-hook="copy-in $LOCAL_CAS /usr/local/share" --customize-hook='chroot "$1" update-ca-certificates')
    fi
    mmdebstrap --variant=apt --include="$packages" "${hooks[@]}" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --aptopt='APT::Install-Recommends "false"' \
      "$suite" "$tmp/rootfs.tar" "$MIRROR"
    podman_ import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tmp/rootfs.tar" "$name"
    save "$name" "$archive"
  }
  step "$image-$("$(key_of "$image")_hash")" _rootfs
}
build_base() { build_rootfs base "$SUITE" "$BASE_PACKAGES"; }
build_builder_base() { build_rootfs builder-base "$BUILDER_SUITE" "$BUILDER_BASE_PACKAGES"; }

# What the builder's Dockerfile starts FROM: builder-base plus a virtualenv over Debian's packages
# (--system-site-packages) first on PATH. pip then installs and upgrades into the venv; without it,
# upgrading a Debian-installed package (typing_extensions for pydantic) fails (no RECORD file).
# Only in podman's storage, remade from the builder-base archive when missing.
builder_venv() {
  local name; name="pitcrew.local/builder-venv:$(builder_base_hash)"
  if ! podman_ image exists "$name"; then
    ensure_loaded builder-base
    local ctx; ctx=$(mktemp -d)
    printf '%s\n' "FROM $(name_of builder-base)" \
      'RUN python3 -m venv --without-pip --system-site-packages /opt/pitcrew' \
      'ENV PATH=/opt/pitcrew/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' >"$ctx/Containerfile"
    podman_ build -f "$ctx/Containerfile" -t "$name" "$ctx" >&2
    rm -rf "$ctx"
  fi
  echo "$name"
}

# build_dockerfile IMAGE BASE DOCKERFILE [podman build args]
build_dockerfile() {
  local image=$1 base=$2 dockerfile=$3; shift 3
  local name archive; name=$(name_of "$image"); archive=$(archive_of "$image")
  [ -f "$archive" ] && return 0
  "build_$(key_of "$base")"
  _image() {
    local from
    if [ "$base" = builder-base ]; then from=$(builder_venv); else ensure_loaded "$base"; from=$(name_of "$base"); fi
    podman_ build --network host --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 \
      --build-arg BASE_IMAGE="$from" "$@" -f "$dockerfile" -t "$name" .
    save "$name" "$archive"
  }
  step "$image-$("$(key_of "$image")_hash")" _image "$@"
}

IMAGES="base operator builder-base builder"
known() { case " $IMAGES " in *" $1 "*) return 0 ;; esac; die "unknown image '$1' (choose from: $IMAGES)"; }

images=("$@")
[ ${#images[@]} -gt 0 ] || images=(base operator)
for i in "${images[@]}"; do known "$i"; done
if [ $PRINT_ONLY = 0 ]; then
  [ "$(id -u)" = 0 ] || die "needs root (mmdebstrap, podman with runc)"
  for tool in mmdebstrap podman; do
    command -v $tool >/dev/null 2>&1 || die "$tool missing: run hack/install-node-deps.sh (make node-deps)"
  done
  for i in "${images[@]}"; do
    [ -f "$(archive_of "$i")" ] && continue
    # Something to build: one build at a time (they share podman's storage).
    if [ -z "${LOCKED:-}" ]; then exec 9>"$CACHE/.images.lock"; flock 9; LOCKED=1; fi
    case $i in
      base) build_base ;;
      builder-base) build_builder_base ;;
      operator) build_dockerfile operator base operator/Dockerfile ;;
      builder) build_dockerfile builder builder-base builder_image/Dockerfile --build-arg WITH_RTX=1 ;;
    esac
  done
fi
for i in "${images[@]}"; do echo "$(name_of "$i")=$(archive_of "$i")"; done
