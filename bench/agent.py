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
- peak memory (VmHWM) of the tool's processes;
- for tether, an agent restart (until every Application is verified, requests, writes), its JSON API and web UI
  with the whole fleet, and its web UI's event stream read through the converge;
- health: new resources of one Deployment each, from Deployment Available to the resource saying so.
Then the API server's ceiling for the fleet's writes (TOOLS has `ceiling`): the bare client's server-side applies
of the same ConfigMaps, 128 at once, into a namespace of its own.
The converge creates the resources 8 requests at once, counts those never reconciled, and has a budget after
which a tool is reported as far as it got; a drift, push or health limit passed is reported, not fatal.

Usage: see bench/agent.sh, which builds everything and calls this.
"""

import argparse
import datetime
import hashlib
import hmac
import json
import math
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from kube import Cluster


def log(message):
    print(f"bench-agent: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_name(a):
    return f"app-{a:04d}"


def cm_name(a, o):
    return f"{app_name(a)}-cm-{o:03d}"


def cm_yaml(a, o):
    """ConfigMap `o` of Application `a`, as one YAML document."""
    return (f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {cm_name(a, o)}\n"
            f"data:\n  value: \"{o}\"\n")


HEALTH_APPS = 20


def health_name(i):
    return f"health-{i:02d}"


def health_deployment(i):
    """One Deployment of one replica, scheduled on the kwok nodes (which run its Pod at once)."""
    name = health_name(i)
    return (f"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n"
            f"  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n"
            f"    spec:\n      nodeSelector: {{type: kwok}}\n"
            f"      tolerations: [{{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}}]\n"
            f"      containers: [{{name: web, image: registry.invalid/web:1}}]\n")


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
                    f.write(cm_yaml(a, o))
        # Folders of one Deployment each, for the health measurement (no resource points at
        # them until then).
        for i in range(HEALTH_APPS):
            folder = os.path.join(self.repo, health_name(i))
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "deployment.yaml"), "w") as f:
                f.write(health_deployment(i))
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


def cpu_seconds(pid, children=False):
    """User + system CPU seconds a process has used so far (`children`: and its children it
    has waited for)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15 if children else 13]) / os.sysconf("SC_CLK_TCK")


# The cluster's processes, by their /proc comm (cut at 15 characters).
CLUSTER = {"kube-apiserver": "API server", "etcd": "etcd", "kube-controller": "controllers",
           "kube-scheduler": "controllers", "kwok": "controllers"}


def cpu_split(tool_pids=(), git_server=None):
    """CPU seconds used so far: by the cluster's processes (API server, etcd, controllers),
    the tool's, the Git server with its children (git http-backend), and the whole machine
    (busy time from /proc/stat)."""
    split = {"API server": 0.0, "etcd": 0.0, "controllers": 0.0}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            who = CLUSTER.get(open(f"/proc/{pid}/comm").read().strip())
            if who:
                split[who] += cpu_seconds(pid)
        except OSError:
            continue
    split["tool"] = sum(cpu_seconds(pid) for pid in tool_pids)
    split["Git server"] = cpu_seconds(git_server, children=True) if git_server else 0.0
    busy = [int(f) for f in open("/proc/stat").readline().split()[1:]]
    split["machine"] = (sum(busy) - busy[3] - busy[4]) / os.sysconf("SC_CLK_TCK")  # not idle, iowait
    return split


def cpu_used(before, after):
    return {who: after[who] - before.get(who, 0.0) for who in after}


def requests_used(before, after):
    """The requests counted between two `requests_by_kind` readings, most first."""
    used = {key: after[key] - before.get(key, 0.0) for key in after}
    return sorted(((n, key) for key, n in used.items() if n > 0), reverse=True)


def requests_line(used, top=8):
    """`used` (see `requests_used`) as a sentence: the total and the `top` most."""
    total = sum(n for n, _ in used)
    most = "; ".join(f"{verb} {resource}{' (dry-run)' if dry else ''} {n:,.0f}"
                     for n, (verb, resource, dry) in used[:top])
    return f"{total:,.0f} requests, the most: {most}"


def memory_mib(pid):
    status = open(f"/proc/{pid}/status").read()
    field = lambda key: int([l for l in status.splitlines() if l.startswith(key)][0].split()[1]) / 1024
    return field("VmHWM:"), field("VmRSS:")


