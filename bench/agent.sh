#!/usr/bin/env bash
# Benchmark: the agent managing APPS Applications of OBJECTS ConfigMaps each (default
# 100 × 100 = 10,000 objects) on the local testenv cluster, from a git daemon on loopback.
# Measures: time to converge; drift-to-corrected latency over EDITS hand edits (p50, p99);
# webhook-to-applied latency; the agent's peak memory; and per-object API requests per
# minute in steady state (from the API server's own apiserver_request_total).
# Writes bench/reports/agent-<date>.md. Not part of `make test`: run `make bench-agent`.
set -euo pipefail
cd "$(dirname "$0")/.."
APPS=${APPS:-100}
OBJECTS=${OBJECTS:-100}
EDITS=${EDITS:-100}
testenv() { python3 testenv/testenv.py "$@"; }
cargo build --release --locked --quiet --bin tether
tether=$PWD/target/release/tether
testenv up
export KUBECONFIG; KUBECONFIG="$(testenv env | sed 's/^export KUBECONFIG=//')"
kubectl=$(testenv bin kubectl)
work=$(mktemp -d /tmp/tether-bench-agent.XXXXXX)
cleanup() {
  kill "${agent_pid:-}" "${daemon_pid:-}" 2>/dev/null || true
  "$kubectl" delete ns bench-agent bench-agent-apps --ignore-not-found --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "generating $APPS applications × $OBJECTS ConfigMaps ..." >&2
python3 - "$work/served/fleet" "$APPS" "$OBJECTS" <<'PY'
import os, sys
root, apps, objects = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for a in range(apps):
    folder = os.path.join(root, f"app-{a:03d}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "configmaps.yaml"), "w") as f:
        for o in range(objects):
            f.write(f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-{a:03d}-cm-{o:03d}\ndata:\n  value: \"{o}\"\n")
PY
git -C "$work/served/fleet" init -q -b main && git -C "$work/served/fleet" add -A
commit() { GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@b GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@b git -C "$work/served/fleet" commit -q -am "$1" && git -C "$work/served/fleet" rev-parse HEAD; }
first=$(commit fleet)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
git daemon --reuseaddr --export-all --listen=127.0.0.1 --port="$port" --base-path="$work/served" "$work/served" 2>/dev/null &
daemon_pid=$!
"$kubectl" delete ns bench-agent bench-agent-apps --ignore-not-found --wait=true >/dev/null
"$kubectl" create ns bench-agent >/dev/null
"$kubectl" create ns bench-agent-apps >/dev/null
"$tether" install >/dev/null
printf 'bench-hook-secret\n' > "$work/webhook-secret"
http_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$tether" agent -n bench-agent --listen "127.0.0.1:$http_port" --webhook-secret-file "$work/webhook-secret" \
  > "$work/agent.log" 2>&1 &
agent_pid=$!

python3 - "$APPS" "$port" > "$work/apps.yaml" <<'PY'
import sys
apps, port = int(sys.argv[1]), sys.argv[2]
for a in range(apps):
    print(f"""---
apiVersion: tether.dev/v1alpha1
kind: Application
metadata: {{name: app-{a:03d}, namespace: bench-agent}}
spec:
  source: {{repoURL: "git://127.0.0.1:{port}/fleet", ref: {{branch: main}}, path: app-{a:03d}}}
  destination: {{namespace: bench-agent-apps}}
  syncPolicy: {{interval: 1m}}""")
PY
started=$EPOCHREALTIME
"$kubectl" apply -f "$work/apps.yaml" >/dev/null

# All measurements that need the API go through one Python process with the admin cert.
python3 - "$first" "$APPS" "$OBJECTS" "$EDITS" "$http_port" "$work" "$started" "$agent_pid" <<'PY' > "$work/results.txt"
import base64, hashlib, hmac, json, os, ssl, statistics, subprocess, sys, time, urllib.request
first, apps, objects, edits, http_port, work, started, agent_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], float(sys.argv[7]), sys.argv[8]
config = json.load(open(os.environ["KUBECONFIG"]))
server = config["clusters"][0]["cluster"]["server"]
pki = os.path.join(os.path.dirname(os.environ["KUBECONFIG"]), "pki")
ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
def call(method, path, body=None, content_type="application/merge-patch+json"):
    req = urllib.request.Request(server + path, method=method, data=None if body is None else json.dumps(body).encode())
    if body is not None:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
        return resp.read()
def applications():
    return json.loads(call("GET", "/apis/tether.dev/v1alpha1/namespaces/bench-agent/applications"))["items"]
def applied(revision):
    return sum(1 for a in applications() if (a.get("status") or {}).get("lastAppliedRevision") == revision)
while applied(first) < apps:
    time.sleep(0.5)
converge = time.time() - started
print(f"converge {converge:.1f}")

# Drift: change a value by hand, wait until the agent puts it back.
latencies = []
cm_path = "/api/v1/namespaces/bench-agent-apps/configmaps/"
for i in range(edits):
    name = f"app-{i % apps:03d}-cm-{(i * 7) % objects:03d}"
    t0 = time.time()
    call("PATCH", cm_path + name, {"data": {"value": "drift"}})
    while json.loads(call("GET", cm_path + name))["data"]["value"] == "drift":
        time.sleep(0.005)
    latencies.append(time.time() - t0)
latencies.sort()
print(f"drift_p50 {statistics.median(latencies):.3f}")
print(f"drift_p99 {latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]:.3f}")
print(f"drift_max {latencies[-1]:.3f}")

# Webhook: a new commit to one app, a signed push, until applied.
webhook = []
for n in range(5):
    app_dir = os.path.join(work, "served", "fleet", "app-000")
    with open(os.path.join(app_dir, "configmaps.yaml"), "a") as f:
        f.write(f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-000-extra-{n}\n")
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    subprocess.run(["git", "-C", os.path.join(work, "served", "fleet"), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", os.path.join(work, "served", "fleet"), "commit", "-q", "-m", f"extra {n}"], check=True, env=env)
    revision = subprocess.run(["git", "-C", os.path.join(work, "served", "fleet"), "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    url = [a for a in applications() if a["metadata"]["name"] == "app-000"][0]["spec"]["source"]["repoURL"]
    body = json.dumps({"ref": "refs/heads/main", "repository": {"clone_url": url}}).encode()
    signature = hmac.new(b"bench-hook-secret", body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"http://127.0.0.1:{http_port}/webhooks/github", data=body, method="POST")
    req.add_header("X-Hub-Signature-256", "sha256=" + signature)
    t0 = time.time()
    urllib.request.urlopen(req, timeout=10).read()
    while True:
        app = [a for a in applications() if a["metadata"]["name"] == "app-000"][0]
        if (app.get("status") or {}).get("lastAppliedRevision") == revision:
            break
        time.sleep(0.01)
    webhook.append(time.time() - t0)
print(f"webhook_p50 {statistics.median(webhook):.3f}")
print(f"webhook_max {max(webhook):.3f}")

# Steady state: once every Application has applied the last push (a new commit re-plans
# all 100, since they share the repository), per-object requests for ConfigMaps over two
# polling intervals.
while applied(revision) < apps:
    time.sleep(0.5)
time.sleep(10)
def per_object_configmap_requests():
    text = call("GET", "/metrics").decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("apiserver_request_total{") and 'resource="configmaps"' in l and 'scope="resource"' in l)
before = per_object_configmap_requests()
time.sleep(120)
after = per_object_configmap_requests()
print(f"steady_requests_per_minute {(after - before) / 2:.1f}")
status = open(f"/proc/{agent_pid}/status").read()
hwm = [l for l in status.splitlines() if l.startswith("VmHWM:")][0].split()[1]
rss = [l for l in status.splitlines() if l.startswith("VmRSS:")][0].split()[1]
print(f"peak_rss_mib {int(hwm) / 1024:.0f}")
print(f"rss_mib {int(rss) / 1024:.0f}")
PY
get() { awk -v k="$1" '$1 == k {print $2}' "$work/results.txt"; }

mkdir -p bench/reports
report=bench/reports/agent-$(date -u +%Y-%m-%d).md
{
  echo "# agent benchmark: $APPS Applications × $OBJECTS ConfigMaps, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB;"
  echo "cluster: testenv on the same machine; tether $(git rev-parse --short HEAD) (release), \`tether agent\` as one process; git daemon on loopback."
  echo
  echo "| what | value |"
  echo "|---|---|"
  echo "| $((APPS * OBJECTS)) objects in $APPS Applications: created until all Synced | $(get converge) s |"
  echo "| drift to corrected, $EDITS hand edits: p50 / p99 / max | $(get drift_p50) / $(get drift_p99) / $(get drift_max) s |"
  echo "| webhook to applied, 5 pushes: median / max | $(get webhook_p50) / $(get webhook_max) s |"
  echo "| agent peak RSS (VmHWM) / RSS at the end | $(get peak_rss_mib) / $(get rss_mib) MiB |"
  echo "| steady state: per-object ConfigMap requests per minute (2 minutes, 1m interval) | $(get steady_requests_per_minute) |"
} > "$report"
cat "$report"
