#!/usr/bin/env bash
# Installs everything this project needs on a fresh Debian/Ubuntu machine:
# the Debian packages (nftables, iproute2, curl, stunnel4, tcpdump; chromium for the dashboard's browser test) and a Python
# virtual environment in .venv with the project and its dev tools.
# Idempotent: a second run only checks. Run as root (or with sudo) for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DEB_PKGS=(nftables iproute2 curl stunnel4 python3-venv chromium)

missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: Debian packages missing: ${missing[*]}; run this script as root (sudo) to install them" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f .venv/.installed-* && touch "$stamp"
fi
echo "setup: ready (.venv/bin/ambientctl, .venv/bin/istiod-lite, .venv/bin/ztunnel)"
