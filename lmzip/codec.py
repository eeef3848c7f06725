"""Coding one chunk: tokens -> model probabilities -> range coder, and back.

Compressor and decompressor run the same loop: open a fresh stream, then for each
token ask for its distribution (Stream.distribution), code the token, push it.  Same
calls in the same order, so the same probabilities.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .cdf import TOTAL
from .coding import Decoder, Encoder
from .errors import ChecksumError, CorruptError
from .format import ChunkInfo
from .predictors.base import Model

__all__ = ["Stats", "compress_chunk", "decompress_chunk"]

#: called every few tokens while coding, with the running totals
Progress = Callable[["Stats"], None]
_PROGRESS_EVERY = 16  # tokens between progress calls
_MIN_P = 2.0 ** -1000  # guards log2(0) when a probability underflows
_LOG2_TOTAL = math.log2(TOTAL)
_SLACK_BITS = 96  # the coder's 64-bit state and flush, with room to spare


@dataclass
class Stats:
    """Running totals, updated token by token (progress displays read them)."""

    #: original bytes coded or decoded so far
    raw_bytes: int = 0
    #: compressed payload bytes written or read so far
    payload_bytes: int = 0
    tokens: int = 0
    #: sum of -log2 p(token) under the model's unquantized softmax (compression only)
    model_bits: float = 0.0
    #: sum of -log2 (freq / 2**24): what the range coder is asked to spend (compression only)
    coded_bits: float = 0.0
    chunks: list[ChunkInfo] = field(default_factory=list)

    @property
    def model_bpb(self) -> float:
        return self.model_bits / self.raw_bytes if self.raw_bytes else 0.0

    @property
    def coded_bpb(self) -> float:
        return self.coded_bits / self.raw_bytes if self.raw_bytes else 0.0


def compress_chunk(model: Model, data: bytes, stats: Stats | None = None,
                   progress: Progress | None = None) -> tuple[ChunkInfo, bytes]:
    """Code ``data`` (non-empty) as one independent chunk: (info, payload)."""
    stats = stats if stats is not None else Stats()
    tokens = model.tokenizer.encode(data)
    pieces = model.tokenizer.pieces
    encoder = Encoder()
    q = np.empty(model.vocab_size, dtype=np.float64)
    with model.open_stream() as stream:
        for i, token in enumerate(tokens):
            top, total = stream.distribution(q)
            scores = stream.scores()
            encoder.encode(token, q)
            x = float(scores[token])
            p = math.exp(x - top) / total if math.isfinite(x) and math.isfinite(top) else (q[token] + 1) / TOTAL
            stats.model_bits -= math.log2(max(p, _MIN_P))
            stats.coded_bits += _LOG2_TOTAL - math.log2(q[token] + 1)
            stats.raw_bytes += len(pieces[token])
            stats.tokens += 1
            stream.push(token)
            if progress is not None and i % _PROGRESS_EVERY == 0:
                progress(stats)
    payload = encoder.finish()
    info = ChunkInfo(raw_len=len(data), n_tokens=len(tokens), payload_len=len(payload),
                     data_crc=zlib.crc32(data) & 0xFFFFFFFF)
    stats.payload_bytes += len(payload)
    stats.chunks.append(info)
    if progress is not None:
        progress(stats)
    return info, payload


def decompress_chunk(model: Model, info: ChunkInfo, payload: bytes, stats: Stats | None = None,
                     progress: Progress | None = None) -> bytes:
    """Decode one chunk and check its length and CRC."""
    stats = stats if stats is not None else Stats()
    pieces = model.tokenizer.pieces
    vocab = len(pieces)
    decoder = Decoder(payload)
    out: list[bytes] = []
    done = 0
    # A range coder cannot encode more information than it writes: symbols worth I bits
    # take at least (I - 64) / 32 words.  Garbage decoding past that is damage, caught
    # here before a forged token count could keep us busy for hours.
    budget = 8 * info.payload_len + _SLACK_BITS
    spent = 0.0
    q = np.empty(vocab, dtype=np.float64)
    with model.open_stream() as stream:
        for i in range(info.n_tokens):
            stream.distribution(q)
            token = decoder.decode(q)
            spent += _LOG2_TOTAL - math.log2(q[token] + 1)
            if spent > budget:
                raise CorruptError("chunk payload is damaged (it decodes to more information than it holds)")
            piece = pieces[token] if token < vocab else b""
            if not piece:
                raise CorruptError("chunk payload is damaged (decoded a token that spells nothing)")
            done += len(piece)
            if done > info.raw_len:
                raise _mismatch("decoded more bytes than the chunk holds")
            out.append(piece)
            stream.push(token)
            stats.raw_bytes += len(piece)
            stats.tokens += 1
            if progress is not None and i % _PROGRESS_EVERY == 0:
                progress(stats)
    data = b"".join(out)
    if len(data) != info.raw_len:
        raise _mismatch(f"decoded {len(data)} bytes, expected {info.raw_len}")
    if zlib.crc32(data) & 0xFFFFFFFF != info.data_crc:
        raise _mismatch("decoded data does not match its CRC-32")
    stats.payload_bytes += len(payload)
    stats.chunks.append(info)
    if progress is not None:
        progress(stats)
    return data


def _mismatch(what: str) -> ChecksumError:
    return ChecksumError(
        f"chunk is damaged: {what} (the compressed data was altered, or the model "
        f"computed different probabilities than when compressing: same model file, "
        f"but another llama.cpp build or CPU?)"
    )

