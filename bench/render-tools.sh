#!/usr/bin/env bash
# Benchmark: render a repository of 50 Kustomize overlays and 20 Helm charts with
# `tether render` (one command per application, as CI or the agent would), from a cold and
# from a warm cache, counting renderer process starts through counting wrappers. Peer in
# the same run: the same 70 renders with `kustomize build` / `helm template` run directly on
# a checkout (what a renderer without a cache does). Writes bench/reports/render-tools-<date>.md.
# Not part of `make test`: run `make bench-render-tools`.
set -euo pipefail
cd "$(dirname "$0")/.."
OVERLAYS=${OVERLAYS:-50}
CHARTS=${CHARTS:-20}
cargo build --release --locked --quiet --bin tether
tether=$PWD/target/release/tether
kustomize=$(python3 testenv/testenv.py bin kustomize)
helm=$(python3 testenv/testenv.py bin helm)
work=$(mktemp -d /tmp/tether-bench-tools.XXXXXX)
trap 'rm -rf "$work"' EXIT

repo=$work/repo
python3 - "$repo" "$OVERLAYS" "$CHARTS" <<'PY'
import os, sys
root, overlays, charts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def write(path, text):
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    open(full, "w").write(text)
write("base/kustomization.yaml", "resources: [deploy.yaml, svc.yaml]\nconfigMapGenerator:\n- name: settings\n  literals: [LEVEL=info]\n")
write("base/deploy.yaml", """apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx:1.27, envFrom: [{configMapRef: {name: settings}}]}]
""")
write("base/svc.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n")
for i in range(overlays):
    write(f"overlays/o{i:02d}/kustomization.yaml", f"resources: [../../base]\nnamePrefix: o{i:02d}-\npatches:\n- path: patch.yaml\n")
    write(f"overlays/o{i:02d}/patch.yaml", f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {i % 5 + 1}\n")
for i in range(charts):
    write(f"charts/c{i:02d}/Chart.yaml", f"apiVersion: v2\nname: c{i:02d}\nversion: 1.0.{i}\n")
    write(f"charts/c{i:02d}/values.yaml", "replicas: 2\n")
    write(f"charts/c{i:02d}/templates/deploy.yaml", """apiVersion: apps/v1
kind: Deployment
metadata: {name: {{ .Release.Name }}}
spec:
  replicas: {{ .Values.replicas }}
  selector: {matchLabels: {app: {{ .Release.Name }}}}
  template:
    metadata: {labels: {app: {{ .Release.Name }}}}
    spec:
      containers: [{name: app, image: "nginx:1.27"}]
""")
    write(f"charts/c{i:02d}/templates/svc.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: {{ .Release.Name }}}\nspec:\n  ports: [{port: 80}]\n")
PY
git -C "$repo" init -q -b main && git -C "$repo" add -A
GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@b GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@b git -C "$repo" commit -q -m apps

counter=$work/starts
for tool in kustomize helm; do
  real=$([ "$tool" = kustomize ] && echo "$kustomize" || echo "$helm")
  printf '#!/bin/sh\necho %s >> %s\nexec %s "$@"\n' "$tool" "$counter" "$real" > "$work/$tool"
  chmod +x "$work/$tool"
done
paths=()
for i in $(seq -f '%02g' 0 $((OVERLAYS - 1))); do paths+=("overlays/o$i"); done
for i in $(seq -f '%02g' 0 $((CHARTS - 1))); do paths+=("charts/c$i"); done

render_all() {
  for path in "${paths[@]}"; do
    TETHER_CACHE_DIR=$work/cache "$tether" render --repo "file://$repo" --ref main --path "$path" \
      --kustomize-bin "$work/kustomize" --helm-bin "$work/helm" -o json > /dev/null
  done
}
peer_all() {
  for path in "${paths[@]}"; do
    case $path in
      overlays/*) "$kustomize" build "$repo/$path" > /dev/null ;;
      charts/*) "$helm" template "$(basename "$path")" "$repo/$path" > /dev/null ;;
    esac
  done
}
seconds() { local start=$EPOCHREALTIME; "$@"; python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$start" "$EPOCHREALTIME"; }

: > "$counter"
cold=$(seconds render_all); cold_starts=$(wc -l < "$counter")
: > "$counter"
warm=$(seconds render_all); warm_starts=$(wc -l < "$counter")
peer=$(seconds peer_all)

mkdir -p bench/reports
report=bench/reports/render-tools-$(date -u +%Y-%m-%d).md
{
  echo "# render benchmark: $OVERLAYS Kustomize overlays + $CHARTS Helm charts, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB;"
  echo "tether $(git rev-parse --short HEAD) (release build), kustomize $("$kustomize" version), helm $("$helm" version --short)."
  echo "One \`tether render --repo file://… --path <app>\` process per application ($((OVERLAYS + CHARTS)) in all), run one after another."
  echo
  echo "| what | wall s, all $((OVERLAYS + CHARTS)) apps | renderer process starts |"
  echo "|---|---|---|"
  echo "| tether render, cold cache (Git fetch + snapshot + kustomize/helm) | $cold | $cold_starts |"
  echo "| tether render, same revision again (render cache) | $warm | $warm_starts |"
  echo "| peer: kustomize build / helm template run directly on a checkout | $peer | $((OVERLAYS + CHARTS)) |"
} > "$report"
cat "$report"
