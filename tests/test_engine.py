"""The portable engine (native/engine, lmzip._engine, lmzip.predictors.portable):
bit-identical logits across ISAs, thread counts, group widths, batchings, compilers,
optimization levels and CPU architectures, pinned by golden SHA-256 hashes of the
logits of the real model (docs/engine.md).

The hashes are over the float32 logits (little-endian) after each call of
native/engine/engine_main.c, which evaluates the start token then the ids of
tests/data/engine_alice64.txt (the first tokens of alice29.txt) one per call.
Changing any numeric rule of the engine changes them: that is a new file format.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT

ENGINE_DIR = ROOT / "native" / "engine"
TOKENS64 = ROOT / "tests" / "data" / "engine_alice64.txt"

#: 64 tokens, context 2048 (no slide)
GOLD_64 = "d0ef5d49d47849ec55f931ff5c9a9d864649c1e960a16b7380298fc52df21518"
#: the same 64 tokens with a window of 16 (the window slides 49 times)
GOLD_64_W16 = "d76f42daa275a361995b2308a6e632a1f2684746a6db51c74c05c15af9d4a323"
#: the first 16 tokens, context 2048 (for the slow builds)
GOLD_16 = "c5979cdace1088bb9e669c673fb6a3984e65b735d6f7aa914615586463ebc4a0"
#: the first 6 tokens, window 16 (aarch64 under qemu)
GOLD_6_W16 = "a71fd9ea70e49abce7503f975c616e36f6e67f2f6ebd55b39f039104e31f951a"

ENGINE_SOURCES = ["engine.c", "engine_main.c"]
BASE_FLAGS = ["-std=c11", "-ffp-contract=off", "-fno-math-errno", "-pthread"]


def _gguf() -> Path:
    from lmzip.predictors.registry import _smollm2_path

    p = _smollm2_path()
    if p is None:
        pytest.skip("the SmolLM2 model is not installed")
    return p


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    return _gguf()


@pytest.fixture(scope="session")
def weights(gguf_path) -> Path:
    from lmzip.predictors.portable_weights import cached_weights

    return cached_weights(gguf_path)


@pytest.fixture(scope="session")
def engine():
    return pytest.importorskip("lmzip._engine")


def _tokens(n: int) -> list[int]:
    return [int(t) for t in TOKENS64.read_text().split()][:n]


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):  # x86, aarch64
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _isas() -> list[str]:
    """The engine's kernel sets this CPU can run (the engine's own names)."""
    f = _cpu_flags()
    if os.uname().machine in ("aarch64", "arm64"):
        return ["scalar", "neon"] + (["dotprod"] if "asimddp" in f else [])
    isas = ["scalar", "sse2"] + (["ssse3"] if "ssse3" in f else [])
    if {"avx2", "f16c", "fma"} <= f:
        isas.append("avx2")
    if {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= f:
        isas.append("avx512")
    return isas


_BUILDS: dict[tuple, Path] = {}


def _build(tmp_root: Path, cc: str, flags: list[str]) -> Path:
    key = (cc, tuple(flags))
    if key not in _BUILDS:
        if shutil.which(cc) is None:
            pytest.skip(f"{cc} is not installed")
        out = tmp_root / ("engine_main_" + hashlib.sha1(repr(key).encode()).hexdigest()[:12])
        cmd = [cc, *flags, *BASE_FLAGS, "-o", str(out), *[str(ENGINE_DIR / s) for s in ENGINE_SOURCES], "-lm"]
        subprocess.run(cmd, check=True, capture_output=True)
        _BUILDS[key] = out
    return _BUILDS[key]


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engine_builds")


def _run(exe: Path, weights: Path, tokens: list[int], tmp: Path, *args: str, prefix: list[str] = (),
         env: dict | None = None) -> str:
    tok = tmp / f"tokens{len(tokens)}.txt"
    tok.write_text(" ".join(map(str, tokens)))
    r = subprocess.run([*prefix, str(exe), str(weights), str(tok), *args], check=True, capture_output=True,
                       text=True, env=env)
    return r.stdout.split()[1]


def _hash_logits(rows) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(np.asarray(r, dtype="<f4").tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- through the Python binding


def _run_binding(engine, weights, tokens, *, isa="", threads=1, context=2048, width=1):
    """Hash of stream 0's logits after each token; streams 1.. of the group hold other texts."""
    eng = engine.Engine(str(weights), threads, isa)
    n = len(tokens)
    seqs = [[eng.bos] + [tokens[(i + 7 * s) % n] for i in range(n)] for s in range(width)]
    hs = [eng.new_stream(context) for _ in range(width)]
    out = np.empty((width, eng.n_vocab), np.float32)
    rows = []
    try:
        for i in range(n + 1):
            eng.eval(hs, [[sq[i]] for sq in seqs], out)
            rows.append(out[0].copy())
    finally:
        for h in hs:
            eng.free_stream(h)
    return _hash_logits(rows)


