#!/usr/bin/env bash
# Benchmark: `tether agent` and its peer Flux (source-controller + kustomize-controller)
# managing fleets of folders of ConfigMaps from one Git repository, one after the other on
# the local testenv cluster: FLEETS (default "100x10,1000x10,10000x10": 100, 1,000 and 10,000
# Applications of 10 objects). Measures, per tool and fleet: creating the resources, converge
# time and how many were never reconciled, drift-to-corrected latency, push-notification-to-
# applied latency, API requests and the tool's CPU seconds per minute in steady state, peak
# memory, Deployment Available to healthy; for tether also an agent restart (time until every
# Application is verified, requests, writes) and its JSON API and web UI with the whole fleet;
# then the API server's ceiling for the same writes (the bare client's applies: TOOLS has ceiling).
# A tool that has not converged a fleet within BUDGET seconds (default 1800; FLUX_BUDGET, default
# 900, for Flux past 1,000 resources) is reported as far as it got. Growth (converge and memory
# against managed objects, with a plot bench/reports/agent-<date>-growth.svg) comes from tether's
# fleets and from GROWTH runs (tether alone at these numbers of objects in 100 Applications,
# e.g. GROWTH=1000,5000,10000).
# Writes bench/reports/agent-<date>.md. Not part of `make test`: run `make bench-agent`
# (the default fleets take about two hours on 2 cores; e.g. FLEETS=1000x10 TOOLS=tether is minutes).
# TETHER_BIN=… TETHER_VERSION=… REPORT_TAG=… measure another build (e.g. before and after a change).
# The first run builds the Flux controllers from their Go modules (a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
testenv() { python3 testenv/testenv.py "$@"; }
cargo build --release --locked --quiet --bin tether --example ssa_ceiling
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
  --fleets "${FLEETS:-100x10,1000x10,10000x10}" --growth "${GROWTH:-}" --budget "${BUDGET:-1800}" --flux-budget "${FLUX_BUDGET:-900}" \
  --edits "${EDITS:-100}" --flux-edits "${FLUX_EDITS:-20}" --steady-seconds "${STEADY_SECONDS:-120}" \
  --pushes "${PUSHES:-5}" --flux-pushes "${FLUX_PUSHES:-3}" \
  --tools "${TOOLS:-tether,flux,ceiling}" --ceiling target/release/examples/ssa_ceiling \
  --report "bench/reports/agent-$(date -u +%Y-%m-%d)${REPORT_TAG:+-$REPORT_TAG}.md"
