"""The quantization rule (part of the format): exact totals, floors, remainder placement."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lmzip.cdf import TOTAL, quantize, quantize_probs, softmax


def check(freq: np.ndarray, n: int) -> None:
    assert freq.shape == (n,)
    assert freq.dtype == np.int64
    assert int(freq.sum()) == TOTAL
    assert int(freq.min()) >= 1


def test_known_vector():
    # hand-computed: budget = 2**24 - 4; p = [0.5, 0.25, 0.125, 0.125]
    freq = quantize(np.log(np.array([4.0, 2.0, 1.0, 1.0])))
    budget = TOTAL - 4
    q = [budget // 2, budget // 4, budget // 8, budget // 8]
    q[0] += budget - sum(q)
    assert freq.tolist() == [x + 1 for x in q]


def test_remainder_goes_to_first_argmax():
    freq = quantize(np.zeros(3))  # uniform: budget/3 is not an integer
    budget = TOTAL - 3
    assert freq.tolist() == [budget // 3 + 1 + budget % 3, budget // 3 + 1, budget // 3 + 1]


@pytest.mark.parametrize("n", [2, 3, 256, 49_152, 262_144])
def test_sizes(n):
    rng = np.random.default_rng(n)
    check(quantize(rng.normal(scale=5, size=n).astype(np.float32)), n)


def test_extremes():
    x = np.full(1000, -1e30, dtype=np.float64)
    x[7] = 1e30
    freq = quantize(x)
    check(freq, 1000)
    assert freq[7] == TOTAL - 999 and set(freq.tolist()) - {freq[7]} == {1}


def test_minus_inf_and_nan_are_floor_probability():
    x = np.array([0.0, -np.inf, np.nan, 1.0])
    freq = quantize(x)
    check(freq, 4)
    assert freq[1] == 1 and freq[2] == 1


def test_all_minus_inf_is_uniform():
    freq = quantize(np.full(8, -np.inf))
    check(freq, 8)
    assert freq.max() - freq.min() <= 8


def test_plus_inf_takes_the_mass():
    freq = quantize(np.array([0.0, np.inf, 5.0, np.inf]))
    check(freq, 4)
    assert freq[0] == 1 and freq[2] == 1 and abs(int(freq[1]) - int(freq[3])) <= 1


def test_ties_are_deterministic():
    x = np.array([3.0, 1.0, 3.0, 3.0])
    assert quantize(x).tolist() == quantize(x.copy()).tolist()
    assert quantize(x)[0] >= quantize(x)[2]


def test_rejects_bad_sizes():
    with pytest.raises(ValueError):
        quantize(np.zeros(1))


def test_quantize_probs_matches_quantize():
    rng = np.random.default_rng(1)
    x = rng.normal(size=500)
    assert quantize(x).tolist() == quantize_probs(softmax(x)).tolist()


@given(hnp.arrays(np.float32, st.integers(2, 300),
                  elements=st.floats(allow_nan=True, allow_infinity=True, width=32)))
def test_property_always_a_valid_distribution(x):
    check(quantize(x), len(x))


@given(hnp.arrays(np.float64, st.integers(2, 200), elements=st.floats(-30, 30)))
def test_property_close_to_softmax(x):
    # quantization moves each probability by at most (V + 1) / 2**24 except the argmax
    p = softmax(x)
    freq = quantize(x)
    err = np.abs(freq / TOTAL - p)
    err[np.argmax(p)] = 0
    assert err.max() <= (len(x) + 1) / TOTAL