@pytest.mark.parametrize("isa", [i for i in _isas() if i != "scalar"])
def test_golden_per_isa(engine, weights, isa):
    assert _run_binding(engine, weights, _tokens(64), isa=isa) == GOLD_64


def test_golden_scalar(engine, weights):
    """The definition (plain C, not vectorized) on 16 tokens."""
    assert _run_binding(engine, weights, _tokens(16), isa="scalar") == GOLD_16


@pytest.mark.parametrize("isa", [i for i in _isas() if i != "scalar"])
def test_isa_group_of_seven(engine, weights, isa):
    """Seven streams in lockstep: the SIMD products' paths for 4, 2 and 1 tokens at a time."""
    assert _run_binding(engine, weights, _tokens(16), isa=isa, width=7) == GOLD_16


@pytest.mark.parametrize("threads", [2, 3])
def test_threads(engine, weights, threads):
    assert _run_binding(engine, weights, _tokens(64), threads=threads) == GOLD_64


@pytest.mark.parametrize("width", [3, 8])
def test_group_width(engine, weights, width):
    """A stream's logits in a lockstep group of other texts equal its logits alone."""
    assert _run_binding(engine, weights, _tokens(64), width=width, threads=2) == GOLD_64


def test_sliding_window(engine, weights):
    toks = _tokens(64)
    assert _run_binding(engine, weights, toks, context=16) == GOLD_64_W16
    for isa in _isas()[1:]:  # every SIMD set's attention over a sliding window, in a group
        assert _run_binding(engine, weights, toks, context=16, width=3, threads=2, isa=isa) == GOLD_64_W16, isa


