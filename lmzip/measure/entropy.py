"""The model's cross-entropy of some data, without range coding: quick size estimates.

``cross_entropy(model, data)`` tokenizes like the compressor, cuts the data into
the same chunks, and sums ``-log2 p(token)`` under the model's unquantized softmax
(escape symbols cost their 24 bits, as when coding).  That is what
``Stats.model_bits`` measures while compressing; the coded size is a little
larger (quantization to 2^24 and the coder's flush, about 0.1 %, plus the
container's ~200 bytes).

For a llama.cpp model the tokens are evaluated in batches (many per
``llama_decode``, logits for all), about three times faster than the coder's one
token per call.  The window slides exactly where the coder's does (when
``context`` positions are used, ``discard`` tokens after the start token leave the
KV cache), so every token sees the same context as when compressing; only the
floating-point summation order of the batched kernels differs, which moves the
result by about 0.1 % (0.13 % on 3 kB of alice29.txt with SmolLM2).  Other models (``order1``) are stepped
through their stream as the coder does, and give exactly ``Stats.model_bits``.

>>> from lmzip.predictors.registry import load_model
>>> r = cross_entropy(load_model("order1"), b"abracadabra " * 50)
>>> r.raw_bytes, r.tokens, round(r.bpb, 3)
(600, 600, 1.301)
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..cdf import PRECISION
from ..core import DEFAULT_CHUNK_SIZE, _utf8_cut
from ..errors import LMZipError
from ..predictors.base import Model

__all__ = ["Entropy", "cross_entropy", "token_bits", "split_chunks"]

_LN2 = math.log(2.0)
_LOGITS_BUDGET = 128 << 20  # bytes of float32 logits llama.cpp may hold per batch
_ROWS = 32  # logits rows turned into float64 at a time

#: called with (bytes done, tokens done, bits so far)
EntropyProgress = Callable[[int, int, float], None]


@dataclass
class Entropy:
    """Cross-entropy of ``raw_bytes`` bytes coded as ``tokens`` symbols."""

    raw_bytes: int
    tokens: int
    bits: float
    seconds: float = 0.0

    @property
    def bpb(self) -> float:
        return self.bits / self.raw_bytes if self.raw_bytes else 0.0

    @property
    def bits_per_token(self) -> float:
        return self.bits / self.tokens if self.tokens else 0.0

    @property
    def estimated_payload(self) -> int:
        """Bytes the range-coded payload would take, at least (the container adds ~200)."""
        return math.ceil(self.bits / 8)


def split_chunks(data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[bytes]:
    """The chunks :class:`~lmzip.LMZipCompressor` cuts ``data`` into (same cut points).

    >>> [len(c) for c in split_chunks(b"x" * 10, 4)]
    [4, 4, 2]
    """
    out = []
    buf = bytearray(data)
    while len(buf) > chunk_size:
        cut = _utf8_cut(buf, chunk_size)
        out.append(bytes(buf[:cut]))
        del buf[:cut]
    if buf:
        out.append(bytes(buf))
    return out


def token_bits(model: Model, symbols: Sequence[int], progress: Callable[[int], None] | None = None, *,
               start: int | None = None) -> np.ndarray:
    """``-log2 p`` of each symbol of one chunk, from a fresh context (float64 array).

    ``start``: the token at position 0, context only (default: the model's start token;
    another one only for a llama.cpp model, whose context this code fills itself)."""
    from ..predictors.llamacpp import LlamaCppModel

    if isinstance(model, LlamaCppModel):
        return _llama_bits(model, symbols, progress, model.start_token if start is None else start)
    if start is not None and start != model.start_token:
        raise ValueError("only a llama.cpp model starts from another token than its own start token")
    return _stream_bits(model, symbols, progress)


def cross_entropy(model: Model, data: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  progress: EntropyProgress | None = None) -> Entropy:
    """Cross-entropy of ``data`` under ``model`` with the compressor's chunks and window."""
    started = time.monotonic()
    result = Entropy(0, 0, 0.0)
    pieces = model.tokenizer.pieces
    for chunk in split_chunks(data, chunk_size):
        symbols = model.tokenizer.encode(chunk)
        lengths = np.fromiter((len(pieces[s]) for s in symbols), dtype=np.int64, count=len(symbols))
        done = np.cumsum(lengths)
        base = result

        def report(n: int, base: Entropy = base, done: np.ndarray = done) -> None:
            if progress is not None and n:
                progress(base.raw_bytes + int(done[n - 1]), base.tokens + n, math.nan)

        bits = token_bits(model, symbols, report)
        result = Entropy(base.raw_bytes + len(chunk), base.tokens + len(symbols), base.bits + float(bits.sum()))
        if progress is not None:
            progress(result.raw_bytes, result.tokens, result.bits)
    result.seconds = time.monotonic() - started
    return result


