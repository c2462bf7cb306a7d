#!/usr/bin/env python3
"""testenv: a real local Kubernetes control plane built from pinned Go modules.

Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd (at the
version Kubernetes pins) from the Go module proxy, plus kwok, helm, kustomize and toxiproxy; caches
them outside the repository; starts them on free loopback ports. Start reading at `main`.
On request only (`build flux`), Flux's source- and kustomize-controller for the benchmarks.

Commands: build, up, down, restart, env, status, logs, bin. `testenv.py --help` says more.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.env"

# Build tags and flags that upstream Kubernetes uses for its release binaries.
K8S_TAGS = "selinux,notest,grpcnotrace"
K8S_COMMANDS = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"]
ETCD_PACKAGE = "go.etcd.io/etcd/server/v3"

PROFILES = {
    # etcd and the API server only: enough for API tests, starts in seconds.
    "minimal": ["etcd", "kube-apiserver"],
    # controllers, a scheduler and kwok's simulated nodes, so workloads become Ready.
    "full": ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"],
}
# What `build` builds without arguments: everything `make test` and the demo need.
DEFAULT_TARGETS = ["kubernetes", "kwok", "helm", "kustomize", "toxiproxy"]
# Built only when named: the peer the benchmarks measure tether against, Gitea (a Git host
# whose webhooks and commit-status API the notification tests use), sops and age (encrypted
# manifests), the distribution registry (OCI charts and artifacts) and the flux CLI (its
# `push artifact` and `pull artifact`, for the OCI interoperability test).
EXTRA_TARGETS = ["flux", "gitea", "sops", "age", "registry", "flux-cli"]
# Flux controllers: name -> (module, versions.env key). Each module's main package is its root.
FLUX_CONTROLLERS = {
    "flux-source-controller": ("github.com/fluxcd/source-controller", "FLUX_SOURCE_CONTROLLER_VERSION"),
    "flux-kustomize-controller": ("github.com/fluxcd/kustomize-controller", "FLUX_KUSTOMIZE_CONTROLLER_VERSION"),
}
DEFAULT_NODES = 3
CONTEXT_NAME = "tether-testenv"


class TestenvError(Exception):
    """An error the user can act on; printed without a traceback."""


# ---------------------------------------------------------------------------------------
# Paths and versions


def cache_root() -> Path:
    if os.environ.get("TETHER_CACHE_DIR"):
        return Path(os.environ["TETHER_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "tether"


def run_dir() -> Path:
    if os.environ.get("TETHER_TESTENV_DIR"):
        return Path(os.environ["TETHER_TESTENV_DIR"])
    return cache_root() / "testenv"


def read_versions() -> dict[str, str]:
    versions = {}
    for lineno, line in enumerate(VERSIONS_FILE.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise TestenvError(f"{VERSIONS_FILE}:{lineno}: expected KEY=VALUE, got {line!r}")
        key, value = line.split("=", 1)
        versions[key.strip()] = value.strip()
    for key in ["KUBERNETES_VERSION", "KWOK_VERSION", "HELM_VERSION", "KUSTOMIZE_VERSION"]:
        if key not in versions:
            raise TestenvError(f"{VERSIONS_FILE}: {key} is missing")
    return versions


def k8s_bin_dir(versions: dict[str, str]) -> Path:
    return cache_root() / "bin" / f"kubernetes-{versions['KUBERNETES_VERSION']}"


def tool_bin_dir(name: str, version: str) -> Path:
    return cache_root() / "bin" / f"{name}-{version}"


def pinned(versions: dict[str, str], key: str) -> str:
    if key not in versions:
        raise TestenvError(f"{VERSIONS_FILE}: {key} is missing")
    return versions[key]


def binary(name: str, versions: dict[str, str]) -> Path:
    if name in K8S_COMMANDS or name == "etcd":
        return k8s_bin_dir(versions) / name
    if name in FLUX_CONTROLLERS:
        return tool_bin_dir(name, pinned(versions, FLUX_CONTROLLERS[name][1])) / name
    key = {"kwok": "KWOK_VERSION", "helm": "HELM_VERSION", "kustomize": "KUSTOMIZE_VERSION",
           "toxiproxy-server": "TOXIPROXY_VERSION", "gitea": "GITEA_VERSION", "sops": "SOPS_VERSION",
           "age": "AGE_VERSION", "age-keygen": "AGE_VERSION", "registry": "REGISTRY_VERSION",
           "flux": "FLUX_CLI_VERSION"}[name]
    return tool_bin_dir(name, versions[key]) / name


def log(msg: str) -> None:
    print(f"testenv: {msg}", file=sys.stderr, flush=True)


def fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock, so two builds or two `up`s never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another testenv holding {path} ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------------------------------
# Build


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    # The machine's Go is new enough for every pinned module; never fetch another toolchain.
    env.setdefault("GOTOOLCHAIN", "local")
    env.setdefault("GOFLAGS", "-mod=mod")
    return env


def run_go(args: list[str], cwd: Path, what: str, total: int | None = None) -> None:
    """Runs `go`, printing a progress line every 20 s; the full output goes to a log."""
    logs = cache_root() / "build-logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', what)}.log"
    started = time.monotonic()
    counted = [0]
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            ["go", *args],
            cwd=cwd,
            env=go_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        done = threading.Event()

        def ticker() -> None:
            while not done.wait(20):
                progress = f"{counted[0]} packages compiled"
                if total:
                    progress = f"{counted[0]}/{total} packages compiled"
                log(f"  {what}: {progress}, {fmt_duration(time.monotonic() - started)} so far")

        thread = threading.Thread(target=ticker, daemon=True)
        thread.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            log_file.write(line)
            if not line.startswith(("go: ", "#")):
                counted[0] += 1
        code = proc.wait()
        done.set()
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise TestenvError(f"{what} failed (go {' '.join(args[:2])} exited {code}); "
                           f"last lines of {log_path}:\n{tail}")
    log(f"  {what}: done in {fmt_duration(time.monotonic() - started)}")


@contextlib.contextmanager
def staged_install(out_dir: Path):
    """Yields an empty folder to build into; on success it becomes `out_dir` in one rename,
    so an interrupted build never leaves something that looks cached."""
    staging = Path(tempfile.mkdtemp(prefix="build-", dir=cache_root() / "bin"))
    try:
        yield staging
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.chmod(0o755)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def go_mod_download_json(module: str) -> dict:
    out = subprocess.run(["go", "mod", "download", "-json", module], env=go_env(),
                         capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise TestenvError(f"cannot download {module} from the Go module proxy: "
                           f"{out.stdout.strip()} {out.stderr.strip()}")
    return json.loads(out.stdout)


def staging_replaces(k8s_mod: str, staging_version: str) -> list[str]:
    """Every `k8s.io/X => ./staging/...` replace of Kubernetes, redirected to the proxy."""
    replaces = []
    for match in re.finditer(r"^\s*(?:replace\s+)?(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", k8s_mod, re.M):
        replaces.append(f"replace {match.group(1)} => {match.group(1)} {staging_version}")
    if not replaces:
        raise TestenvError("found no staging replace directives in the Kubernetes go.mod; "
                           "has its layout changed?")
    return replaces


def required_version(mod_text: str, module: str) -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", mod_text, re.M)
    if not match:
        raise TestenvError(f"the Kubernetes go.mod does not require {module}")
    return match.group(1)


def build_kubernetes(versions: dict[str, str]) -> None:
    version = versions["KUBERNETES_VERSION"]
    out_dir = k8s_bin_dir(versions)
    if all((out_dir / name).exists() for name in [*K8S_COMMANDS, "etcd"]):
        return
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", version)
    if not match:
        raise TestenvError(f"KUBERNETES_VERSION {version!r} is not a release like v1.34.4")
    minor, patch = match.groups()
    log(f"building Kubernetes {version} and etcd from the Go module proxy "
        "(a cold build takes tens of minutes on 2 cores; later runs reuse the cache)")
    info = go_mod_download_json(f"k8s.io/kubernetes@{version}")
    k8s_mod = Path(info["GoMod"]).read_text()
    etcd_version = required_version(k8s_mod, ETCD_PACKAGE)
    build_date = json.loads(Path(info["Info"]).read_text()).get("Time", "1970-01-01T00:00:00Z")
    build_date = re.sub(r"\.\d+", "", build_date)

    src = cache_root() / "src" / f"kubernetes-{version}"
    src.mkdir(parents=True, exist_ok=True)
    go_version = re.search(r"^go\s+(\S+)", k8s_mod, re.M).group(1)
    lines = [
        "// Generated by tether's testenv.py: builds Kubernetes and etcd at pinned versions.",
        "module tether.dev/testenv/kubernetes",
        "",
        f"go {go_version}",
        "",
        f"require k8s.io/kubernetes {version}",
        f"require {ETCD_PACKAGE} {etcd_version}",
        "",
        *staging_replaces(k8s_mod, f"v0.{minor}.{patch}"),
        "",
    ]
    (src / "go.mod").write_text("\n".join(lines))
    imports = [f'\t_ "k8s.io/kubernetes/cmd/{name}"' for name in K8S_COMMANDS]
    imports.append(f'\t_ "{ETCD_PACKAGE}"')
    (src / "tools.go").write_text(
        "//go:build tools\n\n// Package tools pins the commands testenv builds.\npackage tools\n\nimport (\n"
        + "\n".join(imports) + "\n)\n")
    log(f"  resolving modules for Kubernetes {version} + etcd {etcd_version} (downloads a few hundred MB once)")
    run_go(["mod", "tidy", "-e"], src, f"go-mod-tidy-kubernetes-{version}")

    stamp = [
        f"-X k8s.io/{pkg}.{key}={value}"
        for pkg in ["component-base/version", "client-go/pkg/version"]
        for key, value in [("gitVersion", version), ("gitMajor", "1"), ("gitMinor", minor),
                           ("gitTreeState", "clean"), ("buildDate", build_date)]
    ]
    ldflags = " ".join(["-s", "-w", *stamp])
    packages = [f"k8s.io/kubernetes/cmd/{name}" for name in K8S_COMMANDS] + [ETCD_PACKAGE]
    deps = subprocess.run(["go", "list", "-deps", "-tags", K8S_TAGS, *packages], cwd=src,
                          env=go_env(), capture_output=True, text=True)
    total = len(deps.stdout.split()) if deps.returncode == 0 else None
    with staged_install(out_dir) as staging:
        for package in packages:
            name = "etcd" if package == ETCD_PACKAGE else package.rsplit("/", 1)[1]
            log(f"  compiling {name}")
            run_go(["build", "-v", "-trimpath", "-tags", K8S_TAGS, "-ldflags", ldflags,
                    "-o", str(staging / name), package], src, f"build-{name}-{version}", total)


def build_go_tool(name: str, package: str, version: str, ldflags: str = "") -> None:
    """`go install package@version` into the cache: the tool's own go.mod decides its deps."""
    out_dir = tool_bin_dir(name, version)
    if (out_dir / name).exists():
        return
    log(f"building {name} {version} ({package})")
    with staged_install(out_dir) as staging:
        env_dir = Path(tempfile.mkdtemp(prefix="gobin-", dir=cache_root() / "bin"))
        args = ["install", "-v", "-trimpath"]
        if ldflags:
            args += ["-ldflags", ldflags]
        args.append(f"{package}@{version}")
        old = os.environ.get("GOBIN")
        os.environ["GOBIN"] = str(env_dir)
        try:
            run_go(args, Path(tempfile.gettempdir()), f"build-{name}-{version}")
        finally:
            if old is None:
                os.environ.pop("GOBIN", None)
            else:
                os.environ["GOBIN"] = old
        # `go install` names the binary after the package path, minus a major-version suffix.
        built = [path for path in env_dir.iterdir() if path.is_file()]
        if len(built) != 1:
            raise TestenvError(f"go install {package} left {len(built)} files in {env_dir}, expected one")
        built[0].rename(staging / name)
        shutil.rmtree(env_dir, ignore_errors=True)


