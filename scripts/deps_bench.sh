#!/usr/bin/env bash
# Installs (as root, with apt-get) the Debian packages that `make bench-compare` needs on top of
# the build's (scripts/deps.sh): the peers it compares with, PyTorch (python3-torch) and oneDNN
# (libdnnl-dev, for bench/dnnl_worker.c), plus lscpu for the machine description. Not part of
# `make test`'s dependencies: the benchmark is not a test. Does nothing when all are present.
set -euo pipefail
PKGS=(gcc python3 python3-torch libdnnl-dev util-linux)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps_bench: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "deps_bench: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
