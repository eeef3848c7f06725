"""Blending the language model with online models of the document, learned as it codes.

The mixed scores of the next token are a log-linear (geometric) mix::

    s_i = w_llm * llm_i + bias_i + sum over features f of w[f.slot] * f_i

``llm_i`` are the language model's logits, ``bias`` is an adaptive per-token
correction, and the sparse features come from the chunk's own n-gram and match
statistics (:mod:`lmzip.predictors.ngram`).  The coder's distribution is
``softmax(s)`` quantized by the format's rule (:mod:`lmzip.cdf`).

After each token the weights take one gradient step on its code length
``-log2 p(token)``: for a weight ``w`` on feature ``f`` the gradient is
``E_p[f] - f(token)``, with ``p`` the quantized distribution just used (integers,
so both sides see the same numbers).  ``w_llm`` starts at 1 and the rest at 0, so a
stream begins as the bare language model and moves away only where it pays.

Determinism: compressor and decompressor run this same code on the same numbers.
Only correctly rounded IEEE-754 operations are used, elementwise, or summed in a
fixed order (:func:`lmzip.cdf.expect`, :func:`math.fsum`): the same bits on any
machine.  The settings are stored in the stream header (``params["mix"]``), so
files keep decoding with the settings they were written with.

Two models use it: :class:`MixedModel` (a language model plus the statistics, what
``load_model`` gives by default) and :class:`NGramModel` (the statistics alone,
``--model ngram``).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .. import cdf
from ..errors import FormatError, LMZipError
from ..tokenization import PieceTokenizer
from .base import Model, Stream, StreamGroup
from .ngram import ln_table, ngram_stats

__all__ = ["ADAPT_MIX", "BYTE_MIX", "DEFAULT_MIX", "MixSettings", "MixedGroup", "MixedModel", "MixedStream",
           "NGramModel", "NO_MIX"]

try:
    from .. import _mix as _native
except ImportError:  # no compiler at install time: numpy does the same, slower
    _native = None

_T = float(cdf.TOTAL)
_W_MIN, _W_MAX = -4.0, 4.0  # feature weights stay in a sane range whatever the data
LLM_MIN, LLM_MAX = 0.05, 4.0  # and the language model's weight (an inverse temperature)
_DECAY = 0.99
#: most tokens coded in a row without the language model; it then evaluates the
#: skipped tokens and the next one in one call (at most SKIP_RUN + 1 tokens)
SKIP_RUN = 15
_SKIP_MAX_COUNT = 1 << 16  # the skip statistics halve when they reach this


#: settings added after the first headers, with their "off" values (left out of headers when off)
_LATER = {"skip": 0, "adapt": 0, "adapt_rate": 0.0, "adapt_center": 0.0}


@dataclass(frozen=True)
class MixSettings:
    """What is mixed and how fast it learns (stored in every stream header).

    Attributes:
        orders: n-gram orders, in tokens (empty: none).
        match: shortest repeat, in tokens, that the match model follows (0: off).
        rate: learning rate of the n-gram and match weights.
        llm_rate: learning rate of the language model's weight (0: fixed at 1).
        bias_rate: learning rate of the per-token bias (0: no bias).
        skip: a speed option: code a token without the language model when the n-gram
            and match statistics agree on it and that kind of evidence has been right
            at least ``skip - 1`` times in ``skip`` (0: never; see :class:`MixedStream`).
        adapt: online adaptation of the output layer on the language model's final
            hidden state (``lmzip._adapt``, native/adapt.c): the scores of the ``adapt``
            best tokens get a learned correction ``D_i . h`` (0: off; needs a base
            whose streams give ``hidden()``, the portable backend).
        adapt_rate: its normalized step (nats per step).
        adapt_center: the decay of the running mean subtracted from the hidden state
            before it is used (0: no centering).
    """

    orders: tuple[int, ...] = (1, 2, 3, 4)
    match: int = 6
    rate: float = 0.002
    llm_rate: float = 0.001
    bias_rate: float = 0.01
    skip: int = 0
    adapt: int = 0
    adapt_rate: float = 0.0
    adapt_center: float = 0.0

    def __post_init__(self) -> None:
        if any(not isinstance(k, int) or not 1 <= k <= 32 for k in self.orders) or len(set(self.orders)) != len(
                self.orders):
            raise ValueError(f"n-gram orders must be distinct integers 1..32, not {self.orders}")
        if not isinstance(self.match, int) or not (self.match == 0 or 2 <= self.match <= 64):
            raise ValueError(f"match length must be 0 (off) or 2..64, not {self.match}")
        if not isinstance(self.skip, int) or not (self.skip == 0 or 2 <= self.skip <= 4096):
            raise ValueError(f"skip confidence must be 0 (off) or 2..4096, not {self.skip}")
        if self.skip and not (self.orders or self.match):
            raise ValueError("skipping the language model needs n-grams or the match model")
        if type(self.adapt) is not int or not 0 <= self.adapt <= 4096:
            raise ValueError(f"adapt must be 0 (off) or 1..4096 tokens, not {self.adapt}")
        if not isinstance(self.adapt_rate, float) or not 0.0 <= self.adapt_rate <= 16.0:
            raise ValueError(f"adapt_rate must be a float in [0, 16], not {self.adapt_rate!r}")
        if not isinstance(self.adapt_center, float) or not 0.0 <= self.adapt_center < 1.0:
            raise ValueError(f"adapt_center must be a float in [0, 1), not {self.adapt_center!r}")
        if self.adapt_center and not self.adapt:
            raise ValueError("adapt_center needs adapt")
        if bool(self.adapt) != bool(self.adapt_rate):
            raise ValueError("adapt and adapt_rate go together (both 0: off)")
        for name in ("rate", "llm_rate", "bias_rate"):
            v = getattr(self, name)
            if not isinstance(v, float) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a float in [0, 1], not {v!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.orders or self.match or self.llm_rate or self.bias_rate or self.adapt)

    def params(self) -> str | dict[str, Any]:
        """For the header: a preset's name when the settings are one (short), else all fields."""
        for name, preset in PRESETS.items():
            if preset == self:
                return name
        d = asdict(self)
        d["orders"] = list(self.orders)
        for key in _LATER:
            if not d[key]:
                del d[key]  # headers without these stay as they were before they existed
        return d

    @classmethod
    def from_params(cls, d: Any) -> MixSettings:
        """Settings from a header's ``params["mix"]``; FormatError if malformed."""
        if isinstance(d, str):
            if d not in PRESETS:
                raise FormatError(f"stream header names an unknown mixing preset {d!r} (made by a newer lmzip?)")
            return PRESETS[d]
        try:
            # these came later: headers written before them have no such key (off)
            if not isinstance(d, dict) or set(d) - set(_LATER) != set(cls.__dataclass_fields__) - set(_LATER):
                raise TypeError("unexpected keys")
            return cls(orders=tuple(d["orders"]), match=d["match"], rate=d["rate"], llm_rate=d["llm_rate"],
                       bias_rate=d["bias_rate"], **{k: d.get(k, v) for k, v in _LATER.items()})
        except (TypeError, ValueError) as exc:
            raise FormatError(f"stream header has invalid mixing settings ({exc})") from None


