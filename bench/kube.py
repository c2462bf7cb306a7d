"""The API server as the benchmarks call it: the admin certificate of the testenv
kubeconfig, plain HTTPS requests, and many creates at once over kept-alive connections
(creating 10,000 Applications with one `kubectl apply` takes kubectl about 19 minutes on
the 2-core machine, one object after another: the benchmark measures the tool, not that)."""

import http.client
import json
import os
import re
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse


class Cluster:
    """The API server, called with the admin certificate of the testenv kubeconfig."""

    def __init__(self, kubeconfig, kubectl):
        self.kubectl = kubectl
        config = json.load(open(kubeconfig))
        self.server = config["clusters"][0]["cluster"]["server"]
        pki = os.path.join(os.path.dirname(kubeconfig), "pki")
        self.ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
        self.local = threading.local()

    def call(self, method, path, body=None, content_type="application/merge-patch+json"):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, method=method, data=data)
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, context=self.ctx, timeout=60) as resp:
            return resp.read()

    def items(self, path):
        return json.loads(self.call("GET", path))["items"]

    def _connection(self):
        connection = getattr(self.local, "connection", None)
        if connection is None:
            url = urlparse(self.server)
            connection = http.client.HTTPSConnection(url.hostname, url.port, context=self.ctx, timeout=60)
            self.local.connection = connection
        return connection

    def _send(self, method, path, body, content_type="application/json"):
        data = json.dumps(body).encode()
        for attempt in range(5):
            connection = self._connection()
            try:
                connection.request(method, path, body=data, headers={"Content-Type": content_type})
                response = connection.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                self.local.connection = None
                continue
            # Created, or already there (409); patched, or already gone (404).
            if response.status in (200, 201, 404 if method == "PATCH" else 409):
                return
            if response.status in (429, 500, 503, 504):
                continue
            raise RuntimeError(f"{method} {path}: {response.status} {answer[:300]!r}")
        raise RuntimeError(f"{method} {path}: no answer after 5 attempts")

    def create_many(self, path, bodies, workers=8):
        """POSTs every body to `path`, `workers` at once; an object already there (409) counts
        as created."""
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(lambda body: self._send("POST", path, body), bodies):
                pass

    def drop_finalizers(self, path, workers=8):
        """Removes the finalizers of every object listed at `path` (a collection), so that
        they and their namespace can go without the controller that put them there."""
        try:
            names = [i["metadata"]["name"] for i in self.items(path) if i["metadata"].get("finalizers")]
        except urllib.error.HTTPError:
            return  # the kind is not installed (yet)
        patch = {"metadata": {"finalizers": None}}
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(lambda name: self._send("PATCH", f"{path}/{name}", patch,
                                                      "application/merge-patch+json"), names):
                pass

    def run_kubectl(self, *args, stdin=None):
        subprocess.run([self.kubectl, *args], input=stdin, check=True, text=True,
                       stdout=subprocess.DEVNULL)

    def metrics(self):
        return self.call("GET", "/metrics").decode()

    def per_object_configmap_requests(self):
        return sum(float(line.rsplit(" ", 1)[1]) for line in self.metrics().splitlines()
                   if line.startswith("apiserver_request_total{")
                   and 'resource="configmaps"' in line and 'scope="resource"' in line)

    def all_requests(self):
        """Every request the API server counted so far, whoever sent it."""
        return sum(float(line.rsplit(" ", 1)[1]) for line in self.metrics().splitlines()
                   if line.startswith("apiserver_request_total{"))

    def requests_by_kind(self):
        """Requests the API server counted so far, by (verb, resource with its subresource,
        dry-run or not), whoever sent them."""
        counts = {}
        for line in self.metrics().splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            resource = "/".join(filter(None, [labels.get("resource"), labels.get("subresource")]))
            key = (labels.get("verb", ""), resource or "(no resource)", labels.get("dry_run") == "All")
            counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return counts

    def writes(self, resource):
        """Writes (not dry-runs) the API server counted so far to `resource`, subresources
        (status) included."""
        total = 0.0
        for line in self.metrics().splitlines():
            if (line.startswith("apiserver_request_total{") and f'resource="{resource}"' in line
                    and 'dry_run="All"' not in line
                    and any(f'verb="{v}"' in line for v in ("POST", "PUT", "PATCH", "APPLY", "DELETE"))):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def recreate_namespaces(self, *names):
        self.run_kubectl("delete", "ns", *names, "--ignore-not-found", "--wait=true")
        for name in names:
            self.run_kubectl("create", "ns", name)