class Tether:
    name = "tether"
    namespace, target = "bench-tether", "bench-tether-apps"
    apps_path = f"/apis/tether.dev/v1alpha1/namespaces/{namespace}/applications"

    def __init__(self, cluster, binary, work):
        self.cluster, self.binary, self.work = cluster, binary, work
        self.processes = []
        self.token = "bench-agent-token"

    def describe(self, version_of):
        return f"tether {version_of}, `tether agent` (release build, default --concurrency 16), one process"

    def start(self):
        self.drop_finalizers()  # of a run that failed
        self.cluster.recreate_namespaces(self.namespace, self.target)
        subprocess.run([self.binary, "install"], check=True, stdout=subprocess.DEVNULL)
        self.secret = b"bench-hook-secret"
        secret_file = os.path.join(self.work, "webhook-secret")
        with open(secret_file, "wb") as f:
            f.write(self.secret + b"\n")
        token_file = os.path.join(self.work, "api-token")
        with open(token_file, "w") as f:
            f.write(self.token + "\n")
        self.http_port = free_port()
        self.command = [self.binary, "agent", "-n", self.namespace, "--listen", f"127.0.0.1:{self.http_port}",
                        "--webhook-secret-file", secret_file, "--api-token-file", token_file]
        self._spawn()

    def _spawn(self):
        log_file = open(os.path.join(self.work, "tether-agent.log"), "a")
        self.processes = [subprocess.Popen(
            self.command, stdout=log_file, stderr=log_file,
            env=dict(os.environ, TETHER_CACHE_DIR=os.path.join(self.work, "tether-cache")))]

    def restart(self):
        """Stops the agent (SIGTERM, as a rollout does) and starts a new one; the cache folder
        stays (a Pod's emptyDir would not: the first fetch of each repository is then cold)."""
        for p in self.processes:
            p.terminate()
            p.wait(timeout=120)
        self._spawn()

    def agent_metric(self, name, labels=""):
        """The sum of every sample of `name` (whose labels contain `labels`) the agent serves;
        None while it does not answer."""
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10).read().decode()
        except OSError:
            return None
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if (line.startswith(name + "{") or line.startswith(name + " ")) and labels in line)

    def application(self, name, path, labels=None):
        return {"apiVersion": "tether.dev/v1alpha1", "kind": "Application",
                "metadata": {"name": name, "namespace": self.namespace, "labels": labels or {}},
                "spec": {"source": {"repoURL": self.url, "ref": {"branch": "main"}, "path": path},
                         "destination": {"namespace": self.target}, "syncPolicy": {"interval": "1m"}}}

    def create(self, fleet):
        self.url = fleet.url
        self.cluster.create_many(self.apps_path, [self.application(app_name(a), app_name(a))
                                                  for a in range(fleet.apps)])

    def create_health(self, count):
        self.cluster.create_many(self.apps_path, [self.application(health_name(i), health_name(i),
                                                                   {"bench": "health"})
                                                  for i in range(count)])

    def healthy(self):
        """Names of the health measurement's resources that say Healthy."""
        return {a["metadata"]["name"] for a in self.cluster.items(self.apps_path + "?labelSelector=bench%3Dhealth")
                if (a.get("status") or {}).get("health") == "Healthy"}

    def revisions(self):
        """Application name → the revision it last applied (None: no status at all)."""
        return {a["metadata"]["name"]: (a.get("status") or {}).get("lastAppliedRevision")
                for a in self.cluster.items(self.apps_path) if a["metadata"]["name"].startswith("app-")}

    def never_reconciled(self):
        return sorted(a["metadata"]["name"] for a in self.cluster.items(self.apps_path)
                      if not (a.get("status") or {}).get("conditions"))

    def revision_of(self, name):
        return (json.loads(self.cluster.call("GET", f"{self.apps_path}/{name}")).get("status") or {}).get(
            "lastAppliedRevision")

    def notify(self, fleet, revision):
        # As a Git host sends it: each push names its commit (the agent refuses a body it
        # received before, a replay) and the files each commit changed.
        changed = fleet.git("diff-tree", "--no-commit-id", "--name-only", "-r", revision).splitlines()
        body = json.dumps({"ref": "refs/heads/main", "after": revision,
                           "commits": [{"id": revision, "added": [], "modified": changed, "removed": []}],
                           "repository": {"clone_url": fleet.url}}).encode()
        signature = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/webhooks/github", data=body, method="POST")
        req.add_header("X-Hub-Signature-256", "sha256=" + signature)
        req.add_header("X-GitHub-Event", "push")
        urllib.request.urlopen(req, timeout=10).read()

    def drop_finalizers(self):
        """The agent's finalizer (deleting an Application deletes its objects) is dropped once
        the agent is stopped: the namespaces go, and their objects with them."""
        self.cluster.drop_finalizers(self.apps_path)

    def stop(self):
        for p in self.processes:
            p.terminate()
            p.wait(timeout=120)
        self.drop_finalizers()
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

    kustomizations_path = f"/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/{namespace}/kustomizations"

    def kustomization(self, name, path, labels=None, wait=False):
        spec = {"sourceRef": {"kind": "GitRepository", "name": "fleet"}, "path": f"./{path}",
                "targetNamespace": self.target, "prune": True, "interval": "1m"}
        if wait:
            spec.update({"wait": True, "timeout": "5m"})
        return {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                "metadata": {"name": name, "namespace": self.namespace, "labels": labels or {}}, "spec": spec}

    def create(self, fleet):
        repository = {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
                      "metadata": {"name": "fleet", "namespace": self.namespace},
                      "spec": {"url": fleet.url, "ref": {"branch": "main"}, "interval": "1m"}}
        self.cluster.create_many(f"/apis/source.toolkit.fluxcd.io/v1/namespaces/{self.namespace}/gitrepositories",
                                 [repository])
        self.cluster.create_many(self.kustomizations_path, [self.kustomization(app_name(a), app_name(a))
                                                            for a in range(fleet.apps)])

    def create_health(self, count):
        """Kustomizations with `wait: true`: Ready once what they applied is healthy (Flux's
        health assessment)."""
        self.cluster.create_many(self.kustomizations_path,
                                 [self.kustomization(health_name(i), health_name(i), {"bench": "health"}, True)
                                  for i in range(count)])

    def healthy(self):
        items = self.cluster.items(self.kustomizations_path + "?labelSelector=bench%3Dhealth")
        return {k["metadata"]["name"] for k in items
                if any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in (k.get("status") or {}).get("conditions") or [])}

    @staticmethod
    def _revision(kustomization):
        # "main@sha1:<commit>" → the commit
        revision = (kustomization.get("status") or {}).get("lastAppliedRevision") or ""
        return revision.rsplit(":", 1)[-1] or None

    def revisions(self):
        return {k["metadata"]["name"]: self._revision(k) for k in self.cluster.items(self.kustomizations_path)
                if k["metadata"]["name"].startswith("app-")}

    def never_reconciled(self):
        return sorted(k["metadata"]["name"] for k in self.cluster.items(self.kustomizations_path)
                      if not (k.get("status") or {}).get("conditions"))

    def revision_of(self, name):
        return self._revision(json.loads(self.cluster.call("GET", f"{self.kustomizations_path}/{name}")))

    def notify(self, fleet, revision):
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        path = f"/apis/source.toolkit.fluxcd.io/v1/namespaces/{self.namespace}/gitrepositories/fleet"
        self.cluster.call("PATCH", path, {"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": now}}})

    def drop_finalizers(self):
        """Flux's objects carry finalizers that only its controllers remove: once they are
        gone (or after a failed run), drop them so that the namespace can be deleted."""
        self.cluster.drop_finalizers(self.kustomizations_path)
        self.cluster.drop_finalizers(f"/apis/source.toolkit.fluxcd.io/v1/namespaces/{self.namespace}/gitrepositories")

    def stop(self):
        for p in self.processes:
            p.terminate()
            p.wait(timeout=60)
        self.drop_finalizers()
        self.cluster.run_kubectl("delete", "ns", self.namespace, self.target, "--wait=true")


