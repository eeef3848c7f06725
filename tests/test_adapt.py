"""Online adaptation of the output rows (issue 20: native/adapt.c, lmzip._adapt, MixSettings.adapt).

- the C rule equals a plain-Python reference of docs' rule (native/adapt.c's header) bit for bit,
  and a golden hash pins it (changing the rule changes files);
- the engine's hidden state (its new output) is the same on every ISA and thread count;
- settings: off leaves headers as before; on round-trips through the header; bad values are a
  FormatError; a base without a hidden state is refused;
- a real round trip with the portable engine, compressed on one ISA and decoded on another.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from lmzip.errors import FormatError, LMZipError
from lmzip.predictors.mixing import ADAPT_MIX, DEFAULT_MIX, NO_MIX, MixedModel, MixSettings, NGramModel

from .conftest import corpus_slice

_adapt = pytest.importorskip("lmzip._adapt")

E, N, K, RATE = 64, 300, 8, 0.5
#: sha256 of the float64 scores after every apply() of _synthetic_run()
GOLD_ROWS_CENTERED = "bbcce6745330b7c4d7c57234d1a29a69cc904561b1822028006f8d282b7e758a"
GOLD_ROWS = "c10db506d32c536196d79feeb9b52208e76baa3b99bf8147b79aa9273bc31c34"


def _synthetic(step: int):
    """Deterministic inputs from integers only: hidden state, scores, q, token."""
    i = np.arange(E)
    h = (((i * 7919 + step * 104729) % 201) - 100).astype(np.float32) / np.float32(37.0)
    j = np.arange(N)
    s = (((j * 31 + step * 17) % 97) / 13.0).astype(np.float64)
    s[(step * 5) % N] = -np.inf  # a non-finite score is never selected
    q = (((j * 13 + step) % 50) * 1000).astype(np.float64)
    token = int((step * 37) % N)
    return h, s, q, token


def _reference_run(steps: int, k: int = K, rate: float = RATE, center: float = 0.0) -> list[np.ndarray]:
    """native/adapt.c's rule, in plain Python floats (binary64) and numpy float32 scalars."""
    rows: dict[int, np.ndarray] = {}
    out = []
    f32 = np.float32
    mu = None
    for step in range(steps):
        h, s, q, token = _synthetic(step)
        if center:
            mu = h.copy() if mu is None else mu
            x = h.copy()
            h = np.array([f32(x[d] - mu[d]) for d in range(E)], np.float32)
            mu = np.array([f32(f32(f32(center) * mu[d]) + f32(f32(1.0 - center) * x[d])) for d in range(E)],
                          np.float32)
        hh = 0.0
        for d in range(E):
            hh = hh + float(h[d]) * float(h[d])
        cand = [i for i in range(N) if np.isfinite(s[i])]
        top = sorted(cand, key=lambda i: (-s[i], i))[:k]
        for t in top:
            if t in rows:
                c = 0.0
                for d in range(E):
                    c = c + float(rows[t][d]) * float(h[d])
                s[t] = s[t] + c
        out.append(s.copy())
        if hh == 0.0:
            continue
        c = rate / hh
        for t in top:
            p = (q[t] + 1.0) / 16777216.0
            r = rows.setdefault(t, np.zeros(E, np.float32))
            cf = f32(-(c * p))
            for d in range(E):
                r[d] = f32(r[d] + f32(cf * h[d]))
        r = rows.setdefault(token, np.zeros(E, np.float32))
        cf = f32(c)
        for d in range(E):
            r[d] = f32(r[d] + f32(cf * h[d]))
    return out


def _synthetic_run(steps: int, k: int = K, rate: float = RATE, center: float = 0.0) -> list[np.ndarray]:
    a = _adapt.Rows(E, N, k, rate, center)
    out = []
    for step in range(steps):
        h, s, q, token = _synthetic(step)
        a.apply(h, s)
        out.append(s.copy())
        a.learn(token, q)
    return out