#: lmzip's first default (files written with it name it)
M1_MIX = MixSettings()
#: what lmzip uses unless told otherwise: m1 with a 12x faster bias (-1.3 % on alice29.txt)
DEFAULT_MIX = MixSettings(bias_rate=0.12)
#: the standalone byte model (``--model ngram``): longer orders, since bytes carry less
BYTE_MIX = MixSettings(orders=(1, 2, 3, 4, 6), match=12, rate=0.002, llm_rate=0.0, bias_rate=0.0)
#: the bare language model
NO_MIX = MixSettings(orders=(), match=0, rate=0.0, llm_rate=0.0, bias_rate=0.0)
#: m2 plus online adaptation of the output rows on the hidden state (portable backend; issue 20)
ADAPT_MIX = MixSettings(bias_rate=0.12, adapt=64, adapt_rate=0.1, adapt_center=0.99)
#: presets are written to headers by name; their values are part of the format and
#: never change (new settings get a new name)
PRESETS: dict[str, MixSettings] = {"m1": M1_MIX, "m2": DEFAULT_MIX, "b1": BYTE_MIX, "a1": ADAPT_MIX}


class MixedStream(Stream):
    """A base stream (or none: features alone) blended with the chunk's own statistics.

    Skipping the language model (``settings.skip = N``, a speed option): the stream
    keeps a record (``tries``, ``hits``) of each kind of unanimous guess of its
    statistics (:meth:`NGramStats.guess`: which n-gram order, how often its context was
    seen, or the match length).  When the statistics guess the next token, that kind
    of guess has been right at least ``N - 1`` times in ``N`` (``N (hits + 1) >=
    (N - 1)(tries + 2)``, integers) and fewer than :data:`SKIP_RUN` tokens were just
    skipped, the token is coded without the language model: the guess gets
    probability ``(hits + 1) / (tries + 2)``, every other symbol an equal share of the
    rest, and nothing learns from it.  The base stream is told
    (:meth:`Stream.defer`) so a batching backend evaluates the skipped tokens later, in
    one call with the next token that needs it.  The decision reads only statistics
    that :meth:`push` updates, so a decoder that replays a chunk without decoding it
    makes the same decisions and the same model calls.
    """

    def __init__(self, base: Stream | None, vocab_size: int, settings: MixSettings):
        self._base = base
        self._set = settings
        self._stats = ngram_stats(vocab_size, settings.orders, settings.match)
        self._w = np.zeros(self._stats.n_slots)  # the features' weights, and their RMSprop means
        self._g2 = np.zeros(self._stats.n_slots)
        self._w_llm = 1.0
        self._bias = np.zeros(vocab_size) if settings.bias_rate else None
        self._adapt = _adapter(base, settings) if settings.adapt else None
        self._s = np.zeros(vocab_size)
        self._q: np.ndarray | None = None
        self._llm: np.ndarray | None = None
        self._flat: tuple = ([], [], None, None)  # the features mixed in: NGramStats.features_flat()
        self._ready = False
        n = self._stats.n_situations if settings.skip else 0
        self._tries = [0] * n  # the record of each kind of guess (NGramStats.guess)
        self._hits = [0] * n
        self._guess = (-1, -1)  # the statistics' guess of the next token
        self._run = 0  # tokens skipped in a row
        self._skip_next = False
        #: tokens coded without the language model so far
        self.skipped = 0

    @property
    def skips_next(self) -> int | None:
        """The statistics' guess of the next token if it will be coded without the
        language model (``settings.skip``), else None; decided by :meth:`push`."""
        return self._guess[0] if self._skip_next else None

    def scores(self) -> np.ndarray:
        """The mixed scores of the next token (computed once per token)."""
        if not self._ready:
            self._mix()
        return self._s

    def distribution(self, q: np.ndarray) -> tuple[float, float]:
        return distributions([self], [q], 1)[0]

    def _skip_scores(self) -> np.ndarray:
        """Scores giving the statistics' guess ``(hits+1)/(tries+2)``, the record of its
        kind of evidence (integer counts, table logs: the same bits everywhere)."""
        s = self._s
        s.fill(0.0)
        token, k = self._guess
        hits, tries = self._hits[k], self._tries[k]
        ln = ln_table()
        s[token] = ln[hits + 1] - ln[tries - hits + 1] + ln[len(s) - 1]
        self._ready = True  # scores() returns these until the next push()
        return s

    def _decide_skip(self) -> bool:
        token, k = self._guess = self._stats.guess()
        n = self._set.skip
        return self._run < SKIP_RUN and token >= 0 and n * (self._hits[k] + 1) >= (n - 1) * (self._tries[k] + 2)

    def _mix(self) -> None:
        """The mixed scores, in numpy (the reference of ``lmzip._mix``, and the path of
        the adaptation, which adds its correction last)."""
        s = self._s
        slots, bounds, tokens, values = self._gather()
        if self._llm is not None:
            # in float64 whatever numpy's promotion rules: numpy 1.x computes a float32
            # array times a float64 scalar in float32, which the C does not
            np.multiply(self._llm, self._w_llm, out=s, dtype=np.float64)
        else:
            s.fill(0.0)
        if self._bias is not None:
            s += self._bias
        for slot, a, b in zip(slots, [0, *bounds[:-1]], bounds):
            s[tokens[a:b]] += self._w[slot] * values[a:b]
        if self._adapt is not None:
            self._adapt.apply(self._base.hidden(), s)
        self._ready = True

    def _gather(self) -> tuple:
        """What the next token's mix is made of: the features (kept for the learning step)
        and the language model's scores (None without one)."""
        self._flat = self._stats.features_flat()
        self._llm = self._base.scores() if self._base is not None else None
        return self._flat

    def _mix_job(self, q: np.ndarray) -> tuple:
        """What ``lmzip._mix.distributions`` needs to compute :meth:`_mix` and quantize it
        (it adds each feature's values times its slot's weight: the same products)."""
        slots, bounds, tokens, values = self._gather()
        if not slots:
            return self._llm, self._w_llm, self._bias, None, None, self._s, q, None
        return self._llm, self._w_llm, self._bias, tokens, values, self._s, q, (slots, bounds, self._w)

    def push(self, token: int) -> None:
        push_all([self], [token], 1)

    def _learn_features(self, token: int, q: np.ndarray) -> None:
        """The n-gram and match weights' step (small: a few candidates per feature)."""
        if self._flat[0]:
            learn_feature_weights(self._set, self._w, self._g2, self._flat, token, q[self._flat[2]])

    def _learns_llm(self, token: int) -> bool:
        return bool(self._set.llm_rate) and self._llm is not None and math.isfinite(float(self._llm[token]))

    def _learn_llm(self, token: int, expected: float) -> None:
        """The language model's weight: ``expected`` is ``cdf.expect(q, llm)``."""
        value = float(self._llm[token])
        self._w_llm = min(LLM_MAX, max(LLM_MIN, self._w_llm + self._set.llm_rate * (value - expected / _T)))

    def _learn_numpy(self, token: int, q: np.ndarray) -> None:
        """The vocabulary-wide steps in numpy (the reference of ``lmzip._mix.learn``)."""
        st = self._set
        if self._learns_llm(token):
            self._learn_llm(token, cdf.expect(q, self._llm))
        if self._bias is not None:
            self._bias -= (q + 1.0) * (st.bias_rate / _T)
            self._bias[token] += st.bias_rate

    def _learn_job(self, token: int, q: np.ndarray) -> tuple | None:
        """What ``lmzip._mix.learn`` needs for :meth:`_learn_features`' and
        :meth:`_learn_numpy`'s steps, or None."""
        st = self._set
        llm = self._llm if self._learns_llm(token) else None
        slots, bounds, tokens, values = self._flat
        features = None
        if st.rate and slots:
            features = _features_job(st, self._w, self._g2, self._flat)
        if llm is None and self._bias is None and features is None:
            return None
        return q, llm, self._bias, token, st.bias_rate / _T, st.bias_rate, features

    def _pushed(self, token: int) -> None:
        """Everything after learning: the skip records, the statistics, the base stream."""
        self._q = None
        self._ready = False
        skip = self._set.skip
        if skip:
            guess, k = self._guess
            if guess >= 0:  # keep the record of this kind of guess
                self._tries[k] += 1
                self._hits[k] += guess == token
                if self._tries[k] >= _SKIP_MAX_COUNT:
                    self._tries[k] //= 2
                    self._hits[k] //= 2
        self._stats.update(token)
        if self._base is not None:
            self._base.push(token)
        if skip:
            self._run = self._run + 1 if self._skip_next else 0
            self._skip_next = self._decide_skip()
            if self._skip_next and self._base is not None:
                self._base.defer()

    def close(self) -> None:
        if self._base is not None:
            self._base.close()