def wait_all_applied(tool, revision, count, limit, looks=None):
    """Until `count` resources applied `revision`: (all did, how many did). Lists every
    resource at each look, so it looks less often the more there are (every 5 s at 10,000):
    the benchmark's own reads must not be what the API server spends its time on. `looks`
    (a list) gets one entry per look."""
    started = time.time()
    interval = max(0.5, count / 2000)
    while True:
        done = sum(1 for r in tool.revisions().values() if r == revision)
        if looks is not None:
            looks.append(done)
        if done >= count:
            return True, done
        if time.time() - started > limit:
            return False, done
        time.sleep(interval)


def look_cost(tool, looks=3):
    """The API server's CPU seconds for one of the benchmark's looks at the fleet (a LIST of
    every resource), the mean of `looks`."""
    before = cpu_split()["API server"]
    for _ in range(looks):
        tool.revisions()
    return (cpu_split()["API server"] - before) / looks


def drift(cluster, tool, fleet, objects, edits, batch_size, limit):
    """Hand edits of managed ConfigMaps, `batch_size` at once (each in another folder),
    until each is put back; the latencies, sorted, each from its own edit."""
    latencies, missed = [], 0
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
                # Reported as such (a tool whose queue is long corrects late), not fatal.
                log(f"{tool.name}: {len(pending)} edits not corrected within {limit} s")
                missed += len(pending)
                break
            time.sleep(0.005)
    return sorted(latencies), missed


def percentiles(values):
    """(p50, p99, max, count) of a list of numbers."""
    values = sorted(values)
    return (statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.99))],
            values[-1], len(values))


