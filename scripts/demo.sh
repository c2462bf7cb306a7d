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
printf '\nThe cluster keeps running: eval $(make -s cluster-env), then kubectl get all -n web-app; make cluster-down stops it.\n'