def learn_feature_weights(settings: MixSettings, w: np.ndarray, g2: np.ndarray, flat: tuple, token: int,
                          q_at: np.ndarray) -> None:
    """The n-gram and match weights' step after ``token`` was coded: ``flat`` the features
    it was coded with (``NGramStats.features_flat``), ``q_at`` the distribution at their
    tokens (``q[tokens]``: all the step reads of it, so a GPU sends only these)."""
    slots, bounds, tokens, values = flat
    if not settings.rate or not slots:
        return
    products = ((q_at + 1.0) * values).tolist()
    hits = np.flatnonzero(tokens == token).tolist()  # at most one per feature
    start = 0
    for slot, end in zip(slots, bounds):
        value = next((float(values[i]) for i in hits if start <= i < end), 0.0)
        expected = math.fsum(products[start:end]) / _T
        g = value - expected
        # steps normalized by the slot's running mean square gradient (RMSprop):
        # features of very different scales learn at the same pace
        g2[slot] = _DECAY * g2[slot] + (1.0 - _DECAY) * (g * g)
        step = settings.rate * g / math.sqrt(g2[slot] + 1e-6)
        w[slot] = min(_W_MAX, max(_W_MIN, w[slot] + step))
        start = end


def feature_steps(settings: MixSettings, steps: list[tuple], threads: int = 1) -> None:
    """:func:`learn_feature_weights` of several streams, in one call of ``lmzip._mix`` on up
    to ``threads`` threads: each step is ``(w, g2, flat, token, q)`` with ``q`` indexed as
    ``flat``'s tokens (the distribution, or only its values at those tokens with the
    tokens renumbered into it, as the GPU's mixer sends them) and ``token`` likewise
    (an index no feature has: not among them)."""
    if not settings.rate:
        return
    if _reference():
        for w, g2, flat, token, q in steps:
            learn_feature_weights(settings, w, g2, flat, token, q[flat[2]])
        return
    _native.learn([(q, None, None, token, 0.0, 0.0, _features_job(settings, w, g2, flat))
                   for w, g2, flat, token, q in steps if flat[0]], threads)


