#!/usr/bin/env bash
# Benchmark: the web UI with 1,000 Applications (APPS) on the local testenv cluster: page
# times and weights, and hand edit → diff shown; see bench/ui.py.
# Writes bench/reports/ui-<date>.md. Not part of `make test`: run `make bench-ui`.
set -euo pipefail
cd "$(dirname "$0")/.."
testenv() { python3 testenv/testenv.py "$@"; }
cargo build --release --locked --quiet --bin tether
testenv up
export KUBECONFIG; KUBECONFIG="$(testenv env | sed 's/^export KUBECONFIG=//')"
exec python3 bench/ui.py \
  --tether target/release/tether --tether-version "$(git rev-parse --short HEAD)" \
  --kubectl "$(testenv bin kubectl)" --apps "${APPS:-1000}" --runs "${RUNS:-30}" \
  --report "bench/reports/ui-$(date -u +%Y-%m-%d).md"
