#!/usr/bin/env bash
# Builds the real control-plane binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler), the kubelet of the real node, kwok, MinIO and helm from Go modules through the
# module proxy.
# Binaries are cached outside the repo, one folder per component and version; a second run
# only checks that they are there. Usage: hack/build-tools.sh [--print] [component ...]
# --print only prints the name=dir lines (built or not; a built folder holds a .complete file).
set -euo pipefail

PRINT_ONLY=0
if [ "${1:-}" = "--print" ]; then PRINT_ONLY=1; shift; fi

K8S_VERSION=${PITCREW_K8S_VERSION:-v1.34.4}
ETCD_VERSION=${PITCREW_ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${PITCREW_KWOK_VERSION:-v0.8.0}
HELM_VERSION=${PITCREW_HELM_VERSION:-v3.22.0}
MINIO_VERSION=${PITCREW_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}
CACHE=${PITCREW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pitcrew}
LOGS=$CACHE/logs
mkdir -p "$CACHE/bin" "$LOGS"

# Two runs at once (a demo and a test run) would clobber each other's half-built folders.
# --print reads nothing a build writes, so it does not wait for a running build.
if [ $PRINT_ONLY = 0 ]; then
  exec 9>"$CACHE/.build.lock"
  flock 9
fi

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local

die() { echo "build-tools: $*" >&2; exit 1; }
[ $PRINT_ONLY = 1 ] || command -v go >/dev/null 2>&1 || die "no Go toolchain on PATH: install Go 1.24+ (https://go.dev/doc/install) and re-run"
[ $PRINT_ONLY = 1 ] || go version >/dev/null 2>&1 || die "the Go toolchain on PATH does not run ('go version' failed)"

# Prints the folder holding a component's binaries for a version.
bindir() { echo "$CACHE/bin/$1-$2"; }

# A cached folder counts only when every binary is there and runs; a partial one is rebuilt.
cached() {
  local dir=$1; shift
  [ -f "$dir/.complete" ] || return 1
  for b in "$@"; do [ -x "$dir/$b" ] || return 1; done
}

# Runs one build step with its output in a log file; on failure names the component and the log.
step() {
  local name=$1; shift
  local log=$LOGS/build-$name.log
  echo "build-tools: building $name (log: $log)" >&2
  local start=$SECONDS
  if ! ( "$@" ) >"$log" 2>&1; then
    tail -n 15 "$log" >&2
    die "building $name failed; read $log"
  fi
  echo "build-tools: $name built in $((SECONDS - start)) s" >&2
}

# A module that builds k8s.io/kubernetes commands ($3..) of $K8S_VERSION into the folder of
# component $1, with $2 as the go module's name.
k8s_module_build() {
  local component=$1 modname=$2; shift 2
  local out; out=$(bindir "$component" "$K8S_VERSION")
  local mod=$CACHE/gomod/$component-$K8S_VERSION
  rm -rf "$mod" "$out"; mkdir -p "$mod" "$out"
  cd "$mod"
  go mod init "$modname"
  local gomod; gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  # k8s.io/kubernetes replaces its staging modules with ./staging paths, which a consumer
  # ignores; map each one to the published module of the same release (v1.M.P -> v0.M.P).
  local staging="v0.${K8S_VERSION#v1.}"
  grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$gomod" | awk '{print $1}' | sort -u |
    while read -r m; do go mod edit -replace "$m=$m@$staging"; done
  go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
  { printf 'package tools\n\nimport (\n'; for c in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s/app"\n' "$c"; done; printf ')\n'; } > tools.go
  go mod tidy
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
  local pkgs=(); for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  go build -trimpath -ldflags "$ld" -o "$out/" "${pkgs[@]}"
  touch "$out/.complete"
}

build_kubernetes() {
  cached "$(bindir kubernetes "$K8S_VERSION")" kube-apiserver kube-controller-manager kube-scheduler && return 0
  step "kubernetes-$K8S_VERSION" k8s_module_build kubernetes pitcrew.dev/tools/kubernetes \
    kube-apiserver kube-controller-manager kube-scheduler
}

# The real node's kubelet: same module and release as the control plane (its own folder, so the
# control plane's cache stays valid; with that build's Go cache warm it takes about a minute).
build_kubelet() {
  cached "$(bindir kubelet "$K8S_VERSION")" kubelet && return 0
  step "kubelet-$K8S_VERSION" k8s_module_build kubelet pitcrew.dev/tools/kubelet kubelet
}

build_etcd() {
  local out; out=$(bindir etcd "$ETCD_VERSION")
  cached "$out" etcd && return 0
  local mod=$CACHE/gomod/etcd-$ETCD_VERSION
  rm -rf "$mod" "$out"; mkdir -p "$mod" "$out"
  _etcd() {
    cd "$mod"
    go mod init pitcrew.dev/tools/etcd
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
    touch "$out/.complete"
  }
  step "etcd-$ETCD_VERSION" _etcd
}

build_kwok() {
  local out; out=$(bindir kwok "$KWOK_VERSION")
  cached "$out" kwok && [ -f "$out/stages/pod-complete.yaml" ] && return 0
  rm -rf "$out"; mkdir -p "$out"
  _kwok() {
    GOBIN="$out" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    # The kwok binary has no built-in stages (kwokctl embeds them): keep the release's "fast"
    # node and pod stages beside it, taken from the module just downloaded.
    local stages; stages="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
    mkdir -p "$out/stages"
    cp "$stages"/node/fast/node-initialize.yaml "$stages"/node/heartbeat/node-heartbeat.yaml \
       "$stages"/pod/fast/pod-ready.yaml "$stages"/pod/fast/pod-complete.yaml "$stages"/pod/fast/pod-delete.yaml \
       "$out/stages/"
    touch "$out/.complete"
  }
  step "kwok-$KWOK_VERSION" _kwok
}

build_helm() {
  local out; out=$(bindir helm "$HELM_VERSION")
  cached "$out" helm && return 0
  rm -rf "$out"; mkdir -p "$out"
  _helm() { GOBIN="$out" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" && touch "$out/.complete"; }
  step "helm-$HELM_VERSION" _helm
}

build_minio() {
  local out; out=$(bindir minio "$MINIO_VERSION")
  cached "$out" minio && return 0
  rm -rf "$out"; mkdir -p "$out"
  _minio() { GOBIN="$out" go install -trimpath -ldflags "-s -w" "github.com/minio/minio@$MINIO_VERSION" && touch "$out/.complete"; }
  step "minio-$MINIO_VERSION" _minio
}

# Holds an exclusive lock on the component while its build function runs, so a second concurrent
# run waits and then finds the cache instead of clobbering the first one's folders (flock is from
# util-linux; without it the build runs unlocked).
locked() {
  local c=$1; shift
  if command -v flock >/dev/null 2>&1; then
    (
      exec 9>"$CACHE/.build-$c.lock"
      if ! flock -n 9; then
        echo "build-tools: another build of $c is running; waiting for it" >&2
        flock 9
      fi
      "$@"
    )
  else
    "$@"
  fi
}

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(etcd kubernetes kubelet minio kwok helm)
for c in "${components[@]}"; do
  case $c in
    etcd|kubernetes|kubelet|kwok|minio|helm) [ $PRINT_ONLY = 1 ] || locked "$c" "build_$c" ;;
    *) die "unknown component '$c' (choose from: etcd kubernetes kubelet minio kwok helm)" ;;
  esac
done
# The paths, one per line, for whoever starts the components.
for c in "${components[@]}"; do
  case $c in
    etcd) echo "etcd=$(bindir etcd "$ETCD_VERSION")" ;;
    kubernetes) echo "kubernetes=$(bindir kubernetes "$K8S_VERSION")" ;;
    kubelet) echo "kubelet=$(bindir kubelet "$K8S_VERSION")" ;;
    kwok) echo "kwok=$(bindir kwok "$KWOK_VERSION")" ;;
    minio) echo "minio=$(bindir minio "$MINIO_VERSION")" ;;
    helm) echo "helm=$(bindir helm "$HELM_VERSION")" ;;
  esac
done
