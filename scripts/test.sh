#!/usr/bin/env bash
# The test command: install what is missing (fast when already installed), then run
# the default test suite (Ray: the executor test starts a local instance; torch: the
# torch backend is tested with a tiny random model; llamacpp: the llama.cpp backend, built once).
# LMZIP_SLOW_TESTS=1 adds the long tests.
set -euo pipefail
cd "$(dirname "$0")/.."
LMZIP_EXTRAS=test,ray,torch,llamacpp LMZIP_QUIET_INSTALL=1 bash scripts/install.sh
exec "${PYTHON:-python3}" -m pytest -q "$@"
