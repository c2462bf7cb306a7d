#!/usr/bin/env python3
"""The web UI with a fleet: APPS Applications (default 1,000) in one namespace, an agent
with the UI on loopback, and the pages timed and weighed from a client on the same machine.

The Applications are suspended (so the agent reads and lists them, and writes each one's
status, without fetching anything): the list page's cost is the UI's own. One more
Application, real and synced, gives the application page and the time from a hand edit to
the event the page refreshes on and to its diff being served.

Measured: server time (the client's view on loopback, which includes it) for the list page
(first page, a name filter, the last page), the JSON API list, one application page; the
page weights (HTML, stylesheet, script); and hand edit → event → diff served.

Usage: see bench/ui.sh, which builds everything and calls this.
"""

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def log(message):
    print(f"bench-ui: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubectl(args, kubectl_bin, stdin=None):
    return subprocess.run([kubectl_bin, *args], input=stdin, check=True, capture_output=True, text=True).stdout


def get(url, token, accept="text/html"):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": accept})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return time.perf_counter() - started, body


def timed(url, token, runs):
    times, size = [], 0
    for _ in range(runs):
        took, body = get(url, token)
        times.append(took * 1000)
        size = len(body)
    times.sort()
    return {
        "median": statistics.median(times),
        "p95": times[max(0, int(len(times) * 0.95) - 1)],
        "max": times[-1],
        "bytes": size,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tether", required=True)
    parser.add_argument("--tether-version", required=True)
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--report", required=True)
    args = parser.parse_args()

    namespace = f"bench-ui-{int(time.time())}"
    work = tempfile.mkdtemp(prefix="tether-bench-ui.")
    token = "bench-ui-token"
    token_file = os.path.join(work, "token")
    open(token_file, "w").write(token)
    kubectl(["create", "namespace", namespace], args.kubectl)
    subprocess.run([args.tether, "install"], check=True, capture_output=True)

    # One real application: a git repository with a ConfigMap, served by git daemon.
    served = os.path.join(work, "served")
    repo = os.path.join(served, "deploy")
    os.makedirs(os.path.join(repo, "app"))
    open(os.path.join(repo, "app", "cm.yaml"), "w").write(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  color: blue\n")
    git = ["git", "-C", repo, "-c", "user.name=bench", "-c", "user.email=bench@tether.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", repo], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    git_port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1",
                               f"--port={git_port}", f"--base-path={served}", served],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    agent = None
    try:
        documents = []
        for i in range(args.apps):
            documents.append({
                "apiVersion": "tether.dev/v1alpha1", "kind": "Application",
                "metadata": {"name": f"app-{i:04d}", "namespace": namespace},
                "spec": {"source": {"repoURL": f"git://127.0.0.1:{git_port}/deploy", "path": "app"},
                         "destination": {"namespace": namespace}, "suspend": True},
            })
        documents.append({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Application",
            "metadata": {"name": "shop", "namespace": namespace},
            "spec": {"source": {"repoURL": f"git://127.0.0.1:{git_port}/deploy", "path": "app"},
                     "destination": {"namespace": namespace},
                     "syncPolicy": {"selfHeal": False, "interval": "1h"}},
        })
        started = time.time()
        kubectl(["apply", "--server-side", "-f", "-"], args.kubectl,
                stdin="\n---\n".join(json.dumps(d) for d in documents))
        log(f"{len(documents)} Applications created in {time.time() - started:.1f} s")
        agent = subprocess.Popen([args.tether, "agent", "-n", namespace, "--listen", f"127.0.0.1:{port}",
                                  "--api-token-file", token_file, "--verify-interval", "0"],
                                 stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "agent.log"), "w"))
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300
        while True:
            try:
                _, body = get(f"{base}/ui/?sync=Synced", token)
                _, everything = get(f"{base}/api/v1/applications", token, "application/json")
                listed = len(json.loads(everything)["applications"])
                if b"shop" in body and listed == len(documents):
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit("the agent did not list every Application and sync shop within 300 s")
            time.sleep(0.5)
        log("the agent lists every Application; timing pages")
        pages = {
            "list, first page of 50": f"{base}/ui/",
            "list, a name filter (app-09)": f"{base}/ui/?q=app-09",
            "list, last page": f"{base}/ui/?page=20",
            "JSON API list (all)": f"{base}/api/v1/applications",
            "one application (shop)": f"{base}/ui/apps/{namespace}/shop",
        }
        results = {name: timed(url, token, args.runs) for name, url in pages.items()}
        weights = {}
        for asset in ["ui.css", "ui.js"]:
            _, body = get(f"{base}/ui/assets/{asset}", token)
            weights[asset] = len(body)

        # Hand edit → event → diff served.
        events = []
        def listen():
            request = urllib.request.Request(f"{base}/ui/events", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=60) as stream:
                for line in stream:
                    if line.startswith(b"data:") and b"/shop\"" in line:
                        events.append(time.perf_counter())
        threading.Thread(target=listen, daemon=True).start()
        time.sleep(1)
        latencies = []
        for i in range(10):
            events.clear()
            color = f"red-{i}"
            edited = time.perf_counter()
            kubectl(["-n", namespace, "patch", "configmap", "settings", "--type=merge",
                     "-p", json.dumps({"data": {"color": color}})], args.kubectl)
            while not events and time.perf_counter() - edited < 10:
                time.sleep(0.005)
            event_at = events[0] if events else None
            while time.perf_counter() - edited < 10:
                _, tree = get(f"{base}/ui/apps/{namespace}/shop/tree", token)
                if b'data-sync="OutOfSync"' in tree:
                    break
                time.sleep(0.01)
            served_at = time.perf_counter()
            latencies.append(((event_at - edited) * 1000 if event_at else None, (served_at - edited) * 1000))
            time.sleep(0.3)
        peak = 0
        for line in open(f"/proc/{agent.pid}/status"):
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    finally:
        if agent:
            agent.terminate()
            agent.wait(timeout=30)
        daemon.terminate()
        subprocess.run([args.kubectl, "delete", "namespace", namespace, "--wait=false"], capture_output=True)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [
        f"# Web UI with {args.apps} Applications ({datetime.date.today().isoformat()})",
        "",
        f"tether {args.tether_version} (release build); `make bench-ui`. "
        f"Machine: {os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, {platform.system()} {platform.release()}; "
        "the local testenv cluster; client and agent on loopback.",
        "",
        f"{args.apps} suspended Applications plus one synced one, in one namespace; each page requested "
        f"{args.runs} times with a bearer token. Times are the client's (they include the server's).",
        "No peer: Argo CD's UI cannot be built or run here.",
        "",
        "| page | median ms | p95 ms | max ms | bytes |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['median']:.1f} | {r['p95']:.1f} | {r['max']:.1f} | {r['bytes']:,} |")
    lines += [
        "",
        f"Assets (embedded): ui.css {weights['ui.css']:,} bytes, ui.js {weights['ui.js']:,} bytes, no other request.",
        f"Agent peak memory (VmHWM) with the UI in use: {peak:.0f} MiB.",
        "",
        "Hand edit (`kubectl patch` of a ConfigMap of the synced app, selfHeal off) → the event a page "
        "refreshes on → the page's tree served with the object OutOfSync, 10 edits, each timed from starting "
        "`kubectl` (whose own start-up, tens of milliseconds, is included):",
        "",
        "| edit | event ms | diff served ms |",
        "|---:|---:|---:|",
    ]
    for i, (event, served) in enumerate(latencies):
        lines.append(f"| {i + 1} | {event:.0f} | {served:.0f} |" if event is not None else f"| {i + 1} | none | {served:.0f} |")
    report = "\n".join(lines) + "\n"
    open(args.report, "w").write(report)
    print(report)


if __name__ == "__main__":
    main()