def _features_job(settings: MixSettings, w: np.ndarray, g2: np.ndarray, flat: tuple) -> tuple:
    """The features part of a ``lmzip._mix.learn`` job."""
    slots, bounds, tokens, values = flat
    return (slots, bounds, tokens, values, w, g2, settings.rate, _DECAY, _W_MIN, _W_MAX)


def _reference() -> bool:
    """numpy computes the mixer's vocabulary-wide steps (no ``lmzip._mix``, or
    ``LMZIP_CDF_BACKEND=numpy``: the reference both must match)."""
    return _native is None or cdf.backend == "numpy"


def distributions(streams: list[MixedStream], qs: list[np.ndarray], threads: int = 1,
                  tokens: list[int] | None = None) -> list[tuple]:
    """:meth:`MixedStream.distribution` of each stream into its ``q``: the streams that
    mix in one call of ``lmzip._mix`` on up to ``threads`` threads (the same bits as
    one by one in numpy).  With ``tokens`` (what a compressor codes), each result also
    holds ``sum(q[:token])`` (:meth:`lmzip.predictors.base.StreamGroup.distributions`)."""
    out: list = [None] * len(streams)
    jobs, where = [], []
    for i, (st, q) in enumerate(zip(streams, qs)):
        if st._skip_next:
            st.skipped += 1
            out[i] = cdf.quantize_into(st._skip_scores(), q)  # nothing learns from it
        else:
            st._q = q  # push() learns from the distribution actually coded with
            if st._ready or st._adapt is not None or _reference():
                out[i] = cdf.quantize_into(st.scores(), q)
            else:
                jobs.append(st._mix_job(q) if tokens is None else (*st._mix_job(q), tokens[i]))
                where.append(i)
                continue
        if tokens is not None:
            out[i] = (*out[i], cdf.below(q, tokens[i]))
    if jobs:
        for i, result in zip(where, _native.distributions(jobs, threads)):
            streams[i]._ready = True
            out[i] = result
    return out


