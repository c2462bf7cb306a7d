#!/usr/bin/env python3
"""Builds the agent's OCI image without a container engine or a registry.

The image is one layer: the tether binary, the shared libraries it links (found with ldd),
helm and kustomize (static Go programs, as testenv builds them), the build machine's git
(with its HTTP helper), ssh, ssh-keygen, gpg, gpg-agent and gpgconf and their libraries
(image updates clone, commit, sign and push with them; OpenPGP keys and signatures), the
system's CA
certificates, and /etc/passwd and /etc/group entries for the non-root user 65532 that
`tether install` runs it as. The layer is a reproducible tar (sorted, owner root, mtime 0)
compressed with gzip (mtime 0), so the same inputs give the same digest.

Writes an OCI image layout (https://github.com/opencontainers/image-spec, layout.md) to
OUT: oci-layout, index.json and blobs/sha256/*. Prints the image reference with its
manifest digest (tether@sha256:...) on stdout; `tether install --image` takes it.

Usage: image.py --tether BIN --helm BIN --kustomize BIN --out DIR [--tag TAG]
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile

USER = 65532
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Programs the agent runs: git (its HTTP(S) helper where git looks for it), ssh for SSH
# remotes and ssh-keygen for SSH-signed commits (image updates); gpg, gpg-agent and gpgconf
# for OpenPGP (commit signatures checked, SOPS files for OpenPGP keys, signed commits).
SYSTEM_PROGRAMS = ["/usr/bin/git", "/usr/lib/git-core/git-remote-http", "/usr/lib/git-core/git-remote-https",
                   "/usr/bin/ssh", "/usr/bin/ssh-keygen", "/usr/bin/gpg", "/usr/bin/gpg-agent", "/usr/bin/gpgconf"]
# The machine's name for its architecture → OCI's (the image is for the build machine's).
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}


def linked_libraries(binary):
    """The absolute paths of the shared libraries `binary` loads, the loader included."""
    done = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if "not a dynamic executable" in done.stdout + done.stderr:
        return []
    if done.returncode != 0:
        sys.exit(f"image.py: ldd {binary} failed: {done.stderr.strip()}")
    return [m.group(1) for m in re.finditer(r"(/\S+) \(0x", done.stdout)]


def add_file(tar, path_in_image, source, mode):
    with open(source, "rb") as f:
        data = f.read()
    add_bytes(tar, path_in_image, data, mode)


def add_bytes(tar, path_in_image, data, mode):
    info = tarfile.TarInfo(path_in_image.lstrip("/"))
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar, path_in_image, mode=0o755, owner=0):
    info = tarfile.TarInfo(path_in_image.lstrip("/"))
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = owner
    info.uname = info.gname = "root" if owner == 0 else "nonroot"
    tar.addfile(info)


def layer(files, dirs):
    """files: {path in image: (source path or bytes, mode)}; dirs: {path: (mode, owner uid)}.
    Returns the uncompressed tar."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        parents = set()
        for path in list(files) + list(dirs):
            parts = path.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                parents.add("/" + "/".join(parts[:i]))
        for path in sorted(parents | set(dirs)):
            add_dir(tar, path, *dirs.get(path, (0o755, 0)))
        for path in sorted(files):
            source, mode = files[path]
            if isinstance(source, bytes):
                add_bytes(tar, path, source, mode)
            else:
                add_file(tar, path, source, mode)
    return raw.getvalue()


def write_blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tether", required=True)
    parser.add_argument("--helm", required=True)
    parser.add_argument("--kustomize", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tag", default="latest")
    args = parser.parse_args()
    for what, path in [("tether", args.tether), ("helm", args.helm), ("kustomize", args.kustomize),
                       ("CA bundle", CA_BUNDLE)]:
        if not os.path.isfile(path):
            sys.exit(f"image.py: {what} not found at {path}")

    files = {
        "/tether": (args.tether, 0o755),
        "/usr/local/bin/helm": (args.helm, 0o755),
        "/usr/local/bin/kustomize": (args.kustomize, 0o755),
        "/etc/ssl/certs/ca-certificates.crt": (CA_BUNDLE, 0o644),
        "/etc/passwd": (f"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{USER}:{USER}:nonroot:/home/nonroot:/sbin/nologin\n".encode(), 0o644),
        "/etc/group": (f"root:x:0:\nnonroot:x:{USER}:\n".encode(), 0o644),
    }
    for program in SYSTEM_PROGRAMS:
        if not os.path.isfile(program):
            sys.exit(f"image.py: {program} not found (install git, openssh-client and gnupg)")
        files[program] = (os.path.realpath(program), 0o755)
    for binary in [args.tether] + SYSTEM_PROGRAMS:
        for library in linked_libraries(binary):
            files[library] = (os.path.realpath(library), 0o755)
    # The user's home and tether's cache are its own: it runs without a volume there too.
    # /dev is empty: a container runtime mounts one there (git opens /dev/null).
    dirs = {"/dev": (0o755, 0), "/tmp": (0o1777, 0), "/home/nonroot": (0o755, USER), "/var/cache/tether": (0o755, USER)}
    tar = layer(files, dirs)
    compressed = gzip.compress(tar, compresslevel=6, mtime=0)

    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(os.path.join(args.out, "blobs", "sha256"))
    layer_digest = write_blob(args.out, compressed)
    config = {
        "architecture": ARCHITECTURES.get(platform.machine(), platform.machine()),
        "os": "linux",
        "config": {
            "User": f"{USER}:{USER}",
            "Entrypoint": ["/tether"],
            "Env": [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
                "TETHER_HELM=/usr/local/bin/helm",
                "TETHER_KUSTOMIZE=/usr/local/bin/kustomize",
                "TETHER_CACHE_DIR=/var/cache/tether",
                "HOME=/home/nonroot",
            ],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        "history": [{"created_by": "scripts/image.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = write_blob(args.out, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": len(compressed)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = write_blob(args.out, manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": len(manifest_bytes),
                       "annotations": {"org.opencontainers.image.ref.name": args.tag}}],
    }
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True, separators=(",", ":"))
    with open(os.path.join(args.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(f"image.py: {len(files)} files, layer {len(compressed) / 2**20:.1f} MiB compressed, "
          f"in {args.out}", file=sys.stderr)
    print(f"tether@{manifest_digest}")


if __name__ == "__main__":
    main()
