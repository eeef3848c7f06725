"""lmzip._mix (native/mix.c): the mixer's vocabulary-wide steps for a lockstep group, on
several threads, bit for bit like the numpy reference in lmzip/predictors/mixing.py.

The mixer's arithmetic is part of the format (files decode only if the decoder mixes
the same bits), so the C path is checked against numpy value by value here, and whole
groups are coded with the numpy reference, the C path on one thread and on several:
the payloads must be identical."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmzip import cdf
from lmzip.codec import compress_group, decompress_group
from lmzip.predictors import mixing
from lmzip.predictors.base import Model, Stream, StreamGroup
from lmzip.predictors.mixing import DEFAULT_MIX, M1_MIX, MixedModel, MixSettings
from lmzip.tokenization import PieceTokenizer

from .conftest import corpus_slice

_mix = pytest.importorskip("lmzip._mix")

V = 1000


def _reference_distribution(llm, w_llm, bias, feats, s, q):
    """What MixedStream._mix and cdf.quantize_into compute in numpy."""
    if llm is None:
        s.fill(0.0)
    else:
        np.multiply(llm, w_llm, out=s, dtype=np.float64)  # in float64 under numpy 1.x too
    if bias is not None:
        s += bias
    for tokens, adds in feats:
        s[tokens] += adds
    return cdf._quantize_numpy(s, q)


def _random_job(rng, kind):
    llm = None if kind == "none" else rng.normal(scale=4, size=V).astype(np.float32 if kind == "f32" else np.float64)
    if llm is not None:
        llm[rng.integers(0, V, size=5)] = -np.inf  # escape symbols
    bias = rng.normal(scale=0.3, size=V) if rng.random() < 0.8 else None
    # features: distinct tokens within one, shared between them (added in order)
    feats = []
    for _ in range(int(rng.integers(0, 5))):
        tokens = rng.choice(V, size=int(rng.integers(1, 40)), replace=False).astype(np.int64)
        feats.append((tokens, rng.normal(scale=2, size=len(tokens)) * float(rng.normal())))
    return llm, float(rng.uniform(0.05, 4.0)), bias, feats


@pytest.mark.parametrize("threads", [1, 3])
def test_distributions_are_the_numpy_reference_bit_for_bit(threads):
    rng = np.random.default_rng(threads)
    jobs, expected = [], []
    for k in range(12):
        llm, w, bias, feats = _random_job(rng, ["f32", "f64", "none"][k % 3])
        s_ref, q_ref = np.empty(V), np.empty(V)
        expected.append((_reference_distribution(llm, w, bias, feats, s_ref, q_ref), s_ref, q_ref))
        tokens = np.concatenate([t for t, _ in feats]) if feats else None
        adds = np.concatenate([a for _, a in feats]) if feats else None
        if feats and k % 2:  # the mixer's form: each feature's values and its slot's weight
            weights = rng.normal(size=len(feats) + 3)
            slots = rng.permutation(len(weights))[: len(feats)].tolist()
            values = np.concatenate([a / weights[slot] for (_, a), slot in zip(feats, slots)])
            # the reference adds w * values (these products, not the adds drawn above)
            adds = np.repeat(weights[slots], [len(t) for t, _ in feats]) * values
            s_ref, q_ref = np.empty(V), np.empty(V)
            starts = np.cumsum([0] + [len(t) for t, _ in feats])
            feats = [(t, adds[a:b]) for (t, _), a, b in zip(feats, starts, starts[1:])]
            expected[-1] = (_reference_distribution(llm, w, bias, feats, s_ref, q_ref), s_ref, q_ref)
            jobs.append((llm, w, bias, tokens, values, np.empty(V), np.empty(V),
                         (slots, starts[1:].tolist(), weights)))
            continue
        jobs.append((llm, w, bias, tokens, adds, np.empty(V), np.empty(V)))
    # a compressor's jobs also name the token they code: the sum of q below it comes back
    tokens = [int(rng.integers(V)) if k % 3 else None for k in range(len(jobs))]
    tokens[1] = 0
    jobs = [j if t is None else (*j[:7], j[7] if len(j) > 7 else None, t) for j, t in zip(jobs, tokens)]
    got = _mix.distributions(jobs, threads)
    for (top_sum, s_ref, q_ref), job, result, token in zip(expected, jobs, got, tokens):
        assert result[:2] == top_sum
        assert len(result) == 2 if token is None else result[2] == float(q_ref[:token].sum())
        assert job[5].tobytes() == s_ref.tobytes()
        assert job[6].tobytes() == q_ref.tobytes()
        assert job[6].sum() == cdf.TOTAL - V


def test_distributions_where_the_largest_score_moves():
    """The largest score, found while the scores are written, is redone where the features
    touch it: lowered, raised past it, tied, every score -inf, +inf and NaN scores, and
    +0.0 beside -0.0 at the top."""
    rng = np.random.default_rng(7)
    base = rng.normal(scale=2, size=V).astype(np.float32)
    top = int(np.argmax(base))
    cases = []
    for adds in ([-5.0], [+5.0], [-1e-3, +1e-3], [0.0]):  # at the largest: down, up, back, unchanged
        cases.append((base, 1.0, None, np.array([top] * len(adds)), np.array(adds)))
    tied = base.copy()
    tied[top + 1] = tied[top]
    cases.append((tied, 1.0, None, np.array([top]), np.array([-1.0])))  # the tie keeps the largest
    cases.append((tied, 1.0, None, np.array([7]), np.array([1e3])))  # a new largest elsewhere
    cases.append((np.full(V, -np.inf, np.float32), 1.0, None, None, None))
    cases.append((np.full(V, -np.inf, np.float32), 1.0, None, np.array([3]), np.array([1.0])))
    for special in (np.inf, np.nan):
        x = base.copy()
        x[[5, 900]] = special
        cases.append((x, 1.0, None, np.array([5]), np.array([-2.0])))
    zeros = np.full(V, -np.inf)
    zeros[[10, 20]] = [0.0, -0.0]
    cases.append((zeros, 1.0, None, None, None))
    cases.append((zeros[::-1].copy(), 1.0, None, None, None))
    bias = rng.normal(scale=0.3, size=V)
    cases.append((base, 0.7, bias, np.array([top, top, 3]), np.array([-3.0, 0.5, 2.0])))
    for llm, w, b, tokens, adds in cases:
        s_ref, q_ref = np.empty(V), np.empty(V)
        feats = [] if tokens is None else [(tokens[i:i + 1], adds[i:i + 1]) for i in range(len(tokens))]
        with np.errstate(invalid="ignore"):
            want = _reference_distribution(llm, w, b, feats, s_ref, q_ref)
        job = (llm, w, b, tokens, adds, np.empty(V), np.empty(V))
        got = _mix.distributions([job], 1)[0]
        assert np.array_equal(got, want, equal_nan=True)
        assert job[6].tobytes() == q_ref.tobytes()


@pytest.mark.parametrize("n", [1000, 1003])
def test_distributions_find_the_first_largest_score(n):
    """The first index of the largest score (it takes the rounding's remainder) is found
    while the scores are written, in vector lanes and the tail: ties across lanes, within
    a lane, in the tail, and made by the features before and after the largest."""
    rng = np.random.default_rng(n)
    base = rng.normal(size=n).astype(np.float32)
    big = np.float32(9.0)

    def at(*where):
        x = base.copy()
        x[list(where)] = big
        return x

    t0 = 3
    cases = [(at(2, 5), None, None), (at(1, 5), None, None), (at(7, n - 2), None, None), (at(n - 2, n - 1), None, None),
             (at(40), np.array([t0]), np.array([float(big) - float(base[t0])])),  # raised to the largest, before it
             (at(40), np.array([n - 1]), np.array([float(big) - float(base[n - 1])]))]  # and after it
    for llm, tokens, adds in cases:
        s_ref, q_ref = np.empty(n), np.empty(n)
        feats = [] if tokens is None else [(tokens, adds)]
        want = _reference_distribution(llm, 1.0, None, feats, s_ref, q_ref)
        job = (llm, 1.0, None, tokens, adds, np.empty(n), np.empty(n))
        assert _mix.distributions([job], 1)[0] == want
        assert job[6].tobytes() == q_ref.tobytes()


@pytest.mark.parametrize("threads", [1, 4])
def test_learn_is_the_numpy_reference_bit_for_bit(threads):
    rng = np.random.default_rng(10 + threads)
    jobs, expected = [], []
    for k in range(9):
        llm, _, _, _ = _random_job(rng, ["f32", "f64", "none"][k % 3])
        q = np.empty(V)
        cdf._quantize_numpy(rng.normal(scale=3, size=V), q)
        bias = rng.normal(scale=0.1, size=V) if k % 4 else None
        token, rate = int(rng.integers(V)), float(rng.uniform(0, 1))
        c = rate / float(cdf.TOTAL)
        want_bias = None
        if bias is not None:
            want_bias = bias.copy()
            want_bias -= (q + 1.0) * c
            want_bias[token] += rate
        expected.append((None if llm is None else cdf._expect_numpy(q, llm), want_bias))
        jobs.append((q, llm, bias, token, c, rate))
    for (want_e, want_bias), job, got_e in zip(expected, jobs, _mix.learn(jobs, threads)):
        assert got_e == want_e
        if want_bias is not None:
            assert job[2].tobytes() == want_bias.tobytes()


def _random_features(rng, n_slots=20):
    """Features as NGramStats.features_flat gives them (a slot each, a few candidate tokens
    with values), and weights with their RMSprop means."""
    slots = sorted(rng.choice(n_slots, size=int(rng.integers(1, 8)), replace=False).tolist())
    sizes = rng.integers(1, 30, size=len(slots))
    tokens = np.concatenate([rng.choice(V, size=k, replace=False) for k in sizes]).astype(np.int64)
    values = rng.normal(scale=3, size=len(tokens)) * np.where(rng.random(len(tokens)) < 0.2, 1e-9, 1.0)
    w, g2 = rng.uniform(-4, 4, size=n_slots), rng.uniform(0, 2, size=n_slots) ** 4
    return slots, np.cumsum(sizes).tolist(), tokens, values, w, g2


@pytest.mark.parametrize("threads", [1, 3])
def test_the_feature_weights_step_is_the_python_reference_bit_for_bit(threads):
    """The features' RMSprop step (MixedStream._learn_features: math.fsum, sqrt, the clamp)
    inside learn(), on weights near the clamp and gradients near zero."""
    from types import SimpleNamespace

    rng = np.random.default_rng(20 + threads)
    jobs, want = [], []
    for k in range(40):
        q = np.empty(V)
        cdf._quantize_numpy(rng.normal(scale=3, size=V), q)
        slots, bounds, tokens, values, w, g2 = _random_features(rng)
        rate = float(rng.choice([0.02, 0.5, 1.0]))  # with a small g2, steps that hit the clamp
        token = int(tokens[int(rng.integers(len(tokens)))]) if k % 3 else int(rng.integers(V))
        ref = SimpleNamespace(_set=MixSettings(rate=rate), _flat=(slots, bounds, tokens, values), _w=w.copy(),
                              _g2=g2.copy())
        mixing.MixedStream._learn_features(ref, token, q)
        want.append((ref._w, ref._g2))
        jobs.append((q, None, None, token, 0.0, 0.0,
                     (slots, bounds, tokens, values, w, g2, rate, mixing._DECAY, mixing._W_MIN, mixing._W_MAX)))
    assert _mix.learn(jobs, threads) == [None] * len(jobs)
    for (w_ref, g2_ref), job in zip(want, jobs):
        assert job[6][4].tobytes() == w_ref.tobytes()
        assert job[6][5].tobytes() == g2_ref.tobytes()
    assert any((job[6][4] == mixing._W_MAX).any() or (job[6][4] == mixing._W_MIN).any() for job in jobs)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64),
                          st.sampled_from([1e16, -1e16, 1.0, -1.0, 2.0 ** -60, 0.1, -0.0, 5e-324])), max_size=20))
def test_the_exact_sum_is_math_fsums(values):
    import math

    try:
        want = math.fsum(values)
    except OverflowError:
        with pytest.raises(OverflowError):
            _mix.fsum(values)
        return
    got = _mix.fsum(values)
    assert got == want and math.copysign(1.0, got) == math.copysign(1.0, want)


def test_bad_jobs_are_refused_cleanly():
    s, q = np.empty(V), np.empty(V)
    ok = (None, 1.0, None, None, None, s, q)
    assert len(_mix.distributions([ok], 1)) == 1
    bad = [
        ((None, 1.0, None, None, None, s, s), ValueError),  # s is q
        ((None, 1.0, None, None, None, s, np.empty(V - 1)), ValueError),
        ((np.zeros(V, dtype=np.int32), 1.0, None, None, None, s, q), ValueError),
        ((None, 1.0, np.zeros(V, dtype=np.float32), None, None, s, q), ValueError),
        ((None, 1.0, None, np.array([V]), np.array([1.0]), s, q), ValueError),  # outside the vocabulary
        ((None, 1.0, None, np.array([1, 2]), np.array([1.0]), s, q), ValueError),
        ((None, 1.0, None, None, np.array([1.0]), s, q), TypeError),
        ((None, 1.0, None, None, None, s[::2].copy(), q[: V // 2]), None),  # fine: another size
        ((None, 1.0, None), TypeError),
        ((None, 1.0, None, np.array([1, 2]), np.array([1.0, 2.0]), s, q, ([0], [1], np.ones(2))), ValueError),
        ((None, 1.0, None, np.array([1, 2]), np.array([1.0, 2.0]), s, q, ([2], [2], np.ones(2))), ValueError),
        ((None, 1.0, None, np.array([1, 2]), np.array([1.0, 2.0]), s, q, ([0], [2])), TypeError),
        ((None, 1.0, None, np.array([1, 2]), np.array([1.0, 2.0]), s, q, ([0, 1], [1, 2], np.ones(2))), None),
        ((None, 1.0, None, None, None, s, q, None, V), ValueError),  # a token outside the vocabulary
        ((None, 1.0, None, None, None, s, q, None, V - 1), None),
    ]
    for job, error in bad:
        if error is None:
            _mix.distributions([job], 2)
            continue
        with pytest.raises(error):
            _mix.distributions([ok, job], 2)
    with pytest.raises(ValueError):
        _mix.distributions([ok], 0)
    with pytest.raises(ValueError):
        _mix.learn([(q, None, np.zeros(V), V, 0.1, 0.1)], 1)  # token outside
    with pytest.raises(ValueError):
        _mix.learn([(q, None, q, 1, 0.1, 0.1)], 1)  # bias is q
    assert _mix.learn([], 3) == [] and _mix.distributions([], 3) == []
    w, g2 = np.zeros(4), np.zeros(4)
    toks, vals = np.array([1, 2], dtype=np.int64), np.array([0.5, 0.25])
    fine = ([0, 3], [1, 2], toks, vals, w, g2, 0.1, 0.99, -4.0, 4.0)
    assert _mix.learn([(q, None, None, 1, 0.0, 0.0, fine)], 1) == [None]
    for feats, error in [
        (([4], [2], toks, vals, w, g2, 0.1, 0.99, -4.0, 4.0), ValueError),  # no slot 4
        (([0, 1], [2, 1], toks, vals, w, g2, 0.1, 0.99, -4.0, 4.0), ValueError),  # bounds go back
        (([0], [3], toks, vals, w, g2, 0.1, 0.99, -4.0, 4.0), ValueError),  # past the values
        (([0], [2], np.array([1, V]), vals, w, g2, 0.1, 0.99, -4.0, 4.0), ValueError),  # outside the vocabulary
        (([0], [2], toks, vals[:1], w, g2, 0.1, 0.99, -4.0, 4.0), ValueError),
        (([0], [2], toks, vals, w, w, 0.1, 0.99, -4.0, 4.0), ValueError),  # w is g2
        ((list(range(65)), [2] * 65, toks, vals, np.zeros(65), np.zeros(65), 0.1, 0.99, -4.0, 4.0), ValueError),
        (([0], [2], toks, vals, w, g2), TypeError),
        (([0], [2], toks, np.array([1e308, 1e308]), w, g2, 0.1, 0.99, -4.0, 4.0), OverflowError),
    ]:
        with pytest.raises(error):
            _mix.learn([(q, None, None, 1, 0.0, 0.0, fine), (q, None, None, 1, 0.0, 0.0, feats)], 2)


# ---------------------------------------------------------------- whole groups


class _Bank(Stream):
    def __init__(self, bank, offset):
        self._bank, self._n = bank, offset

    def scores(self):
        return self._bank[self._n % len(self._bank)]

    def push(self, token):
        self._n += 1


class BankModel(Model):
    """A language model that costs nothing: logits from a fixed random bank (float32)."""

    batches = True

    def __init__(self):
        self.name = "bank"
        self.tokenizer = PieceTokenizer([bytes([b]) for b in range(256)], lambda text: list(text))
        rng = np.random.default_rng(0)
        self.bank = (rng.normal(scale=3, size=(13, 256))).astype(np.float32)
        self.bank[:, 0] = -np.inf  # an escape symbol: the weight must not learn from it

    def params(self):
        return {"backend": "bank", "model": "bank"}

    def open_stream(self):
        return _Bank(self.bank, 0)

    def open_group(self, lengths, width=1):
        return StreamGroup([_Bank(self.bank, 3 * i) for i in range(len(lengths))])


SETTINGS = [DEFAULT_MIX, M1_MIX, MixSettings(orders=(1, 2), match=4, rate=0.05, llm_rate=0.01, bias_rate=0.3, skip=6)]


@pytest.mark.parametrize("settings", SETTINGS, ids=["m2", "m1", "skip"])
def test_groups_code_the_same_bytes_with_numpy_and_on_any_number_of_threads(settings, monkeypatch):
    text = corpus_slice("alice29.txt", 3000, 1500)
    chunks = [text[i * 300 : (i + 1) * 300] for i in range(5)] + [text[:120] * 3]
    model = MixedModel(BankModel(), settings)
    payloads = {}
    before = cdf.backend
    try:
        for name, backend, threads in [("numpy", "numpy", 1), ("c1", "c", 1), ("c3", "c", 3)]:
            cdf.set_backend(backend)
            monkeypatch.setenv("LMZIP_HOST_THREADS", str(threads))
            coded = compress_group(model, chunks, width=len(chunks))
            payloads[name] = [p for _, p in coded]
            assert decompress_group(model, coded, width=len(chunks)) == chunks
        cdf.set_backend("numpy")  # and a C file decodes with numpy
        assert decompress_group(model, coded, width=len(chunks)) == chunks
    finally:
        cdf.set_backend(before)
    assert payloads["c1"] == payloads["numpy"]
    assert payloads["c3"] == payloads["numpy"]


def test_host_threads_setting(monkeypatch):
    monkeypatch.setenv("LMZIP_HOST_THREADS", "3")
    assert mixing.host_threads(BankModel()) == 3
    monkeypatch.setenv("LMZIP_HOST_THREADS", "many")
    with pytest.raises(mixing.LMZipError, match="LMZIP_HOST_THREADS"):
        mixing.host_threads(BankModel())
    monkeypatch.delenv("LMZIP_HOST_THREADS")
    model = BankModel()
    model.threads = 5
    assert mixing.host_threads(model) == 5


def _four_distributions(threads: int) -> list:
    rng = np.random.default_rng(3)
    jobs = [(rng.normal(size=V), 1.0, None, None, None, np.empty(V), np.empty(V)) for _ in range(4)]
    return [*_mix.distributions(jobs, threads), *(j[6].tobytes() for j in jobs)]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_helper_threads_survive_fork():
    # the parent's helper threads do not exist in a forked worker (lmzip.parallel's
    # processes): its pool starts afresh, and the same jobs give the same bits there
    import multiprocessing

    want = _four_distributions(3)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_four_distributions, (3,)).get(timeout=60) == want
