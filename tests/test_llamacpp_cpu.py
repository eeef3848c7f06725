"""llama.cpp on whatever CPU this run gets: every batched path must run (issue 16: a native
build on an Intel Xeon with AMX segfaulted on any call of more than one token), and a file
records the kernel family its logits came from, so that another build refuses it clearly.

The batched paths run in a child process: a crash there is this test failing with the
child's message, not the whole test run dying.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import lmzip
from lmzip import format as fmt

from .conftest import ROOT, TEST_CONTEXT, corpus_slice

pytestmark = pytest.mark.llm

BATCHED = textwrap.dedent("""
    import sys
    import lmzip
    from lmzip.measure.entropy import cross_entropy
    from lmzip.predictors.mixing import DEFAULT_MIX, MixSettings
    from lmzip.predictors.registry import load_model

    text = open(sys.argv[1], "rb").read()
    model = load_model("smollm2-135m", context=%(context)d, backend="llama.cpp")
    # a lockstep group of width 3: one batched llama_decode per step
    packed = lmzip.compress(text, model=model, chunk_size=len(text) // 3 + 1, streams=3)
    assert lmzip.decompress(packed, model=model) == text, "lockstep group round trip"
    # the skipping schedule: one stream whose deferred tokens go in one call
    skipping = load_model("smollm2-135m", context=%(context)d, backend="llama.cpp",
                          mix=MixSettings(**{**DEFAULT_MIX.__dict__, "skip": 2}))
    packed = lmzip.compress(text, model=skipping)
    assert lmzip.decompress(packed) == text, "skipping round trip"
    # lmzip entropy's batched evaluation (many tokens per call, logits for all)
    e = cross_entropy(model.base, text)
    assert 0.3 < e.bpb < 3.0, e.bpb
    print("ok", e.bpb)
""")


def test_batched_llama_cpp_calls_run_on_this_cpu(tmp_path):
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is not installed (lmzip[llamacpp])")
    sample = tmp_path / "sample.txt"
    sample.write_bytes(corpus_slice("alice29.txt", 5000, 1500))
    # one thread: llama.cpp's threads spin while they wait, which on a busy machine costs minutes
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LMZIP_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", BATCHED % {"context": TEST_CONTEXT}, str(sample)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (f"batched llama.cpp paths failed on this CPU (exit {proc.returncode}):\n"
                                  f"{proc.stdout}\n{proc.stderr[-3000:]}")
    assert proc.stdout.startswith("ok")


def test_file_records_the_kernel_family(llama_llm):
    from lmzip.predictors.llamacpp import build_features, kernel_family

    packed = lmzip.compress(b"The kernels decide the logits.", model=llama_llm, format_version=3)
    header = fmt.parse_header(packed)
    assert header.params["kernels"] == kernel_family()
    assert kernel_family().split()[0] in ("x86_64", "amd64", "aarch64", "arm64")
    assert build_features(), "llama_print_system_info names no CPU feature"


def _with_params(packed: bytes, **changes) -> bytes:
    """The same stream with its header's settings changed (header CRC recomputed)."""
    header = fmt.parse_header(packed)
    params = {k: v for k, v in {**header.params, **changes}.items() if v is not None}
    return fmt.pack_header(header.model_sha256, params, header.version) + packed[fmt.header_size(packed):]


@pytest.mark.parametrize("version", [3, 4])
def test_other_kernels_are_refused_before_decoding(llama_llm, monkeypatch, version):
    # version 3 spells the kernels out; a version 4 preset header keeps them in its check
    text = b"A file from a machine whose llama.cpp uses other kernels."
    packed = lmzip.compress(text, model=llama_llm, format_version=version)
    # the decoding machine's llama.cpp: another build (the model object is the registry's, shared)
    monkeypatch.setattr(llama_llm.base, "kernels", "x86_64 sse3 avx avx2 fma f16c")
    with pytest.raises(lmzip.ModelMismatchError, match="other CPU kernels"):
        lmzip.decompress(packed)


def test_files_from_before_the_kernels_key_still_decode(llama_llm):
    # lmzip before issue 16 wrote no "kernels": such a file decodes on the machine that wrote it
    text = corpus_slice("alice29.txt", 0, 600)
    packed = lmzip.compress(text, model=llama_llm, format_version=3)
    old = _with_params(packed, kernels=None)
    assert "kernels" not in fmt.parse_header(old).params
    assert lmzip.decompress(old) == text


def test_a_native_crash_is_one_line_and_exits_non_zero(tmp_path):
    pytest.importorskip("lmzip._crashguard")
    crash = ("import ctypes; from lmzip.cli.commands import _report_native_crashes; "
             "_report_native_crashes(); ctypes.string_at(0)")
    proc = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("lmzip: the model engine crashed"), proc.stderr
    assert "segmentation fault" in lines[0]
