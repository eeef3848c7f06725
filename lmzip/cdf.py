"""Model scores -> the integer distribution the range coder uses.

The quantization rule is part of the file format (docs/format.md): changing any
step changes compressed files.  For an alphabet of ``V`` symbols and
``T = 2**PRECISION``:

1. ``x`` = scores as float64 (natural-log, unnormalized); NaN counts as -inf.
   ``b`` = the first index of the largest ``x``.  If some scores are +inf they
   share the mass (``e_i = 1`` for them, 0 for the rest); if no score is finite,
   ``e_i = 1`` for all.
2. Otherwise ``e_i = exp(x_i - m)`` (``m`` the largest finite score) by lmzip's
   own exp, never libm's: for ``y = x_i - m``, ``k = rint(y * LOG2E)``,
   ``r = (y - k*LN2_HI) - k*LN2_LO``, a degree-8 Taylor polynomial in ``r`` by
   Horner's rule, times ``2**k``; 0 when ``y < -700``.
3. ``s`` = the sum of ``e`` in 8 interleaved lanes (lane ``j`` adds the ``e_i``
   with ``i % 8 == j`` in index order), combined as
   ``((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7))``.
4. ``q_i = floor(e_i * ((T - V) / s))``; the remainder ``T - V - sum(q)`` is
   added to ``q_b``.
5. ``freq_i = q_i + 1``: every symbol keeps probability at least ``1/T``, and
   ``sum(freq) == T`` exactly.

Every step is an IEEE-754 double operation that is correctly rounded on every
machine, in a fixed order, so the result does not depend on the CPU, its vector
width or the thread count.  Two implementations compute it bit for bit alike:
the C extension ``lmzip._cdf`` (native/cdf.c, the default) and numpy (below).
``LMZIP_CDF_BACKEND=numpy`` (or ``c``) picks one; :data:`backend` says which.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["PRECISION", "TOTAL", "backend", "below", "expect", "find", "quantize", "quantize_into", "softmax",
           "set_backend"]

PRECISION = 24
TOTAL = 1 << PRECISION

LOG2E = 1.4426950408889634
LN2_HI = 6.93147180369123816490e-01  # low 32 bits zero: k * LN2_HI is exact
LN2_LO = 1.90821492927058770002e-10
UNDERFLOW = -700.0
DEGREE = 8
TAYLOR = tuple(1.0 / math.factorial(i) for i in range(DEGREE + 1))  # 1, 1, 1/2, ..., 1/8!
LANES = 8

try:
    from . import _cdf
except ImportError:  # no compiler at install time: numpy does the same, slower
    _cdf = None


def _exp_nonpositive(y: np.ndarray) -> np.ndarray:
    """Step 2's exp, elementwise, for y <= 0 (float64); mirrors native/cdf.c."""
    keep = (y >= UNDERFLOW).astype(np.float64)  # 0 below the cut, also for -inf
    y = np.where(y >= UNDERFLOW, y, UNDERFLOW)  # keeps the arithmetic finite
    k = np.rint(y * LOG2E)
    r = (y - k * LN2_HI) - k * LN2_LO
    p = np.full_like(r, TAYLOR[DEGREE])
    for c in TAYLOR[DEGREE - 1 :: -1]:
        p = p * r + c  # two roundings, as in C built with -ffp-contract=off
    return np.ldexp(p, k.astype(np.int32)) * keep


