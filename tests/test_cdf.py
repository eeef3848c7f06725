"""The quantization rule (part of the format): exact totals, floors, remainder placement,
and the C extension bit for bit equal to the numpy reference."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lmzip import cdf
from lmzip.cdf import TOTAL, quantize, quantize_into, softmax

BACKENDS = ["c", "numpy"]


@pytest.fixture(params=BACKENDS, autouse=True)
def each_backend(request):
    """Every test here runs once per implementation."""
    before = cdf.backend
    cdf.set_backend(request.param)
    yield request.param
    cdf.set_backend(before)


def check(freq: np.ndarray, n: int) -> None:
    assert freq.shape == (n,)
    assert freq.dtype == np.int64
    assert int(freq.sum()) == TOTAL
    assert int(freq.min()) >= 1


def both(x: np.ndarray) -> tuple[np.ndarray, tuple, np.ndarray, tuple]:
    a, b = np.empty(len(x)), np.empty(len(x))
    return a, cdf._quantize_c(x, a), b, cdf._quantize_numpy(x, b)


def test_golden_vector():
    # pinned output of the rule: any change here is a format change
    freq = quantize(np.log(np.array([4.0, 2.0, 1.0, 1.0], dtype=np.float32)))
    assert freq.tolist() == [8388609, 4194303, 2097152, 2097152]
    freq = quantize(np.array([0.5, -1.25, 3.0, 3.0, -40.0]))
    assert freq.tolist() == [656932, 114158, 8003063, 8003062, 1]


def test_remainder_goes_to_first_largest():
    freq = quantize(np.zeros(3))  # uniform: (T - 3) / 3 is not an integer
    budget = TOTAL - 3
    assert freq.tolist() == [budget // 3 + 1 + budget % 3, budget // 3 + 1, budget // 3 + 1]


@pytest.mark.parametrize("n", [2, 3, 256, 49_152, 49_173, 262_144])
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
    freq = quantize(np.array([0.0, -np.inf, np.nan, 1.0]))
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


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        quantize(np.zeros(1))
    with pytest.raises(ValueError):
        quantize_into(np.zeros(4), np.empty(3))
    with pytest.raises(ValueError):
        quantize_into(np.zeros(4), np.empty(4, dtype=np.float32))


def test_returns_max_and_normalizer():
    x = np.array([1.0, 2.0, 0.5])
    q = np.empty(3)
    top, total = quantize_into(x, q)
    assert top == 2.0
    assert total == pytest.approx(np.exp(x - 2.0).sum(), rel=1e-9)


def test_own_exp_is_accurate():
    y = np.linspace(-700, 0, 200_001)
    assert np.max(np.abs(cdf._exp_nonpositive(y) / np.exp(y) - 1)) < 3e-9  # degree-8 Taylor
    assert cdf._exp_nonpositive(np.array([-700.5, -np.inf])).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("n", [2, 5, 256, 49_173, 262_144])
@pytest.mark.parametrize("scale", [0.0, 0.01, 1.0, 8.0, 100.0, 1e6])
def test_c_equals_numpy(n, scale):
    if cdf._cdf is None:
        pytest.fail("the C extension lmzip._cdf is not built")
    rng = np.random.default_rng(n + int(scale))
    for dtype in (np.float32, np.float64):
        x = (rng.normal(size=n) * scale).astype(dtype)
        a, ra, b, rb = both(x)
        assert np.array_equal(a, b) and ra == rb


def test_c_equals_numpy_on_special_values():
    cases = [
        np.array([np.nan, np.nan]),
        np.array([-np.inf, 1.0, np.nan, -np.inf]),
        np.array([np.inf, np.inf, 0.0]),
        np.array([3.0, 3.0, 3.0, 1.0]),  # ties
        np.array([0.0, -699.99, -700.0, -700.01, -1e300]),  # around the underflow cut
        np.array([1e308, -1e308, 0.0]),
        np.array([5e-324, -5e-324, 0.0]),
    ]
    for x in cases:
        a, ra, b, rb = both(x)
        assert np.array_equal(a, b), x
        assert ra[0] == rb[0] or (np.isnan(ra[0]) and np.isnan(rb[0]))


@given(hnp.arrays(np.float32, st.integers(2, 300), elements=st.floats(allow_nan=True, allow_infinity=True,
                                                                      width=32)))
def test_property_always_a_valid_distribution_and_backends_agree(x):
    check(quantize(x), len(x))
    a, _, b, _ = both(x)
    assert np.array_equal(a, b)


@given(hnp.arrays(np.float64, st.integers(2, 200), elements=st.floats(-30, 30)))
def test_property_close_to_softmax(x):
    # quantization moves each probability by at most (V + 1) / 2**24 except the largest
    p = softmax(x)
    freq = quantize(x)
    err = np.abs(freq / TOTAL - p)
    err[np.argmax(p)] = 0
    assert err.max() <= (len(x) + 1) / TOTAL
