"""Range coding of symbols under integer distributions, with constriction.

constriction's ``Categorical(perfect=False)`` quantizes float probabilities by
``cdf(i) = floor(sum(pmf[:i]) * (2**24 - V) / sum(pmf)) + i`` (its "leaky fast"
rule, computed in floating point).  We hand it ``q = freq - 1`` (what
:func:`lmzip.cdf.quantize_into` writes): integers summing to exactly
``2**24 - V``, so the scale is exactly 1.0, every partial sum is an integer below
2**24 (exact in float64), and constriction's CDF is exactly ours:
``cdf(i) = sum(freq[:i])``.  No float rounding is left inside the coder, and the
compressor and decompressor hand it bit-identical input.

Versions 2 and 3 store the compressed words little-endian, as constriction recommends;
version 4 stores them big-endian and cut to the bytes the decoder needs (:meth:`Encoder.finish`).
"""

from __future__ import annotations

from contextlib import contextmanager

import constriction
import numpy as np

from .cdf import PRECISION, find
from .cdf import below as cdf_below
from .errors import CorruptError

__all__ = ["Encoder", "Decoder", "decoder_damage"]

assert PRECISION == 24  # constriction's default range coder: 32-bit words, 24-bit models

_FAMILY = constriction.stream.model.Categorical(perfect=False)
#: one symbol per unit of the 2**24: decoding it reads the quantile the coder's point is at
_QUANTILE = constriction.stream.model.Uniform(1 << 24)


#: symbols an Encoder holds before it hands them to constriction in one call
_BATCH = 4096
_T = float(1 << PRECISION)


def interval_model(symbol: int, q: np.ndarray, below: float | None = None) -> tuple[int, tuple[float, float, float]]:
    """A three-symbol ``(index, q3)`` that constriction codes exactly like ``symbol``
    under ``q``: a range coder step reads only the symbol's interval
    ``[cum, cum + freq)`` of the 2**24 total, and constriction's rule (module doc) on
    ``q3`` (summing to 2**24 - 3, so again scale 1.0) puts symbol ``index``'s interval
    exactly there.  The same bits for a few numbers instead of the whole vocabulary.
    ``below``: ``sum(q[:symbol])`` if the caller has it (the mixer sums it)."""
    below = cdf_below(q, symbol) if below is None else below
    return interval_of(below + symbol, q[symbol] + 1.0)


def interval_of(cum: float, freq: float) -> tuple[int, tuple[float, float, float]]:
    """:func:`interval_model` of the interval ``[cum, cum + freq)`` itself (integers)."""
    if cum == 0.0:  # [0, freq), then an empty symbol, then the rest
        return 0, (freq - 1.0, 0.0, _T - freq - 2.0)
    if cum + freq == _T:  # the rest, an empty symbol, then [cum, 2**24)
        return 2, (cum - 2.0, 0.0, freq - 1.0)
    return 1, (cum - 1.0, freq - 1.0, _T - cum - freq - 1.0)


