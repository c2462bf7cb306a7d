#!/usr/bin/env python3
"""The pull-mode benchmark: `tether agent` and its peer Flux (source-controller plus
kustomize-controller) manage the same fleet, one after the other, on the same cluster.

The fleet: one Git repository (smart HTTP on loopback) with APPS folders of OBJECTS
ConfigMaps each. tether gets one Application per folder; Flux gets one GitRepository and one
Kustomization per folder, the way Flux users lay out a monorepo. Both poll every minute.

Measured for each tool, in this order:
- converge: from creating the resources until every one has applied the first commit;
- drift: a hand edit of a managed ConfigMap until it is put back, each timed from its own
  edit: for tether EDITS edits one at a time, then EDITS edits 10 at once (in 10 folders);
  for Flux, which corrects drift only at its interval, FLUX_EDITS edits 10 at once;
- push to applied: a commit to one folder, then the notification a webhook delivers
  (tether: a signed GitHub push to `tether agent --listen`; Flux: the
  `reconcile.fluxcd.io/requestedAt` annotation that Flux's Receiver sets on the
  GitRepository), until that folder's resource has applied it;
- steady state: per-object ConfigMap requests per minute at the API server (its own
  apiserver_request_total) over two minutes once everything has applied the last commit;
- peak memory (VmHWM) of the tool's processes.

Usage: see bench/agent.sh, which builds everything and calls this.
"""

