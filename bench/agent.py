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

    def recreate_namespaces(self, *names):
        self.run_kubectl("delete", "ns", *names, "--ignore-not-found", "--wait=true")
        for name in names:
            self.run_kubectl("create", "ns", name)


class Fleet:
    """The Git repository: APPS folders of OBJECTS ConfigMaps, served over smart HTTP."""

    def __init__(self, work, apps, objects, server_script):
        self.root = os.path.join(work, "served")
        self.repo = os.path.join(self.root, "fleet")
        self.apps = apps
        for a in range(apps):
            folder = os.path.join(self.repo, f"app-{a:03d}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "configmaps.yaml"), "w") as f:
                for o in range(objects):
                    f.write(f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-{a:03d}-cm-{o:03d}\n"
                            f"data:\n  value: \"{o}\"\n")
        self.first_app = open(os.path.join(self.repo, "app-000", "configmaps.yaml")).read()
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
        with open(os.path.join(self.repo, "app-000", "configmaps.yaml"), "w") as f:
            f.write(self.first_app)
        if self.git("status", "--porcelain"):
            self.head = self.commit("reset")
        return self.head

    def push_to_first_app(self):
        """A new ConfigMap in app-000; returns the commit."""
        self.pushes += 1
        with open(os.path.join(self.repo, "app-000", "configmaps.yaml"), "a") as f:
            f.write(f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-000-extra-{self.pushes}\n")
        return self.commit(f"extra {self.pushes}")

    def stop(self):
        self.server.kill()


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
metadata: {{name: app-{a:03d}, namespace: {self.namespace}}}
spec:
  source: {{repoURL: "{fleet.url}", ref: {{branch: main}}, path: app-{a:03d}}}
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

    def notify(self, fleet):
        body = json.dumps({"ref": "refs/heads/main", "repository": {"clone_url": fleet.url}}).encode()
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
metadata: {{name: app-{a:03d}, namespace: {self.namespace}}}
spec:
  sourceRef: {{kind: GitRepository, name: fleet}}
  path: ./app-{a:03d}
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

    def notify(self, fleet):
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
            name = f"app-{i % fleet.apps:03d}-cm-{(i * 7) % objects:03d}"
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


def measure(tool, cluster, fleet, drift_runs, objects, drift_limit, steady_seconds):
    """`drift_runs`: (edits at once, edits in all) pairs."""
    results = {}
    head = fleet.reset()
    tool.start()
    started = time.time()
    tool.create(fleet)
    wait_all_applied(tool, head, fleet.apps, 900)
    results["converge"] = time.time() - started
    log(f"{tool.name}: converged in {results['converge']:.1f} s")

    for batch, count in drift_runs:
        latencies = drift(cluster, tool, fleet, objects, count, batch, drift_limit)
        key = f"drift{batch}"
        results[key] = (statistics.median(latencies),
                        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
                        latencies[-1], len(latencies))
        log(f"{tool.name}: drift, {batch} at once: p50 {results[key][0]:.3f} s over {len(latencies)} edits")

    # Push to applied, 5 times.
    pushes = []
    for _ in range(5):
        revision = fleet.push_to_first_app()
        started = time.time()
        tool.notify(fleet)
        while tool.revision_of("app-000") != revision:
            if time.time() - started > 300:
                raise SystemExit(f"{tool.name}: push {revision[:12]} not applied within 300 s")
            time.sleep(0.01)
        pushes.append(time.time() - started)
    results["push_p50"] = statistics.median(pushes)
    results["push_max"] = max(pushes)
    log(f"{tool.name}: push to applied median {results['push_p50']:.3f} s")

    # Steady state: once everything applied the last push, over two polling intervals.
    wait_all_applied(tool, revision, fleet.apps, 600)
    time.sleep(10)
    before = cluster.per_object_configmap_requests()
    time.sleep(steady_seconds)
    results["steady"] = (cluster.per_object_configmap_requests() - before) * 60 / steady_seconds
    log(f"{tool.name}: {results['steady']:.1f} per-object requests per minute in steady state")
    memory = [memory_mib(p.pid) for p in tool.processes]
    results["peak_mib"] = sum(m[0] for m in memory)
    results["rss_mib"] = sum(m[1] for m in memory)
    results["peak_each"] = " + ".join(f"{m[0]:.0f}" for m in memory)
    tool.stop()
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tether", required=True)
    parser.add_argument("--tether-version", required=True)
    parser.add_argument("--flux-source-controller", required=True)
    parser.add_argument("--flux-kustomize-controller", required=True)
    parser.add_argument("--flux-versions", required=True, help="source,kustomize")
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--git-server", required=True, help="the smart HTTP Git server script")
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--edits", type=int, default=100, help="drift edits for tether")
    parser.add_argument("--flux-edits", type=int, default=20,
                        help="drift edits for Flux (each takes up to its 1m interval)")
    parser.add_argument("--steady-seconds", type=int, default=120,
                        help="the steady-state window (two polling intervals)")
    parser.add_argument("--tools", default="tether,flux", help="which tools to measure, in order")
    parser.add_argument("--report", required=True)
    args = parser.parse_args()

    cluster = Cluster(os.environ["KUBECONFIG"], args.kubectl)
    with tempfile.TemporaryDirectory(prefix="tether-bench-agent.") as work:
        fleet = Fleet(work, args.apps, args.objects, args.git_server)
        try:
            tether = Tether(cluster, args.tether, work)
            flux = Flux(cluster, args.flux_source_controller, args.flux_kustomize_controller, work, 16)
            plan = {"tether": (tether, [(1, args.edits), (10, args.edits)], 30),
                    "flux": (flux, [(10, args.flux_edits)], 180)}
            runs = {}
            for name in args.tools.split(","):
                tool, drift_runs, limit = plan[name]
                try:
                    runs[name] = measure(tool, cluster, fleet, drift_runs, args.objects, limit, args.steady_seconds)
                finally:
                    for p in tool.processes:
                        p.kill()
                    if isinstance(tool, Flux):
                        tool.drop_finalizers()
        finally:
            fleet.stop()

    tr, fr = runs.get("tether"), runs.get("flux")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem_gib = int(open("/proc/meminfo").readline().split()[1]) / 1024 / 1024

    def cell(results, render):
        return render(results) if results else "not run"

    def drift_cell(key):
        def render(r):
            if key not in r:
                return "—"
            p50, p99, worst, count = r[key]
            return f"{p50:.3f} / {p99:.3f} / {worst:.3f} s ({count})"
        return lambda r: render(r)

    rows = [
        (f"{args.apps * args.objects} objects: create until all applied", lambda r: f"{r['converge']:.1f} s"),
        ("drift to corrected, one edit at a time: p50 / p99 / max (edits)", drift_cell("drift1")),
        ("drift to corrected, 10 edits at once: p50 / p99 / max (edits)", drift_cell("drift10")),
        ("push notification to applied, 5 pushes: median / max",
         lambda r: f"{r['push_p50']:.3f} / {r['push_max']:.3f} s"),
        ("peak RSS (VmHWM; per process)", lambda r: f"{r['peak_mib']:.0f} MiB ({r['peak_each']})"),
        ("RSS at the end", lambda r: f"{r['rss_mib']:.0f} MiB"),
        (f"steady state: per-object ConfigMap requests per minute ({args.steady_seconds} s window)",
         lambda r: f"{r['steady']:.1f}"),
    ]
    lines = [
        f"# agent benchmark: {args.apps} folders × {args.objects} ConfigMaps, tether and Flux, "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%MZ')}",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, {platform.system()} {platform.release()}; "
        "cluster: testenv (kube-apiserver, etcd, controller-manager, scheduler, kwok) on the same machine; "
        "one Git repository over smart HTTP (git http-backend) on loopback; every interval 1m.",
        "",
        f"- tether: {tether.describe(args.tether_version)}; one Application per folder.",
        f"- Flux: {flux.describe(args.flux_versions.split(','))}; one GitRepository and one Kustomization per folder. "
        "Push notification: the `reconcile.fluxcd.io/requestedAt` annotation Flux's Receiver sets "
        "(notification-controller itself not run). Flux corrects drift only at its interval, so it is "
        "measured with fewer edits, 10 at once.",
        "- The tools ran one after the other, each alone, in separate namespaces.",
        "",
        "| what | tether | Flux |",
        "|---|---|---|",
        *[f"| {what} | {cell(tr, render)} | {cell(fr, render)} |" for what, render in rows],
    ]
    os.makedirs(os.path.dirname(args.report), exist_ok=True)
    with open(args.report, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