class EventStream:
    """The web UI's live event stream (server-sent events, `/ui/events`) read from the
    agent's start through the converge, as an open page reads it: how many `app` events
    came, how many `resync` events (the stream fell behind and the page would reload), and
    when it first showed every Application Synced (the counts each event carries)."""

    SYNCED = re.compile(r'href="/ui/\?sync=Synced"><span class="n">(\d+)</span>')

    def __init__(self, port, token, apps):
        self.port, self.token, self.apps = port, token, apps
        self.app_events, self.resyncs, self.synced, self.all_synced_at = 0, 0, 0, None
        self.started = time.time()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/ui/events",
                                         headers={"Authorization": f"Bearer {self.token}"})
        for _ in range(600):  # until the agent listens (at most 60 s)
            try:
                response = urllib.request.urlopen(request, timeout=None)
                break
            except OSError:
                time.sleep(0.1)
        else:
            return
        event = None
        # Ends when the agent stops (or restarts) and closes the stream.
        for raw in response:
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "resync":
                self.resyncs += 1
            elif line.startswith("data:") and event == "app":
                self.app_events += 1
                found = self.SYNCED.search(json.loads(line[5:]).get("counts", ""))
                if found:
                    self.synced = int(found.group(1))
                    if self.synced >= self.apps and self.all_synced_at is None:
                        self.all_synced_at = time.time() - self.started


def converge(tool, fleet, budget, results):
    """Creates the fleet's resources and waits until all applied its head; False when the
    budget ran out first (with how far it got in `results`)."""
    head = fleet.reset()
    cpu_before = cpu_split(git_server=fleet.server.pid)
    requests_before = tool.cluster.requests_by_kind()
    tool.start()
    started = time.time()
    events = EventStream(tool.http_port, tool.token, fleet.apps) if hasattr(tool, "token") else None
    tool.create(fleet)
    results["created"] = time.time() - started
    log(f"{tool.name}: {fleet.apps} resources created in {results['created']:.1f} s")
    looks = []
    complete, done = wait_all_applied(tool, head, fleet.apps, budget, looks)
    results["converge"] = time.time() - started
    results["converged"], results["budget"] = done, budget
    results["never"] = len(tool.never_reconciled())
    results["converge_peak_mib"] = sum(memory_mib(p.pid)[0] for p in tool.processes)
    results["converge_cpu"] = cpu_used(cpu_before, cpu_split([p.pid for p in tool.processes],
                                                             fleet.server.pid))
    results["converge_requests"] = requests_used(requests_before, tool.cluster.requests_by_kind())
    results["looks"] = (len(looks), look_cost(tool))
    log(f"{tool.name}: {done} of {fleet.apps} applied after {results['converge']:.1f} s, "
        f"{results['never']} never reconciled, peak {results['converge_peak_mib']:.0f} MiB")
    if events:
        # The stream may trail the lists the benchmark reads every few seconds: a moment more.
        deadline = time.time() + 30
        while complete and events.all_synced_at is None and time.time() < deadline:
            time.sleep(0.2)
        results["events"] = (events.app_events, events.resyncs, events.synced, events.all_synced_at)
        log(f"{tool.name}: event stream: {events.app_events} app events, {events.resyncs} resyncs, "
            f"{events.synced} Synced in its last counts, all Synced at {events.all_synced_at} s")
    return complete


def restart(tool, cluster, apps, results):
    """The agent stopped and started again with everything applied: time until its gauge
    counts every Application Synced (each verified by the new process), the requests the
    API server served meanwhile (whoever sent them), and the writes to objects and to
    Applications."""
    before = (cluster.all_requests(), cluster.writes("configmaps"), cluster.writes("applications"))
    started = time.time()
    tool.restart()
    while (tool.agent_metric("tether_applications", 'sync="Synced"') or 0) < apps:
        if time.time() - started > 1800:
            raise SystemExit(f"{tool.name}: not every Application verified within 1800 s of a restart")
        time.sleep(0.25)
    results["restart"] = time.time() - started
    after = (cluster.all_requests(), cluster.writes("configmaps"), cluster.writes("applications"))
    results["restart_requests"], results["restart_cm_writes"], results["restart_app_writes"] = (
        a - b for a, b in zip(after, before))
    log(f"{tool.name}: restart, every Application verified in {results['restart']:.1f} s, "
        f"{results['restart_requests']:.0f} requests, {results['restart_cm_writes']:.0f} object writes")


def health_latency(tool, cluster, count, limit=600):
    """New resources of one Deployment each: from the Deployment Available (first seen so in
    a list every 50 ms) to its resource saying Healthy (tether) or Ready (Flux, `wait: true`)
    (first seen so in the same loop); both are read in each loop, so the resolution is one
    loop (a few tens of milliseconds)."""
    tool.create_health(count)
    available, healthy = {}, {}
    deployments = f"/apis/apps/v1/namespaces/{tool.target}/deployments"
    started = time.time()
    while len(healthy) < count:
        now = time.time()
        for d in cluster.items(deployments):
            name = d["metadata"]["name"]
            if name.startswith("health-") and name not in available and any(
                    c.get("type") == "Available" and c.get("status") == "True"
                    for c in (d.get("status") or {}).get("conditions") or []):
                available[name] = now
        now = time.time()
        for name in tool.healthy() - healthy.keys():
            healthy[name] = now
            available.setdefault(name, now)
        if time.time() - started > limit:
            log(f"{tool.name}: only {len(healthy)} of {count} healthy within {limit} s")
            break
        time.sleep(0.05)
    return percentiles([healthy[n] - available[n] for n in healthy]) + (count - len(healthy),) if healthy else None