def push_all(streams: list[MixedStream], tokens: list[int], threads: int = 1) -> None:
    """:meth:`MixedStream.push` of ``tokens[i]`` to each stream: the learning steps that
    run over the vocabulary in one call of ``lmzip._mix`` on up to ``threads`` threads."""
    jobs, owners = [], []
    for st, token in zip(streams, tokens):
        if st._q is None:  # nothing was coded with this stream's mix (a skip, a replay)
            continue
        if _reference():
            st._learn_features(token, st._q)
            st._learn_numpy(token, st._q)
        else:
            job = st._learn_job(token, st._q)
            if job is not None:
                jobs.append(job)
                owners.append((st, token))
    if jobs:
        for (st, token), expected in zip(owners, _native.learn(jobs, threads)):
            if expected is not None:
                st._learn_llm(token, expected)
    for st, token in zip(streams, tokens):
        if st._q is not None and st._adapt is not None:
            st._adapt.learn(token, st._q)
        st._pushed(token)


def _adapter(base: Stream | None, settings: MixSettings):
    """The output-row adaptation of a stream (``settings.adapt``), on its base's hidden state."""
    if base is None or not hasattr(base, "hidden"):
        raise LMZipError("adaptation (adapt) needs a language model that gives its hidden state "
                         "(the portable backend)")
    try:
        from .. import _adapt
    except ImportError as exc:  # pragma: no cover - depends on the build
        raise LMZipError(f"adaptation needs the C extension lmzip._adapt: {exc}") from None
    return _adapt.Rows(base.n_embd, base.n_model, settings.adapt, settings.adapt_rate, settings.adapt_center)