class Encoder:
    """Encodes one symbol at a time; ``finish()`` returns the payload bytes."""

    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()
        self._symbols: list[int] = []
        self._models: list[tuple[float, float, float]] = []

    def encode(self, symbol: int, q: np.ndarray, below: float | None = None) -> None:
        """Code ``symbol`` under ``q = freq - 1`` (float64, as cdf.quantize_into writes it);
        ``below``, if known: ``sum(q[:symbol])``."""
        if len(q) < 3:  # no room for interval_model's three symbols
            self._flush()
            self._coder.encode(np.array([symbol], dtype=np.int32), _FAMILY, q[None, :])
            return
        self._push(*interval_model(symbol, q, below))

    def encode_interval(self, cum: float, freq: float) -> None:
        """Code the symbol whose interval of the 2**24 is ``[cum, cum + freq)`` (``cum =
        sum(freq[:symbol])``): what :meth:`encode` codes, from the two numbers alone."""
        self._push(*interval_of(cum, freq))

    def _push(self, index: int, model: tuple[float, float, float]) -> None:
        self._symbols.append(index)
        self._models.append(model)
        if len(self._symbols) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._symbols:
            self._coder.encode(np.array(self._symbols, dtype=np.int32), _FAMILY,
                               np.array(self._models, dtype=np.float64))
            self._symbols, self._models = [], []

    def finish(self, version: int = 4) -> bytes:
        """The payload.  Versions 2 and 3: constriction's words as it seals them,
        little-endian.  Version 4: the shortest byte string that decodes the same: the
        words big-endian (so the bytes are one big-endian number, and bytes cut off the
        end read as zeros), the sealing word replaced by the value with the most
        trailing zero bits in the coder's final interval, and trailing zero bytes cut."""
        self._flush()
        if version < 4:
            return self._coder.get_compressed().astype("<u4").tobytes()
        n_words, (lower, width) = self._coder.pos()
        words = self._coder.get_compressed()
        out = words.astype(">u4").tobytes()
        # the final interval is [lower, lower + width) in the 64 bits after the first n_words
        # words; constriction sealed it with one word (its value in that interval) unless a
        # carry was pending (then keep its words).  The check that its own seal lies in the
        # interval ties our reading of pos() to what it wrote.
        top = lower + width - 1
        if len(words) == n_words + 1 and top < 1 << 64 and lower <= int(words[-1]) << 32 <= top:
            k = 64
            while (top >> k) << k < lower:
                k -= 1
            out = out[: 4 * n_words] + ((top >> k) << k).to_bytes(8, "big")
        return out.rstrip(b"\0")


@contextmanager
def decoder_damage():
    """constriction's "invalid data" (and a quantile past the total) as damage: a
    CorruptError that says so."""
    try:
        yield
    except (AssertionError, ValueError, RuntimeError) as exc:
        raise CorruptError(f"chunk payload is damaged (range decoder: {exc})") from None


class Decoder:
    """Decodes symbols from a payload made by :class:`Encoder`.

    The range decoder cannot notice damaged input: it returns *some* symbol for any
    bits, so callers must check what they decode (the container's CRCs do).
    """

    def __init__(self, payload: bytes, version: int = 4) -> None:
        if version < 4:
            words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        else:  # big-endian words; the bytes cut off the end are zeros
            padded = bytes(payload) + bytes(-len(payload) % 4)
            words = np.frombuffer(padded, dtype=">u4").astype(np.uint32)
        self._coder = constriction.stream.queue.RangeDecoder(words)

    def decode(self, q: np.ndarray) -> int:
        """The next symbol, under ``q = freq - 1`` (float64).

        As the encoder, it hands constriction a three-symbol distribution with the
        symbol's interval, not the vocabulary: a copy of the decoder reads the quantile
        its point is at (decoding a uniform symbol moves only the copy), lmzip finds the
        symbol whose interval holds it, and the decoder decodes that interval: the step
        a decode under the whole of ``q`` takes, in a few numbers."""
        if len(q) < 3:  # no room for interval_model's three symbols
            with decoder_damage():
                return int(self._coder.decode(_FAMILY, q[None, :])[0])
        with decoder_damage():
            symbol, below = find(q, self.quantile())
        self.decode_interval(below + symbol, q[symbol] + 1.0)
        return symbol

    def quantile(self) -> int:
        """Where the coder's point is, in units of the 2**24: the symbol to decode next is
        the one whose interval holds it (:meth:`decode_interval` then moves past it)."""
        with decoder_damage():  # decoding a uniform symbol moves only the copy
            return int(self._coder.clone().decode(_QUANTILE))

    def decode_interval(self, cum: float, freq: float) -> None:
        """Decode the symbol whose interval ``[cum, cum + freq)`` holds :meth:`quantile`."""
        index, model = interval_of(cum, freq)
        with decoder_damage():
            decoded = int(self._coder.decode(_FAMILY, np.array([model]))[0])
        if decoded != index:  # the interval holds the quantile: it cannot be another
            raise CorruptError("chunk payload is damaged (range decoder: the quantile left its interval)")
