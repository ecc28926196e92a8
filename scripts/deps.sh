#!/usr/bin/env bash
# Installs (as root, with apt-get) every Debian package that the build, the tests and the demo
# need. Does nothing when they are all present. `make deps` runs it; `make test` and
# `make demo` run it too, so a fresh Debian machine needs no other step.
set -euo pipefail
# With arguments, installs those packages instead (scripts/deps_bench.sh uses this).
PKGS=(gcc make cmake pkg-config libopenblas-dev libcmocka-dev protobuf-c-compiler
      libprotobuf-c-dev libonnx-dev python3 python3-numpy python3-torch python3-pytest
      zlib1g-dev dataset-fashion-mnist gnuplot-nox)
[ $# -gt 0 ] && PKGS=("$@")
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "deps: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
