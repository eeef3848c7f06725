"""The small protocol every predictor implements.

A :class:`Model` is a lossless tokenizer plus a factory of prediction
:class:`Stream` objects.  A stream starts with no context, gives scores for the
next token, and is told each token that follows.  The compressor and the
decompressor drive a stream through exactly the same calls, so a deterministic
model yields bit-identical probabilities in both directions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..cdf import below, find
from ..coding import decoder_damage
from ..tokenization import PieceTokenizer

__all__ = ["Model", "Stream", "StreamGroup"]


class Stream(ABC):
    """One independent sequence being predicted (one chunk of input)."""

    @abstractmethod
    def scores(self) -> np.ndarray:
        """Natural-log, unnormalized scores of the next token (length ``vocab_size``)."""

    @abstractmethod
    def push(self, token: int) -> None:
        """Append ``token`` to the context."""

    def distribution(self, q: np.ndarray) -> tuple[float, float]:
        """Write the coder's distribution of the next token into ``q`` (``freq - 1``,
        float64) and return ``(max score, normalizer)`` (see :func:`lmzip.cdf.quantize_into`).

        The codec calls this once per token, then :meth:`push`.  The default quantizes
        :meth:`scores`; a stream that learns from the distribution it coded with (the
        mixer) overrides it and may keep ``q`` until the next :meth:`push`.
        """
        from ..cdf import quantize_into

        return quantize_into(self.scores(), q)

    def defer(self) -> None:
        """Called after :meth:`push` when the next :meth:`scores` will not be asked for
        (the mixer codes the next token without this stream).  A backend that evaluates
        lazily may then keep the pushed tokens and evaluate them with later ones, in one
        call; the default does nothing."""

    def close(self) -> None:
        """Release resources held by the stream."""

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamGroup:
    """Streams advanced in lockstep, one per chunk: the schedule of batched evaluation.

    The codec drives every active stream through ``distribution()``/``push()`` for
    one token (:meth:`distributions`, :meth:`push_all`), then calls :meth:`advance`,
    which evaluates all the tokens pushed since the last call together (one batch for a
    batching backend).  A stream's
    ``scores()`` are valid after :meth:`advance`.  ``lengths[i]`` is the number of
    tokens chunk ``i`` codes; the decoder knows them from the chunk records, so
    both directions make the same calls with the same batch shapes.

    This base class is the serial schedule: independent streams from
    :meth:`Model.open_stream`, and :meth:`advance` does nothing.
    """

    def __init__(self, streams: list[Stream]):
        self.streams = streams

    def distributions(self, active: list[int], qs: list[np.ndarray], tokens: list[int] | None = None) -> list[tuple]:
        """:meth:`Stream.distribution` of each stream ``active[k]`` into ``qs[k]``, in one
        call: a group may compute them together (the mixer does, on several threads).
        ``tokens`` (a compressor's, ``tokens[k]`` for stream ``active[k]``): each result is
        ``(max, normalizer, sum(qs[k][:tokens[k]]))``, the start of the token's interval
        less the token (the mixer sums it while ``q`` is in its cache)."""
        out = [self.streams[i].distribution(q) for i, q in zip(active, qs)]
        if tokens is None:
            return out
        return [(*r, below(q, t)) for r, q, t in zip(out, qs, tokens)]

    def intervals(self, active: list[int], qs: list[np.ndarray], tokens: list[int]) -> list[tuple]:
        """The compressor's step: for each stream ``active[k]``, its next token ``tokens[k]``'s
        interval of the coder's ``2**24``, ``(below, freq, score, max, normalizer)``: it
        starts at ``below + tokens[k]`` (``below = sum(q[:token])``) and is ``freq`` wide;
        ``score`` is the token's score (for the statistics, with the max and normalizer).
        A group that computes the distributions elsewhere (a GPU's mixer) returns these
        numbers alone; the default computes them into ``qs`` (:meth:`distributions`)."""
        out = []
        for i, q, t, (top, total, under) in zip(active, qs, tokens, self.distributions(active, qs, tokens)):
            out.append((under, q[t] + 1.0, float(self.streams[i].scores()[t]), top, total))
        return out

    def find(self, active: list[int], qs: list[np.ndarray], quantiles: list[int]) -> list[tuple]:
        """The decompressor's step: for each stream ``active[k]``, the symbol whose interval
        holds the coder's ``quantiles[k]`` (:meth:`lmzip.coding.Decoder.quantile`), as
        ``(symbol, below, freq)``; the default computes the distributions into ``qs``."""
        self.distributions(active, qs)
        out = []
        for q, x in zip(qs, quantiles):
            with decoder_damage():
                symbol, under = find(q, x)
            out.append((symbol, under, q[symbol] + 1.0))
        return out

    def push_all(self, active: list[int], tokens: list[int]) -> None:
        """:meth:`Stream.push` of ``tokens[k]`` to each stream ``active[k]``, in one call."""
        for i, token in zip(active, tokens):
            self.streams[i].push(token)

    def advance(self) -> None:
        """Evaluate the tokens pushed since the last call (no-op when streams evaluate on push)."""

    def lookahead(self, tokens: list[list[int]]) -> None:
        """The compressor knows every chunk's tokens before coding them: ``tokens[i]`` is
        what stream ``i`` will be pushed, in order.  A backend that evaluates several tokens
        of a stream in one call may then evaluate ahead; the scores are the same numbers
        (the decompressor, which cannot look ahead, computes them one token at a time).
        Default: nothing."""

    def close(self) -> None:
        for s in self.streams:
            s.close()

    def __enter__(self) -> StreamGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Model(ABC):
    """A tokenizer and a source of prediction streams."""

    #: short registry name, stored in the header
    name: str
    tokenizer: PieceTokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    #: SHA-256 of the model file (zeros for built-in models): half of the fingerprint
    model_sha256: bytes = bytes(32)

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Name and every setting that changes probabilities: the other half of the fingerprint."""

    @abstractmethod
    def open_stream(self) -> Stream:
        """A fresh stream with an empty context."""

    #: True for a backend whose streams evaluate deferred tokens together
    #: (:meth:`Stream.defer`): :meth:`open_stream` and :meth:`open_group` then take
    #: ``defer``, the most tokens a stream will hold back at once, which sizes their
    #: batches (part of the call schedule, so the mixer passes it only when it skips)
    defers: bool = False

    #: True for a backend whose :meth:`open_group` evaluates its streams in one batch
    #: (then lockstep groups pay; otherwise the compressor codes chunks one by one)
    batches: bool = False

    #: widest lockstep group this backend runs (None: as wide as the format holds,
    #: lmzip.format.MAX_STREAMS)
    max_width: int | None = None

    #: a stream's probabilities depend neither on the other streams of its group nor on
    #: how its evaluations are batched (the portable engine, the statistics alone): the
    #: codec may then code a wide group in slices that fit in memory, to the same bits
    independent_streams: bool = False

    def resident_width(self) -> int | None:
        """The most streams of a group this machine holds at once (each has its own
        cache); a wider group of :attr:`independent_streams` is coded in slices of this
        many.  None: no limit."""
        return None

    def gpu_width(self) -> int | None:
        """On a GPU: the widest lockstep group whose caches its free memory holds (the
        compressor's default width there, and its cue to size chunks from the input);
        None on the CPU (8 streams, 1 MiB chunks)."""
        return None

    def gpus(self) -> list[str]:
        """The GPUs (``"cuda:N"``) this model may spread lockstep groups over, one worker
        process each (lmzip.parallel); empty on the CPU."""
        return []

    def open_group(self, lengths: list[int], width: int = 1) -> StreamGroup:
        """Streams for ``len(lengths)`` chunks coded in lockstep, ``lengths[i]`` tokens in
        chunk ``i``.  ``width`` (at least ``len(lengths)``) is the stream's lockstep width,
        stored in its header: a batching backend sizes its batches and caches by it, so
        it is part of the schedule.  Default: independent streams (``width`` unused)."""
        if not 1 <= len(lengths) <= width:
            raise ValueError(f"a group of width {width} holds 1 to {width} chunks, not {len(lengths)}")
        return StreamGroup([self.open_stream() for _ in lengths])

    def describe(self) -> str:
        return self.name

    @property
    def closed(self) -> bool:
        return False

    def close(self) -> None:
        """Release the model; it must not be used afterwards."""
