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

# The pure tier first: a mistake there shows in seconds, before any cluster starts.
unit_tests='kind(lib) | binary(fuzz)'
step "cargo nextest run: the pure tests ($unit_tests)"
cargo nextest run --workspace --locked --profile ci -E "$unit_tests"

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
TETHER_TEST_TOXIPROXY_SERVER="$(testenv bin toxiproxy-server)"
# The commit status test runs against a real Gitea (about 5 minutes to build, once).
TETHER_TEST_GITEA="$(testenv bin gitea)"
# SOPS-encrypted files are made by the real sops with keys from age-keygen; OCI tests use
# the CNCF distribution registry.
TETHER_TEST_SOPS="$(testenv bin sops)"
TETHER_TEST_AGE_KEYGEN="$(testenv bin age-keygen)"
TETHER_TEST_REGISTRY="$(testenv bin registry)"
# flux push/pull artifact for the OCI interoperability test (about 1 min to build, once).
TETHER_TEST_FLUX="$(testenv bin flux)"
export TETHER_TEST_KUBECTL TETHER_TEST_HELM TETHER_TEST_KUSTOMIZE TETHER_TEST_TOXIPROXY_SERVER TETHER_TEST_GITEA
export TETHER_TEST_SOPS TETHER_TEST_AGE_KEYGEN TETHER_TEST_REGISTRY TETHER_TEST_FLUX

step "testenv selftest"
testenv selftest

# Every process a test starts (servers, agents, browsers, and whatever they start) inherits
# TETHER_TEST_RUN: after the run, none may be left.
run_id="$$-$(date +%s%N)"
leftovers() {
  grep -lsz -x "TETHER_TEST_RUN=$run_id" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 || true
}

step "cargo nextest run: the cluster tier"
status=0
TETHER_TEST_RUN="$run_id" cargo nextest run --workspace --locked --profile ci -E "not ($unit_tests)" || status=$?

left=$(leftovers)
if [ -n "$left" ]; then
  sleep 2  # a process killed at the very end may still be exiting
  left=$(leftovers)
fi
if [ -n "$left" ]; then
  echo "error: processes started by the tests are still running (killed now):" >&2
  for pid in $left; do
    printf '  %s %s\n' "$pid" "$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" >&2
    kill -KILL "$pid" 2>/dev/null || true
  done
  exit 1
fi
echo "==> no process started by the tests is left running" >&2
exit "$status"
