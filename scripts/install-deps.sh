#!/usr/bin/env bash
# Installs what `make test` and `make demo` need and the machine lacks; does nothing when all
# is present. Packages come only from registries: Debian (apt), crates.io (cargo), the Go
# module proxy (testenv builds Kubernetes from it). Versions: testenv/versions.env.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source <(grep -E '^[A-Z_]+=' testenv/versions.env)

say() { echo "install-deps: $*" >&2; }

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    say "apt-get update"
    apt-get update -qq >/dev/null
    apt_updated=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v git >/dev/null || missing+=(git)
command -v python3 >/dev/null || missing+=(python3)
command -v make >/dev/null || missing+=(make)
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
# Git servers for the source tests: git daemon and git http-backend come with git; sshd,
# ssh and ssh-keygen (SSH transport, SSH commit signatures) and gpg (OpenPGP signatures).
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v gpg >/dev/null || missing+=(gnupg)
# The web UI's tests drive Debian's chromium through its chromedriver (no browser download).
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
# The agent's OCI image test unpacks it with umoci, an OCI tool of its own.
command -v umoci >/dev/null || missing+=(umoci)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi

if ! command -v go >/dev/null; then
  say "error: Go is not installed; testenv builds Kubernetes with it. Install Go 1.24 or newer and rerun."
  exit 1
fi
if ! command -v cargo >/dev/null; then
  say "error: Rust (cargo) is not installed; install it with rustup and rerun."
  exit 1
fi

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  say "rustup component add rustfmt clippy"
  rustup component add rustfmt clippy
fi

if [ "$(cargo nextest --version 2>/dev/null | head -n1 | awk '{print $2}')" != "$NEXTEST_VERSION" ]; then
  say "cargo install cargo-nextest $NEXTEST_VERSION (a few minutes, once)"
  cargo install --quiet --locked cargo-nextest --version "$NEXTEST_VERSION"
fi
