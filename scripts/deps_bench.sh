#!/usr/bin/env bash
# Installs (as root, with apt-get) the Debian packages that `make bench-compare` needs on top of
# the build's (scripts/deps.sh): the peers it compares with, PyTorch (python3-torch) and oneDNN
# (libdnnl-dev, for bench/dnnl_worker.c), plus lscpu for the machine description. Not part of
# `make test`'s dependencies: the benchmark is not a test. Does nothing when all are present.
set -euo pipefail
exec bash "$(dirname "$0")/deps.sh" gcc python3 python3-torch libdnnl-dev util-linux
