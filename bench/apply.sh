#!/usr/bin/env bash
# Benchmark: apply N Deployments + N Services (default 1,000 each) to the local testenv
# cluster with tether and, side by side in the same run, with
# `kubectl apply --server-side --applyset=... --prune` (the built kubectl, same version as
# the server): a cold apply, then a second, no-op one. At each round-trip latency in
# LATENCIES (default "0 2 20" ms) between the clients and the API server: 0 is direct, the
# others go through Toxiproxy (built by testenv) with half the latency on each direction,
# and the round trip it adds is measured. For each run: wall time and peak RSS
# (/usr/bin/time), the writes and requests the API server counted (apiserver_request_total,
# dry-runs apart), and the CPU seconds the API server and etcd used, so a reader sees when
# the server, not the client, is the bound. The ceiling beside them: the example
# `ssa_ceiling` (kube-rs) does nothing but the PATCHes, at each concurrency in
# CEILING_CONCURRENCY, over HTTP/1.1 (as tether and kube-rs) and over HTTP/2; the best of
# these is what the server allows a client. tether's cold
# apply also reports its own steps (planning: the dry-runs of the pre-flight; applying), from
# its progress lines. Writes bench/reports/apply-<date>.md (REPORT_TAG=… keeps an earlier
# report of the same day).
# Then objects of many fields (BIG_FIELDS, default "1000 5000 30000" keys of one ConfigMap,
# direct connection): the size of tether's record of applied fields, and plan, apply and
# no-op apply times beside kubectl's apply of the same object. BIG_ONLY=1 runs only that.
# Not part of `make test`: run `make bench-apply` (N=…, LATENCIES=… to change the size;
# TETHER_BIN=… TETHER_VERSION=… REPORT_TAG=… measure another build, e.g. before and after a change).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
LATENCIES=${LATENCIES:-0 2 20}
testenv() { python3 testenv/testenv.py "$@"; }
CEILING_CONCURRENCY=${CEILING_CONCURRENCY:-8 32 128}
BIG_FIELDS=${BIG_FIELDS:-1000 5000 30000}
BIG_ONLY=${BIG_ONLY:-}
cargo build --release --locked --quiet --bin tether --example ssa_ceiling
tether=${TETHER_BIN:-$PWD/target/release/tether}
tether_version=${TETHER_VERSION:-$(git rev-parse --short HEAD)}
ceiling=$PWD/target/release/examples/ssa_ceiling
testenv up
export KUBECONFIG; KUBECONFIG="$(testenv env | sed 's/^export KUBECONFIG=//')"
kubectl=$(testenv bin kubectl)
toxiproxy=$(testenv bin toxiproxy-server)
state=$(dirname "$KUBECONFIG")/state.json
work=$(mktemp -d /tmp/tether-bench-apply.XXXXXX)
proxy_pid=
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

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

# Toxiproxy in front of the API server (its certificate names 127.0.0.1, so TLS verifies).
api_port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ports"]["apiserver"])' "$state")
toxi_api=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$toxiproxy" -host 127.0.0.1 -port "$toxi_api" >"$work/toxiproxy.log" 2>&1 &
proxy_pid=$!
toxi() { # METHOD PATH [JSON]
  python3 - "$toxi_api" "$@" <<'PY'
import json, sys, time, urllib.request
port, method, path = sys.argv[1], sys.argv[2], sys.argv[3]
body = sys.argv[4].encode() if len(sys.argv) > 4 else None
for attempt in range(50):
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()
        break
    except (ConnectionRefusedError, urllib.error.URLError) as err:
        if getattr(err, "code", None):
            raise
        time.sleep(0.1)
PY
}
proxy_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
toxi POST /proxies "{\"name\":\"api\",\"listen\":\"127.0.0.1:$proxy_port\",\"upstream\":\"127.0.0.1:$api_port\"}"
sed "s#https://127.0.0.1:$api_port#https://127.0.0.1:$proxy_port#" "$KUBECONFIG" > "$work/kubeconfig-proxied"

