#!/usr/bin/env bash
# Benchmark: `tether agent` and its peer Flux (source-controller + kustomize-controller)
# managing fleets of folders of ConfigMaps from one Git repository, one after the other on
# the local testenv cluster: FLEETS (default "1000x10,100x100": 1,000 Applications of 10
# objects, then 100 of 100). Measures converge time, drift-to-corrected latency,
# push-notification-to-applied latency, API requests and the tool's CPU seconds per minute
# in steady state, and peak memory; then tether alone at GROWTH managed objects (default
# 1,000, 5,000 and 10,000 in 100 Applications) for converge time and memory, with a plot
# (bench/reports/agent-<date>-growth.svg); see bench/agent.py.
# Writes bench/reports/agent-<date>.md. Not part of `make test`: run `make bench-agent`.
# TETHER_BIN=… TETHER_VERSION=… REPORT_TAG=… measure another build (e.g. before and after a change);
# GROWTH= (empty) skips the growth runs.
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
  --tether "${TETHER_BIN:-target/release/tether}" --tether-version "${TETHER_VERSION:-$(git rev-parse --short HEAD)}" \
  --flux-source-controller "$source_controller" --flux-kustomize-controller "$kustomize_controller" \
  --flux-versions "$(versions FLUX_SOURCE_CONTROLLER_VERSION),$(versions FLUX_KUSTOMIZE_CONTROLLER_VERSION)" \
  --kubectl "$(testenv bin kubectl)" --git-server crates/tether/tests/support/git_http_server.py \
  --fleets "${FLEETS:-1000x10,100x100}" --growth "${GROWTH-1000,5000,10000}" \
  --edits "${EDITS:-100}" --flux-edits "${FLUX_EDITS:-20}" --steady-seconds "${STEADY_SECONDS:-120}" \
  --pushes "${PUSHES:-5}" --flux-pushes "${FLUX_PUSHES:-3}" \
  --tools "${TOOLS:-tether,flux}" \
  --report "bench/reports/agent-$(date -u +%Y-%m-%d)${REPORT_TAG:+-$REPORT_TAG}.md"
