"""The GPU's mixer (lmzip.gpu.mixer, lmzip.gpu.mix_kernels) against the host's
(lmzip._mix, lmzip._cdf), bit for bit, under Triton's CPU interpreter when there is no
GPU: the quantization rule on special scores, the decoder's search, whole groups of
mixed streams coding and learning, files from a GPU model that mixes there, and the
check that stops a GPU whose mixer differs.  tests/test_gpu_ptx.py scans the kernels'
PTX."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import ROOT, gpu_torch

torch = gpu_torch()

from lmzip import cdf  # noqa: E402
from lmzip.gpu import mix_kernels, mixer  # noqa: E402
from lmzip.gpu.constants import double_bits  # noqa: E402
from lmzip.gpu.mixer import DeviceMixer, Features, pack_features, self_check  # noqa: E402
from lmzip.predictors.mixing import LLM_MAX, LLM_MIN  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's inf - inf


def _no_features(R: int) -> Features:
    empty = np.zeros(0, np.int64)
    return Features(empty, empty, np.zeros((0, 1)), empty, np.zeros(R + 1, np.int64), 1)


def _special_rows(V: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    rows = rng.normal(scale=6.0, size=(9, V)).astype(np.float32)
    rows[1, 3] = rows[1, 200] = 40.0  # the largest twice: the remainder goes to the first
    rows[2, 17] = np.inf  # +inf scores share the mass
    rows[2, 90] = np.inf
    rows[3, :] = -np.inf  # no finite score: uniform
    rows[4, ::3] = np.nan  # NaN counts as -inf
    rows[5, :] = 0.0  # ties everywhere, -0.0 and +0.0 alike
    rows[5, ::2] = -0.0
    rows[6, :] = -1e30  # all far below one another's exp range but one
    rows[6, 11] = 0.0
    rows[7, V - 5:] = -np.inf  # escapes
    rows[8, 0] = np.nan
    rows[8, 1:] = -np.inf
    return rows


@pytest.mark.parametrize("V", [1003, 1024, 272])
def test_the_distribution_is_the_hosts_on_special_scores(V):
    """The rule's passes (largest, exponentials in 8 lanes, floors, remainder) on rows with
    +inf, NaN, no finite score, ties, -0.0 and underflow: the C rule's q, max and sum."""
    rows = _special_rows(V)
    R = len(rows)
    m = DeviceMixer(torch, DEV, R, V, 0.0, 0.0, (LLM_MIN, LLM_MAX))  # w_llm 1: the scores are the logits
    tokens = [int(t) for t in np.random.default_rng(1).integers(0, V, R)]
    res = m.step(list(range(R)), list(torch.as_tensor(rows, device=DEV)), _no_features(R), tokens=tokens)
    got = m.distributions(R)
    for r in range(R):
        want = np.empty(V)
        top, total = cdf.quantize_into(rows[r].astype(np.float64), want)
        assert got[r].tobytes() == want.tobytes(), r
        assert res["top"][r] == top and res["sum"][r] == total
        t = tokens[r]
        assert res["below"][r] == want[:t].sum() and res["freq"][r] == want[t] + 1


_SCORE = st.one_of(st.floats(-60, 60, width=32), st.sampled_from([np.inf, -np.inf, np.nan, 0.0, -0.0, 3e38, -3e38]))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(2, 300).flatmap(lambda V: st.lists(st.lists(_SCORE, min_size=V, max_size=V), min_size=1,
                                                           max_size=3)),
       seed=st.integers(0, 2**32 - 1))
def test_any_scores_give_the_hosts_distribution(rows, seed):
    """Any float32 scores, any vocabulary size from 2: the C rule's q, max, sum, and the
    interval of a token."""
    x = np.asarray(rows, np.float32)
    R, V = x.shape
    m = DeviceMixer(torch, DEV, R, V, 0.0, 0.0, (LLM_MIN, LLM_MAX))
    tokens = [int(t) for t in np.random.default_rng(seed).integers(0, V, R)]
    res = m.step(list(range(R)), list(torch.as_tensor(x, device=DEV)), _no_features(R), tokens=tokens)
    got = m.distributions(R)
    for r in range(R):
        want = np.empty(V)
        top, total = cdf.quantize_into(x[r].astype(np.float64), want)
        assert got[r].tobytes() == want.tobytes()
        assert res["top"][r] == top and res["sum"][r] == total  # (the max's zero may differ in sign: unused)
        assert res["below"][r] == want[: tokens[r]].sum() and res["freq"][r] == want[tokens[r]] + 1


def test_the_decoders_search_is_the_hosts():
    """The symbol whose interval holds a quantile, at both ends and inside, as lmzip._cdf.find."""
    V, R = 1003, 9
    rows = _special_rows(V)
    m = DeviceMixer(torch, DEV, R, V, 0.0, 0.0, (LLM_MIN, LLM_MAX))
    rng = np.random.default_rng(2)
    quantiles = [0, (1 << 24) - 1] + [int(x) for x in rng.integers(0, 1 << 24, R - 2)]
    res = m.step(list(range(R)), list(torch.as_tensor(rows, device=DEV)), _no_features(R), quantiles=quantiles)
    q = m.distributions(R)
    for r in range(R):
        symbol, below = cdf.find(q[r], quantiles[r])
        assert (res["symbol"][r], res["below"][r], res["freq"][r]) == (symbol, below, q[r][symbol] + 1)