# The round trip a client sees: the median of 30 GET /version on one TLS connection.
round_trip() { # KUBECONFIG
  python3 - "$1" "$work" <<'PY'
import base64, http.client, json, ssl, statistics, sys, time, urllib.parse
config = json.load(open(sys.argv[1]))
work = sys.argv[2]
cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
for name, key in [("ca", cluster["certificate-authority-data"]), ("crt", user["client-certificate-data"]),
                  ("key", user["client-key-data"])]:
    open(f"{work}/rtt.{name}", "wb").write(base64.b64decode(key))
context = ssl.create_default_context(cafile=f"{work}/rtt.ca")
context.load_cert_chain(f"{work}/rtt.crt", f"{work}/rtt.key")
url = urllib.parse.urlparse(cluster["server"])
conn = http.client.HTTPSConnection(url.hostname, url.port, context=context)
times = []
for _ in range(31):
    start = time.perf_counter()
    conn.request("GET", "/version")
    conn.getresponse().read()
    times.append(time.perf_counter() - start)
print(f"{statistics.median(times[1:]) * 1000:.1f}")
PY
}

cpu_seconds() { # the API server's and etcd's user+system CPU seconds so far
  python3 - "$state" <<'PY'
import json, os, sys
state = json.load(open(sys.argv[1]))
tick = os.sysconf("SC_CLK_TCK")
total = []
for name in ["kube-apiserver", "etcd"]:
    fields = open(f"/proc/{state['processes'][name]['pid']}/stat").read().rsplit(")", 1)[1].split()
    total.append((int(fields[11]) + int(fields[12])) / tick)
print(" ".join(f"{t:.2f}" for t in total))
PY
}

requests() { # writes (not dry-run) and all requests the API server counted so far for the
  # bench's own resources (Deployments, Services, Secrets: the ApplySet parent), not their
  # subresources: controllers write ReplicaSets and status meanwhile, and those are not the
  # client's.
  "$kubectl" get --raw /metrics | python3 -c '
import re, sys
writes = total = 0
for line in sys.stdin:
    if not line.startswith("apiserver_request_total{"):
        continue
    labels, value = line.rsplit(" ", 1)
    label = lambda name: (re.search(name + r"=\"([^\"]*)\"", labels) or [None, ""])[1]
    if label("resource") not in ("deployments", "services", "secrets") or label("subresource"):
        continue
    count = float(value)
    total += count
    if label("verb") in ("POST", "PUT", "PATCH", "APPLY", "DELETE") and not label("dry_run"):
        writes += count
print(int(writes), int(total))'
}

measure() { # NAME COMMAND...: appends one row of figures to $work/rows
  local name=$1; shift
  read -r api_before etcd_before < <(cpu_seconds)
  read -r writes_before total_before < <(requests)
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>"$work/err" || { tail -20 "$work/err" >&2; exit 1; }
  read -r api_after etcd_after < <(cpu_seconds)
  read -r writes_after total_after < <(requests)
  read -r seconds rss_kb < "$work/time"
  echo "$name|$seconds|$((rss_kb / 1024))|$((writes_after - writes_before))|$((total_after - total_before))|$(python3 -c "print(f'{$api_after - $api_before:.1f}')")|$(python3 -c "print(f'{$etcd_after - $etcd_before:.1f}')")" >> "$work/rows"
  echo "  $name: ${seconds} s" >&2
}

