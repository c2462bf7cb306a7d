#!/usr/bin/env bash
# `make demo`: the bundled example through the whole push pipeline. The example is committed
# to a fresh Git repository served by `git daemon` on loopback; tether plans it, applies it
# (waiting for health) to the local cluster, and plans again to show nothing is left to do.
set -euo pipefail
cd "$(dirname "$0")/.."
testenv() { python3 testenv/testenv.py "$@"; }
step() { printf '\n==> %s\n' "$*"; }

scripts/install-deps.sh
cargo build --locked --quiet --bin tether
tether=$PWD/target/debug/tether
testenv up
export KUBECONFIG; KUBECONFIG="$(testenv env | sed 's/^export KUBECONFIG=//')"

work=$(mktemp -d /tmp/tether-demo.XXXXXX)
trap 'kill "${daemon_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/served/platform/apps"
cp -r examples/web-app "$work/served/platform/apps/"
git -C "$work/served/platform" init -q -b main
git -C "$work/served/platform" add -A
GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@tether.invalid GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@tether.invalid \
  git -C "$work/served/platform" commit -q -m "web-app: first release"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
git daemon --reuseaddr --export-all --listen=127.0.0.1 --port="$port" --base-path="$work/served" "$work/served" 2>/dev/null &
daemon_pid=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
repo=git://127.0.0.1:$port/platform
args=(--repo "$repo" --ref main --path apps/web-app -n web-app --git-cache "$work/cache")

step "tether version"
"$tether" version
step "tether plan ${args[*]}"
"$tether" plan "${args[@]}" --detailed-exitcode || [ $? -eq 2 ]
step "tether apply --wait ${args[*]}"
"$tether" apply "${args[@]}" --wait --timeout 120s
step "tether plan again: nothing left to do (exit code 0)"
"$tether" plan "${args[@]}" --detailed-exitcode

step "tether agent with the web UI, following the same repository"
# The agent and a git daemon keep running after this script (make demo-stop ends them).
demo_dir="${TETHER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}/demo"
scripts/demo-stop.sh
mkdir -p "$demo_dir"
rm -rf "$demo_dir/served"
cp -r "$work/served" "$demo_dir/served"
git_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
setsid git daemon --reuseaddr --export-all --listen=127.0.0.1 --port="$git_port" --base-path="$demo_dir/served" "$demo_dir/served" \
  >/dev/null 2>&1 < /dev/null &
echo $! > "$demo_dir/git-daemon.pid"
ui_port=$(python3 -c 'import socket; s=socket.socket()
try: s.bind(("127.0.0.1", 8484)); print(8484)
except OSError: s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
(umask 077; printf %s "$token" > "$demo_dir/ui-token")
"$tether" install --crd-only
kubectl=$(testenv bin kubectl)
"$kubectl" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: tether-system}
---
apiVersion: tether.dev/v1alpha1
kind: Application
metadata: {name: web-app, namespace: tether-system}
spec:
  source: {repoURL: "git://127.0.0.1:$git_port/platform", ref: {branch: main}, path: apps/web-app}
  destination: {namespace: web-app}
  syncPolicy: {interval: 1m}
  healthCheckExprs:
    - apiVersion: example.tether.dev/v1
      kind: Greeting
      failed: "has(spec.language) && !(spec.language in ['en', 'de', 'fr'])"
      current: "size(spec.message) > 0"
  ignoreDifferences:
    - {group: apps, kind: Deployment, managedFieldsManagers: [kube-controller-manager]}
YAML
setsid "$tether" agent -n tether-system --listen "127.0.0.1:$ui_port" --api-token-file "$demo_dir/ui-token" \
  > "$demo_dir/agent.log" 2>&1 < /dev/null &
echo $! > "$demo_dir/agent.pid"
python3 - "$ui_port" "$token" <<'PY'
import json, sys, time, urllib.request
port, token = sys.argv[1], sys.argv[2]
deadline = time.time() + 90
while True:
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/applications",
                                         headers={"Authorization": f"Bearer {token}"})
        apps = json.load(urllib.request.urlopen(request, timeout=5))["applications"]
        if any(a["name"] == "web-app" and a["sync"] == "Synced" for a in apps):
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("demo: the agent did not report web-app Synced within 90 s; see its log")
    time.sleep(0.5)
PY
printf '\nThe web UI: http://127.0.0.1:%s/ui/  (log in with the token %s; it is also in %s/ui-token)\n' "$ui_port" "$token" "$demo_dir"
printf 'The agent follows the example repository (served from %s/served); its log: %s/agent.log.\n' "$demo_dir" "$demo_dir"
printf 'The cluster keeps running: eval $(make -s cluster-env), then kubectl get all -n web-app.\n'
printf 'make demo-stop stops the agent and its git daemon; make cluster-down stops them and the cluster.\n'

