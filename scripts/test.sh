#!/usr/bin/env bash
# The test command: install what is missing (fast when already installed), then run
# the default test suite (Ray: the executor test starts a local instance; torch: the
# torch backend is tested with a tiny random model; llamacpp: the llama.cpp backend, built once;
# gemma: Gemma 3 270M, whose engine goldens are checked too; gpu: triton, whose CPU
# interpreter and ahead-of-time PTX check the GPU kernels without a GPU).
# LMZIP_SLOW_TESTS=1 adds the long tests.  As root with apt-get, it also installs Debian's
# aarch64 cross compiler and qemu-user for the engine's cross-architecture test.
set -euo pipefail
cd "$(dirname "$0")/.."
LMZIP_EXTRAS=test,ray,torch,llamacpp,gemma,gpu LMZIP_QUIET_INSTALL=1 bash scripts/install.sh
# the engine's logits are checked on another architecture too: aarch64 code built with
# Debian's cross compiler and run under qemu-user (tests/test_engine.py; skipped, and said
# so, where they cannot be installed)
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get install -y -q gcc-aarch64-linux-gnu qemu-user \
      || { apt-get update -q && apt-get install -y -q gcc-aarch64-linux-gnu qemu-user; }; } >/dev/null 2>&1 \
      || echo "lmzip tests: could not install gcc-aarch64-linux-gnu and qemu-user" >&2
  fi
fi
exec "${PYTHON:-python3}" -m pytest -q "$@"