def build_go_module(name: str, module: str, version: str, crds: str | None, tags: str = "",
                    package: str = ".", prepare=None) -> None:
    """Builds a module's root package from its own source tree (kept in the cache's `src/`),
    plus its CRDs in `crds/` when `crds` names them; `tags` are Go build tags; `package` the
    package to build (default the root) and `prepare(src)` a step before the build.

    For modules whose go.mod has replace directives, which `go install pkg@version` refuses.
    A local replace (`x/api => ./api`) points at a nested module the zip leaves out; dropping
    it makes Go take that module, at the version go.mod requires, from the proxy (GOFLAGS
    -mod=mod adds its go.sum line). The other replaces (pins, CVE fixes) stay, so the result
    is the upstream build. No `go mod tidy`: it would also fetch test-only modules.
    """
    out_dir = tool_bin_dir(name, version)
    if (out_dir / name).exists():
        return
    log(f"building {name} {version} ({module})")
    info = go_mod_download_json(f"{module}@{version}")
    src = cache_root() / "src" / f"{name}-{version}"

    def make_writable() -> None:
        # The module cache is read-only, and copytree keeps modes; go writes go.mod and go.sum.
        for path in [src, *src.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)

    if src.exists():
        make_writable()
        shutil.rmtree(src)
    shutil.copytree(info["Dir"], src)
    make_writable()
    edit = subprocess.run(["go", "mod", "edit", "-json"], cwd=src, env=go_env(), capture_output=True, text=True)
    if edit.returncode != 0:
        raise TestenvError(f"cannot read {src / 'go.mod'}: {edit.stderr.strip()}")
    local = [r["Old"]["Path"] for r in json.loads(edit.stdout).get("Replace") or []
             if r["New"]["Path"].startswith(("./", "../"))]
    if local:
        run_go(["mod", "edit", *[f"-dropreplace={path}" for path in local]], src, f"go-mod-edit-{name}-{version}")
    if prepare is not None:
        prepare(src)
    with staged_install(out_dir) as staging:
        run_go(["build", "-v", "-trimpath", *(["-tags", tags] if tags else []), "-o", str(staging / name), package],
               src, f"build-{name}-{version}")
        if crds is None:
            return
        crd_files = sorted(src.glob(crds))
        if not crd_files:
            raise TestenvError(f"{module}@{version} has no CRDs at {crds}; has its layout changed?")
        (staging / "crds").mkdir()
        for crd in crd_files:
            shutil.copyfile(crd, staging / "crds" / crd.name)