def _deep_hash(engine, weights, *, isa, context, n, width=1, calls=(1, 1, 1, 37), threads=2) -> str:
    """Hash of stream 0's logits after each call, over n tokens, the calls' sizes taken from
    `calls` in turn (one token: a step of one token per stream; more: steps of up to 32
    inside a call): the window slides and the ring wraps several times."""
    eng = engine.Engine(str(weights), threads, isa)
    base = _tokens(64)
    seqs = [[eng.bos] + [(base[i % 64] + 131 * (i // 64) + 977 * s) % eng.n_vocab for i in range(n)]
            for s in range(width)]
    hs = [eng.new_stream(context) for _ in range(width)]
    out = np.empty((width, eng.n_vocab), np.float32)
    h = hashlib.sha256()
    try:
        i, k = 0, 0
        while i <= n:
            c = calls[k % len(calls)]
            eng.eval(hs, [sq[i:i + c] for sq in seqs], out)
            h.update(out[0].astype("<f4").tobytes())
            i, k = i + c, k + 1
    finally:
        for x in hs:
            eng.free_stream(x)
    return h.hexdigest()


def test_isas_agree_deep_in_a_sliding_window(engine, weights):
    """Every SIMD set's attention (one pass over each KV head's cache for its query heads,
    attn_simd.inc) equals the definition (scalar, one head at a time) far past the start:
    200 tokens through a window of 64 (a ring of 96 slots, wrapped twice), in multi-token
    calls; one stream on 2 threads (its 3 KV heads' attention split in stages among the
    threads) and in a group of 2 (a (token, KV head) pair per thread)."""
    ref = _deep_hash(engine, weights, isa="scalar", context=64, n=200, threads=1)
    for isa in _isas()[1:]:
        for width in (1, 2):
            assert _deep_hash(engine, weights, isa=isa, context=64, n=200, width=width) == ref, (isa, width)


@pytest.mark.slow
def test_isas_agree_at_full_depth(engine, weights):
    """The same at the default window, 2,100 tokens deep (the ring wraps once)."""
    calls = (1, 64)
    ref = _deep_hash(engine, weights, isa="scalar", context=2048, n=2100, calls=calls)
    for isa in _isas()[1:]:
        for width in (1, 3):
            assert _deep_hash(engine, weights, isa=isa, context=2048, n=2100, width=width, calls=calls) == ref, isa


def test_multi_token_calls(engine, weights):
    """Several tokens of a stream in one call (split in internal steps of up to 32)
    give the logits of one-token calls, also with a small window sliding inside a call."""
    toks = [1] + _tokens(64)
    for context in (2048, 16):
        eng = engine.Engine(str(weights), 2)
        one = eng.new_stream(context)
        ref = {}
        out = np.empty((1, eng.n_vocab), np.float32)
        for i, t in enumerate(toks):
            eng.eval([one], [[t]], out)
            ref[i] = out[0].copy()
        a, b = eng.new_stream(context), eng.new_stream(context)
        out2 = np.empty((2, eng.n_vocab), np.float32)
        # a: calls of 1, 5, 40 (> 32) ... tokens; b: the whole text at once, beside a
        cuts = [1, 6, 46, len(toks)]
        eng.eval([b], [toks], out2[1:])
        prev = 0
        for c in cuts:
            eng.eval([a], [toks[prev:c]], out2[:1])
            assert np.array_equal(out2[0], ref[c - 1]), (context, c)
            prev = c
        assert np.array_equal(out2[1], ref[len(toks) - 1])
        assert eng.stream_pos(a) == eng.stream_pos(b) == len(toks)
        for h in (one, a, b):
            eng.free_stream(h)


def test_eval_rows_gives_every_tokens_logits(engine, weights):
    """eval_rows: the logits after every token of every stream, in order, the same numbers
    one-token calls give (the compressor's lookahead relies on it), also across the
    engine's 32-token steps and beside another stream."""
    toks = [1] + _tokens(64)
    eng = engine.Engine(str(weights), 2)
    one, a, other = eng.new_stream(16), eng.new_stream(16), eng.new_stream(16)
    out = np.empty((1, eng.n_vocab), np.float32)
    ref = []
    for t in toks:
        eng.eval([one], [[t]], out)
        ref.append(out[0].copy())
    got, i = [], 0
    for n in (1, 40, len(toks) - 41):
        rows = np.empty((3 + n, eng.n_vocab), np.float32)
        eng.eval_rows([other, a], [[5, 6, 7], toks[i:i + n]], rows)
        got += list(rows[3:])
        i += n
    assert len(got) == len(ref) and all(np.array_equal(g, r) for g, r in zip(got, ref))
    with pytest.raises(ValueError, match="one row per token"):
        eng.eval_rows([a], [[1, 2]], np.empty((1, eng.n_vocab), np.float32))
    for h in (one, a, other):
        eng.free_stream(h)


def test_forced_isa_unavailable(engine, weights):
    if "avx512" in _isas():
        pytest.skip("this CPU has every ISA")
    with pytest.raises(RuntimeError, match="lacks"):
        engine.Engine(str(weights), 1, "avx512")


def _tensor(ty: str, data: np.ndarray, shape: tuple[int, int]):
    from types import SimpleNamespace

    from gguf import GGMLQuantizationType

    return SimpleNamespace(shape=shape, tensor_type=GGMLQuantizationType[ty], data=data)


@pytest.mark.parametrize("ty,block,offsets", [("Q4_1", 20, (0, 2)), ("Q8_0", 34, (0,)), ("Q5_0", 22, (0,)),
                                              ("Q4_K", 144, (0, 2)), ("Q6_K", 210, (208,))])
def test_conversion_refuses_nonfinite_scales(ty, block, offsets):
    """A block with an inf or NaN f16 scale is refused (SIMD conversions agree on finite
    values only); the same tensor with finite scales converts."""
    from lmzip.predictors import portable_weights as pw

    cols = 256
    nblocks = 32 * cols // (256 if ty in ("Q4_K", "Q6_K") else 32)
    raw = np.zeros((nblocks, block), np.uint8)
    for o in offsets:
        raw[:, o:o + 2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
    accepted = frozenset({int(_tensor(ty, raw, (cols, 32)).tensor_type)})
    pw._blob("w", _tensor(ty, raw, (cols, 32)), accepted)
    for o in offsets:
        for bad in (np.inf, -np.inf, np.nan):
            r = raw.copy()
            r[nblocks // 2, o:o + 2] = np.frombuffer(np.float16(bad).tobytes(), np.uint8)
            with pytest.raises(ValueError, match="inf or NaN"):
                pw._blob("w", _tensor(ty, r, (cols, 32)), accepted)


def test_conversion_refuses_nonfinite_f32():
    from lmzip.predictors import portable_weights as pw

    v = np.ones(64, np.float32)
    pw._blob("norm", _tensor("F32", v, (64,)), frozenset({0}))
    v[3] = np.nan
    with pytest.raises(ValueError, match="norm: the tensor holds inf or NaN"):
        pw._blob("norm", _tensor("F32", v, (64,)), frozenset({0}))


def test_bad_token(engine, weights):
    eng = engine.Engine(str(weights), 1)
    h = eng.new_stream(64)
    with pytest.raises(ValueError):
        eng.eval([h], [[eng.n_vocab]], np.empty(eng.n_vocab, np.float32))
    eng.free_stream(h)


# ---------------------------------------------------------------- the harness, built many ways


def _x86_builds():
    f = _cpu_flags()
    out = [("default", []), ("nosimd", ["-DLMZ_NO_SIMD"])]
    if {"avx2", "fma", "f16c"} <= f:
        out.append(("avx2", ["-mavx2", "-mfma", "-mf16c"]))
    out.append(("native", ["-march=native"]))
    return out


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 builds")
@pytest.mark.parametrize("opt", ["-O2", "-O0"])
@pytest.mark.parametrize("name,flags", _x86_builds())
def test_harness_builds(build_dir, weights, opt, name, flags, tmp_path):
    """gcc at -O0 and -O2, baseline/AVX2/native code generation, SIMD kernels compiled
    out: the same bits.  The fast builds run 64 tokens, the plain C ones 16."""
    exe = _build(build_dir, "gcc", [opt, *flags])
    slow = name == "nosimd" or opt == "-O0"
    if slow and name == "nosimd" and opt == "-O0" and os.environ.get("LMZIP_SLOW_TESTS") != "1":
        pytest.skip("plain C at -O0 is slow; set LMZIP_SLOW_TESTS=1")
    toks, gold = (_tokens(16), GOLD_16) if slow else (_tokens(64), GOLD_64)
    assert _run(exe, weights, toks, tmp_path, "--threads", "2") == gold


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 builds")
def test_harness_isas_and_streams(build_dir, weights, tmp_path):
    exe = _build(build_dir, "gcc", ["-O2"])
    isa = _isas()[-1]
    assert _run(exe, weights, _tokens(64), tmp_path, "--isa", isa, "--streams", "3", "--threads", "3") == GOLD_64
    env = dict(os.environ, LMZIP_ENGINE_ISA="sse2")
    assert _run(exe, weights, _tokens(16), tmp_path, env=env) == GOLD_16


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 builds")
@pytest.mark.parametrize("flags", [["-O2"], ["-O0"]], ids=["O2", "O0"])
def test_harness_f16_selfcheck(build_dir, flags):
    """The SSE2, F16C and AVX-512 f16 -> f32 conversions give h2f's bits on every finite f16
    (the goldens reach only the scales one model has)."""
    r = subprocess.run([str(_build(build_dir, "gcc", flags)), "--selfcheck"], capture_output=True, text=True)
    assert r.returncode == 0 and "sse2 0 wrong" in r.stdout, r.stdout + r.stderr
    f = _cpu_flags()
    if {"avx2", "f16c"} <= f:
        assert "f16c 0 wrong" in r.stdout and "f16c: not on this CPU" not in r.stdout, r.stdout
    if "avx512f" in f:
        assert "avx512 0 wrong" in r.stdout and "avx512: not on this CPU" not in r.stdout, r.stdout


def test_aarch64_qemu(build_dir, weights, tmp_path):
    """A cross-built aarch64 harness under qemu-user: the NEON kernels with and without the
    dot product instructions (each in a group of seven streams, so their 4-, 2- and 1-token
    paths) and the plain C definition; a CPU without DotProd picks the baseline NEON set."""
    if shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None:
        pytest.skip("needs gcc-aarch64-linux-gnu and qemu-user")
    exe = _build(build_dir, "aarch64-linux-gnu-gcc", ["-O2"])
    toks = _tokens(6)
    qemu = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
    for isa in ("dotprod", "neon"):
        assert _run(exe, weights, toks, tmp_path, "--context", "16", "--isa", isa, "--streams", "7",
                    "--threads", "2", prefix=qemu) == GOLD_6_W16, isa
    assert _run(exe, weights, toks, tmp_path, "--context", "16", "--isa", "scalar", prefix=qemu) == GOLD_6_W16
    a53 = [qemu[0], "-cpu", "cortex-a53", *qemu[1:]]  # ARMv8.0: no DotProd
    tok = tmp_path / "tokens6.txt"
    r = subprocess.run([*a53, str(exe), str(weights), str(tok), "--context", "16"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split()[1] == GOLD_6_W16 and "isa neon " in r.stdout, r.stdout + r.stderr
    r = subprocess.run([*a53, str(exe), str(weights), str(tok), "--isa", "dotprod"], capture_output=True, text=True)
    assert r.returncode != 0 and "lacks the ARMv8.2 dot product" in r.stderr
    r = subprocess.run([*qemu, str(exe), "--selfcheck"], capture_output=True, text=True)
    assert r.returncode == 0 and "neon 0 wrong" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
def test_aarch64_qemu_64(build_dir, weights, tmp_path):
    if shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None:
        pytest.skip("needs gcc-aarch64-linux-gnu and qemu-user")
    exe = _build(build_dir, "aarch64-linux-gnu-gcc", ["-O2"])
    assert _run(exe, weights, _tokens(64), tmp_path, "--context", "16", "--threads", "2",
                prefix=["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]) == GOLD_64_W16


# ---------------------------------------------------------------- PortableModel


@pytest.fixture(scope="session")
def portable(gguf_path, weights, engine):
    from lmzip.predictors.portable import PortableModel
    from lmzip.predictors.portable_weights import file_sha256

    return PortableModel(gguf_path, name="smollm2-135m", sha256=file_sha256(gguf_path), context=2048, threads=2,
                         weights=weights)


def test_portable_model_protocol(portable):
    m = portable
    assert m.params() == {"backend": "portable 1", "context": 2048, "model": "smollm2-135m"}
    assert m.batches
    tk = m.tokenizer
    assert tk.vocab_size > tk.n_model_tokens  # escapes for the bytes SmolLM2 cannot spell
    data = b"Alice was beginning to get very tired \xff\x04 of sitting"
    toks = tk.encode(data)
    assert tk.decode(toks) == data
    with m.open_stream() as s:
        alone = []
        for t in toks:
            sc = s.scores()
            assert sc.dtype == np.float32 and sc.shape == (tk.vocab_size,)
            assert np.all(np.isneginf(sc[tk.n_model_tokens:]))
            alone.append(sc.copy())
            s.push(t)
    other = tk.encode(b"Down, down, down. Would the fall never come to an end?")
    lengths = [len(toks), len(other), 5]
    texts = [toks, other, other[:5]]
    with m.open_group(lengths, width=4) as g:
        for i in range(len(toks)):
            for s, text in zip(g.streams, texts):
                if i < len(text):
                    if s is g.streams[0]:
                        assert np.array_equal(s.scores(), alone[i]), i
                    s.push(text[i])
            g.advance()


def test_portable_cross_entropy_matches_llamacpp(portable, gguf_path):
    """Cross-entropy of 150 tokens of alice29.txt within 1 % of llama.cpp's."""
    pytest.importorskip("llama_cpp")
    from lmzip.predictors.llamacpp import LlamaCppModel

    from .conftest import corpus_slice

    data = corpus_slice("alice29.txt", 0, 3000)
    lm = LlamaCppModel(gguf_path, name="smollm2-135m", sha256="00" * 32, context=2048, threads=1)
    toks = portable.tokenizer.encode(data)[:150]

    def ce(model):
        bits = 0.0
        with model.open_stream() as s:
            for t in toks:
                sc = s.scores().astype(np.float64)
                mx = sc[np.isfinite(sc)].max()
                bits -= (sc[t] - mx - np.log(np.exp(sc - mx).sum())) / np.log(2)
                s.push(t)
        return bits / len(toks)

    ours, theirs = ce(portable), ce(lm)
    lm.close()
    assert abs(ours - theirs) / theirs < 0.01, (ours, theirs)


def test_converted_weights_live_in_lmzips_cache_folder(monkeypatch, tmp_path):
    """engine/ below the one cache folder: $LMZIP_CACHE, else $XDG_CACHE_HOME/lmzip."""
    from lmzip.predictors import portable_weights as pw

    monkeypatch.delenv("LMZIP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pw.cache_dir() == tmp_path / "xdg" / "lmzip" / "engine"
    monkeypatch.setenv("LMZIP_CACHE", str(tmp_path / "mine"))
    assert pw.cache_dir() == tmp_path / "mine" / "engine"
