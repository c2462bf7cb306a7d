#!/usr/bin/env bash
# Stops what `make demo` left running for its web UI: the agent and the git daemon it follows.
set -euo pipefail
demo_dir="${TETHER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}/demo"
for name in agent git-daemon; do
  pid_file="$demo_dir/$name.pid"
  if [ -f "$pid_file" ]; then
    pid=$(cat "$pid_file")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      echo "demo: stopped the $name ($pid)"
    fi
    rm -f "$pid_file"
  fi
done