import argparse
import datetime
import hashlib
import hmac
import json
import os
import platform
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def log(message):
    print(f"bench-agent: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """The API server, called with the admin certificate of the testenv kubeconfig."""

    def __init__(self, kubeconfig, kubectl):
        self.kubectl = kubectl
        config = json.load(open(kubeconfig))
        self.server = config["clusters"][0]["cluster"]["server"]
        pki = os.path.join(os.path.dirname(kubeconfig), "pki")
        self.ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))

    def call(self, method, path, body=None, content_type="application/merge-patch+json"):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, method=method, data=data)
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
            return resp.read()

    def items(self, path):
        return json.loads(self.call("GET", path))["items"]

    def run_kubectl(self, *args, stdin=None):
        subprocess.run([self.kubectl, *args], input=stdin, check=True, text=True,
                       stdout=subprocess.DEVNULL)

    def per_object_configmap_requests(self):
        text = self.call("GET", "/metrics").decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("apiserver_request_total{")
                   and 'resource="configmaps"' in line and 'scope="resource"' in line)

    def all_requests(self):
        """Every request the API server counted so far, whoever sent it."""
        text = self.call("GET", "/metrics").decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("apiserver_request_total{"))

    def recreate_namespaces(self, *names):
        self.run_kubectl("delete", "ns", *names, "--ignore-not-found", "--wait=true")
        for name in names:
            self.run_kubectl("create", "ns", name)


def app_name(a):
    return f"app-{a:04d}"


def cm_name(a, o):
    return f"{app_name(a)}-cm-{o:03d}"


class Fleet:
    """The Git repository: APPS folders of OBJECTS ConfigMaps, served over smart HTTP."""

    def __init__(self, work, apps, objects, server_script):
        self.root = os.path.join(work, "served")
        self.repo = os.path.join(self.root, "fleet")
        self.apps = apps
        for a in range(apps):
            folder = os.path.join(self.repo, app_name(a))
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "configmaps.yaml"), "w") as f:
                for o in range(objects):
                    f.write(f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {cm_name(a, o)}\n"
                            f"data:\n  value: \"{o}\"\n")
        self.first_app = open(os.path.join(self.repo, app_name(0), "configmaps.yaml")).read()
        self.git("init", "-q", "-b", "main")
        self.head = self.commit("fleet")
        self.server = subprocess.Popen(["python3", server_script, self.root], stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True)
        port = self.server.stdout.readline().split()[1]
        self.url = f"http://127.0.0.1:{port}/fleet"
        self.pushes = 0

    def git(self, *args):
        env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b",
                   GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
        return subprocess.run(["git", "-C", self.repo, *args], check=True, env=env,
                              capture_output=True, text=True).stdout.strip()

    def commit(self, message):
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")

    def reset(self):
        """Back to the generated content (earlier pushes undone) as a new commit: the head."""
        with open(os.path.join(self.repo, app_name(0), "configmaps.yaml"), "w") as f:
            f.write(self.first_app)
        if self.git("status", "--porcelain"):
            self.head = self.commit("reset")
        return self.head

    def push_to_first_app(self):
        """A new ConfigMap in the first folder; returns the commit."""
        self.pushes += 1
        with open(os.path.join(self.repo, app_name(0), "configmaps.yaml"), "a") as f:
            f.write(f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {app_name(0)}-extra-{self.pushes}\n")
        return self.commit(f"extra {self.pushes}")

    def stop(self):
        self.server.kill()


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid):
    status = open(f"/proc/{pid}/status").read()
    field = lambda key: int([l for l in status.splitlines() if l.startswith(key)][0].split()[1]) / 1024
    return field("VmHWM:"), field("VmRSS:")


class Tether:
    name = "tether"
    namespace, target = "bench-tether", "bench-tether-apps"

    def __init__(self, cluster, binary, work):
        self.cluster, self.binary, self.work = cluster, binary, work
        self.processes = []

    def describe(self, version_of):
        return f"tether {version_of}, `tether agent` (release build, default --concurrency 16), one process"

    def start(self):
        self.cluster.recreate_namespaces(self.namespace, self.target)
        subprocess.run([self.binary, "install"], check=True, stdout=subprocess.DEVNULL)
        self.secret = b"bench-hook-secret"
        secret_file = os.path.join(self.work, "webhook-secret")
        with open(secret_file, "wb") as f:
            f.write(self.secret + b"\n")
        self.http_port = free_port()
        log_file = open(os.path.join(self.work, "tether-agent.log"), "w")
        self.processes = [subprocess.Popen(
            [self.binary, "agent", "-n", self.namespace, "--listen", f"127.0.0.1:{self.http_port}",
             "--webhook-secret-file", secret_file],
            stdout=log_file, stderr=log_file, env=dict(os.environ, TETHER_CACHE_DIR=os.path.join(self.work, "tether-cache")))]

    def create(self, fleet):
        docs = []
        for a in range(fleet.apps):
            docs.append(f"""---
apiVersion: tether.dev/v1alpha1
kind: Application
metadata: {{name: {app_name(a)}, namespace: {self.namespace}}}
spec:
  source: {{repoURL: "{fleet.url}", ref: {{branch: main}}, path: {app_name(a)}}}
  destination: {{namespace: {self.target}}}
  syncPolicy: {{interval: 1m}}
""")
        self.cluster.run_kubectl("apply", "-f", "-", stdin="".join(docs))

    def revisions(self):
        """Application name → the revision it last applied."""
        path = f"/apis/tether.dev/v1alpha1/namespaces/{self.namespace}/applications"
        return {a["metadata"]["name"]: (a.get("status") or {}).get("lastAppliedRevision")
                for a in self.cluster.items(path)}

    def revision_of(self, name):
        path = f"/apis/tether.dev/v1alpha1/namespaces/{self.namespace}/applications/{name}"
        return (json.loads(self.cluster.call("GET", path)).get("status") or {}).get("lastAppliedRevision")

    def notify(self, fleet, revision):
        # As a Git host sends it: each push names its commit (the agent refuses a body it
        # received before, a replay).
        body = json.dumps({"ref": "refs/heads/main", "after": revision,
                           "repository": {"clone_url": fleet.url}}).encode()
        signature = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/webhooks/github", data=body, method="POST")
        req.add_header("X-Hub-Signature-256", "sha256=" + signature)
        req.add_header("X-GitHub-Event", "push")
        urllib.request.urlopen(req, timeout=10).read()

    def stop(self):
        for p in self.processes:
            p.terminate()
            p.wait(timeout=60)
        self.cluster.run_kubectl("delete", "ns", self.namespace, self.target, "--wait=true")


class Flux:
    name = "Flux"
    namespace, target = "bench-flux", "bench-flux-apps"

    def __init__(self, cluster, source_bin, kustomize_bin, work, concurrency):
        self.cluster, self.work, self.concurrency = cluster, work, concurrency
        self.source_bin, self.kustomize_bin = source_bin, kustomize_bin
        self.processes = []

    def describe(self, versions):
        return (f"Flux source-controller {versions[0]} and kustomize-controller {versions[1]} "
                f"(built from their Go modules, `--concurrent={self.concurrency}` each), two processes")

    def start(self):
        self.drop_finalizers()
        self.cluster.recreate_namespaces(self.namespace, self.target)
        for binary in (self.source_bin, self.kustomize_bin):
            crds = os.path.join(os.path.dirname(binary), "crds")
            self.cluster.run_kubectl("apply", "--server-side", "--force-conflicts", "-f", crds)
        for crd in ("gitrepositories.source.toolkit.fluxcd.io", "kustomizations.kustomize.toolkit.fluxcd.io"):
            self.cluster.run_kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
        env = dict(os.environ, RUNTIME_NAMESPACE=self.namespace)
        storage = os.path.join(self.work, "flux-storage")
        os.makedirs(storage, exist_ok=True)
        storage_port = free_port()
        common = ["--watch-all-namespaces=false", f"--concurrent={self.concurrency}", "--log-level=info"]
        source = [self.source_bin, *common, f"--metrics-addr=127.0.0.1:{free_port()}",
                  f"--health-addr=127.0.0.1:{free_port()}", f"--storage-path={storage}",
                  f"--storage-addr=127.0.0.1:{storage_port}", f"--storage-adv-addr=127.0.0.1:{storage_port}"]
        kustomize = [self.kustomize_bin, *common, f"--metrics-addr=127.0.0.1:{free_port()}",
                     f"--health-addr=127.0.0.1:{free_port()}"]
        for name, command in (("source-controller", source), ("kustomize-controller", kustomize)):
            log_file = open(os.path.join(self.work, f"flux-{name}.log"), "w")
            self.processes.append(subprocess.Popen(command, stdout=log_file, stderr=log_file, env=env))

    def create(self, fleet):
        docs = [f"""---
apiVersion: source.toolkit.fluxcd.io/v1
kind: GitRepository
metadata: {{name: fleet, namespace: {self.namespace}}}
spec:
  url: "{fleet.url}"
  ref: {{branch: main}}
  interval: 1m
"""]
        for a in range(fleet.apps):
            docs.append(f"""---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {{name: {app_name(a)}, namespace: {self.namespace}}}
spec:
  sourceRef: {{kind: GitRepository, name: fleet}}
  path: ./{app_name(a)}
  targetNamespace: {self.target}
  prune: true
  interval: 1m
""")
        self.cluster.run_kubectl("apply", "-f", "-", stdin="".join(docs))

    @staticmethod
    def _revision(kustomization):
        # "main@sha1:<commit>" → the commit
        revision = (kustomization.get("status") or {}).get("lastAppliedRevision") or ""
        return revision.rsplit(":", 1)[-1] or None

    def revisions(self):
        path = f"/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/{self.namespace}/kustomizations"
        return {k["metadata"]["name"]: self._revision(k) for k in self.cluster.items(path)}

    def revision_of(self, name):
        path = f"/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/{self.namespace}/kustomizations/{name}"
        return self._revision(json.loads(self.cluster.call("GET", path)))

    def notify(self, fleet, revision):
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        path = f"/apis/source.toolkit.fluxcd.io/v1/namespaces/{self.namespace}/gitrepositories/fleet"
        self.cluster.call("PATCH", path, {"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": now}}})

    def drop_finalizers(self):
        """Flux's objects carry finalizers that only its controllers remove: once they are
        gone (or after a failed run), drop them so that the namespace can be deleted."""
        for path in (f"/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/{self.namespace}/kustomizations",
                     f"/apis/source.toolkit.fluxcd.io/v1/namespaces/{self.namespace}/gitrepositories"):
            try:
                items = self.cluster.items(path)
            except urllib.error.HTTPError:
                continue  # the CRD is not installed yet
            for item in items:
                self.cluster.call("PATCH", f"{path}/{item['metadata']['name']}", {"metadata": {"finalizers": None}})

    def stop(self):
        for p in self.processes:
            p.terminate()
            p.wait(timeout=60)
        self.drop_finalizers()
        self.cluster.run_kubectl("delete", "ns", self.namespace, self.target, "--wait=true")


def wait_all_applied(tool, revision, count, limit):
    deadline = time.time() + limit
    while True:
        done = sum(1 for r in tool.revisions().values() if r == revision)
        if done >= count:
            return
        if time.time() > deadline:
            raise SystemExit(f"{tool.name}: only {done} of {count} applied {revision[:12]} within {limit} s")
        time.sleep(0.5)


def drift(cluster, tool, fleet, objects, edits, batch_size, limit):
    """Hand edits of managed ConfigMaps, `batch_size` at once (each in another folder),
    until each is put back; the latencies, sorted, each from its own edit."""
    latencies = []
    cm_path = f"/api/v1/namespaces/{tool.target}/configmaps/"
    for batch in range(0, edits, batch_size):
        pending = {}
        for i in range(batch, min(batch + batch_size, edits)):
            name = cm_name(i % fleet.apps, (i * 7) % objects)
            cluster.call("PATCH", cm_path + name, {"data": {"value": "drift"}})
            pending[name] = time.time()
        deadline = time.time() + limit
        while pending:
            for name in list(pending):
                if json.loads(cluster.call("GET", cm_path + name))["data"]["value"] != "drift":
                    latencies.append(time.time() - pending.pop(name))
            if time.time() > deadline:
                raise SystemExit(f"{tool.name}: {len(pending)} edits not corrected within {limit} s")
            time.sleep(0.005)
    return sorted(latencies)


def measure(tool, cluster, fleet, drift_runs, objects, drift_limit, steady_seconds, pushes):
    """`drift_runs`: (edits at once, edits in all) pairs. With `drift_runs` empty and no
    pushes, only the converge time and the memory (the growth runs)."""
    results = {}
    head = fleet.reset()
    tool.start()
    started = time.time()
    tool.create(fleet)
    wait_all_applied(tool, head, fleet.apps, 1800)
    results["converge"] = time.time() - started
    results["converge_peak_mib"] = sum(memory_mib(p.pid)[0] for p in tool.processes)
    log(f"{tool.name}: {fleet.apps} × {objects} converged in {results['converge']:.1f} s, "
        f"peak {results['converge_peak_mib']:.0f} MiB")

    for batch, count in drift_runs:
        latencies = drift(cluster, tool, fleet, objects, count, batch, drift_limit)
        key = f"drift{batch}"
        results[key] = (statistics.median(latencies),
                        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
                        latencies[-1], len(latencies))
        log(f"{tool.name}: drift, {batch} at once: p50 {results[key][0]:.3f} s over {len(latencies)} edits")

    revision = head
    if pushes:
        times = []
        for _ in range(pushes):
            revision = fleet.push_to_first_app()
            started = time.time()
            tool.notify(fleet, revision)
            while tool.revision_of(app_name(0)) != revision:
                if time.time() - started > 600:
                    raise SystemExit(f"{tool.name}: push {revision[:12]} not applied within 600 s")
                time.sleep(0.01)
            times.append(time.time() - started)
        results["push_p50"] = statistics.median(times)
        results["push_max"] = max(times)
        results["pushes"] = len(times)
        log(f"{tool.name}: push to applied median {results['push_p50']:.3f} s")

    if steady_seconds:
        # Steady state: once everything applied the last push, over two polling intervals.
        wait_all_applied(tool, revision, fleet.apps, 900)
        time.sleep(10)
        objects_before, all_before = cluster.per_object_configmap_requests(), cluster.all_requests()
        cpu_before = sum(cpu_seconds(p.pid) for p in tool.processes)
        time.sleep(steady_seconds)
        minutes = steady_seconds / 60
        results["steady"] = (cluster.per_object_configmap_requests() - objects_before) / minutes
        results["steady_all"] = (cluster.all_requests() - all_before) / minutes
        results["idle_cpu"] = (sum(cpu_seconds(p.pid) for p in tool.processes) - cpu_before) / minutes
        log(f"{tool.name}: {results['steady']:.1f} per-object requests, {results['steady_all']:.0f} requests in all "
            f"and {results['idle_cpu']:.2f} CPU s per minute in steady state")
    memory = [memory_mib(p.pid) for p in tool.processes]
    results["peak_mib"] = sum(m[0] for m in memory)
    results["rss_mib"] = sum(m[1] for m in memory)
    results["peak_each"] = " + ".join(f"{m[0]:.0f}" for m in memory)
    tool.stop()
    return results


def svg_plot(points, path):
    """Two small line charts side by side (converge seconds, peak MiB) against managed
    objects, written as plain SVG."""
    width, height, pad = 320, 220, 45
    xs = [p[0] for p in points]
    panels = [("converge (s)", [p[1] for p in points]), ("peak RSS (MiB)", [p[2] for p in points])]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * width}" height="{height}" '
             'font-family="sans-serif" font-size="11">']
    for i, (title, ys) in enumerate(panels):
        x0 = i * width
        top = max(ys) * 1.15 or 1
        right = max(xs) * 1.05

        def at(x, y):
            return (x0 + pad + (width - 1.5 * pad) * x / right, height - pad - (height - 1.7 * pad) * y / top)

        parts.append(f'<text x="{x0 + width / 2}" y="15" text-anchor="middle" font-weight="bold">{title}</text>')
        parts.append(f'<line x1="{at(0, 0)[0]}" y1="{at(0, 0)[1]}" x2="{at(right, 0)[0]}" y2="{at(right, 0)[1]}" stroke="black"/>')
        parts.append(f'<line x1="{at(0, 0)[0]}" y1="{at(0, 0)[1]}" x2="{at(0, top)[0]}" y2="{at(0, top)[1]}" stroke="black"/>')
        for x in xs:
            px, py = at(x, 0)
            parts.append(f'<text x="{px}" y="{py + 14}" text-anchor="middle">{x}</text>')
        parts.append(f'<text x="{x0 + width / 2}" y="{height - 8}" text-anchor="middle">managed objects</text>')
        for fraction in (0, 0.5, 1):
            px, py = at(0, top / 1.15 * fraction)
            parts.append(f'<text x="{px - 4}" y="{py + 4}" text-anchor="end">{top / 1.15 * fraction:.0f}</text>')
        line = " ".join(f"{at(x, y)[0]:.1f},{at(x, y)[1]:.1f}" for x, y in zip(xs, ys))
        parts.append(f'<polyline points="{line}" fill="none" stroke="#1f6feb" stroke-width="2"/>')
        for x, y in zip(xs, ys):
            px, py = at(x, y)
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="#1f6feb"/>')
            parts.append(f'<text x="{px:.1f}" y="{py - 7:.1f}" text-anchor="middle">{y:.1f}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tether", required=True)
    parser.add_argument("--tether-version", required=True)
    parser.add_argument("--flux-source-controller", required=True)
    parser.add_argument("--flux-kustomize-controller", required=True)
    parser.add_argument("--flux-versions", required=True, help="source,kustomize")
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--git-server", required=True, help="the smart HTTP Git server script")
    parser.add_argument("--fleets", default="1000x10,100x100",
                        help="fleets measured with every tool: APPSxOBJECTS, comma-separated")
    parser.add_argument("--edits", type=int, default=100, help="drift edits for tether")
    parser.add_argument("--flux-edits", type=int, default=20,
                        help="drift edits for Flux (each takes up to its 1m interval)")
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--flux-pushes", type=int, default=3, help="each takes Flux tens of seconds")
    parser.add_argument("--steady-seconds", type=int, default=120,
                        help="the steady-state window (two polling intervals)")
    parser.add_argument("--growth", default="1000,5000,10000",
                        help="tether alone: converge and memory at these numbers of managed objects")
    parser.add_argument("--growth-apps", type=int, default=100, help="Applications of the growth runs")
    parser.add_argument("--tools", default="tether,flux", help="which tools to measure, in order")
    parser.add_argument("--report", required=True)
    args = parser.parse_args()

    cluster = Cluster(os.environ["KUBECONFIG"], args.kubectl)
    fleets = [tuple(int(n) for n in f.split("x")) for f in args.fleets.split(",") if f]
    growth = [int(n) for n in args.growth.split(",") if n]
    tools = args.tools.split(",")
    # What the server serves with neither tool running (its own controllers), per minute.
    log("baseline: 60 s with neither tool running")
    before = cluster.all_requests()
    time.sleep(60)
    baseline = cluster.all_requests() - before
    runs = {}
    growth_runs = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-agent.") as work:
        tether = Tether(cluster, args.tether, work)
        flux = Flux(cluster, args.flux_source_controller, args.flux_kustomize_controller, work, 16)
        plan = {"tether": (tether, [(1, args.edits), (10, args.edits)], 30, args.pushes),
                "flux": (flux, [(10, args.flux_edits)], 180, args.flux_pushes)}
        jobs = [(apps, objects, name, True) for apps, objects in fleets for name in tools]
        if "tether" in tools:
            jobs += [(args.growth_apps, total // args.growth_apps, "tether", False) for total in growth]
        for apps, objects, name, full in jobs:
            log(f"{name}: {apps} × {objects}{'' if full else ' (growth)'}")
            fleet = Fleet(work, apps, objects, args.git_server)
            tool, drift_runs, limit, pushes = plan[name]
            try:
                if full:
                    runs[(apps, objects, name)] = measure(tool, cluster, fleet, drift_runs, objects, limit,
                                                          args.steady_seconds, pushes)
                else:
                    r = measure(tool, cluster, fleet, [], objects, limit, 0, 0)
                    growth_runs.append((apps * objects, r["converge"], r["peak_mib"]))
            finally:
                for p in tool.processes:
                    p.kill()
                if isinstance(tool, Flux):
                    tool.drop_finalizers()
                fleet.stop()
                shutil.rmtree(fleet.root, ignore_errors=True)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem_gib = int(open("/proc/meminfo").readline().split()[1]) / 1024 / 1024

    def drift_cell(key):
        def render(r):
            if key not in r:
                return "—"
            p50, p99, worst, count = r[key]
            return f"{p50:.3f} / {p99:.3f} / {worst:.3f} s ({count})"
        return render

    rows = [
        ("create until all applied", lambda r: f"{r['converge']:.1f} s"),
        ("drift to corrected, one edit at a time: p50 / p99 / max (edits)", drift_cell("drift1")),
        ("drift to corrected, 10 edits at once: p50 / p99 / max (edits)", drift_cell("drift10")),
        ("push notification to applied: median / max (pushes)",
         lambda r: f"{r['push_p50']:.3f} / {r['push_max']:.3f} s ({r['pushes']})"),
        ("peak RSS (VmHWM; per process)", lambda r: f"{r['peak_mib']:.0f} MiB ({r['peak_each']})"),
        ("RSS at the end", lambda r: f"{r['rss_mib']:.0f} MiB"),
        (f"steady state: per-object ConfigMap requests per minute ({args.steady_seconds} s window)",
         lambda r: f"{r['steady']:.1f}"),
        (f"steady state: all API requests per minute, whole server (baseline without a tool: {baseline:.0f})",
         lambda r: f"{r['steady_all']:.0f}"),
        ("steady state: the tool's CPU seconds per idle minute", lambda r: f"{r['idle_cpu']:.2f}"),
    ]
    date = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        f"# agent benchmark: fleets of Applications, tether and Flux, {date.strftime('%Y-%m-%dT%H:%MZ')}",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, {platform.system()} {platform.release()}; "
        "cluster: testenv (kube-apiserver, etcd, controller-manager, scheduler, kwok) on the same machine; "
        "one Git repository over smart HTTP (git http-backend) on loopback, one folder per application; "
        "every interval 1m.",
        "",
        f"- tether: {tether.describe(args.tether_version)}; one Application per folder.",
        f"- Flux: {flux.describe(args.flux_versions.split(','))}; one GitRepository and one Kustomization per folder. "
        "Push notification: the `reconcile.fluxcd.io/requestedAt` annotation Flux's Receiver sets "
        "(notification-controller itself not run). Flux corrects drift only at its interval, so it is "
        "measured with fewer edits, 10 at once.",
        "- The tools ran one after the other, each alone, in separate namespaces, in this run.",
        "",
    ]
    for apps, objects in fleets:
        tr, fr = runs.get((apps, objects, "tether")), runs.get((apps, objects, "flux"))
        lines += [f"## {apps} Applications × {objects} ConfigMaps ({apps * objects} objects)", "",
                  "| what | tether | Flux |", "|---|---|---|"]
        for what, render in rows:
            cell = lambda r: render(r) if r else "not run"
            lines.append(f"| {what} | {cell(tr)} | {cell(fr)} |")
        if tr and fr:
            lines += ["", f"Converge: Flux / tether = {fr['converge'] / tr['converge']:.1f}×; "
                          f"peak memory: Flux / tether = {fr['peak_mib'] / tr['peak_mib']:.1f}×."]
        lines.append("")
    if growth_runs:
        plot = os.path.splitext(args.report)[0] + "-growth.svg"
        svg_plot(growth_runs, plot)
        first = growth_runs[0]
        lines += [f"## Growth: tether alone, {args.growth_apps} Applications", "",
                  "| managed objects | converge s | peak RSS MiB | s per 1,000 objects | MiB per 1,000 objects above the first |",
                  "|---|---|---|---|---|"]
        for total, seconds, peak in growth_runs:
            extra = "—" if total == first[0] else f"{(peak - first[2]) * 1000 / (total - first[0]):.1f}"
            lines.append(f"| {total} | {seconds:.1f} | {peak:.0f} | {seconds * 1000 / total:.2f} | {extra} |")
        lines += ["", f"Plot: [{os.path.basename(plot)}]({os.path.basename(plot)})", ""]
    os.makedirs(os.path.dirname(args.report), exist_ok=True)
    with open(args.report, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