def build(only: list[str] | None = None) -> dict[str, str]:
    versions = read_versions()
    (cache_root() / "bin").mkdir(parents=True, exist_ok=True)
    wanted = set(only or DEFAULT_TARGETS)
    started = time.monotonic()
    with file_lock(cache_root() / "build.lock"):
        if "kubernetes" in wanted:
            build_kubernetes(versions)
        if "kwok" in wanted:
            build_go_tool("kwok", "sigs.k8s.io/kwok/cmd/kwok", versions["KWOK_VERSION"])
        if "helm" in wanted:
            helm_version = versions["HELM_VERSION"]
            major = helm_version.split(".")[0]
            build_go_tool("helm", f"helm.sh/helm/{major}/cmd/helm", helm_version,
                          f"-s -w -X helm.sh/helm/{major}/internal/version.version={helm_version}")
        if "kustomize" in wanted:
            build_go_tool("kustomize", "sigs.k8s.io/kustomize/kustomize/v5", versions["KUSTOMIZE_VERSION"])
        if "toxiproxy" in wanted:
            version = pinned(versions, "TOXIPROXY_VERSION")
            build_go_tool("toxiproxy-server", "github.com/Shopify/toxiproxy/v2/cmd/server", version,
                          f"-s -w -X github.com/Shopify/toxiproxy/v2.Version={version}")
        if "gitea" in wanted:
            # Its module declares the path gitea.dev, so `go install` refuses it; built with
            # SQLite and without the npm-built assets (it reads templates and locales from
            # its source, kept in the cache as src/gitea-<version>: its STATIC_ROOT_PATH).
            build_go_module("gitea", "code.gitea.io/gitea", pinned(versions, "GITEA_VERSION"), None,
                            "sqlite sqlite_unlock_notify")
        if "sops" in wanted:
            version = pinned(versions, "SOPS_VERSION")
            build_go_tool("sops", "github.com/getsops/sops/v3/cmd/sops", version,
                          f"-s -w -X github.com/getsops/sops/v3/version.Version={version.lstrip('v')}")
        if "age" in wanted:
            version = pinned(versions, "AGE_VERSION")
            for name in ("age", "age-keygen"):
                build_go_tool(name, f"filippo.io/age/cmd/{name}", version, f"-s -w -X main.Version={version}")
        if "registry" in wanted:
            version = pinned(versions, "REGISTRY_VERSION")
            build_go_tool("registry", "github.com/distribution/distribution/v3/cmd/registry", version,
                          f"-s -w -X github.com/distribution/distribution/v3/version.version={version}")
        if "flux-cli" in wanted:
            # Its `install` manifests are generated by flux2's Makefile and embedded; the
            # module's source has none. Only `push artifact` and `pull artifact` are used, so
            # one placeholder satisfies the embed.
            def placeholder_manifests(src: Path) -> None:
                folder = src / "cmd" / "flux" / "manifests"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "placeholder.yaml").write_text("# not built: flux install is not used by tether's tests\n")
            version = pinned(versions, "FLUX_CLI_VERSION")
            build_go_module("flux", "github.com/fluxcd/flux2/v2", version, None, package="./cmd/flux",
                            prepare=placeholder_manifests)
        for name, (module, key) in FLUX_CONTROLLERS.items():
            # `bin` asks for one controller by name; `build flux` for both.
            if "flux" in wanted or name in wanted:
                build_go_module(name, module, pinned(versions, key), "config/crd/bases/*.yaml")
    elapsed = time.monotonic() - started
    if elapsed > 5:
        log(f"build finished in {fmt_duration(elapsed)}; binaries in {cache_root() / 'bin'}")
    return versions