class MixedGroup(StreamGroup):
    """The base model's lockstep group, each of its streams mixed on its own; the
    vocabulary-wide steps of all streams run together on up to ``threads`` threads."""

    def __init__(self, base: StreamGroup, vocab_size: int, settings: MixSettings, threads: int = 1):
        super().__init__([MixedStream(s, vocab_size, settings) for s in base.streams])
        self._base = base
        self._settings = settings
        self._threads = threads

    def distributions(self, active: list[int], qs: list[np.ndarray], tokens: list[int] | None = None) -> list[tuple]:
        return distributions([self.streams[i] for i in active], qs, self._threads, tokens)

    def push_all(self, active: list[int], tokens: list[int]) -> None:
        push_all([self.streams[i] for i in active], tokens, self._threads)

    def advance(self) -> None:
        self._base.advance()

    def lookahead(self, tokens: list[list[int]]) -> None:
        # the adaptation reads the base model's hidden state after each token, which an
        # evaluation ahead would have moved on
        if not self._settings.adapt:
            self._base.lookahead(tokens)

    def close(self) -> None:
        super().close()  # the mixed streams (their base streams belong to the base group)
        self._base.close()


def host_threads(model: Model) -> int:
    """Threads for the mixer's steps of a group: ``$LMZIP_HOST_THREADS``, else the
    model's CPU threads, else the machine's cores (never part of a file)."""
    env = os.environ.get("LMZIP_HOST_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise LMZipError(f"LMZIP_HOST_THREADS must be a number of threads, not {env!r}") from None
    return max(1, int(getattr(model, "threads", None) or os.cpu_count() or 1))


class MixedModel(Model):
    """``base`` (a language model, or None for statistics alone) mixed per ``settings``.

    The fingerprint is the base's, plus the settings under ``params()["mix"]``.
    """

    def __init__(self, base: Model, settings: MixSettings = DEFAULT_MIX):
        self.base = base
        self.settings = settings
        self.name = base.name
        self.tokenizer = base.tokenizer
        self.model_sha256 = base.model_sha256

    def params(self) -> dict[str, Any]:
        return {**self.base.params(), "mix": self.settings.params()}

    def _defer(self) -> dict[str, int]:
        # a base that evaluates lazily is told how many tokens a skip run holds back
        return {"defer": SKIP_RUN + 1} if self.settings.skip and self.base.defers else {}

    def open_stream(self) -> Stream:
        return MixedStream(self.base.open_stream(**self._defer()), self.vocab_size, self.settings)

    @property
    def batches(self) -> bool:
        return self.base.batches

    @property
    def max_width(self) -> int | None:
        return self.base.max_width

    @property
    def independent_streams(self) -> bool:
        return self.base.independent_streams

    def resident_width(self) -> int | None:
        return self.base.resident_width()

    def gpu_width(self) -> int | None:
        return self.base.gpu_width()

    def gpus(self) -> list[str]:
        return self.base.gpus()

    def open_group(self, lengths: list[int], width: int = 1) -> StreamGroup:
        on_device = getattr(self.base, "open_mixed_group", None)  # a GPU's: the mixer runs there
        group = on_device(lengths, width, self.vocab_size, self.settings) if on_device else None
        if group is not None:
            return group
        return MixedGroup(self.base.open_group(lengths, width, **self._defer()), self.vocab_size, self.settings,
                          host_threads(self.base))

    def describe(self) -> str:
        s = self.settings
        parts = [f"orders {','.join(map(str, s.orders))}" if s.orders else "",
                 f"match {s.match}" if s.match else "", "adaptive weight" if s.llm_rate else "",
                 "bias" if s.bias_rate else "", f"skip at {s.skip - 1}/{s.skip}" if s.skip else "",
                 f"output-row adaptation ({s.adapt} best)" if s.adapt else ""]
        return f"{self.base.describe()} + mixing ({', '.join(p for p in parts if p) or 'off'})"

    @property
    def closed(self) -> bool:
        return self.base.closed

    def close(self) -> None:
        self.base.close()

    @property
    def threads(self):
        return getattr(self.base, "threads", None)

    @threads.setter
    def threads(self, value) -> None:
        if hasattr(self.base, "threads"):
            self.base.threads = value


class NGramModel(Model):
    """Byte n-grams and a match model mixed online, no language model (``--model ngram``).

    About as strong as a classic PPM-style compressor on text, and thousands of times
    faster than the LLM: for quick runs, tests and fuzzing.
    """

    name = "ngram"
    independent_streams = True

    def __init__(self, settings=None) -> None:
        self.settings = settings if settings is not None else BYTE_MIX
        self.tokenizer = PieceTokenizer([bytes([b]) for b in range(256)], lambda text: list(text))

    def params(self) -> dict:
        return {"backend": "ngram", "model": self.name, "mix": self.settings.params()}

    def open_stream(self) -> Stream:
        return MixedStream(None, self.vocab_size, self.settings)

    def describe(self) -> str:
        return "ngram (byte n-grams and match model mixed online, no LLM)"
