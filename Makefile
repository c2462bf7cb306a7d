# tether's entry points. `make demo` and `make test` do all set-up on a fresh machine.
# Tool versions live in testenv/versions.env; build caches live under ~/.cache/tether
# (Kubernetes binaries) and Go's and Cargo's own per-user caches, never in this repository.

SHELL := /bin/bash
TESTENV := python3 testenv/testenv.py
PROFILE ?= full

.PHONY: help build image demo demo-stop test test-unit soak lint deps bench-render bench-render-tools bench-apply bench-agent bench-ui cluster-build cluster-up cluster-down cluster-env cluster-status cluster-logs cluster-selftest

help:
	@echo "make demo            build tether, start the local cluster, plan + apply the example from Git, open the web UI"
	@echo "make demo-stop       stop the agent and git daemon the demo left for its web UI"
	@echo "make test            fmt, clippy, the pure tests, then every test against a fresh local cluster"
	@echo "make test-unit       the pure tests alone (no cluster, no network): seconds"
	@echo "make soak            the long runs: 20,000 cases of every fuzz property, crash sweeps of 30 kills (agent, apply)"
	@echo "make cluster-up      start the local control plane (PROFILE=minimal: etcd + API server only)"
	@echo "make cluster-down    stop it and remove its data"
	@echo "eval \$$(make -s cluster-env)   point kubectl and tether at it"
	@echo "make cluster-status | cluster-logs | cluster-selftest | cluster-build"
	@echo "make bench-render    render 5,000 manifests from git://, cold and warm (writes bench/reports/)"
	@echo "make image           the agent's OCI image in target/image (no container engine); prints tether@sha256:…"
	@echo "make bench-apply     apply 1,000 Deployments + 1,000 Services, tether beside kubectl"
	@echo "make bench-render-tools  render 50 overlays + 20 charts, cold and cached"
	@echo "make bench-agent     tether agent and Flux, 100, 1,000 and 10,000 Applications × 10 objects (hours)"
	@echo "make bench-ui        the web UI with 1,000 Applications: page times and weights, edit → diff"

deps:
	@scripts/install-deps.sh

build: deps
	cargo build --locked --bin tether

# The agent's OCI image (target/image, an OCI layout), built without a container engine;
# prints the reference to give `tether install --image`.
image: deps
	cargo build --release --locked --quiet --bin tether
	@python3 scripts/image.py --tether target/release/tether \
	  --helm "$$(python3 testenv/testenv.py bin helm)" \
	  --kustomize "$$(python3 testenv/testenv.py bin kustomize)" \
	  --out target/image --tag "$$(git describe --always --dirty)"

test:
	@scripts/test.sh

# Every pure test: the library's unit tests and the fuzzed properties. No cluster, no
# network, no renderer programs.
test-unit: deps
	cargo nextest run --workspace --locked -E 'kind(lib) | binary(fuzz)'

soak:
	@scripts/soak.sh

lint: deps
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

demo:
	@scripts/demo.sh

demo-stop:
	@scripts/demo-stop.sh

bench-render: deps
	@bench/render.sh

bench-apply: deps
	@bench/apply.sh

bench-render-tools: deps
	@bench/render-tools.sh

bench-agent: deps
	@bench/agent.sh

bench-ui: deps
	@bench/ui.sh

cluster-build:
	@$(TESTENV) build

cluster-up:
	@$(TESTENV) up --profile $(PROFILE)

cluster-down:
	@scripts/demo-stop.sh
	@$(TESTENV) down

cluster-env:
	@$(TESTENV) env

cluster-status:
	@$(TESTENV) status

cluster-logs:
	@$(TESTENV) logs

cluster-selftest:
	@$(TESTENV) selftest
