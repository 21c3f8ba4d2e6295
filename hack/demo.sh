#!/usr/bin/env bash
# `make demo`: a local cluster whose node is a real kubelet on containerd + runc, MinIO, the
# operator installed by its Helm chart from an image built here, and one real engine build (a tiny
# LLaMA made here, compiled by TensorRT-RTX on this CPU in a container of the locally built
# builder image), then the same build again as a cache hit. `make down` stops it all.
#
# Needs root and the Debian packages of the real node (`make node-deps`, apt-get). Images are
# built once per machine and cached by content (hack/build-images.sh); containerd keeps them across
# `make down`, so a second `make demo` imports nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
STATE=${PITCREW_STATE_DIR:-$PWD/.pitcrew/devcluster}
export PITCREW_STATE_DIR=$STATE
RELEASE=pitcrew
RELEASE_NS=pitcrew-system
T0=$SECONDS
say() { printf '\n\033[1m== %s\033[0m  (%d s)\n' "$*" "$((SECONDS - T0))"; }
die() { printf '\ndemo: %s\n' "$*" >&2; exit 1; }

# What the real node and the image builds need from the host; nothing runs without it.
missing=()
for tool in containerd ctr runc ip mmdebstrap podman; do command -v $tool >/dev/null 2>&1 || missing+=("$tool"); done
[ -x /usr/lib/cni/bridge ] || missing+=(/usr/lib/cni/bridge)
[ -x /bin/busybox ] || missing+=(/bin/busybox)
if [ ${#missing[@]} -gt 0 ]; then
  die "the demo's node is a real kubelet on containerd; missing on this host: ${missing[*]}.
Run \`make node-deps\` as root (apt-get install of containerd, runc, CNI plugins, busybox-static,
mmdebstrap, podman), then \`make demo\` again."
fi
[ "$(id -u)" = 0 ] || die "the real node (containerd, runc, network namespaces) needs root: run \`sudo make demo\`"
HELM=$(bash hack/build-tools.sh --print helm | cut -d= -f2)/helm
[ -x "$HELM" ] || die "no helm at $HELM: run \`make tools\`"

say "images: operator and builder, built here (cached by content in ~/.cache/pitcrew/images)"
declare -A IMAGE ARCHIVE
while IFS== read -r name archive; do
  key=${name#pitcrew.local/}; key=${key%%:*}
  IMAGE[$key]=$name; ARCHIVE[$key]=$archive
done < <(bash hack/build-images.sh operator builder)
printf '  %s\n' "${IMAGE[operator]}" "${IMAGE[builder]}"

say "cluster: control plane, MinIO, and a node that is a real kubelet on containerd"
if $PY -m pitcrew_devcluster status >/dev/null 2>&1; then
  echo "already running (make down stops it)"
  $PY -m pitcrew_devcluster load-image "${ARCHIVE[operator]}" "${ARCHIVE[builder]}"
else
  # Images already in this state dir's containerd (kept across `make down`) are not imported again.
  $PY -m pitcrew_devcluster up --node real --image "${ARCHIVE[operator]}" --image "${ARCHIVE[builder]}" >/dev/null
fi
eval "$($PY -m pitcrew_devcluster env)"
kubectl get nodes -o wide -L nvidia.com/gpu.product

# The tiny checkpoint is made once (S3 data outlives `make down`), while the chart installs. Each
# run publishes to an engine folder of its own, so its first build always compiles a new engine.
$PY examples/make_tiny_model.py "s3://$PITCREW_S3_BUCKET/models/tiny-llama" --if-missing \
  >"$STATE/logs/demo-model.log" 2>&1 &
ENGINES="s3://$PITCREW_S3_BUCKET/engines/tiny-llama/run-$(date +%Y%m%d-%H%M%S)"
MODEL_PID=$!

say "operator: helm install of helm/pitcrew (Deployment, ServiceAccount, RBAC, CRD)"
# Pods reach the API server and MinIO at the node's bridge (no kube-proxy); the builder Jobs run the
# local builder image, which no registry serves (pull policy Never).
$PY - "${IMAGE[operator]}" "${IMAGE[builder]}" >"$STATE/demo-values.json" <<'PY'
import json, sys
from pitcrew_devcluster.cluster import load

operator, builder = sys.argv[1:3]
info = load()
assert info is not None, "no devcluster running"
repo, _, tag = operator.rpartition(":")
print(json.dumps({
    "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
    "env": {
        **info.pod_api_env(),
        "PITCREW_S3_ENDPOINT": info.pod_s3_endpoint(),
        "PITCREW_RTX_BUILDER_IMAGE": builder,
        "PITCREW_CHECKPOINT_BUILDER_IMAGE": builder,
        "PITCREW_IMAGE_PULL_POLICY": "Never",
    },
}, indent=2))
PY
# No --wait: the CRD is there when helm returns; the Deployment's readiness is awaited below, while
# the first EngineBuild is already queued for the operator.
"$HELM" --kubeconfig "$KUBECONFIG" upgrade --install "$RELEASE" helm/pitcrew --namespace "$RELEASE_NS" \
  --create-namespace --values "$STATE/demo-values.json" || die "helm install failed"
kubectl wait --for=condition=Established crd/enginebuilds.pitcrew.dev --timeout=30s

say "a tiny LLaMA checkpoint in S3"
wait "$MODEL_PID" || { cat "$STATE/logs/demo-model.log"; die "making the tiny model failed"; }
cat "$STATE/logs/demo-model.log"
kubectl create secret generic demo-s3 --dry-run=client -o yaml \
  --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" | kubectl apply -f -
# A re-run on a running cluster starts over.
kubectl delete eb tiny-llama-rtx tiny-llama-rtx-again --ignore-not-found --wait=true >/dev/null

build() {
  cat <<YAML | kubectl apply -f -
apiVersion: pitcrew.dev/v1alpha1
kind: EngineBuild
metadata:
  name: $1
spec:
  source:
    uri: s3://$PITCREW_S3_BUCKET/models/tiny-llama
    format: hf
    credentialsSecretRef: {name: demo-s3}
  backend: tensorrt-rtx
  build: {maxInputLen: 64, maxOutputLen: 64, maxBatchSize: 2}
  target: {gpuProduct: $(kubectl get node -o jsonpath='{.items[0].metadata.labels.nvidia\.com/gpu\.product}')}
  output:
    uri: $ENGINES
    credentialsSecretRef: {name: demo-s3}
YAML
}

say "EngineBuild tiny-llama-rtx: a builder Job converts, exports ONNX, compiles with TensorRT-RTX, publishes"
build tiny-llama-rtx
start=$SECONDS
kubectl -n "$RELEASE_NS" rollout status "deploy/$RELEASE" --timeout 180s || {
  kubectl -n "$RELEASE_NS" get pods -o wide; kubectl -n "$RELEASE_NS" logs "deploy/$RELEASE" --tail 50 || true
  die "the operator's Deployment did not become ready"; }
kubectl wait --for=condition=Ready eb/tiny-llama-rtx --timeout=600s || {
  kubectl get eb tiny-llama-rtx -o yaml; kubectl get pods -o wide
  kubectl -n "$RELEASE_NS" logs "deploy/$RELEASE" --tail 50 || true; die "the build did not succeed"; }
echo "built in $((SECONDS - start)) s"
kubectl get eb tiny-llama-rtx -o jsonpath='{.status.engine}{"\n"}'

say "the same build under another name: served from the cache, no pod"
build tiny-llama-rtx-again
kubectl wait --for=condition=Ready eb/tiny-llama-rtx-again --timeout=60s
kubectl get eb -o wide
hit=$(kubectl get eb tiny-llama-rtx-again -o jsonpath='{.status.cacheHit}')
[ "$hit" = true ] || die "tiny-llama-rtx-again: status.cacheHit is '$hit', expected true"

say "evidence: a real node, the chart's operator, pods from locally built images"
kubectl get nodes -o custom-columns='NODE:.metadata.name,KUBELET:.status.nodeInfo.kubeletVersion,RUNTIME:.status.nodeInfo.containerRuntimeVersion,KERNEL:.status.nodeInfo.kernelVersion'
kubectl -n "$RELEASE_NS" get deployment,serviceaccount "$RELEASE"
cols='NAMESPACE:.metadata.namespace,POD:.metadata.name,PHASE:.status.phase,IMAGE:.status.containerStatuses[0].image,IMAGE-ID:.status.containerStatuses[0].imageID'
kubectl get pods -A -o custom-columns="$cols"
kubectl get eb -o custom-columns='NAME:.metadata.name,PHASE:.status.phase,CACHE-HIT:.status.cacheHit,ENGINE:.status.engine.uri'
echo "make demo took $((SECONDS - T0)) s"

say "try it yourself"
cat <<TXT
  eval "\$($PY -m pitcrew_devcluster env)"
  kubectl get eb                      # EngineBuilds (short name eb)
  kubectl explain eb.spec.build       # every build option, documented
  kubectl get jobs,pods -A
  kubectl -n $RELEASE_NS logs deploy/$RELEASE   # the operator
  make down                           # stop everything (kubelet, containerd, mounts, network)
TXT
