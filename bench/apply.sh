#!/usr/bin/env bash
# Benchmark: apply N Deployments + N Services (default 1,000 each) to the local testenv
# cluster with tether and, side by side in the same run, with
# `kubectl apply --server-side --applyset=... --prune` (the built kubectl, same version as
# the server); then a second, no-op tether apply, counting its writes.
# Wall time and peak RSS from /usr/bin/time. Writes bench/reports/apply-<date>.md.
# Not part of `make test`: run `make bench-apply`.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
testenv() { python3 testenv/testenv.py "$@"; }
cargo build --release --locked --quiet --bin tether
tether=$PWD/target/release/tether
testenv up
export KUBECONFIG; KUBECONFIG="$(testenv env | sed 's/^export KUBECONFIG=//')"
kubectl=$(testenv bin kubectl)
work=$(mktemp -d /tmp/tether-bench-apply.XXXXXX)
trap 'rm -rf "$work"; "$kubectl" delete ns bench-tether bench-kubectl --ignore-not-found --wait=false >/dev/null 2>&1 || true' EXIT

echo "generating $N Deployments and $N Services ..." >&2
python3 - "$work/manifests" "$N" <<'PY'
import os, sys
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out)
for i in range(n):
    name = f"app-{i:04d}"
    with open(os.path.join(out, f"{name}.yaml"), "w") as f:
        f.write(f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  replicas: 0
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: app
        image: registry.example.com/{name}:1.0.0
        ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports:
  - port: 80
    targetPort: 8080
""")
PY
for ns in bench-tether bench-kubectl; do
  "$kubectl" delete ns "$ns" --ignore-not-found --wait=true >/dev/null
  "$kubectl" create ns "$ns" >/dev/null
done

measure() { # prints "seconds max_rss_kib"
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>"$work/err" || { tail -20 "$work/err" >&2; exit 1; }
  cat "$work/time"
}
read -r tether_s tether_kb < <(measure "$tether" apply --path "$work/manifests" --app bench -n bench-tether -o json)
tether_writes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["writes"])' "$work/out")
read -r kubectl_s kubectl_kb < <(measure env KUBECTL_APPLYSET=true "$kubectl" apply --server-side --prune \
  --applyset=secret/bench -n bench-kubectl -f "$work/manifests")
read -r noop_s noop_kb < <(measure "$tether" apply --path "$work/manifests" --app bench -n bench-tether -o json)
noop_writes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["writes"])' "$work/out")
read -r kubectl_noop_s kubectl_noop_kb < <(measure env KUBECTL_APPLYSET=true "$kubectl" apply --server-side --prune \
  --applyset=secret/bench -n bench-kubectl -f "$work/manifests")

mkdir -p bench/reports
report=bench/reports/apply-$(date -u +%Y-%m-%d).md
{
  echo "# apply benchmark: $N Deployments + $N Services, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB;"
  echo "cluster: testenv (kube-apiserver $("$kubectl" version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])'), etcd, controllers, kwok), on the same machine;"
  echo "tether $(git rev-parse --short HEAD) (release build, --concurrency 16); peer: kubectl $("$kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'). One run each, same manifests, separate namespaces."
  echo
  echo "| what | wall s | peak RSS MiB | writes |"
  echo "|---|---|---|---|"
  echo "| tether apply (cold: creates $((2 * N)) objects) | $tether_s | $((tether_kb / 1024)) | $tether_writes |"
  echo "| kubectl apply --server-side --applyset --prune (cold) | $kubectl_s | $((kubectl_kb / 1024)) | n/a |"
  echo "| tether apply, second time (no-op) | $noop_s | $((noop_kb / 1024)) | $noop_writes |"
  echo "| kubectl apply, second time | $kubectl_noop_s | $((kubectl_noop_kb / 1024)) | n/a |"
  echo
  python3 -c "import sys; print(f'Cold apply: kubectl / tether = {float(sys.argv[2]) / float(sys.argv[1]):.1f}x')" "$tether_s" "$kubectl_s"
} > "$report"
cat "$report"