def test_features_add_in_their_order():
    """pack_features gathers each token's values in feature order, -0.0 where a feature has
    none (x + -0.0 is x, its sign too), each value times its slot's weight."""
    flat = ([2, 0, 5], [2, 3, 5], np.array([7, 3, 3, 9, 7]), np.array([0.5, -1.0, 2.0, 1.5, 0.25]))
    w = np.arange(8, dtype=np.float64) / 8
    f = pack_features([([], [], None, None), flat], [w, w], 3, 10)
    assert f.row.tolist() == [1, 1, 1] and f.token.tolist() == [3, 7, 9]
    want = np.array([[w[2] * -1.0, w[0] * 2.0, -0.0], [w[2] * 0.5, -0.0, w[5] * 0.25], [-0.0, -0.0, w[5] * 1.5]])
    assert f.adds.tobytes() == want.tobytes()
    assert f.entry.tolist() == [1, 0, 0, 2, 1] and f.starts.tolist() == [0, 0, 5]  # each value's entry


@pytest.mark.parametrize("seed,vocab,streams,backend", [(28, 1003, 3, "native"), (3, 512, 5, "native"),
                                                         (11, 272, 2, "numpy")])
def test_groups_mix_and_learn_as_the_host(seed, vocab, streams, backend, monkeypatch):
    """Streams coding repeating tokens (n-gram and match features) under random logits with
    escapes: every interval and, after the steps, the bias, the language model's weight and
    the feature weights equal the host mixer's (lmzip.gpu.mixer.self_check); the feature
    weights' step in lmzip._mix or, as the reference, in Python."""
    monkeypatch.setattr(cdf, "backend", backend if backend == "numpy" else cdf.backend)
    assert self_check(torch, DEV, vocab=vocab, streams=streams, steps=10, seed=seed) is None


def test_whole_distributions_come_back_for_other_callers():
    """DeviceMixedGroup.distributions (not the codec's path: the whole q on the host) gives
    the host mixer's q, max, sum and the sum below each token, step after step."""
    from lmzip.gpu.mixer import DeviceMixedGroup, _RowStream
    from lmzip.predictors.base import StreamGroup
    from lmzip.predictors.mixing import DEFAULT_MIX, MixedStream, distributions, push_all

    V, S, steps = 300, 2, 6
    rng = np.random.default_rng(9)
    logits = rng.normal(scale=3.0, size=(steps, S, V)).astype(np.float32)
    host = [MixedStream(_RowStream(logits, k), V, DEFAULT_MIX) for k in range(S)]
    group = DeviceMixedGroup(StreamGroup([_RowStream(torch.as_tensor(logits, device=DEV), k) for k in range(S)]),
                             V, DEFAULT_MIX, torch, DEV)
    want_q, got_q = [np.empty(V) for _ in range(S)], [np.empty(V) for _ in range(S)]
    for _ in range(steps):
        told = [int(t) for t in rng.integers(0, 4, S)]
        want = distributions(host, want_q, 1, told)
        got = group.distributions([0, 1], got_q, told)
        assert got == want
        assert all(a.tobytes() == b.tobytes() for a, b in zip(got_q, want_q))
        push_all(host, told, 1)
        group.push_all([0, 1], told)


def test_the_check_sees_a_mixer_that_does_not_learn(monkeypatch):
    """The check compares the learned state, not only the first distributions."""
    monkeypatch.setattr(DeviceMixer, "learn", lambda self, tokens: None)
    assert "differ" in self_check(torch, DEV, steps=6)


def test_the_check_sees_features_slightly_off(monkeypatch):
    """The check's streams use their features: values off by 2^-30 fail it."""
    real = mixer.pack_features

    def off(flats, weights, n, vocab):
        f = real(flats, weights, n, vocab)
        f.adds = f.adds * (1 + 2.0 ** -30)
        return f

    monkeypatch.setattr(mixer, "pack_features", off)
    assert self_check(torch, DEV) is not None


def test_a_tokens_values_add_one_after_the_other():
    """s = ((l + a) + b), as the host adds feature after feature: with l = 1, a = 2^-53 and
    b = 2^-52 that is 1 + 2^-52; the other order, or a + b first, gives 1 + 2^-51."""
    V = 64
    m = DeviceMixer(torch, DEV, 1, V, 0.0, 0.0, (LLM_MIN, LLM_MAX))
    a, b = 2.0 ** -53, 2.0 ** -52
    feats = pack_features([([0, 1], [1, 2], np.array([5, 5]), np.array([a, b]))], [np.ones(2)], 2, V)
    res = m.step([0], [torch.ones(V, dtype=torch.float32, device=DEV)], feats, tokens=[5])
    assert res["score"][0] == (1.0 + a) + b == 1.0 + 2.0 ** -52
    assert (1.0 + b) + a == 1.0 + (a + b) == 1.0 + 2.0 ** -51  # what another order would give


def test_double_constants_are_the_c_literals():
    """Every float64 constant of the kernels is the double of native/cdf_rule.h's literal."""
    text = (ROOT / "native" / "cdf_rule.h").read_text()
    for name in ("LOG2E", "LN2_HI", "LN2_LO", "ROUNDER", "TWO52", "UNDERFLOW"):
        literal = re.search(rf"static const double {name} = ([-0-9.e]+);", text).group(1)
        assert double_bits(float(literal)) == mix_kernels.F64_BITS[name], name
    terms = re.search(r"C\[DEGREE \+ 1\] = \{([^}]*)\}", text).group(1).split(",")
    for k in range(2, 9):
        num, den = (float(x) for x in terms[k].split("/"))
        assert double_bits(num / den) == mix_kernels.F64_BITS[f"C{k}"]
