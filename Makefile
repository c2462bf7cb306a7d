# tether's entry points. `make demo` and `make test` do all set-up on a fresh machine.
# Tool versions live in testenv/versions.env; build caches live under ~/.cache/tether
# (Kubernetes binaries) and Go's and Cargo's own per-user caches, never in this repository.

SHELL := /bin/bash
TESTENV := python3 testenv/testenv.py
PROFILE ?= full

.PHONY: help build demo test lint deps bench-render cluster-build cluster-up cluster-down cluster-env cluster-status cluster-logs cluster-selftest

help:
	@echo "make demo            build tether, start the local cluster, show tether reaching it"
	@echo "make test            fmt, clippy and every test against a fresh local cluster"
	@echo "make cluster-up      start the local control plane (PROFILE=minimal: etcd + API server only)"
	@echo "make cluster-down    stop it and remove its data"
	@echo "eval \$$(make -s cluster-env)   point kubectl and tether at it"
	@echo "make cluster-status | cluster-logs | cluster-selftest | cluster-build"
	@echo "make bench-render    render 5,000 manifests from git://, cold and warm (writes bench/reports/)"

deps:
	@scripts/install-deps.sh

build: deps
	cargo build --locked --bin tether

test:
	@scripts/test.sh

lint: deps
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

demo: build cluster-up
	@echo
	@echo "==> tether render of the bundled example, from this repository's committed HEAD"
	./target/debug/tether render --repo . --path examples/web-app --show-origin
	@echo
	@echo "==> tether version, against the local cluster"
	@$(TESTENV) env >/dev/null
	./target/debug/tether version --kubeconfig "$$($(TESTENV) env | sed 's/^export KUBECONFIG=//')"
	@echo
	@echo "The cluster keeps running: 'eval \$$(make -s cluster-env)' then kubectl or ./target/debug/tether;"
	@echo "'make cluster-down' stops it."

bench-render: deps
	@bench/render.sh

cluster-build:
	@$(TESTENV) build

cluster-up:
	@$(TESTENV) up --profile $(PROFILE)

cluster-down:
	@$(TESTENV) down

cluster-env:
	@$(TESTENV) env

cluster-status:
	@$(TESTENV) status

cluster-logs:
	@$(TESTENV) logs

cluster-selftest:
	@$(TESTENV) selftest
