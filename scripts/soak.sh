#!/usr/bin/env bash
# `make soak`: the long runs that `make test` cannot afford, one step each, each printing its
# figures. Fuzzing: every property in crates/tether/tests/fuzz.rs with TETHER_FUZZ_CASES
# (20,000) cases from a fresh TETHER_FUZZ_SEED, printed so that a failure can be replayed.
# Crash sweeps: `tether agent` and `tether apply` killed with SIGKILL at TETHER_SWEEP_KILLS
# (10) instants in each of three syncs of TETHER_SWEEP_OBJECTS (500) objects, against the
# local control plane (started here, and stopped again unless it was already up).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "==> $*" >&2; }

testenv() { python3 testenv/testenv.py "$@"; }

step "installing missing dependencies"
scripts/install-deps.sh

export TETHER_FUZZ_CASES="${TETHER_FUZZ_CASES:-20000}"
export TETHER_FUZZ_SEED="${TETHER_FUZZ_SEED:-$(date +%s)}"
step "fuzz: $TETHER_FUZZ_CASES cases per property, TETHER_FUZZ_SEED=$TETHER_FUZZ_SEED"
fuzz_log=$(mktemp /tmp/tether-soak-fuzz.XXXXXX)
sweep_dir=$(mktemp -d /tmp/tether-soak-sweep.XXXXXX)
cleanup() { rm -rf "$fuzz_log" "$sweep_dir"; }
trap cleanup EXIT
started=$SECONDS
status=0
cargo nextest run --locked --test fuzz --no-fail-fast --success-output final \
  2>&1 | tee "$fuzz_log" || status=$?
step "fuzz figures ($((SECONDS - started)) s)"
grep -oE 'fuzz [a-z0-9_]+: [0-9]+ cases.*' "$fuzz_log" | sort -u
grep -oE 'fuzz [a-z0-9_]+: [0-9]+ cases' "$fuzz_log" | sort -u |
  awk '{ total += $3; n++ } END { printf "%d properties, %d cases in all\n", n, total }'

if testenv status >/dev/null 2>&1; then
  step "testenv is already up; leaving it running afterwards"
else
  step "testenv up"
  trap 'cleanup; testenv down --quiet' EXIT
fi
testenv up --profile full
TETHER_TEST_KUBECONFIG="$(testenv env | sed 's/^export KUBECONFIG=//')"
export TETHER_TEST_KUBECONFIG
export TETHER_SWEEP_OBJECTS="${TETHER_SWEEP_OBJECTS:-500}" TETHER_SWEEP_KILLS="${TETHER_SWEEP_KILLS:-10}"
export TETHER_SWEEP_REPORT_DIR="$sweep_dir"
step "crash sweeps: $TETHER_SWEEP_OBJECTS objects, $TETHER_SWEEP_KILLS kills in each of 3 syncs, agent and apply"
started=$SECONDS
cargo nextest run --locked --test crash_sweep --no-fail-fast || status=$?
step "crash sweep figures ($((SECONDS - started)) s)"
cat "$sweep_dir"/crash-sweep-*.txt 2>/dev/null || echo "no sweep report (the sweeps failed before the end)"

exit "$status"