: > "$work/rows"
: > "$work/phases"
declare -A rtt
[ -n "$BIG_ONLY" ] && LATENCIES=
for latency in $LATENCIES; do
  toxi DELETE /proxies/api/toxics/up >/dev/null 2>&1 || true
  toxi DELETE /proxies/api/toxics/down >/dev/null 2>&1 || true
  if [ "$latency" = 0 ]; then
    config=$KUBECONFIG
  else
    config=$work/kubeconfig-proxied
    half=$((latency / 2))
    for stream in up down; do
      toxi POST /proxies/api/toxics "{\"name\":\"$stream\",\"type\":\"latency\",\"stream\":\"${stream}stream\",\"attributes\":{\"latency\":$half}}"
    done
  fi
  rtt[$latency]=$(round_trip "$config")
  echo "latency $latency ms: round trip to the API server ${rtt[$latency]} ms" >&2
  for ns in "bench-tether-$latency" "bench-kubectl-$latency"; do
    "$kubectl" delete ns "$ns" --ignore-not-found --wait=true >/dev/null
    "$kubectl" create ns "$ns" >/dev/null
  done
  measure "$latency|tether apply (cold)" "$tether" --kubeconfig "$config" apply --path "$work/manifests" --app bench -n "bench-tether-$latency" -o json
  # Where tether's time went: its own progress lines (each step's end and time).
  grep -E '^tether: [a-z ]+: done' "$work/err" | sed "s/^tether: /$latency|/" >> "$work/phases" || true
  measure "$latency|kubectl apply (cold)" env KUBECTL_APPLYSET=true "$kubectl" --kubeconfig "$config" apply --server-side --prune \
    --applyset=secret/bench -n "bench-kubectl-$latency" -f "$work/manifests"
  measure "$latency|tether apply (no-op)" "$tether" --kubeconfig "$config" apply --path "$work/manifests" --app bench -n "bench-tether-$latency" -o json
  measure "$latency|kubectl apply (no-op)" env KUBECTL_APPLYSET=true "$kubectl" --kubeconfig "$config" apply --server-side --prune \
    --applyset=secret/bench -n "bench-kubectl-$latency" -f "$work/manifests"
  for ns in "bench-tether-$latency" "bench-kubectl-$latency"; do
    "$kubectl" delete ns "$ns" --wait=true >/dev/null
  done
  # The ceiling: nothing but the server-side apply PATCHes, at each concurrency, over
  # HTTP/1.1 (kube-rs's, as tether) and over one HTTP/2 connection.
  for c in $CEILING_CONCURRENCY; do
    for h2 in 0 1; do
      ns=bench-ceiling-$latency-$c-$h2
      "$kubectl" delete ns "$ns" --ignore-not-found --wait=true >/dev/null
      "$kubectl" create ns "$ns" >/dev/null
      what="ceiling, $c at once (cold)"
      [ "$h2" = 1 ] && what="ceiling, $c at once over HTTP/2 (cold)"
      measure "$latency|$what" env KUBECONFIG="$config" SSA_HTTP2=$h2 "$ceiling" "$work/manifests" "$ns" "$c"
      "$kubectl" delete ns "$ns" --wait=true >/dev/null
    done
  done
done

# Objects of many fields: one ConfigMap of F keys each, direct connection.
: > "$work/big"
for fields in $BIG_FIELDS; do
  dir=$work/big-$fields
  mkdir -p "$dir"
  python3 - "$dir/big.yaml" "$fields" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    f.write("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n")
    for i in range(n):
        f.write(f"  key{i}: value-{i}\n")
PY
  for ns in "bench-big-tether-$fields" "bench-big-kubectl-$fields"; do
    "$kubectl" delete ns "$ns" --ignore-not-found --wait=true >/dev/null
    "$kubectl" create ns "$ns" >/dev/null
  done
  measure "big|tether plan (cold)" "$tether" --kubeconfig "$KUBECONFIG" plan --path "$dir" --app big -n "bench-big-tether-$fields"
  measure "big|tether apply (cold)" "$tether" --kubeconfig "$KUBECONFIG" apply --path "$dir" --app big -n "bench-big-tether-$fields" -o json
  measure "big|tether plan (no-op)" "$tether" --kubeconfig "$KUBECONFIG" plan --path "$dir" --app big -n "bench-big-tether-$fields"
  measure "big|tether apply (no-op)" "$tether" --kubeconfig "$KUBECONFIG" apply --path "$dir" --app big -n "bench-big-tether-$fields" -o json
  measure "big|kubectl apply (cold)" "$kubectl" --kubeconfig "$KUBECONFIG" apply --server-side -n "bench-big-kubectl-$fields" -f "$dir/big.yaml"
  measure "big|kubectl apply (no-op)" "$kubectl" --kubeconfig "$KUBECONFIG" apply --server-side -n "bench-big-kubectl-$fields" -f "$dir/big.yaml"
  record=$("$kubectl" get configmap big -n "bench-big-tether-$fields" -o jsonpath='{.metadata.annotations.tether\.dev/applied-fields}' | wc -c)
  object=$("$kubectl" get configmap big -n "bench-big-tether-$fields" -o json | wc -c)
  # The last six rows are this size's.
  tail -6 "$work/rows" | while IFS='|' read -r _ what seconds rss _rest; do
    echo "$fields|$record|$object|$what|$seconds|$rss" >> "$work/big"
  done
  head -n -6 "$work/rows" > "$work/rows.kept"; mv "$work/rows.kept" "$work/rows"
  for ns in "bench-big-tether-$fields" "bench-big-kubectl-$fields"; do
    "$kubectl" delete ns "$ns" --wait=true >/dev/null
  done
done

