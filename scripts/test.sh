#!/usr/bin/env bash
# `make test`: installs what is missing, checks formatting and lints, brings the local
# control plane up (building it on first use), proves it, runs every test, and tears the
# control plane down again unless it was already running before.
set -euo pipefail
cd "$(dirname "$0")/.."
testenv() { python3 testenv/testenv.py "$@"; }
step() { echo "==> $*" >&2; }

step "installing missing dependencies"
scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

if testenv status >/dev/null 2>&1; then
  step "testenv is already up; leaving it running afterwards"
else
  step "testenv up (the first run builds Kubernetes from the Go module proxy)"
  trap 'testenv down --quiet' EXIT
fi
testenv up --profile full
TETHER_TEST_KUBECONFIG="$(testenv env | sed 's/^export KUBECONFIG=//')"
export TETHER_TEST_KUBECONFIG
TETHER_TEST_KUBECTL="$(testenv bin kubectl)"
TETHER_TEST_HELM="$(testenv bin helm)"
TETHER_TEST_KUSTOMIZE="$(testenv bin kustomize)"
export TETHER_TEST_KUBECTL TETHER_TEST_HELM TETHER_TEST_KUSTOMIZE

step "testenv selftest"
testenv selftest

step "cargo nextest run"
cargo nextest run --workspace --locked --profile ci