def _exps(scores: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Steps 1 and 2: (e, largest finite score, first index of the largest score)."""
    x = np.asarray(scores, dtype=np.float64)
    x = np.where(np.isnan(x), -np.inf, x)
    best = int(np.argmax(x))
    posinf = x == np.inf
    finite_or_minf = x[~posinf]
    m = float(finite_or_minf.max()) if finite_or_minf.size else -math.inf
    if posinf.any():
        return posinf.astype(np.float64), m, best
    if m == -math.inf:
        return np.ones(x.shape), m, best
    with np.errstate(over="ignore"):  # -1e308 - 1e308 is -inf, as in C: e = 0
        return _exp_nonpositive(x - m), m, best


def _lane_sum(e: np.ndarray) -> float:
    """Step 3: 8 interleaved lanes, each added in index order (cumsum is sequential)."""
    padded = np.zeros(-(-len(e) // LANES) * LANES)
    padded[: len(e)] = e  # adding +0.0 changes no lane
    s = np.cumsum(padded.reshape(-1, LANES), axis=0)[-1].tolist()
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))


def _quantize_numpy(scores: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    n = len(scores)
    e, m, best = _exps(scores)
    s = _lane_sum(e)
    budget = float(TOTAL - n)
    q = np.floor(e * (budget / s))
    q[best] += budget - float(q.sum())  # integers below 2**53: exact in any order
    out[:] = q
    return m, s


def _expect_numpy(q: np.ndarray, x: np.ndarray) -> float:
    v = np.where(np.isfinite(x), (q + 1.0) * x.astype(np.float64), 0.0)  # +0.0 leaves a lane unchanged
    return _lane_sum(v)


def _quantize_c(scores: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    assert _cdf is not None
    if scores.dtype not in (np.float32, np.float64) or not scores.flags.c_contiguous:
        scores = np.ascontiguousarray(scores, dtype=np.float64)
    return _cdf.quantize(scores, out)


_IMPLS = {"numpy": (_quantize_numpy, _expect_numpy)}
if _cdf is not None:
    _IMPLS["c"] = (_quantize_c, _cdf.expect)

#: the implementation in use: "c" or "numpy"
backend: str = ""
_impl = _quantize_numpy
_expect = _expect_numpy


def set_backend(name: str | None = None) -> str:
    """Select "c" or "numpy" (default: $LMZIP_CDF_BACKEND, else "c" when built)."""
    global backend, _impl, _expect
    name = name or os.environ.get("LMZIP_CDF_BACKEND") or ("c" if _cdf is not None else "numpy")
    if name not in ("c", "numpy"):
        raise ValueError(f"unknown CDF backend {name!r} (use 'c' or 'numpy')")
    if name not in _IMPLS:
        raise ImportError("the C extension lmzip._cdf is not built; reinstall lmzip with a C compiler")
    backend, (_impl, _expect) = name, _IMPLS[name]
    return backend


set_backend()


def quantize_into(scores: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """Write ``q = freq - 1`` (float64, the coder's input) into ``out``.

    Returns ``(max score, s)``: the probability of symbol ``i`` before
    quantization is ``exp(x_i - max) / s``.
    """
    n = len(scores)
    if not 2 <= n < TOTAL // 2:
        raise ValueError(f"vocabulary size {n} out of range")
    if out.dtype != np.float64 or out.shape != (n,) or not out.flags.c_contiguous:
        raise ValueError("out must be a contiguous float64 array as long as scores")
    return _impl(scores, out)


def below(q: np.ndarray, token: int) -> float:
    """``sum(q[:token])`` of a distribution ``q`` (``freq - 1``): where the coder's interval
    of ``token`` starts, less ``token``.  Integers below 2**24: exact in any order."""
    return float(q[:token].sum())


def find(q: np.ndarray, quantile: int) -> tuple[int, float]:
    """The symbol whose interval of the coder's ``2**24`` holds ``quantile`` (symbol ``i``
    spans ``q_i + 1``, in order), and :func:`below` it: what a decoder reads at a point.
    Integers: exact in any order, so the C scan and numpy agree."""
    if _cdf is not None:
        return _cdf.find(q, float(quantile))
    cum = np.cumsum(q + 1.0)
    i = int(np.searchsorted(cum, quantile, side="right"))
    if i >= len(q):
        raise ValueError("the quantile is past the distribution's total")
    return i, below(q, i)


def quantize(scores: np.ndarray) -> np.ndarray:
    """Integer frequencies (int64) summing to exactly ``TOTAL``, each at least 1."""
    q = np.empty(len(scores), dtype=np.float64)
    quantize_into(np.asarray(scores), q)
    return q.astype(np.int64) + 1


def softmax(scores: np.ndarray) -> np.ndarray:
    """The unquantized probabilities of the rule (float64)."""
    e, _, _ = _exps(scores)
    return e / _lane_sum(e)


def expect(q: np.ndarray, x: np.ndarray) -> float:
    """``sum((q_i + 1) * x_i)`` over the finite ``x_i``, in the rule's 8-lane order.

    With ``q`` from :func:`quantize_into` this is ``2**24`` times the expectation of
    ``x`` under the coded distribution, computed identically on every machine (the
    mixer learns from it).  ``x`` is float32 or float64, as long as ``q``.
    """
    if q.dtype != np.float64 or x.shape != q.shape or x.dtype not in (np.float32, np.float64):
        raise ValueError("expect needs float64 q and a float32/float64 x of the same length")
    return _expect(np.ascontiguousarray(q), np.ascontiguousarray(x))
