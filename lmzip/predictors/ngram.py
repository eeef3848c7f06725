"""Online statistics of the document being coded: token n-grams and a match model.

They learn only from the tokens already coded in the same chunk, so they know what
the language model cannot see: names, phrases and whole passages that repeat beyond
its window, markup that recurs every few lines.  Each turns its counts into *sparse
features*: a few candidate tokens with a value each, which the mixer
(:mod:`lmzip.predictors.mixing`) weighs and adds to the other models' scores.

- Order-k n-grams (k tokens of context, exact tuples in a dict: no hash collisions).
  For a context seen ``n`` times with ``u`` distinct successors, successor ``i``
  seen ``c_i`` times gets ``ln(c_i) - ln(u) + ln(V - u)``: the log-ratio between
  its escape-method-C estimate ``c_i / (n + u)`` and the share ``u / ((n + u)(V - u))``
  left to each unseen token.  Unseen tokens get 0.
- The match model finds the last earlier occurrence of the latest ``min_len`` tokens
  and predicts the token that followed it, as long as the repeat keeps going.

Every value comes from integer counts through :func:`ln_table`, a natural log built
from IEEE-754 operations only, so compressor and decompressor on any machine
compute the same bits.  Memory grows with the chunk (at most a few entries per
token per order) and is freed with the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import cdf

try:
    from .. import _ngram
except ImportError:  # no compiler at install time: the Python statistics do the same, slower
    _ngram = None

__all__ = ["Feature", "NGramStats", "NativeNGramStats", "ln_table", "ngram_stats", "MATCH_BUCKETS", "COUNT_BUCKETS"]

#: n-gram weights are kept per order and per bucket of the context's total count n:
#: 1, 2-3, 4-15, 16 and more (a context seen once predicts less reliably)
COUNT_BUCKETS = 4
#: match weights per bucket of the match length: <8, 8-15, 16-31, 32 and more tokens
MATCH_BUCKETS = 4
#: :meth:`NGramStats.guess` tells apart contexts seen 1, 2, ..., 8 or more times
GUESS_COUNTS = 8
_SURE_MATCH = 16  # a repeat this long is followed by guess() whatever the n-grams say
_MAX_MATCH = 400  # longest match length tracked (only its bucket matters)
_MAX_COUNT = (1 << 16) - 1  # counts saturate: ln_table stays small, behaviour stays defined


def _own_ln(x: np.ndarray) -> np.ndarray:
    """ln(x) for x >= 1 by correctly rounded IEEE operations only (no libm): x = m 2^e
    with m in [sqrt(1/2), sqrt(2)), ln x = e ln2 + 2 atanh((m-1)/(m+1)), 14 series terms
    (|z| < 0.172, so the error is below 1e-16)."""
    m, e = np.frexp(x)  # exact: x = m * 2**e, m in [0.5, 1)
    small = m < 0.7071067811865476
    m = np.where(small, m * 2.0, m)
    e = np.where(small, e - 1, e).astype(np.float64)
    z = (m - 1.0) / (m + 1.0)
    z2 = z * z
    acc = np.zeros_like(z)
    for k in range(27, 0, -2):  # 1/27, ..., 1/3, 1/1 by Horner in z^2
        acc = acc * z2 + 1.0 / k
    return e * 0.6931471805599453 + 2.0 * z * acc


_LN: np.ndarray | None = None


def ln_table() -> np.ndarray:
    """``ln_table()[c] == ln(c)`` for integers 1 <= c <= 2**18 (index 0 holds 0)."""
    global _LN
    if _LN is None:
        x = np.arange(1 << 18 | 1, dtype=np.float64)
        x[0] = 1.0
        _LN = _own_ln(x)
        _LN.flags.writeable = False  # shared by every stream (lmzip._ngram holds it too)
    return _LN


@dataclass
class Feature:
    """Candidate tokens and their values, for the weight ``slot`` of the mixer."""

    slot: int
    tokens: np.ndarray  # int64, distinct
    values: np.ndarray  # float64


def count_bucket(n: int) -> int:
    return 0 if n < 2 else 1 if n < 4 else 2 if n < 16 else 3


def match_bucket(length: int) -> int:
    return 0 if length < 8 else 1 if length < 16 else 2 if length < 32 else 3


class NGramStats:
    """The n-gram orders and the match model over one stream of tokens.

    Weight slots: order ``orders[j]`` uses slots ``j*COUNT_BUCKETS + bucket``; the
    match model uses the ``MATCH_BUCKETS`` slots after them (see :attr:`n_slots`).
    """

    def __init__(self, vocab_size: int, orders: Sequence[int] = (1, 2, 3, 4), match_min: int = 0):
        self.vocab_size = vocab_size
        self.orders = tuple(orders)
        self.match_min = match_min
        self.history: list[int] = []
        self._tables: list[dict[tuple[int, ...], dict[int, int]]] = [{} for _ in self.orders]
        self._totals: list[dict[tuple[int, ...], int]] = [{} for _ in self.orders]
        self._positions: dict[tuple[int, ...], int] = {}  # last min_len tokens -> index after them
        self._match_ptr = -1  # index in history of the predicted token, -1 when no match
        self._match_len = 0
        self._ln = ln_table()
        self._longest_first = sorted(range(len(self.orders)), key=lambda j: -self.orders[j])

    @property
    def n_slots(self) -> int:
        return len(self.orders) * COUNT_BUCKETS + (MATCH_BUCKETS if self.match_min else 0)

    def features(self) -> list[Feature]:
        """Sparse features for the next token."""
        out = []
        h = self.history
        ln = self._ln
        for j, k in enumerate(self.orders):
            if len(h) < k:
                continue
            ctx = tuple(h[-k:])
            succ = self._tables[j].get(ctx)
            if not succ:
                continue
            u = len(succ)
            tokens = np.fromiter(succ.keys(), dtype=np.int64, count=u)
            counts = np.fromiter(succ.values(), dtype=np.int64, count=u)
            base = ln[self.vocab_size - u] - ln[u]  # same float ops in the same order everywhere
            out.append(Feature(j * COUNT_BUCKETS + count_bucket(self._totals[j][ctx]), tokens, ln[counts] + base))
        predicted, length = self.match_prediction()
        if predicted >= 0:
            slot = len(self.orders) * COUNT_BUCKETS + match_bucket(length)
            out.append(Feature(slot, np.array([predicted], dtype=np.int64), np.ones(1)))
        return out

    def features_flat(self) -> tuple[list[int], list[int], np.ndarray, np.ndarray]:
        """:meth:`features` in one piece: ``(slots, bounds, tokens, values)``, feature ``f``
        being slot ``slots[f]`` with ``tokens[bounds[f-1]:bounds[f]]`` (from 0 for the first)."""
        return _flatten(self.features())

    def match_prediction(self) -> tuple[int, int]:
        """``(token, length)``: what the match model predicts next and the length of the
        repeat it follows; ``(-1, 0)`` when it follows none (or is off)."""
        if not self.match_min or self._match_ptr < 0:
            return -1, 0
        return self.history[self._match_ptr], self._match_len

    @property
    def n_situations(self) -> int:
        """How many kinds of evidence :meth:`guess` tells apart."""
        return len(self.orders) * GUESS_COUNTS + MATCH_BUCKETS

    def guess(self) -> tuple[int, int]:
        """The next token when the statistics are sure of it, as ``(token, situation)``,
        else ``(-1, -1)``.  Sure: the match model follows a repeat of 16 tokens or more;
        or the longest context seen before has had one successor only (seen ``n``
        times) and the match model, if it follows a shorter repeat, predicts the same;
        or no context was seen and the match model predicts.  The situation numbers the
        kind of evidence (order and ``min(n, 8)``, or the match length's bucket), so
        that a caller can keep a record of each kind."""
        h = self.history
        predicted, length = self.match_prediction()
        match_situation = len(self.orders) * GUESS_COUNTS + match_bucket(length)
        if predicted >= 0 and length >= _SURE_MATCH:
            return predicted, match_situation
        token, situation = -1, -1
        for j in self._longest_first:
            k = self.orders[j]
            if len(h) < k:
                continue
            succ = self._tables[j].get(tuple(h[-k:]))
            if succ:
                if len(succ) > 1:
                    return -1, -1
                ((token, n),) = succ.items()
                situation = j * GUESS_COUNTS + min(n, GUESS_COUNTS) - 1
                break
        if predicted >= 0:
            if token < 0:
                return predicted, match_situation
            if predicted != token:
                return -1, -1
        return token, situation

    def update(self, token: int) -> None:
        """Learn that ``token`` followed, then append it to the history."""
        h = self.history
        for j, k in enumerate(self.orders):
            if len(h) < k:
                continue
            ctx = tuple(h[-k:])
            succ = self._tables[j].get(ctx)
            if succ is None:
                succ = self._tables[j][ctx] = {}
            c = succ.get(token, 0)
            if c < _MAX_COUNT:
                succ[token] = c + 1
                self._totals[j][ctx] = self._totals[j].get(ctx, 0) + 1
        if self.match_min:
            self._update_match(token)
        else:
            h.append(token)

    def _update_match(self, token: int) -> None:
        h = self.history
        if self._match_ptr >= 0 and h[self._match_ptr] == token:
            self._match_ptr += 1
            self._match_len = min(self._match_len + 1, _MAX_MATCH)
        else:
            self._match_ptr = -1
            self._match_len = 0
        h.append(token)
        n = self.match_min
        if len(h) < n:
            return
        key = tuple(h[-n:])
        if self._match_ptr < 0:
            found = self._positions.get(key)
            if found is not None:
                # verify backwards how long the repeat really is (bounded)
                length = n
                while (length < _MAX_MATCH and found - length - 1 >= 0
                       and h[found - length - 1] == h[len(h) - length - 1]):
                    length += 1
                self._match_ptr = found
                self._match_len = length
        self._positions[key] = len(h)


def _flatten(feats: list[Feature]) -> tuple[list[int], list[int], np.ndarray, np.ndarray]:
    if not feats:
        return [], [], np.empty(0, np.int64), np.empty(0)
    bounds = np.cumsum([len(f.tokens) for f in feats]).tolist()
    return ([f.slot for f in feats], bounds, np.concatenate([f.tokens for f in feats]),
            np.concatenate([f.values for f in feats]))


class NativeNGramStats:
    """:class:`NGramStats` computed by ``lmzip._ngram`` (native/ngram.c): the same
    features, in the same order, and the same guesses (tests/test_ngram_native.py)."""

    def __init__(self, vocab_size: int, orders: Sequence[int] = (1, 2, 3, 4), match_min: int = 0):
        assert _ngram is not None
        self.vocab_size = vocab_size
        self.orders = tuple(orders)
        self.match_min = match_min
        self._c = _ngram.Stats(vocab_size, self.orders, match_min, ln_table())
        self.update = self._c.update
        self.guess = self._c.guess
        self.match_prediction = self._c.match_prediction

    n_slots = NGramStats.n_slots
    n_situations = NGramStats.n_situations

    def features_flat(self) -> tuple[list[int], list[int], np.ndarray, np.ndarray]:
        slots, bounds, tokens, values = self._c.features_flat()
        return slots, bounds, np.frombuffer(tokens, np.int64), np.frombuffer(values, np.float64)

    def features(self) -> list[Feature]:
        slots, bounds, tokens, values = self.features_flat()
        starts = [0, *bounds[:-1]]
        return [Feature(slot, tokens[a:b], values[a:b]) for slot, a, b in zip(slots, starts, bounds)]


def ngram_stats(vocab_size: int, orders: Sequence[int] = (1, 2, 3, 4), match_min: int = 0):
    """The statistics of one stream: in C when ``lmzip._ngram`` is built (and the
    reference is not asked for, ``LMZIP_CDF_BACKEND=numpy``), else in Python."""
    if _ngram is not None and cdf.backend != "numpy":
        return NativeNGramStats(vocab_size, orders, match_min)
    return NGramStats(vocab_size, orders, match_min)
