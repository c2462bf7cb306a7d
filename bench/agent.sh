#!/usr/bin/env bash
# Benchmark: `tether agent` and its peer Flux (source-controller + kustomize-controller)
# managing APPS folders of OBJECTS ConfigMaps each (default 100 × 100 = 10,000 objects) from
# one Git repository, one after the other on the local testenv cluster. Measures converge
# time, drift-to-corrected latency, push-notification-to-applied latency, per-object API
# requests per minute in steady state and peak memory; see bench/agent.py.
# Writes bench/reports/agent-<date>.md. Not part of `make test`: run `make bench-agent`.
# The first run builds the Flux controllers from their Go modules (a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
testenv() { python3 testenv/testenv.py "$@"; }
cargo build --release --locked --quiet --bin tether
testenv up
source_controller=$(testenv bin flux-source-controller)
kustomize_controller=$(testenv bin flux-kustomize-controller)
versions() { sed -n "s/^$1=//p" testenv/versions.env; }
export KUBECONFIG; KUBECONFIG="$(testenv env | sed 's/^export KUBECONFIG=//')"
exec python3 bench/agent.py \
  --tether target/release/tether --tether-version "$(git rev-parse --short HEAD)" \
  --flux-source-controller "$source_controller" --flux-kustomize-controller "$kustomize_controller" \
  --flux-versions "$(versions FLUX_SOURCE_CONTROLLER_VERSION),$(versions FLUX_KUSTOMIZE_CONTROLLER_VERSION)" \
  --kubectl "$(testenv bin kubectl)" --git-server crates/tether/tests/support/git_http_server.py \
  --apps "${APPS:-100}" --objects "${OBJECTS:-100}" --edits "${EDITS:-100}" --flux-edits "${FLUX_EDITS:-20}" --steady-seconds "${STEADY_SECONDS:-120}" \
  --tools "${TOOLS:-tether,flux}" \
  --report "bench/reports/agent-$(date -u +%Y-%m-%d).md"
