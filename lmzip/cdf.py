"""Model scores -> the integer distribution the range coder uses.

The quantization rule is part of the file format (docs/format.md): changing any
step changes compressed files.  For a vocabulary of ``V`` symbols and
``T = 2**PRECISION``:

1. ``x`` = scores as float64 (natural-log, unnormalized); NaN counts as -inf.
   If no score is finite the distribution is uniform.
2. ``p = exp(x - max(x)) / sum(...)``.
3. ``q_i = floor(p_i * (T - V))``; the remainder ``T - V - sum(q)`` goes to the
   first index of the largest ``p_i``.
4. ``freq_i = q_i + 1``: every symbol keeps probability at least ``1/T``, and
   ``sum(freq) == T`` exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PRECISION", "TOTAL", "quantize", "quantize_probs", "softmax"]

PRECISION = 24
TOTAL = 1 << PRECISION


def softmax(scores: np.ndarray) -> np.ndarray:
    """float64 probabilities from natural-log scores (step 1 and 2 of the rule)."""
    x = np.asarray(scores, dtype=np.float64)
    x = np.where(np.isnan(x), -np.inf, x)
    top = x.max()
    if not np.isfinite(top):
        if top == np.inf:  # +inf scores share the mass equally
            return (x == np.inf) / np.count_nonzero(x == np.inf)
        return np.full(x.shape, 1.0 / x.size)
    e = np.exp(x - top)
    return e / e.sum()


def quantize(scores: np.ndarray) -> np.ndarray:
    """Integer frequencies (int64) summing to exactly ``TOTAL``, each at least 1."""
    return quantize_probs(softmax(scores))


def quantize_probs(p: np.ndarray) -> np.ndarray:
    """Steps 3 and 4 of the rule, from the float64 output of :func:`softmax`."""
    n = len(p)
    if not 2 <= n < TOTAL // 2:
        raise ValueError(f"vocabulary size {n} out of range")
    budget = TOTAL - n
    q = np.floor(p * budget).astype(np.int64)
    q[int(np.argmax(p))] += budget - int(q.sum())
    q += 1
    return q