# ---------------------------------------------------------------------------------------
# PKI and kubeconfig


def openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise TestenvError(f"openssl {' '.join(args[:2])} failed: {out.stderr.strip()}")


def make_pki(pki: Path) -> None:
    """A CA, the API server's serving cert, an admin client cert and a service-account key."""
    if (pki / "admin.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    openssl("genrsa", "-out", "ca.key", "2048", cwd=pki)
    openssl("req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "3650",
            "-subj", "/CN=tether-testenv-ca", "-out", "ca.crt", cwd=pki)
    sans = "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default," \
           "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    certs = {
        "apiserver": ("/CN=kube-apiserver", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n"),
        "admin": ("/O=system:masters/CN=tether-testenv-admin", "extendedKeyUsage=clientAuth\n"),
    }
    for name, (subject, ext) in certs.items():
        (pki / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n" + ext)
        openssl("genrsa", "-out", f"{name}.key", "2048", cwd=pki)
        openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", f"{name}.ext",
                "-out", f"{name}.crt", cwd=pki)
    openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for key in pki.glob("*.key"):
        key.chmod(0o600)


def write_kubeconfig(path: Path, pki: Path, port: int) -> None:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    # JSON is valid YAML; kubectl, client-go and kube-rs all read it.
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT_NAME, "cluster": {
            "server": f"https://127.0.0.1:{port}",
            "certificate-authority-data": b64("ca.crt")}}],
        "users": [{"name": "tether-testenv-admin", "user": {
            "client-certificate-data": b64("admin.crt"),
            "client-key-data": b64("admin.key")}}],
        "contexts": [{"name": CONTEXT_NAME, "context": {
            "cluster": CONTEXT_NAME, "user": "tether-testenv-admin", "namespace": "default"}}],
        "current-context": CONTEXT_NAME,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.rename(path)