# ---------------------------------------------------------------------------- any model


def _stream_bits(model: Model, symbols: Sequence[int], progress: Callable[[int], None] | None) -> np.ndarray:
    out = np.empty(len(symbols), dtype=np.float64)
    q = np.empty(model.vocab_size, dtype=np.float64)
    with model.open_stream() as stream:
        for i, s in enumerate(symbols):
            stream.distribution(q)  # as the coder does: a mixing stream learns from it
            x = np.asarray(stream.scores(), dtype=np.float64)
            out[i] = _bits_from_scores(x, int(s))
            stream.push(int(s))
            if progress is not None and i % 256 == 255:
                progress(i + 1)
    if progress is not None:
        progress(len(symbols))
    return out


def _bits_from_scores(x: np.ndarray, s: int) -> float:
    if not math.isfinite(x[s]):
        return float(PRECISION)  # the coder's floor: one count in 2^24
    m = x[np.isfinite(x)].max()
    lse = m + math.log(float(np.exp(x[np.isfinite(x)] - m).sum()))
    return (lse - float(x[s])) / _LN2


# ---------------------------------------------------------------------------- llama.cpp, batched


def _llama_bits(model, symbols: Sequence[int], progress: Callable[[int], None] | None, start: int) -> np.ndarray:
    L = model._L
    n_vocab = model.tokenizer.n_model_tokens
    n = len(symbols)
    out = np.empty(n, dtype=np.float64)
    if n == 0:
        return out
    sym = np.asarray(symbols, dtype=np.int64)
    visible_mask = sym < n_vocab  # escape symbols are never shown to the model
    # owner[j]: index (in the evaluated sequence start, visible...) of the token whose
    # logits predict symbol j: the last visible token before it
    owner = np.concatenate([[0], np.cumsum(visible_mask)[:-1]])
    sequence = np.concatenate([[start], sym[visible_mask]])
    n_eval = int(owner[-1]) + 1  # the last visible token predicts nothing: not evaluated
    cap = int(max(16, min(512, _LOGITS_BUDGET // (4 * n_vocab), model.context)))

    from ..predictors.llamacpp import new_context

    ctx, mem = new_context(model, 1, cap)  # the coder's settings, with batches of `cap`
    batch = L.llama_batch_init(cap, 0, 1)
    try:
        pos = 0
        i = 0
        while i < n_eval:
            if pos >= model.context:  # slide exactly as the coder's stream does
                L.llama_memory_seq_rm(mem, 0, model.keep, model.keep + model.discard)
                L.llama_memory_seq_add(mem, 0, model.keep + model.discard, pos, -model.discard)
                pos -= model.discard
            k = min(cap, n_eval - i, model.context - pos)
            batch.n_tokens = k
            for r in range(k):
                batch.token[r] = int(sequence[i + r])
                batch.pos[r] = pos + r
                batch.n_seq_id[r] = 1
                batch.seq_id[r][0] = 0
                batch.logits[r] = 1
            rc = L.llama_decode(ctx, batch)
            if rc != 0:
                raise LMZipError(f"llama_decode failed (code {rc})")
            ptr = L.llama_get_logits(ctx)
            logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(k, n_vocab))
            lo, hi = np.searchsorted(owner, [i, i + k])
            for r0 in range(0, k, _ROWS):  # log-softmax a few rows at a time, in float64
                rows = logits[r0 : r0 + _ROWS].astype(np.float64)
                m = rows.max(axis=1)
                lse = m + np.log(np.exp(rows - m[:, None]).sum(axis=1))
                a, b = np.searchsorted(owner, [i + r0, i + r0 + len(rows)])
                js = np.arange(a, b)
                row = owner[js] - (i + r0)
                s = sym[js]
                seen = s < n_vocab
                bits = np.full(len(js), float(PRECISION))  # escapes: one count in 2^24
                bits[seen] = (lse[row[seen]] - rows[row[seen], s[seen]]) / _LN2
                out[js] = bits
            assert lo <= hi
            pos += k
            i += k
            if progress is not None:
                progress(int(hi))
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
    return out
