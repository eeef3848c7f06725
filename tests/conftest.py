"""Shared fixtures: corpora from ../shared/corpora (checked against corpora/manifest.tsv),
the real default model with a small window (on the default backend and on llama.cpp),
and the fast order-1 model.

Environment:
  LMZIP_CORPORA     folder holding canterbury/ and enwik/ (default: ../shared/corpora)
  LMZIP_SLOW_TESTS  1 to run the tests marked slow
  HYPOTHESIS_PROFILE  "ci" (default, fewer examples) or "thorough"
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from lmzip.measure import corpora

ROOT = Path(__file__).resolve().parent.parent

settings.register_profile("ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: the small window the LLM tests use: long enough to be realistic, short enough
#: that texts of a few kB slide it several times
TEST_CONTEXT = 128


def pytest_collection_modifyitems(config, items):
    if os.environ.get("LMZIP_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow; set LMZIP_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


MANIFEST = {e.name: (e.group, e.size, e.sha256) for e in corpora.manifest().values()}


def corpora_dir() -> Path:
    return corpora.corpora_dir()


def corpus_file(name: str) -> Path:
    """Path of a manifest file, its size and SHA-256 checked once per run."""
    try:
        return corpora.corpus_file(name).path
    except corpora.CorpusError as exc:
        pytest.fail(f"{exc} (set LMZIP_CORPORA)")


def corpus_slice(name: str, start: int, length: int) -> bytes:
    with open(corpus_file(name), "rb") as f:
        f.seek(start)
        return f.read(length)


@pytest.fixture()
def sample(tmp_path):
    """A small text file (the first 2,000 bytes of xargs.1) for the command-line tests."""
    path = tmp_path / "sample.txt"
    path.write_bytes(corpus_slice("xargs.1", 0, 2000))
    return path


@pytest.fixture(scope="session")
def llm():
    """The real default model (SmolLM2-135M on the default backend, lmzip's own engine)
    with a small window."""
    from lmzip.predictors.registry import load_model

    return load_model("smollm2-135m", context=TEST_CONTEXT)


@pytest.fixture(scope="session")
def llama_llm():
    """SmolLM2-135M on the llama.cpp backend (the llamacpp extra), with a small window.

    One thread: llama.cpp's worker threads spin at their barriers, so on a 2-core machine
    with anything else running two threads can be several times slower (the thread count
    does not change its logits)."""
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is not installed (lmzip[llamacpp])")
    from lmzip.predictors.registry import load_model

    return load_model("smollm2-135m", context=TEST_CONTEXT, backend="llama.cpp", threads=1)


@pytest.fixture(scope="session")
def order1():
    from lmzip.predictors.registry import load_model

    return load_model("order1")


def gpu_torch():
    """torch for a test module of the GPU code, skipping the module without the gpu extra.
    Without a GPU the kernels run in Triton's CPU interpreter: TRITON_INTERPRET=1 is set
    here, before triton's first import (it is read when triton.language and the kernels
    are defined)."""
    import sys

    torch = pytest.importorskip("torch", reason="the gpu extra (torch, triton) is not installed")
    if not torch.cuda.is_available():
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("triton was imported without TRITON_INTERPRET=1 and there is no GPU", allow_module_level=True)
        os.environ["TRITON_INTERPRET"] = "1"
    pytest.importorskip("triton", reason="the gpu extra (torch, triton) is not installed")
    return torch


def gpu_check_module():
    """benchmarks/gpu.py (the GPU run's checks and speeds) as a module, a fresh copy each call."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu  # its dataclasses look their module up
    try:
        spec.loader.exec_module(gpu)
    finally:
        del sys.modules["gpu_check"]
    return gpu
