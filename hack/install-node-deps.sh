#!/usr/bin/env bash
# Installs what the real node (`pitcrew_devcluster up --node real`) needs from Debian packages:
# containerd + runc (the container runtime), the CNI plugins (bridge, host-local, portmap),
# busybox-static (the pause and busybox images), mmdebstrap + podman (building images without a
# registry) and iproute2. Idempotent: does nothing when everything is installed. Needs root
# (CI runs as root); no systemd is needed, the dev cluster starts containerd itself.
set -euo pipefail
PACKAGES=(containerd runc containernetworking-plugins busybox-static mmdebstrap podman iproute2)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "install-node-deps: missing Debian packages: ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2
  exit 1
fi
command -v apt-get >/dev/null 2>&1 || {
  echo "install-node-deps: no apt-get; install ${missing[*]} (containerd, runc, CNI plugins) by other means" >&2
  exit 1
}
echo "install-node-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Docs and recommends are not needed; the package lists may be stale on a fresh machine.
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