def _hash(rows) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(np.asarray(r, dtype="<f8").tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("center", [0.0, 0.9])
def test_rows_match_the_reference(center):
    got, want = _synthetic_run(40, center=center), _reference_run(40, center=center)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.tobytes() == w.tobytes(), i
    assert not np.array_equal(got[-1], _synthetic(39)[1])  # it did change the scores


def test_rows_golden():
    assert _hash(_synthetic_run(200)) == GOLD_ROWS
    assert _hash(_synthetic_run(200, center=0.99)) == GOLD_ROWS_CENTERED


def test_rows_bad_arguments():
    with pytest.raises(ValueError):
        _adapt.Rows(E, N, 0, RATE)
    with pytest.raises(ValueError):
        _adapt.Rows(E, N, K, float("nan"))
    a = _adapt.Rows(E, N, K, RATE)
    h, s, q, token = _synthetic(0)
    with pytest.raises(RuntimeError):
        a.learn(token, q)  # learn() before apply()
    with pytest.raises(ValueError):
        a.apply(h.astype(np.float64), s)
    with pytest.raises(ValueError):
        a.apply(h[:10], s)
    with pytest.raises(ValueError):
        a.apply(h, s.astype(np.float32))
    a.apply(h, s)
    a.learn(N + 5, q)  # an escape symbol: only the selected rows learn
    assert a.rows == K


# ---------------------------------------------------------------- settings and headers


def test_settings_off_leave_headers_unchanged():
    assert DEFAULT_MIX.params() == "m2" and NO_MIX.adapt == 0
    custom = dataclasses.replace(DEFAULT_MIX, rate=0.003).params()
    assert "adapt" not in custom and "adapt_rate" not in custom and "skip" not in custom
    assert MixSettings.from_params(custom) == dataclasses.replace(DEFAULT_MIX, rate=0.003)


def test_settings_on_round_trip_through_the_header():
    assert ADAPT_MIX.params() == "a1" and MixSettings.from_params("a1") == ADAPT_MIX
    custom = dataclasses.replace(ADAPT_MIX, adapt=16)
    assert MixSettings.from_params(custom.params()) == custom


@pytest.mark.parametrize("change", [{"adapt": -1}, {"adapt": 5000}, {"adapt": 1.5}, {"adapt_rate": "x"},
                                    {"adapt_rate": 17.0}, {"adapt": 0}, {"unknown": 1}, {"adapt_center": 1.0},
                                    {"adapt_center": -0.5}, {"adapt": True}])
def test_bad_settings_in_a_header_are_a_format_error(change):
    d = dataclasses.replace(ADAPT_MIX, adapt=16).params()
    d.update(change)
    with pytest.raises(FormatError):
        MixSettings.from_params(d)


def test_adaptation_needs_a_hidden_state():
    with pytest.raises(LMZipError, match="hidden state"):
        NGramModel(dataclasses.replace(NO_MIX, adapt=8, adapt_rate=0.5)).open_stream()


# ---------------------------------------------------------------- with the portable engine


@pytest.fixture(scope="module")
def engine_parts():
    engine = pytest.importorskip("lmzip._engine")
    from lmzip.predictors.registry import _smollm2_path

    gguf = _smollm2_path()
    if gguf is None:
        pytest.skip("the SmolLM2 model is not installed")
    from lmzip.predictors.portable_weights import cached_weights, file_sha256

    return engine, gguf, cached_weights(gguf), file_sha256(gguf)


def _isas(engine, weights) -> list[str]:
    ok = []
    for isa in ("scalar", "sse2", "avx2", "avx512"):
        try:
            engine.Engine(str(weights), 1, isa)
            ok.append(isa)
        except RuntimeError:
            pass
    return ok


#: sha256 of the hidden states (float32) after the start token and 12 tokens of alice29.txt
GOLD_HIDDEN = "f17f16729345c7fda8b2e58024deb6b439955ca9f296fd2438c86250355bed03"


def _hidden_hash(engine, weights, isa, threads) -> str:
    from .test_engine import _tokens

    eng = engine.Engine(str(weights), threads, isa)
    st = eng.new_stream(2048)
    out = np.empty((1, eng.n_vocab), np.float32)
    hid = np.empty(eng.n_embd, np.float32)
    h = hashlib.sha256()
    try:
        for t in [eng.bos] + _tokens(12):
            eng.eval([st], [[t]], out)
            eng.stream_hidden(st, hid)
            h.update(hid.astype("<f4").tobytes())
    finally:
        eng.free_stream(st)
    return h.hexdigest()


def test_hidden_state_same_on_every_isa_and_thread_count(engine_parts):
    engine, _, weights, _ = engine_parts
    for isa in _isas(engine, weights):
        for threads in (1, 2):
            assert _hidden_hash(engine, weights, isa, threads) == GOLD_HIDDEN, (isa, threads)


def test_round_trip_across_isas(engine_parts):
    import lmzip
    from lmzip.predictors.portable import PortableModel

    engine, gguf, weights, sha = engine_parts
    isas = _isas(engine, weights)
    data = corpus_slice("alice29.txt", 0, 200)
    a = MixedModel(PortableModel(gguf, name="smollm2-135m", sha256=sha, weights=weights, isa=isas[-1],
                                 threads=1), ADAPT_MIX)
    b = MixedModel(PortableModel(gguf, name="smollm2-135m", sha256=sha, weights=weights, isa=isas[0],
                                 threads=2), ADAPT_MIX)
    packed = lmzip.compress(data, model=a)
    assert lmzip.decompress(packed, model=b) == data
    assert lmzip.compress(data, model=b) == packed
    plain = lmzip.compress(data, model=MixedModel(a.base, DEFAULT_MIX))
    assert packed != plain  # the adaptation took part


def test_cli_adapt(tmp_path, engine_parts):
    from .test_cli import assert_one_line_error, run

    src = tmp_path / "s.txt"
    src.write_bytes(corpus_slice("alice29.txt", 0, 120))
    run("compress", "--adapt", "--backend", "portable", "-k", str(src), check=0)
    info = run("info", str(src) + ".lmz", check=0).stdout.decode()
    assert "preset a1" in info and "output-row adaptation" in info
    assert run("decompress", "-c", str(src) + ".lmz", check=0).stdout == src.read_bytes()
    assert_one_line_error(run("compress", "-m", "ngram", "--adapt", "-c", str(src)))