def measure_ceiling(cluster, binary, work, apps, objects, concurrency):
    """The API server's ceiling for the fleet's writes: the bare client (server-side applies
    only, `concurrency` at once) applies the same ConfigMaps into a namespace of its own.
    Returns (seconds, failures, CPU seconds by who used them: see `cpu_split`); the namespace
    is deleted (and waited for) afterwards."""
    folder = os.path.join(work, "ceiling")
    os.makedirs(folder, exist_ok=True)
    per_file = max(1, 1000 // objects)  # tether reads up to 1,024 documents from one file
    for first in range(0, apps, per_file):
        with open(os.path.join(folder, f"configmaps-{first:06d}.yaml"), "w") as f:
            for a in range(first, min(first + per_file, apps)):
                for o in range(objects):
                    f.write(cm_yaml(a, o))
    namespace = "bench-ceiling"
    cluster.run_kubectl("create", "namespace", namespace)
    try:
        cpu_before = cpu_split()
        requests_before = cluster.requests_by_kind()
        client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.time()
        done = subprocess.run([binary, folder, namespace, str(concurrency)], text=True,
                              capture_output=True)
        if done.returncode != 0:
            raise SystemExit(f"ceiling: {binary} failed ({done.returncode}): {done.stderr[:2000]}")
        cpu = cpu_used(cpu_before, cpu_split())
        cpu["wall"] = time.time() - started  # the client's start and discovery too
        cpu["requests"] = requests_used(requests_before, cluster.requests_by_kind())
        client = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu["tool"] = (client.ru_utime + client.ru_stime) - (client_before.ru_utime + client_before.ru_stime)
        seconds, _, failures = done.stdout.split()
        log(f"ceiling: {apps * objects} applies, {concurrency} at once, in {float(seconds):.1f} s")
        return float(seconds), int(failures), cpu
    finally:
        cluster.run_kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=30m")
        shutil.rmtree(folder, ignore_errors=True)


def api_times(tool, runs=20):
    """The agent's JSON API and web UI with the whole fleet: each page `runs` times."""
    base, ns = f"http://127.0.0.1:{tool.http_port}", tool.namespace
    pages = {
        "JSON API list, first page of 50": "/api/v1/applications?limit=50",
        "JSON API list, a name filter (app-09)": "/api/v1/applications?q=app-09&limit=50",
        "JSON API list, one namespace": f"/api/v1/applications?namespace={ns}&limit=50",
        "JSON API, one Application": f"/api/v1/applications/{ns}/app-0001",
        "JSON API, one Application, refresh=true (lists the remote)":
            f"/api/v1/applications/{ns}/app-0001?refresh=true",
        "web UI list, first page": "/ui/",
        "web UI list, a name filter (app-09)": "/ui/?q=app-09",
        "web UI, one Application's page": f"/ui/apps/{ns}/app-0001",
    }
    times, steps = {}, {}
    for what, path in pages.items():
        took = []
        for _ in range(runs):
            request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {tool.token}"})
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as response:
                size = len(response.read())
                timing = response.headers.get("Server-Timing")
            took.append((time.perf_counter() - started) * 1000)
            # The agent's own split of the time (`step;dur=ms, ...`), where it gives one.
            for part in (timing or "").split(","):
                name, _, duration = part.strip().partition(";dur=")
                if duration:
                    steps.setdefault(what, {}).setdefault(name, []).append(float(duration))
        times[what] = percentiles(took) + (size,)
    return times, steps


def measure(tool, cluster, fleet, drift_runs, objects, drift_limit, steady_seconds, pushes, budget):
    """`drift_runs`: (edits at once, edits in all) pairs. With `drift_runs` empty and no
    pushes, only the converge time and the memory (the growth runs)."""
    results = {}
    if not converge(tool, fleet, budget, results):
        results["partial"] = True
        memory = [memory_mib(p.pid) for p in tool.processes]
        results["peak_mib"], results["rss_mib"] = sum(m[0] for m in memory), sum(m[1] for m in memory)
        results["peak_each"] = " + ".join(f"{m[0]:.0f}" for m in memory)
        tool.stop()
        return results

    for batch, count in drift_runs:
        latencies, missed = drift(cluster, tool, fleet, objects, count, batch, drift_limit)
        results[f"drift{batch}_missed"] = (missed, drift_limit)
        if latencies:
            results[f"drift{batch}"] = percentiles(latencies)
            log(f"{tool.name}: drift, {batch} at once: p50 {results[f'drift{batch}'][0]:.3f} s over {count} edits")

    revision = fleet.head
    if pushes:
        times = []
        for _ in range(pushes):
            revision = fleet.push_to_first_app()
            started = time.time()
            tool.notify(fleet, revision)
            while tool.revision_of(app_name(0)) != revision and time.time() - started < 600:
                time.sleep(0.01)
            if tool.revision_of(app_name(0)) != revision:
                log(f"{tool.name}: push {revision[:12]} not applied within 600 s")
                results["push_missed"] = results.get("push_missed", 0) + 1
                continue
            times.append(time.time() - started)
        if times:
            results["push_p50"] = statistics.median(times)
            results["push_max"] = max(times)
            results["pushes"] = len(times)
            log(f"{tool.name}: push to applied median {results['push_p50']:.3f} s")

    if steady_seconds:
        # Steady state: once everything applied the last push (said when it had not within
        # 900 s: then the tool was still busy during the window).
        complete, done = wait_all_applied(tool, revision, fleet.apps, 900)
        if not complete:
            results["steady_busy"] = done
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
    if drift_runs and hasattr(tool, "restart"):
        restart(tool, cluster, fleet.apps, results)
        results["api"], results["api_steps"] = api_times(tool)
    if drift_runs:
        health = health_latency(tool, cluster, HEALTH_APPS)
        if health:
            results["health"] = health
            log(f"{tool.name}: Deployment Available to healthy p50 {health[0]:.3f} s")
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
    # Managed objects on a log scale when they span more than 20×: 1,000 to 100,000 would
    # crowd the small fleets at the origin.
    logarithmic = min(xs) > 0 and max(xs) / min(xs) > 20
    scale = math.log10 if logarithmic else (lambda x: x)
    left = scale(min(xs)) - 0.3 if logarithmic else 0
    for i, (title, ys) in enumerate(panels):
        x0 = i * width
        top = max(ys) * 1.15 or 1
        span = scale(max(xs)) * 1.05 - left if not logarithmic else scale(max(xs)) + 0.3 - left

        def at(x, y, x0=x0, top=top, span=span):
            return (x0 + pad + (width - 1.5 * pad) * (scale(x) - left) / span if x else x0 + pad,
                    height - pad - (height - 1.7 * pad) * y / top)

        parts.append(f'<text x="{x0 + width / 2}" y="15" text-anchor="middle" font-weight="bold">{title}</text>')
        end = x0 + width - 0.5 * pad
        parts.append(f'<line x1="{at(0, 0)[0]}" y1="{at(0, 0)[1]}" x2="{end}" y2="{at(0, 0)[1]}" stroke="black"/>')
        parts.append(f'<line x1="{at(0, 0)[0]}" y1="{at(0, 0)[1]}" x2="{at(0, top)[0]}" y2="{at(0, top)[1]}" stroke="black"/>')
        for x in xs:
            px, py = at(x, 0)
            parts.append(f'<text x="{px}" y="{py + 14}" text-anchor="middle">{x}</text>')
        axis = "managed objects (log scale)" if logarithmic else "managed objects"
        parts.append(f'<text x="{x0 + width / 2}" y="{height - 8}" text-anchor="middle">{axis}</text>')
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
    parser.add_argument("--tools", default="tether,flux,ceiling",
                        help="which tools to measure, in order (ceiling: the bare client's applies)")
    parser.add_argument("--ceiling", required=True, help="the bare client (examples/ssa_ceiling.rs)")
    parser.add_argument("--ceiling-concurrency", type=int, default=128)
    parser.add_argument("--budget", type=int, default=3600,
                        help="seconds a tool may take to converge a fleet before it is reported as far as it got")
    parser.add_argument("--flux-budget", type=int, default=None,
                        help="the same for Flux at fleets over 1,000 (default: --budget)")
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
            if name == "ceiling":
                runs[(apps, objects, name)] = measure_ceiling(cluster, args.ceiling, work, apps, objects,
                                                              args.ceiling_concurrency)
                continue
            fleet = Fleet(work, apps, objects, args.git_server)
            tool, drift_runs, limit, pushes = plan[name]
            try:
                if full:
                    budget = args.budget
                    if name == "flux" and apps > 1000 and args.flux_budget:
                        budget = args.flux_budget
                    runs[(apps, objects, name)] = measure(tool, cluster, fleet, drift_runs, objects, limit,
                                                          args.steady_seconds, pushes, budget)
                else:
                    r = measure(tool, cluster, fleet, [], objects, limit, 0, 0, args.budget)
                    growth_runs.append((apps * objects, r["converge"], r["peak_mib"], apps))
            finally:
                for p in tool.processes:
                    p.kill()
                tool.drop_finalizers()
                fleet.stop()
                shutil.rmtree(fleet.root, ignore_errors=True)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem_gib = int(open("/proc/meminfo").readline().split()[1]) / 1024 / 1024

    def cell(key, render):
        def show(r):
            return render(r) if key in r else "—"
        return show

    def drift_cell(key):
        def show(r):
            missed, limit = r.get(key + "_missed", (0, 0))
            text = "{:.3f} / {:.3f} / {:.3f} s ({})".format(*r[key]) if key in r else "—"
            return text + (f"; **{missed} not corrected within {limit} s**" if missed else "")
        return show

    def steady_cell(key, render):
        def show(r):
            if key not in r:
                return "—"
            busy = r.get("steady_busy")
            return render(r) + (f" (still applying the last push: {busy} of the fleet had)" if busy is not None else "")
        return show

    def converged(r):
        if r.get("partial"):
            return f"**not within its budget of {r['budget']} s**: {r['converged']} of the fleet applied by then"
        return f"{r['converge']:.1f} s"

    def cpu_cell(r):
        cpu = r.get("converge_cpu")
        if not cpu:
            return "—"
        named = " / ".join(f"{cpu[who]:.0f}" for who in
                           ["API server", "etcd", "controllers", "tool", "Git server", "machine"])
        return f"{named} (of {os.cpu_count() * r['converge']:.0f})"

    rows = [
        ("create the resources (the benchmark's client, 8 requests at once)", lambda r: f"{r['created']:.1f} s"),
        ("create until all applied", converged),
        ("resources never reconciled (no status) when all others had applied", lambda r: f"{r['never']}"),
        ("CPU seconds during the converge: API server / etcd / controllers / the tool / Git server (with "
         "git http-backend) / whole machine (busy, of cores × seconds)", cpu_cell),
        ("drift to corrected, one edit at a time: p50 / p99 / max (edits)", drift_cell("drift1")),
        ("drift to corrected, 10 edits at once: p50 / p99 / max (edits)", drift_cell("drift10")),
        ("push notification to applied: median / max (pushes)",
         lambda r: (f"{r['push_p50']:.3f} / {r['push_max']:.3f} s ({r['pushes']})" if "push_p50" in r else "—")
         + (f"; **{r['push_missed']} not applied within 600 s**" if r.get("push_missed") else "")),
        ("peak RSS (VmHWM; per process)", lambda r: f"{r['peak_mib']:.0f} MiB ({r['peak_each']})"),
        ("RSS at the end", lambda r: f"{r['rss_mib']:.0f} MiB"),
        (f"steady state: per-object ConfigMap requests per minute ({args.steady_seconds} s window)",
         steady_cell("steady", lambda r: f"{r['steady']:.1f}")),
        (f"steady state: all API requests per minute, whole server (baseline without a tool: {baseline:.0f})",
         steady_cell("steady_all", lambda r: f"{r['steady_all']:.0f}")),
        ("steady state: the tool's CPU seconds per idle minute",
         steady_cell("idle_cpu", lambda r: f"{r['idle_cpu']:.2f}")),
        ("agent restarted: until every Application verified (Synced in its gauge)",
         cell("restart", lambda r: f"{r['restart']:.1f} s")),
        ("agent restarted: API requests meanwhile (whole server) / object writes / Application writes",
         cell("restart", lambda r: f"{r['restart_requests']:.0f} / {r['restart_cm_writes']:.0f} / "
                                   f"{r['restart_app_writes']:.0f}")),
        ("web UI event stream during the converge: `app` events / `resync` events (fell behind) / "
         "first showed every Application Synced",
         cell("events", lambda r: f"{r['events'][0]} / {r['events'][1]} / "
              + (f"{r['events'][3]:.1f} s after the first create" if r["events"][3] is not None
                 else f"never ({r['events'][2]} Synced in its last event)"))),
        (f"Deployment Available to healthy ({HEALTH_APPS} new resources): p50 / p99 / max",
         cell("health", lambda r: "{:.3f} / {:.3f} / {:.3f} s".format(*r["health"][:3])
              + (f"; **{r['health'][4]} not healthy within 600 s**" if r["health"][4] else ""))),
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
        "- The tools ran one after the other, each alone, in separate namespaces, in this run. The resources "
        "were created by the benchmark's own client, 8 requests at once (kubectl would take about 19 minutes for "
        "10,000), and converge counts from the first create.",
        f"- Health: {HEALTH_APPS} new resources of one Deployment each (its Pod run by kwok) once the fleet has "
        "converged: from the Deployment's Available condition to tether's Application `Healthy` / Flux's "
        "Kustomization (`wait: true`) `Ready`, both read in one loop every 50 ms.",
        "- tether only: the agent restarted (SIGTERM, started again, its Git cache kept) with everything applied; "
        "its JSON API and web UI timed with the whole fleet.",
        "",
    ]
    for apps, objects in fleets:
        tr, fr = runs.get((apps, objects, "tether")), runs.get((apps, objects, "flux"))
        lines += [f"## {apps} Applications × {objects} ConfigMaps ({apps * objects} objects)", "",
                  "| what | tether | Flux |", "|---|---|---|"]
        for what, render in rows:
            cell = lambda r: render(r) if r else "not run"
            lines.append(f"| {what} | {cell(tr)} | {cell(fr)} |")
        ceiling = runs.get((apps, objects, "ceiling"))
        if ceiling:
            seconds, failures, cpu = ceiling
            lines += ["", f"The API server's ceiling for these writes: the bare client (`examples/ssa_ceiling.rs`, "
                          f"server-side applies only, {args.ceiling_concurrency} at once, no plan, no status) applied "
                          f"the same {apps * objects:,} ConfigMaps in {seconds:.1f} s ({failures} failed)"
                          + (f"; tether's converge took {tr['converge'] / seconds:.1f}× that."
                             if tr and not tr.get("partial") else ".")
                          + f" CPU seconds meanwhile: API server {cpu['API server']:.0f}, etcd {cpu['etcd']:.0f}, "
                          f"controllers {cpu['controllers']:.0f}, the bare client {cpu['tool']:.0f}, whole machine "
                          f"{cpu['machine']:.0f} of {os.cpu_count() * cpu['wall']:.0f} (cores × the client's whole run); "
                          f"{requests_line(cpu['requests'], 4)}."]
        if tr and tr.get("converge_requests"):
            lines += ["", f"The API server during tether's converge (whole server, the benchmark's own reads "
                          f"included): {requests_line(tr['converge_requests'], 12)}."]
            looked, cost = tr["looks"]
            lines += ["", f"The benchmark's own looks at the fleet (a LIST of every Application) during the converge: "
                          f"{looked}, each {cost:.2f} API server CPU s afterwards (mean of 3), about "
                          f"{looked * cost:.0f} of the API server's {tr['converge_cpu']['API server']:.0f}."]
        if tr and fr and not tr.get("partial") and not fr.get("partial"):
            lines += ["", f"Converge: Flux / tether = {fr['converge'] / tr['converge']:.1f}×; "
                          f"peak memory: Flux / tether = {fr['peak_mib'] / tr['peak_mib']:.1f}×."]
        if tr and "api" in tr:
            lines += ["", f"tether's JSON API and web UI with these {apps} Applications synced (the agent's "
                          "`--listen`, a bearer token, 20 requests each from a client on loopback): "
                          "p50 / p99 / max ms, bytes", "", "| page | tether |", "|---|---|"]
            for what, (p50, p99, worst, _, size) in tr["api"].items():
                lines.append(f"| {what} | {p50:.1f} / {p99:.1f} / {worst:.1f} ms, {size:,} bytes |")
            for what, split in tr.get("api_steps", {}).items():
                lines += ["", f"{what}: the agent's split of the time (its `Server-Timing` header), p50 / max ms: "
                          + ", ".join(f"{name} {statistics.median(ms):.1f} / {max(ms):.1f}" for name, ms in split.items())]
        lines.append("")
    # Growth: the growth runs and the fleets tether ran in full, together.
    growth_runs = sorted(growth_runs + [(apps * objects, r["converge"], r["converge_peak_mib"], apps)
                                        for (apps, objects, name), r in runs.items()
                                        if name == "tether" and not r.get("partial")])
    if len(growth_runs) < 2:
        growth_runs = []
    if growth_runs:
        plot = os.path.splitext(args.report)[0] + "-growth.svg"
        svg_plot(growth_runs, plot)
        first = growth_runs[0]
        lines += ["## Growth: tether alone, converge and peak memory against managed objects", "",
                  "| Applications | managed objects | converge s | peak RSS MiB (during converge) "
                  "| s per 1,000 objects | MiB per 1,000 objects above the first | KiB per Application above the first |",
                  "|---|---|---|---|---|---|---|"]
        for total, seconds, peak, apps in growth_runs:
            extra = "—" if total == first[0] else f"{(peak - first[2]) * 1000 / (total - first[0]):.1f}"
            per_app = "—" if apps == first[3] else f"{(peak - first[2]) * 1024 / (apps - first[3]):.0f}"
            lines.append(f"| {apps} | {total} | {seconds:.1f} | {peak:.0f} | {seconds * 1000 / total:.2f} "
                         f"| {extra} | {per_app} |")
        lines += ["", f"Plot: [{os.path.basename(plot)}]({os.path.basename(plot)})", ""]
    os.makedirs(os.path.dirname(args.report), exist_ok=True)
    with open(args.report, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
