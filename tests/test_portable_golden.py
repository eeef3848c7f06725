"""A golden .lmz of the portable backend, decoded by every test run on whatever CPU it gets.

Written once (2026-12-01, Intel Xeon with the engine's AVX-512 path, numpy 2.4 with its
AVX-512 kernels) from the first 2,000 bytes of alice29.txt with every default but the
backend.  This project's machines change CPU between runs, so this is a cross-machine
test over time: the file must decode, and compressing the same bytes again must give the
same file, byte for byte, on an AMD EPYC (AVX2) as on the Xeon.  The whole pipeline takes
part: the engine's logits, the mixer, the n-gram models, the CDF and the coder.  numpy
picks SIMD kernels per CPU too, so one run decodes with numpy's AVX2/AVX-512 paths off
(``NPY_DISABLE_CPU_FEATURES``) and the engine forced to another ISA.

The container has changed since (the one-chunk code of docs/format.md, 2026-12-02):
the file written on the Xeon keeps decoding, and compressing again gives ONE_CHUNK, which
was written on an AMD EPYC (avx512f): its payload is the first file's, byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lmzip
from lmzip import format as fmt

from .conftest import ROOT, corpus_slice

GOLDEN = Path(__file__).parent / "data" / "alice29-2000.portable.lmz"
GOLDEN_SHA256 = "230ac560c8faa02fef08bd3c4545a222b09bae97d203c7af30bd2d47ad62198d"
ONE_CHUNK = GOLDEN.with_name("alice29-2000.portable.one-chunk.lmz")
ONE_CHUNK_SHA256 = "771018b8dd53f34fd7cd469e70efb166de93cb9d0963a00fe6512278396e4910"

pytest.importorskip("lmzip._engine")


@pytest.fixture(scope="module")
def portable():
    from lmzip.predictors.registry import load_model

    return load_model("smollm2-135m", backend="portable")


def test_the_golden_file_is_the_committed_one():
    packed = GOLDEN.read_bytes()
    assert hashlib.sha256(packed).hexdigest() == GOLDEN_SHA256
    header = fmt.parse_header(packed)
    assert header.version == 4 and header.code == 6  # the portable engine's default settings
    assert header.params["backend"] == "portable 1"


def test_the_one_chunk_golden_file_holds_the_same_payload():
    import io

    from lmzip.core import scan_streams

    one = ONE_CHUNK.read_bytes()
    assert hashlib.sha256(one).hexdigest() == ONE_CHUNK_SHA256
    [s] = scan_streams(io.BytesIO(one))
    assert s.header.code == 6 | fmt.ONE_CHUNK and s.header.params["backend"] == "portable 1"
    assert s.container_size == 24 and s.compressed_size == len(GOLDEN.read_bytes()) - 3
    payload = s.end.chunks[0].payload_len
    assert one[-payload:] == GOLDEN.read_bytes()[-2 - payload : -2]  # before its end record 00 01


@pytest.mark.parametrize("golden", [GOLDEN, ONE_CHUNK], ids=["first", "one-chunk"])
def test_the_golden_file_decodes_here(portable, golden):
    assert lmzip.decompress(golden.read_bytes(), model=portable) == corpus_slice("alice29.txt", 0, 2000)


def test_compressing_again_gives_the_golden_file(portable):
    assert lmzip.compress(corpus_slice("alice29.txt", 0, 2000), model=portable) == ONE_CHUNK.read_bytes()


CHILD = """
import sys
import numpy
from numpy._core._multiarray_umath import __cpu_features__ as features
import lmzip
off = [name for name in ("X86_V3", "X86_V4") if name in features and features[name]]
assert not off, f"numpy still dispatches {off}"
data = lmzip.decompress(open(sys.argv[1], "rb").read())
sys.stdout.buffer.write(data)
"""


def test_the_golden_file_decodes_without_numpy_simd_on_another_engine_isa(tmp_path):
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    # written on the AVX-512 path: decode on AVX2 where the CPU has both (the scalar matrix
    # products take minutes here; tests/test_engine.py compares every ISA's logits)
    isa = "avx2" if " avx2" in flags and " avx512f" in flags else ""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NPY_DISABLE_CPU_FEATURES": "X86_V4 X86_V3"}
    if isa:
        env["LMZIP_ENGINE_ISA"] = isa
    proc = subprocess.run([sys.executable, "-c", CHILD, str(GOLDEN)], capture_output=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert proc.stdout == corpus_slice("alice29.txt", 0, 2000)
