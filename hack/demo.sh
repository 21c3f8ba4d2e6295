#!/usr/bin/env bash
# `make demo`: the local control plane and S3, the CRD, the operator, and one real engine build
# (a tiny LLaMA made here, compiled by TensorRT-RTX on this CPU), then the same build again as a
# cache hit. `make down` stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
STATE=${PITCREW_STATE_DIR:-$PWD/.pitcrew/devcluster}
export PITCREW_STATE_DIR=$STATE
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "local control plane, local GPU node and S3"
if $PY -m pitcrew_devcluster status >/dev/null 2>&1; then
  echo "already running (make down stops it)"
else
  # The process node runs the builder image as this venv's console script (its ENTRYPOINT).
  $PY -m pitcrew_devcluster up --image-rule "ghcr.io/pitcrew/builder=$PWD/.venv/bin/pitcrew-builder"
fi
eval "$($PY -m pitcrew_devcluster env)"
kubectl get nodes -L nvidia.com/gpu.product

say "CRD"
kubectl apply -f crds/
kubectl wait --for=condition=Established crd/enginebuilds.pitcrew.dev --timeout=30s

say "operator (logs: $STATE/logs/operator.log)"
if [ -f "$STATE/operator.pid" ] && kill -0 "$(cat "$STATE/operator.pid")" 2>/dev/null; then
  echo "already running"
else
  PITCREW_S3_ENDPOINT=$AWS_ENDPOINT_URL PITCREW_METRICS_PORT=0 PITCREW_HEALTH_PORT=0 \
    setsid $PY -m pitcrew >"$STATE/logs/operator.log" 2>&1 </dev/null &
  echo $! >"$STATE/operator.pid"
fi

say "a tiny LLaMA checkpoint in S3"
# New weights every run (S3 data outlives `make down`), so the demo always compiles a new engine.
$PY examples/make_tiny_model.py "s3://$PITCREW_S3_BUCKET/models/tiny-llama" --seed "$(date +%s)"
kubectl create secret generic demo-s3 --dry-run=client -o yaml \
  --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" | kubectl apply -f -

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
    uri: s3://$PITCREW_S3_BUCKET/engines/tiny-llama
    credentialsSecretRef: {name: demo-s3}
YAML
}

say "EngineBuild tiny-llama-rtx: convert, export to ONNX, compile with TensorRT-RTX, publish"
build tiny-llama-rtx
start=$SECONDS
kubectl wait --for=condition=Ready eb/tiny-llama-rtx --timeout=600s || {
  kubectl get eb tiny-llama-rtx -o yaml; exit 1; }
echo "built in $((SECONDS - start)) s"
kubectl get eb tiny-llama-rtx
kubectl get eb tiny-llama-rtx -o jsonpath='{.status.engine}' | $PY -m json.tool

say "the same build under another name: served from the cache, no pod"
build tiny-llama-rtx-again
kubectl wait --for=condition=Ready eb/tiny-llama-rtx-again --timeout=60s
kubectl get eb -o wide
kubectl get eb tiny-llama-rtx-again -o jsonpath='{.status.cacheHit}{"\n"}'

say "try it yourself"
cat <<TXT
  eval "\$($PY -m pitcrew_devcluster env)"
  kubectl get eb                      # EngineBuilds (short name eb)
  kubectl explain eb.spec.build       # every build option, documented
  kubectl get jobs,pods
  make down                           # stop everything
TXT
