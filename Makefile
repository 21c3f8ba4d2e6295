# Pitcrew: `make demo` runs the local demo, `make test` the whole suite, `make down` stops the demo.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml devcluster/pyproject.toml | sha256sum | cut -c1-12)
export PITCREW_CACHE_DIR ?= $(HOME)/.cache/pitcrew
# The slowest tests are listed at the end of every run.
PYTEST_ARGS ?= --durations=15

.PHONY: demo test down lint tools crds venv megatron-venv clean node-deps

$(STAMP): pyproject.toml devcluster/pyproject.toml
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@test -x $(PY) || uv venv --quiet --python $(PYTHON) $(VENV)
	uv pip install --quiet --python $(PY) -e '.[dev]' -e './devcluster[s3]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

# A second venv with megatron-core (Python >= 3.12) in which tests write real Megatron checkpoints.
MEGATRON_VENV := .venv-megatron
MEGATRON_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(shell command -v python3.12))
MEGATRON_STAMP := $(MEGATRON_VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

$(MEGATRON_STAMP): pyproject.toml
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@test -n "$(MEGATRON_PYTHON)" || { echo "megatron-venv needs python3.12 (set MEGATRON_PYTHON)"; exit 1; }
	@test -x $(MEGATRON_VENV)/bin/python || uv venv --quiet --python $(MEGATRON_PYTHON) $(MEGATRON_VENV)
	uv pip install --quiet --python $(MEGATRON_VENV)/bin/python -r pyproject.toml --extra megatron
	@rm -f $(MEGATRON_VENV)/.installed-* && touch $@

megatron-venv: $(MEGATRON_STAMP)

# Real etcd, kube-apiserver, controller-manager, scheduler, kwok and MinIO from Go modules.
# Cached under $(PITCREW_CACHE_DIR)/bin keyed by version: the first run takes 20-30 min.
tools:
	bash hack/build-tools.sh

# containerd, runc, CNI plugins, busybox-static, mmdebstrap, podman (apt-get, as root) for the real
# node (`python -m pitcrew_devcluster up --node real`); without them its tests are skipped.
node-deps:
	@bash hack/install-node-deps.sh || echo "make: real-node packages missing; tests/e2e/test_real_node.py will be skipped"

crds: venv
	$(PY) -m pitcrew.api.crdgen

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The demo's node is a real kubelet on containerd: node-deps installs its Debian packages (root).
demo: venv tools node-deps
	bash hack/demo.sh

# Stops the kubelet, the pods' containers, containerd, the control plane and MinIO; unmounts and
# removes the node's mounts, network namespaces and bridge. Images and S3 data are kept.
down:
	@if [ -x $(PY) ]; then $(PY) -m pitcrew_devcluster down; else echo "nothing to stop"; fi

test: venv megatron-venv tools node-deps lint
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

clean: down
	rm -rf $(VENV) $(MEGATRON_VENV) .pitcrew