mkdir -p bench/reports
report=bench/reports/apply-${BIG_ONLY:+big-}$(date -u +%Y-%m-%d)${REPORT_TAG:+-$REPORT_TAG}.md
{
  if [ -n "$BIG_ONLY" ]; then
    echo "# apply benchmark: objects of many fields, $(date -u +%Y-%m-%dT%H:%MZ)"
  else
    echo "# apply benchmark: $N Deployments + $N Services, $(date -u +%Y-%m-%dT%H:%MZ)"
  fi
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB;"
  echo "cluster: testenv (kube-apiserver $("$kubectl" version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])'), etcd, controllers, kwok), on the same machine;"
  if [ -n "$BIG_ONLY" ]; then
    echo "tether $tether_version (release build); peer: kubectl $("$kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])') (\`apply --server-side\` of the same object); direct connection."
  else
    echo "tether $tether_version (release build, default --concurrency 16 and, since 4ce9957, --max-concurrency 64); ceiling: examples/ssa_ceiling.rs (kube-rs, server-side apply PATCHes only, concurrency $CEILING_CONCURRENCY, each over HTTP/1.1 and over one HTTP/2 connection); peer: kubectl $("$kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])') (\`apply --server-side --applyset --prune\`)."
    echo "Latency: Toxiproxy $("$toxiproxy" -version | awk '{print $NF}') between the client and the API server, half of it on each direction; 0 ms is a direct connection."
    echo "One run each, same manifests, separate namespaces (deleted after each latency). Writes and requests: the API server's"
    echo "apiserver_request_total for Deployments, Services and Secrets, subresources apart (writes: POST, PUT, PATCH, APPLY,"
    echo "DELETE without dry-run; requests: all verbs, dry-runs and reads included; discovery not counted). CPU: user + system"
    echo "seconds of kube-apiserver and etcd during the run, whoever caused them (the Deployment controller works meanwhile)."
  fi
  echo
  if [ -s "$work/big" ]; then
    echo "## Objects of many fields"
    echo
    echo "One ConfigMap of N keys (N + 3 field paths), direct connection, one run each. tether records the fields it"
    echo "applied on the object (\`tether.dev/applied-fields\`): a digest per path up to 4,096 paths, a Bloom filter past it."
    echo
    echo "| keys | record bytes | object bytes | what | wall s | peak RSS MiB |"
    echo "|---|---|---|---|---|---|"
    while IFS='|' read -r fields record object what seconds rss; do
      echo "| $fields | $record | $object | $what | $seconds | $rss |"
    done < "$work/big"
    echo
  fi
  if [ -s "$work/rows" ]; then
  echo "| latency (measured round trip) | what | wall s | peak RSS MiB | writes | requests | API server CPU s | etcd CPU s | API server + etcd CPU ms per object |"
  echo "|---|---|---|---|---|---|---|---|---|"
  while IFS='|' read -r latency what seconds rss writes total api etcd; do
    per_object=$(python3 -c "print(f'{($api + $etcd) * 1000 / (2 * $N):.1f}')")
    echo "| $latency ms (${rtt[$latency]} ms) | $what | $seconds | $rss | $writes | $total | $api | $etcd | $per_object |"
  done < "$work/rows"
  echo
  if [ -s "$work/phases" ]; then
    echo "tether apply (cold), its steps as it reported them on stderr:"
    echo
    while IFS='|' read -r latency step; do
      echo "- $latency ms: $step"
    done < "$work/phases"
    echo
  fi
  python3 - "$work/rows" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    latency, what, seconds, *_ = line.strip().split("|")
    rows[(latency, what)] = float(seconds)
for latency in dict.fromkeys(k[0] for k in rows):
    for kind in ["cold", "no-op"]:
        t, k = rows[(latency, f"tether apply ({kind})")], rows[(latency, f"kubectl apply ({kind})")]
        print(f"- {latency} ms, {kind}: kubectl / tether = {k / t:.1f}x")
    ceilings = {what: s for (l, what), s in rows.items() if l == latency and what.startswith("ceiling")}
    if ceilings:
        best = min(ceilings, key=ceilings.get)
        t = rows[(latency, "tether apply (cold)")]
        print(f"- {latency} ms, cold: tether's throughput is {100 * ceilings[best] / t:.0f} % of the ceiling's"
              f" (best: {best.split(' (')[0]}, {ceilings[best]} s)")
PY
  fi
} > "$report"
cat "$report"
