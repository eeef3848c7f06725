"""The portable engine running Gemma 3 270M (weights format 2, docs/engine.md "Gemma 3"):
golden SHA-256 hashes of its logits, the same on every ISA, thread count, group width
and call split; the weights conversion keeps the GGUF's values exactly; a CLI round trip.

The hashes are over the float32 logits (little-endian) after the start token and then
each id of tests/data/engine_alice_gemma32.txt (the first Gemma tokens of alice29.txt),
one per call.  Gemma's 262,144-entry output head is slow, so the texts are short.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from .conftest import ROOT
from .test_engine import _isas

TOKENS = ROOT / "tests" / "data" / "engine_alice_gemma32.txt"

#: start token + 16 tokens, context 2048
GOLD_G16 = "f2f00ec1c62bbfe6451066ed12f1ddd2781e1d6ae384d81f76043f17a36ebb3f"
#: start token + 24 tokens with a window of 16 (the global layers' window slides 9 times)
GOLD_G24_W16 = "fa7f46adfb0c296bf6fd6e8b803f20e7cb4f0f6c371933b3efa45530422719ea"


@pytest.fixture(scope="module")
def gemma_gguf():
    from lmzip.predictors.registry import _gemma3_path

    p = _gemma3_path()
    if p is None:
        pytest.skip("the gemma3 model package is not installed")
    return p


@pytest.fixture(scope="module")
def engine():
    return pytest.importorskip("lmzip._engine")


@pytest.fixture(scope="module")
def gweights(gemma_gguf):
    from lmzip.predictors.portable_weights import cached_weights

    return cached_weights(gemma_gguf)


def _tokens(n: int) -> list[int]:
    return [int(t) for t in TOKENS.read_text().split()][:n]


def _hash(engine, weights, n, *, isa="", threads=1, context=2048, width=1) -> str:
    eng = engine.Engine(str(weights), threads, isa)
    toks = _tokens(32)
    seqs = [[eng.bos] + [toks[(i + 7 * s) % len(toks)] for i in range(n)] for s in range(width)]
    hs = [eng.new_stream(context) for _ in range(width)]
    out = np.empty((width, eng.n_vocab), np.float32)
    h = hashlib.sha256()
    try:
        for i in range(n + 1):
            eng.eval(hs, [[sq[i]] for sq in seqs], out)
            h.update(out[0].astype("<f4").tobytes())
    finally:
        for s in hs:
            eng.free_stream(s)
    return h.hexdigest()


def _deep_hash(engine, weights, *, isa, context, n, calls=(1, 49), threads=2) -> str:
    """Hash of the logits after each call, n tokens in all, the calls' sizes taken from
    `calls` in turn (a one-token call on 2 threads splits the attention in stages)."""
    eng = engine.Engine(str(weights), threads, isa)
    base = _tokens(32)
    seq = [eng.bos] + [(base[i % 32] + 257 * (i // 32)) % eng.n_vocab for i in range(n)]
    s = eng.new_stream(context)
    out = np.empty((1, eng.n_vocab), np.float32)
    h = hashlib.sha256()
    try:
        i, k = 0, 0
        while i <= n:
            c = calls[k % len(calls)]
            eng.eval([s], [seq[i:i + c]], out)
            h.update(out.astype("<f4").tobytes())
            i, k = i + c, k + 1
    finally:
        eng.free_stream(s)
    return h.hexdigest()


@pytest.mark.slow
def test_isas_agree_past_the_local_window(engine, gweights):
    """Past position 512 the local layers drop the sink and slide (the SIMD attention's path
    without a sink, 4 query heads of 256 dimensions); a window of 300 (shorter than the
    local layers' 512: the ring holds the longer of the two) slides the global layers too."""
    ref = _deep_hash(engine, gweights, isa="scalar", context=300, n=560)
    for isa in _isas()[1:]:
        for threads in (1, 2):  # its one KV head's attention whole, and split in stages among threads
            assert _deep_hash(engine, gweights, isa=isa, context=300, n=560, threads=threads) == ref, (isa, threads)


@pytest.mark.parametrize("isa", _isas())
def test_golden_per_isa(engine, gweights, isa):
    assert _hash(engine, gweights, 16, isa=isa) == GOLD_G16


def test_golden_threads_and_width(engine, gweights):
    """2 threads, a stream in a lockstep group of 3 other texts: the same bits."""
    assert _hash(engine, gweights, 16, threads=2, width=3) == GOLD_G16


def test_golden_sliding_window(engine, gweights):
    assert _hash(engine, gweights, 24, context=16) == GOLD_G24_W16
    assert _hash(engine, gweights, 24, context=16, threads=2, width=2, isa=_isas()[1]) == GOLD_G24_W16


def test_multi_token_calls(engine, gweights):
    """Tokens evaluated several per call (internal steps of up to 32) give the logits of
    one-token calls."""
    toks = [2] + _tokens(32) + _tokens(8)
    eng = engine.Engine(str(gweights), 2)
    one, a = eng.new_stream(2048), eng.new_stream(2048)
    out = np.empty((1, eng.n_vocab), np.float32)
    ref = {}
    for i, t in enumerate(toks):
        eng.eval([one], [[t]], out)
        ref[i] = out[0].copy()
    prev = 0
    for c in (3, 38, len(toks)):  # a call of 35 tokens crosses an internal step
        eng.eval([a], [toks[prev:c]], out)
        assert np.array_equal(out[0], ref[c - 1]), c
        prev = c
    eng.free_stream(one), eng.free_stream(a)


@pytest.mark.slow  # about 20 s, mostly GGUFReader parsing the 262K-token vocabulary
def test_conversion_keeps_gguf_values(gemma_gguf):
    """Q4_K, Q6_K (K16: scale * q + min) and Q5_0 (as Q8_0 blocks) give exactly the
    values of gguf-py's dequantization (the goldens pin the converted file as well)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from lmzip.predictors import portable_weights as pw

    r = GGUFReader(str(gemma_gguf))
    seen = set()
    for t in r.tensors:
        name = t.tensor_type.name
        if name in seen or name not in ("Q4_K", "Q6_K", "Q5_0"):
            continue
        seen.add(name)
        cols, rows = int(t.shape[0]), 32  # the first 32 rows
        data = np.asarray(t.data)[:rows]
        raw = data.reshape(-1).view(np.uint8)
        ref = dequantize(data, t.tensor_type).reshape(rows, cols)
        if name == "Q5_0":
            b = pw._q5_0_as_q8_0(raw, rows, cols).reshape(rows, cols // 32, 34)
            d = b[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
            v = (d[..., None] * b[:, :, 2:].view(np.int8).astype(np.float32)).reshape(rows, cols)
        else:
            q, sc, mn = (pw._unpack_q4_k if name == "Q4_K" else pw._unpack_q6_k)(raw, rows, cols)
            v = np.repeat(sc, 16, axis=1) * q.astype(np.float32) + np.repeat(mn, 16, axis=1)
        assert np.array_equal(v.astype(np.float32), ref), name
    assert seen == {"Q4_K", "Q6_K", "Q5_0"}


def test_cli_round_trip(gemma_gguf, gweights, tmp_path):
    data = b"Alice was beginning to get very tired of sitting by her sister on the bank.\n"
    src = tmp_path / "a.txt"
    src.write_bytes(data)
    env = dict(os.environ, PYTHONPATH=str(ROOT), LMZIP_THREADS="1")
    cmd = [sys.executable, "-m", "lmzip"]
    subprocess.run([*cmd, "compress", "--backend", "portable", "-m", "gemma3", "-o", str(tmp_path / "a.lmz"),
                    str(src)], check=True, env=env, capture_output=True)
    out = subprocess.run([*cmd, "decompress", "-c", str(tmp_path / "a.lmz")], check=True, env=env,
                         capture_output=True)
    assert out.stdout == data
    assert (tmp_path / "a.lmz").stat().st_size < 0.6 * len(data)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 builds")
def test_harness_plain_c(gweights, tmp_path, tmp_path_factory):
    """engine_main.c built with the SIMD kernels compiled out (-DLMZ_NO_SIMD, gcc -O2):
    the golden bits."""
    from .test_engine import _build, _run

    exe = _build(tmp_path_factory.mktemp("gemma_builds"), "gcc", ["-O2", "-DLMZ_NO_SIMD"])
    assert _run(exe, gweights, _tokens(16), tmp_path, "--threads", "2") == GOLD_G16