# ---------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def load_state() -> dict:
    path = run_dir() / "state.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def save_state(state: dict) -> None:
    path = run_dir() / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.rename(path)


def start(name: str, argv: list[str], state: dict) -> None:
    logs = run_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:
        out.write(f"\n=== testenv: starting {name} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=run_dir())
    state.setdefault("processes", {})[name] = {"pid": proc.pid, "argv": argv}
    save_state(state)


def stop_pid(pid: int, name: str) -> None:
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        log(f"{name} (pid {pid}) ignored SIGTERM; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.05)


def wait_until(what: str, check, timeout: float, name: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if name:
            pid = load_state().get("processes", {}).get(name, {}).get("pid")
            if pid and not pid_alive(pid):
                raise TestenvError(f"{name} exited during start-up; see {run_dir() / 'logs' / (name + '.log')}:\n"
                                   + tail_file(run_dir() / "logs" / f"{name}.log", 15))
        try:
            if check():
                return
        except Exception as err:  # noqa: BLE001 - any failure means "not ready yet"
            last_error = str(err)
        time.sleep(0.25)
    raise TestenvError(f"{what} was not ready within {int(timeout)} s (last error: {last_error}); "
                       f"logs are in {run_dir() / 'logs'}")


def tail_file(path: Path, lines: int) -> str:
    if not path.exists():
        return "(no log)"
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])


def api_context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def api_get(state: dict, path: str) -> tuple[int, bytes]:
    url = f"https://127.0.0.1:{state['ports']['apiserver']}{path}"
    try:
        with urllib.request.urlopen(url, context=api_context(run_dir() / "pki"), timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def kubectl(versions: dict[str, str], *args: str, stdin: str | None = None) -> str:
    out = subprocess.run([str(binary("kubectl", versions)), "--kubeconfig", str(run_dir() / "kubeconfig"), *args],
                         input=stdin, capture_output=True, text=True)
    if out.returncode != 0:
        raise TestenvError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
# LISTs of two kinds nothing but the tests' Applications hold, so that a test can count a
# plan's LISTs in its namespace (the API server's metrics do not say which namespace).
- level: Metadata
  verbs: [list]
  resources:
  - {group: apps, resources: [controllerrevisions]}
  - {group: "", resources: [podtemplates]}
- level: None
  verbs: [get, list, watch]
- level: None
  resources:
  - {group: coordination.k8s.io, resources: [leases]}
  - {group: events.k8s.io, resources: [events]}
  - {group: "", resources: [events]}
- level: None
  nonResourceURLs: ["*"]
- level: Metadata
"""


def write_audit_policy(rd: Path) -> Path:
    path = rd / "audit-policy.yaml"
    path.write_text(AUDIT_POLICY)
    return path


def component_argv(name: str, versions: dict[str, str], state: dict) -> list[str]:
    rd, pki, ports = run_dir(), run_dir() / "pki", state["ports"]
    kubeconfig = str(rd / "kubeconfig")
    if name == "etcd":
        client, peer = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{ports['etcd-peer']}"
        return [str(binary("etcd", versions)), "--name=node0", f"--data-dir={rd / 'etcd-data'}",
                f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=node0={peer}", "--initial-cluster-state=new",
                "--unsafe-no-fsync", "--log-level=warn"]
    if name == "kube-apiserver":
        port = ports["apiserver"]
        admission = "" if state["profile"] == "full" else "ServiceAccount"
        argv = [str(binary("kube-apiserver", versions)),
                f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
                f"--cert-dir={rd / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--service-cluster-ip-range=10.0.0.0/16",
                f"--service-account-issuer=https://127.0.0.1:{port}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--authorization-mode=RBAC", "--allow-privileged=true", "--profiling=false",
                # Who wrote what (tether's --audit-log): writes at level Metadata, next to the
                # kubeconfig; reads, Leases and Events are left out to keep it small.
                f"--audit-policy-file={write_audit_policy(rd)}", f"--audit-log-path={rd / 'audit.log'}",
                "--audit-log-maxsize=100", "--audit-log-maxbackup=1"]
        if admission:
            # Without the controller-manager nobody creates the `default` ServiceAccount.
            argv.append(f"--disable-admission-plugins={admission}")
        return argv
    common = [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
              f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false",
              "--bind-address=127.0.0.1"]
    if name == "kube-controller-manager":
        return [str(binary(name, versions)), *common, f"--secure-port={ports['controller-manager']}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                "--use-service-account-credentials=true", "--allocate-node-cidrs=false"]
    if name == "kube-scheduler":
        return [str(binary(name, versions)), *common, f"--secure-port={ports['scheduler']}"]
    if name == "kwok":
        return [str(binary("kwok", versions)), f"--kubeconfig={kubeconfig}",
                "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--cidr=10.244.0.0/16", "--node-ip=127.0.0.1",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{ports['kwok']}"]
    raise AssertionError(name)


def component_ready(name: str, state: dict) -> bool:
    if name == "etcd":
        url = f"http://127.0.0.1:{state['ports']['etcd']}/health"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read()).get("health") == "true"
    if name == "kube-apiserver":
        return api_get(state, "/readyz")[0] == 200
    if name in ("kube-controller-manager", "kube-scheduler"):
        port = state["ports"]["controller-manager" if name == "kube-controller-manager" else "scheduler"]
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=2) as resp:
            return resp.status == 200
    if name == "kwok":
        with urllib.request.urlopen(f"http://127.0.0.1:{state['ports']['kwok']}/healthz", timeout=2) as resp:
            return resp.status == 200
    raise AssertionError(name)


def node_manifest(count: int) -> str:
    nodes = []
    for i in range(count):
        nodes.append({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": f"kwok-node-{i}",
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": f"kwok-node-{i}",
                           "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
            },
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            },
        })
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes})


def running_components(state: dict) -> dict[str, bool]:
    return {name: pid_alive(info["pid"]) for name, info in state.get("processes", {}).items()}


def up(profile: str, nodes: int) -> None:
    versions = build(None if profile == "full" else ["kubernetes"])
    started = time.monotonic()
    rd = run_dir()
    rd.mkdir(parents=True, exist_ok=True)
    with file_lock(rd / "up.lock"):
        state = load_state()
        alive = running_components(state)
        if state and state.get("profile") == "minimal" and profile == "full" and any(alive.values()):
            # The API server's admission flags differ between profiles: restart from scratch.
            log("a minimal testenv is running; replacing it with the full profile")
            down(quiet=True)
            state, alive = {}, {}
        if state and all(alive.get(name) for name in PROFILES[profile]):
            log(f"already up ({state['profile']} profile, API server on port {state['ports']['apiserver']})")
            return
        if state and any(alive.values()):
            log("a previous testenv is partly running; stopping it first")
            down(quiet=True)
        shutil.rmtree(rd / "etcd-data", ignore_errors=True)
        shutil.rmtree(rd / "logs", ignore_errors=True)
        make_pki(rd / "pki")
        ports = {key: free_port() for key in
                 ["etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok"]}
        state = {"profile": profile, "ports": ports, "versions": versions, "processes": {}}
        save_state(state)
        write_kubeconfig(rd / "kubeconfig", rd / "pki", ports["apiserver"])
        try:
            for name in PROFILES[profile]:
                start(name, component_argv(name, versions, state), state)
                timeout = 120 if name == "kube-apiserver" else 60
                wait_until(name, lambda n=name: component_ready(n, state), timeout, name)
                log(f"{name} ready ({fmt_duration(time.monotonic() - started)})")
            if profile == "full":
                kubectl(versions, "apply", "-f", "-", stdin=node_manifest(nodes))
                wait_until(f"{nodes} kwok nodes Ready",
                           lambda: kubectl(versions, "get", "nodes", "-l", "type=kwok", "-o",
                                           "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}")
                           .split().count("True") == nodes, 60)
                wait_until("the default ServiceAccount",
                           lambda: bool(kubectl(versions, "get", "serviceaccount", "default", "-n", "default",
                                                "-o", "name")), 60)
        except BaseException:
            log("start-up failed; stopping what was started")
            down(quiet=True, keep_logs=True)
            raise
    log(f"up in {fmt_duration(time.monotonic() - started)}: {profile} profile, "
        f"API server https://127.0.0.1:{ports['apiserver']}, kubeconfig {rd / 'kubeconfig'}")


def restart(component: str, down_for: float) -> None:
    """Stops one running component (SIGTERM, then SIGKILL) and starts it again with the same
    arguments after `down_for` seconds, keeping the cluster's data: an API server restart or
    an etcd outage, for the reliability tests."""
    with file_lock(run_dir() / "up.lock"):
        state = load_state()
        info = state.get("processes", {}).get(component)
        if info is None:
            raise TestenvError(f"{component} is not part of the running testenv "
                               f"({', '.join(state.get('processes', {})) or 'nothing runs'})")
        stop_pid(info["pid"], component)
        log(f"{component} stopped; starting it again in {down_for:g} s")
        time.sleep(down_for)
        started = time.monotonic()
        start(component, info["argv"], state)
        timeout = 120 if component == "kube-apiserver" else 60
        wait_until(component, lambda: component_ready(component, state), timeout, component)
        log(f"{component} ready again ({fmt_duration(time.monotonic() - started)})")


def down(quiet: bool = False, keep_logs: bool = True) -> None:
    state = load_state()
    processes = state.get("processes", {})
    # Stop in reverse start order: clients before the API server, the API server before etcd.
    for name in reversed(list(processes)):
        stop_pid(processes[name]["pid"], name)
    rd = run_dir()
    shutil.rmtree(rd / "etcd-data", ignore_errors=True)
    for path in [rd / "state.json", rd / "kubeconfig"]:
        path.unlink(missing_ok=True)
    if not keep_logs:
        shutil.rmtree(rd / "logs", ignore_errors=True)
    if not quiet:
        log("down" if processes else "nothing was running")


def status() -> int:
    state = load_state()
    if not state:
        print("testenv: not running")
        return 1
    healthy = True
    print(f"profile: {state['profile']}   kubeconfig: {run_dir() / 'kubeconfig'}")
    for name, info in state.get("processes", {}).items():
        alive = pid_alive(info["pid"])
        ready = False
        if alive:
            with contextlib.suppress(Exception):
                ready = component_ready(name, state)
        healthy &= ready
        print(f"  {name:<24} pid {info['pid']:<8} {'ready' if ready else 'running' if alive else 'DEAD'}")
    return 0 if healthy else 1


def env_line() -> str:
    return f"export KUBECONFIG={run_dir() / 'kubeconfig'}"


def logs_cmd(component: str | None, follow: bool, lines: int) -> int:
    logs = run_dir() / "logs"
    files = sorted(logs.glob("*.log")) if logs.exists() else []
    if component:
        files = [f for f in files if f.stem == component]
        if not files:
            raise TestenvError(f"no log for {component!r} in {logs}")
    if not files:
        print(f"testenv: no logs in {logs}")
        return 1
    if follow:
        os.execvp("tail", ["tail", "-n", str(lines), "-F", *map(str, files)])
    for path in files:
        print(f"==> {path} <==")
        print(tail_file(path, lines), end="")
    return 0


SELFTEST_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: selftest, namespace: NS}
spec:
  replicas: 2
  selector: {matchLabels: {app: selftest}}
  template:
    metadata: {labels: {app: selftest}}
    spec:
      containers: [{name: app, image: registry.invalid/selftest:1}]
"""

SELFTEST_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: probes.selftest.testenv.tether.dev}
spec:
  group: selftest.testenv.tether.dev
  names: {kind: Probe, plural: probes, singular: probe}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
"""


def selftest() -> int:
    """Proves the running control plane with kubectl, the way a person would check it."""
    state = load_state()
    if not state:
        raise TestenvError("testenv is not up; run `make cluster-up` first")
    versions = state["versions"]
    results: list[tuple[str, str | None]] = []

    def check(name: str, fn) -> None:
        started = time.monotonic()
        try:
            fn()
            results.append((name, None))
            log(f"selftest: PASS {name} ({time.monotonic() - started:.1f}s)")
        except (TestenvError, AssertionError) as err:
            results.append((name, str(err)))
            log(f"selftest: FAIL {name}: {err}")

    def server_version() -> None:
        got = json.loads(kubectl(versions, "version", "-o", "json"))["serverVersion"]["gitVersion"]
        assert got == versions["KUBERNETES_VERSION"], f"server says {got}, built {versions['KUBERNETES_VERSION']}"

    namespace = f"testenv-selftest-{os.getpid()}"

    def deployment_available() -> None:
        if state["profile"] != "full":
            raise TestenvError("needs the full profile (nodes); this testenv runs the minimal one")
        kubectl(versions, "create", "namespace", namespace)
        kubectl(versions, "apply", "-f", "-", stdin=SELFTEST_DEPLOYMENT.replace("NS", namespace))
        kubectl(versions, "wait", "-n", namespace, "--for=condition=Available", "deployment/selftest",
                "--timeout=60s")
        ready = kubectl(versions, "get", "-n", namespace, "deployment/selftest", "-o",
                        "jsonpath={.status.readyReplicas}")
        assert ready == "2", f"readyReplicas is {ready!r}, want 2"

    def crd_established() -> None:
        kubectl(versions, "create", "namespace", namespace + "-crd")
        kubectl(versions, "apply", "-f", "-", stdin=SELFTEST_CRD)
        kubectl(versions, "wait", "--for=condition=Established", "crd/probes.selftest.testenv.tether.dev",
                "--timeout=60s")
        kubectl(versions, "apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "selftest.testenv.tether.dev/v1", "kind": "Probe",
            "metadata": {"name": "p1", "namespace": namespace + "-crd"}, "spec": {"size": 3}}))
        size = kubectl(versions, "get", "-n", namespace + "-crd", "probe/p1", "-o", "jsonpath={.spec.size}")
        assert size == "3", f"spec.size read back as {size!r}"

    try:
        check("kubectl version shows the built server version", server_version)
        check("a Deployment with 2 replicas becomes Available within 60 s", deployment_available)
        check("a CRD is Established and a custom resource of it round-trips", crd_established)
    finally:
        for args in (["delete", "namespace", namespace, namespace + "-crd", "--ignore-not-found", "--wait=false"],
                     ["delete", "crd", "probes.selftest.testenv.tether.dev", "--ignore-not-found", "--wait=false"]):
            with contextlib.suppress(TestenvError):
                kubectl(versions, *args)
    failed = sum(1 for _, err in results if err)
    log(f"selftest: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="testenv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build and cache the pinned binaries (no cluster)")
    p.add_argument("what", nargs="*", metavar="|".join(DEFAULT_TARGETS + EXTRA_TARGETS),
                   help=f"what to build (default: {', '.join(DEFAULT_TARGETS)}; "
                        f"{', '.join(EXTRA_TARGETS)} only when named, for the benchmarks)")
    p = sub.add_parser("up", help="start the control plane (idempotent)")
    p.add_argument("--profile", choices=sorted(PROFILES), default=os.environ.get("TESTENV_PROFILE", "full"))
    p.add_argument("--nodes", type=int, default=DEFAULT_NODES, help="kwok nodes (full profile)")
    p = sub.add_parser("down", help="stop every process and remove the cluster's data")
    p.add_argument("-q", "--quiet", action="store_true")
    p = sub.add_parser("restart", help="stop one component and start it again, keeping the data")
    p.add_argument("component", choices=PROFILES["full"])
    p.add_argument("--down-for", type=float, default=0.0, metavar="SECONDS",
                   help="how long it stays stopped (default 0)")
    sub.add_parser("env", help="print `export KUBECONFIG=...`")
    sub.add_parser("status", help="show each component; exit 1 unless all are ready")
    sub.add_parser("selftest", help="prove the running cluster with kubectl (version, Deployment, CRD)")
    p = sub.add_parser("logs", help="print (or follow) component logs")
    p.add_argument("component", nargs="?")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--lines", type=int, default=40)
    p = sub.add_parser("bin", help="print the path of a cached binary, building it if needed")
    p.add_argument("name", choices=[*K8S_COMMANDS, "etcd", "kwok", "helm", "kustomize", "toxiproxy-server",
                                    "gitea", "sops", "age", "age-keygen", "registry", "flux",
                                    *FLUX_CONTROLLERS])
    args = parser.parse_args()
    try:
        if args.command == "build":
            targets = DEFAULT_TARGETS + EXTRA_TARGETS
            unknown = set(args.what) - set(targets)
            if unknown:
                parser.error(f"cannot build {', '.join(sorted(unknown))}: choose from {', '.join(targets)}")
            build(args.what or None)
        elif args.command == "up":
            up(args.profile, args.nodes)
        elif args.command == "down":
            with file_lock(run_dir() / "up.lock"):
                down(quiet=args.quiet)
        elif args.command == "restart":
            restart(args.component, args.down_for)
        elif args.command == "env":
            if not (run_dir() / "kubeconfig").exists():
                log("warning: testenv is not up; run `make cluster-up` first")
            print(env_line())
        elif args.command == "status":
            return status()
        elif args.command == "selftest":
            return selftest()
        elif args.command == "logs":
            return logs_cmd(args.component, args.follow, args.lines)
        elif args.command == "bin":
            group = {"kwok": "kwok", "helm": "helm", "kustomize": "kustomize", "toxiproxy-server": "toxiproxy",
                     "gitea": "gitea", "sops": "sops", "age": "age", "age-keygen": "age", "registry": "registry",
                     "flux": "flux-cli",
                     **{name: name for name in FLUX_CONTROLLERS}}.get(args.name, "kubernetes")
            print(binary(args.name, build([group])))
    except TestenvError as err:
        print(f"testenv: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
