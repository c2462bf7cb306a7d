#!/usr/bin/env bash
# Benchmark: `tether render` of a repository with N generated manifests (default 5,000),
# served by a real `git daemon` on loopback, from a cold and a warm cache, with peak memory.
# Peer, measured in the same run on the same repository: `git clone --depth 1` (cold) and
# `git fetch --depth 1` in that clone (warm), i.e. the fetch alone, without parsing.
# Writes bench/reports/render-<date>.md. Not part of `make test`: run `make bench-render`.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5000}
RUNS=${RUNS:-3}
work=$(mktemp -d /tmp/tether-bench-render.XXXXXX)
trap 'kill "${daemon_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --locked --quiet --bin tether
tether=$PWD/target/release/tether

echo "generating $N manifests ..." >&2
repo=$work/served/bench
mkdir -p "$repo"
git -C "$repo" init -q -b main
python3 - "$repo" "$N" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    team = f"team-{i % 100:03d}"
    folder = os.path.join(root, "apps", team)
    os.makedirs(folder, exist_ok=True)
    kind = i % 3
    name = f"svc-{i:05d}"
    if kind == 0:
        text = f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {team}
  labels: {{app: {name}, team: {team}}}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: app
        image: registry.example.com/{name}:1.0.{i}
        ports: [{{containerPort: 8080}}]
        resources:
          requests: {{cpu: 10m, memory: 32Mi}}
"""
    elif kind == 1:
        text = f"""apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {team}
spec:
  selector: {{app: {name}}}
  ports:
  - port: 80
    targetPort: 8080
"""
    else:
        text = f"""apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
  namespace: {team}
data:
  mode: 0644
  settings.yaml: |
    level: info
    index: {i}
"""
    with open(os.path.join(folder, f"{name}.yaml"), "w") as f:
        f.write(text)
PY
GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@b GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@b \
  bash -c "git -C '$repo' add -A && git -C '$repo' commit -q -m manifests"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
git daemon --reuseaddr --export-all --listen=127.0.0.1 --port="$port" --base-path="$work/served" "$work/served" 2>/dev/null &
daemon_pid=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
url=git://127.0.0.1:$port/bench

# measure LABEL CMD...: prints "seconds max_rss_kib"
measure() {
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/time"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A wall rss
for run in $(seq "$RUNS"); do
  rm -rf "$work/cache" "$work/clone"
  read -r t m < <(measure "$tether" render --repo "$url" --ref main --path apps --git-cache "$work/cache" -o json)
  wall[tc]+="$t "; rss[tc]+="$m "
  objects=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["items"]))' "$work/out")
  read -r t m < <(measure "$tether" render --repo "$url" --ref main --path apps --git-cache "$work/cache" -o json)
  wall[tw]+="$t "; rss[tw]+="$m "
  read -r t m < <(measure git clone -q --depth 1 --single-branch --branch main "$url" "$work/clone")
  wall[gc]+="$t "; rss[gc]+="$m "
  read -r t m < <(measure git -C "$work/clone" fetch -q --depth 1 origin main)
  wall[gw]+="$t "; rss[gw]+="$m "
done
[ "$objects" = "$N" ] || { echo "rendered $objects objects, expected $N" >&2; exit 1; }

mkdir -p bench/reports
report=bench/reports/render-$(date -u +%Y-%m-%d).md
row() { printf '| %s | %s | %s | %s |\n' "$1" "$(echo ${wall[$2]} | tr ' ' '\n' | median)" "$(( $(echo ${rss[$2]} | tr ' ' '\n' | median) / 1024 ))" "${wall[$2]}"; }
{
  echo "# render benchmark: $N manifests over git://, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB;"
  echo "tether $(git rev-parse --short HEAD) (release build), $(git --version), median of $RUNS runs."
  echo "Repository: $N manifests (Deployments, Services, ConfigMaps) in 100 folders, one commit, served by git daemon on loopback."
  echo
  echo "| what | wall s (median) | peak RSS MiB (median) | all runs, s |"
  echo "|---|---|---|---|"
  row "tether render, cold cache (fetch + parse + print JSON)" tc
  row "tether render, warm cache (same commit)" tw
  row "peer: git clone --depth 1 (fetch + checkout only)" gc
  row "peer: git fetch --depth 1, up to date" gw
} > "$report"
cat "$report"
