#!/usr/bin/env bash
# Builds the project's container images here, without any registry: a Debian base root filesystem
# with Python (mmdebstrap), then the operator image (operator/Dockerfile) and the builder image
# (builder_image/Dockerfile) on top of it with podman (BASE_IMAGE build-arg; the release images
# stay FROM python:3.11-slim and the TensorRT-LLM release). Each image is saved as an OCI archive
# in $PITCREW_CACHE_DIR/images, named by a hash of everything that goes into it, so a second run
# with the same inputs builds nothing. The real node imports the archives into containerd.
#
# Usage: hack/build-images.sh [--print] [base|operator|builder ...]   (default: base operator)
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
MIRROR=${PITCREW_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_PACKAGES=python3,python3-pip,python-is-python3,ca-certificates
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

base_hash() {
  local cas=""; [ -d "$LOCAL_CAS" ] && cas=$(find "$LOCAL_CAS" -type f -print0 | sort -z | xargs -0 -r cat | sha256sum)
  printf '%s\n' "v1 $SUITE $MIRROR $BASE_PACKAGES $cas" | sha256sum | cut -c1-12
}
operator_hash() { { base_hash; tree_hash operator/Dockerfile pyproject.toml README.md operator builder_image; } | sha256sum | cut -c1-12; }
builder_hash() { { base_hash; echo "WITH_RTX=${PITCREW_BUILDER_WITH_RTX:-1}"; tree_hash builder_image/Dockerfile pyproject.toml README.md operator/pitcrew builder_image; } | sha256sum | cut -c1-12; }

name_of() { echo "pitcrew.local/$1:$("$1_hash")"; }
archive_of() { echo "$OUT/$1-$("$1_hash").oci.tar"; }

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

# The base image must be in podman's storage for FROM; reload it from its archive if needed.
ensure_base_loaded() {
  local name; name=$(name_of base)
  podman_ image exists "$name" && return 0
  podman_ load -i "$(archive_of base)" >&2
}

build_base() {
  local name archive; name=$(name_of base); archive=$(archive_of base)
  [ -f "$archive" ] && return 0
  _base() {
    local tmp; tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    local hooks=(--customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED')
    if [ -d "$LOCAL_CAS" ] && [ -n "$(ls -A "$LOCAL_CAS")" ]; then
      hooks+=(--customize-hook="copy-in $LOCAL_CAS /usr/local/share" --customize-hook='chroot "$1" update-ca-certificates')
    fi
    mmdebstrap --variant=apt --include="$BASE_PACKAGES" "${hooks[@]}" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --aptopt='APT::Install-Recommends "false"' \
      "$SUITE" "$tmp/rootfs.tar" "$MIRROR"
    podman_ import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tmp/rootfs.tar" "$name"
    save "$name" "$archive"
  }
  step "base-$(base_hash)" _base
}

build_dockerfile() {
  local image=$1 dockerfile=$2; shift 2
  local name archive; name=$(name_of "$image"); archive=$(archive_of "$image")
  [ -f "$archive" ] && return 0
  build_base
  _image() {
    ensure_base_loaded
    podman_ build --network host --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 \
      --build-arg BASE_IMAGE="$(name_of base)" "$@" -f "$dockerfile" -t "$name" .
    save "$name" "$archive"
  }
  step "$image-$("${image}_hash")" _image "$@"
}

images=("$@")
[ ${#images[@]} -gt 0 ] || images=(base operator)
if [ $PRINT_ONLY = 0 ]; then
  [ "$(id -u)" = 0 ] || die "needs root (mmdebstrap, podman with runc)"
  for tool in mmdebstrap podman; do
    command -v $tool >/dev/null 2>&1 || die "$tool missing: run hack/install-node-deps.sh"
  done
  for i in "${images[@]}"; do
    case $i in base|operator|builder) [ -f "$(archive_of "$i")" ] && continue ;; esac
    # Something to build: one build at a time (they share podman's storage).
    if [ -z "${LOCKED:-}" ]; then exec 9>"$CACHE/.images.lock"; flock 9; LOCKED=1; fi
    case $i in
      base) build_base ;;
      operator) build_dockerfile operator operator/Dockerfile ;;
      builder) build_dockerfile builder builder_image/Dockerfile --build-arg WITH_RTX="${PITCREW_BUILDER_WITH_RTX:-1}" ;;
      *) die "unknown image '$i' (choose from: base operator builder)" ;;
    esac
  done
fi
for i in "${images[@]}"; do
  case $i in base|operator|builder) echo "$(name_of "$i")=$(archive_of "$i")" ;; *) die "unknown image '$i'" ;; esac
done
