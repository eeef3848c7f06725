"""Coding one chunk: tokens -> model probabilities -> range coder, and back.

Compressor and decompressor run the same loop: open a group of fresh streams (one per
chunk; a group wider than the machine holds is coded in slices where the model allows it),
then step by step, for the chunks that have a token left, ask for their
distributions (StreamGroup.distributions), code their tokens, push them
(StreamGroup.push_all); then advance the group (one batched evaluation).  Same calls
in the same order, so the same probabilities.
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
from .format import VERSION, ChunkInfo
from .predictors.base import Model

__all__ = ["Stats", "compress_chunk", "compress_group", "decompress_chunk", "decompress_group"]

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

    def add_totals(self, other: Stats) -> None:
        """Add ``other``'s running totals (not its chunk list): a worker's group, a finished stream."""
        self.raw_bytes += other.raw_bytes
        self.payload_bytes += other.payload_bytes
        self.tokens += other.tokens
        self.model_bits += other.model_bits
        self.coded_bits += other.coded_bits

    @property
    def model_bpb(self) -> float:
        return self.model_bits / self.raw_bytes if self.raw_bytes else 0.0

    @property
    def coded_bpb(self) -> float:
        return self.coded_bits / self.raw_bytes if self.raw_bytes else 0.0


def compress_group(model: Model, chunks: list[bytes], stats: Stats | None = None,
                   progress: Progress | None = None, width: int = 1,
                   version: int = VERSION) -> list[tuple[ChunkInfo, bytes]]:
    """Code ``chunks`` (each non-empty, at most ``width`` of them) in lockstep:
    one token of every chunk per step, then one evaluation of them all
    (:meth:`~lmzip.predictors.base.Model.open_group`).  Each chunk gets its own range
    coder and payload: ``[(info, payload), ...]`` in order; ``version``: the container
    format the payloads are for (:meth:`lmzip.coding.Encoder.finish`)."""
    stats = stats if stats is not None else Stats()
    tokens = [model.tokenizer.encode(data) for data in chunks]
    encoders = [Encoder() for _ in chunks]
    slices = _slices(model, len(chunks))
    for part in slices:
        _encode(model, [tokens[i] for i in part], [encoders[i] for i in part],
                width if len(slices) == 1 else len(part), stats, progress)
    out = []
    for i, (data, toks, encoder) in enumerate(zip(chunks, tokens, encoders)):
        payload = encoder.finish(version)
        info = ChunkInfo(raw_len=len(data), n_tokens=len(toks), payload_len=len(payload),
                         data_crc=zlib.crc32(data) & 0xFFFFFFFF, starts_group=i == 0)
        stats.payload_bytes += len(payload)
        stats.chunks.append(info)
        out.append((info, payload))
    if progress is not None:
        progress(stats)
    return out


def _slices(model: Model, n: int) -> list[range]:
    """The group's chunks in the slices coded one after the other: all at once, unless
    the model's streams are independent and this machine holds fewer of them at once (a
    wide group written on a GPU, coded on a CPU): the same probabilities either way."""
    most = model.resident_width() if model.independent_streams else None
    if not most or n <= most:
        return [range(n)]
    return [range(a, min(a + most, n)) for a in range(0, n, most)]


def _encode(model: Model, tokens: list[list[int]], encoders: list[Encoder], width: int, stats: Stats,
            progress: Progress | None) -> None:
    """Code the chunks' ``tokens`` in lockstep, each into its encoder."""
    pieces = model.tokenizer.pieces
    qs = [np.empty(model.vocab_size, dtype=np.float64) for _ in tokens]
    with model.open_group([len(t) for t in tokens], width) as group:
        group.lookahead(tokens)  # the same scores, maybe evaluated several tokens at a time
        for step in range(max(len(t) for t in tokens)):
            active = [i for i, toks in enumerate(tokens) if step < len(toks)]
            told = [tokens[i][step] for i in active]
            for i, token, (below, freq, x, top, total) in zip(active, told,
                                                              group.intervals(active, [qs[i] for i in active], told)):
                encoders[i].encode_interval(below + token, freq)
                p = math.exp(x - top) / total if math.isfinite(x) and math.isfinite(top) else freq / TOTAL
                stats.model_bits -= math.log2(max(p, _MIN_P))
                stats.coded_bits += _LOG2_TOTAL - math.log2(freq)
                stats.raw_bytes += len(pieces[token])
                stats.tokens += 1
            group.push_all(active, told)
            group.advance()
            if progress is not None and step % _PROGRESS_EVERY == 0:
                progress(stats)


def compress_chunk(model: Model, data: bytes, stats: Stats | None = None,
                   progress: Progress | None = None) -> tuple[ChunkInfo, bytes]:
    """Code ``data`` (non-empty) as one independent chunk (a group of one): (info, payload)."""
    return compress_group(model, [data], stats, progress)[0]


class _ChunkDecoder:
    """One chunk's side of :func:`decompress_group`: its range decoder and checks."""

    def __init__(self, info: ChunkInfo, payload: bytes, pieces: list[bytes], version: int = VERSION):
        self.info = info
        self.decoder = Decoder(payload, version)
        self.pieces = pieces
        self.out: list[bytes] = []
        self.done = 0
        # A range coder cannot encode more information than it writes: symbols worth I bits
        # take at least (I - 64) / 32 words.  Garbage decoding past that is damage, caught
        # here before a forged token count could keep us busy for hours.
        self.budget = 8 * info.payload_len + _SLACK_BITS
        self.spent = 0.0

    def take(self, token: int, below: float, freq: float) -> bytes:
        """Decode ``token``, found at the coder's quantile with its interval (below, freq),
        and check it: its piece of the chunk."""
        self.decoder.decode_interval(below + token, freq)
        self.spent += _LOG2_TOTAL - math.log2(freq)
        if self.spent > self.budget:
            raise CorruptError("chunk payload is damaged (it decodes to more information than it holds)" + _CAUSES)
        piece = self.pieces[token] if token < len(self.pieces) else b""
        if not piece:
            raise CorruptError("chunk payload is damaged (decoded a token that spells nothing)" + _CAUSES)
        self.done += len(piece)
        if self.done > self.info.raw_len:
            raise _mismatch("decoded more bytes than the chunk holds")
        self.out.append(piece)
        return piece

    def result(self) -> bytes:
        data = b"".join(self.out)
        _check(self.info, data)
        return data


def decompress_group(model: Model, chunks: list[tuple[ChunkInfo, bytes]], stats: Stats | None = None,
                     progress: Progress | None = None, width: int = 1,
                     replay: dict[int, bytes] | None = None, version: int = VERSION) -> list[bytes]:
    """Decode a lockstep group (the chunks :func:`compress_group` coded together, with the
    same ``width``), checking each chunk's length and CRC.

    ``replay`` maps the index of a chunk whose payload is not the model's (stored classically
    after the model ran) to its decoded bytes: its tokens are fed to the model unchanged,
    so the other chunks see the batches they were coded with.

    A group wider than this machine holds at once (:meth:`Model.resident_width`) is
    decoded in slices when the model's streams are independent (the portable engine),
    as :func:`compress_group` codes one: the same probabilities as all at once.
    """
    stats = stats if stats is not None else Stats()
    replay = replay or {}
    pieces = model.tokenizer.pieces
    plans: list[_ChunkDecoder | list[int]] = []
    for i, (info, payload) in enumerate(chunks):
        if i in replay:
            toks = model.tokenizer.encode(replay[i])
            if len(toks) != info.n_tokens:
                raise CorruptError(f"chunk declares {info.n_tokens} tokens, its bytes make {len(toks)}")
            plans.append(toks)
        else:
            plans.append(_ChunkDecoder(info, payload, pieces, version))
    slices = _slices(model, len(chunks))
    for part in slices:
        _decode(model, [chunks[i][0].n_tokens for i in part], [plans[i] for i in part],
                width if len(slices) == 1 else len(part), stats, progress)
    out = []
    for i, ((_, payload), plan) in enumerate(zip(chunks, plans)):
        if isinstance(plan, list):
            out.append(replay[i])
            continue
        out.append(plan.result())
        stats.payload_bytes += len(payload)
    if progress is not None:
        progress(stats)
    return out


def _decode(model: Model, lengths: list[int], plans: list, width: int, stats: Stats,
            progress: Progress | None) -> None:
    """Decode the chunks of ``plans`` in lockstep (a plan is a :class:`_ChunkDecoder`, or
    the tokens of a chunk that is replayed)."""
    qs = [np.empty(model.vocab_size, dtype=np.float64) for _ in plans]
    with model.open_group(lengths, width) as group:
        for step in range(max(lengths)):
            active = [i for i, n in enumerate(lengths) if step < n]
            decoding = [i for i in active if not isinstance(plans[i], list)]
            quantiles = [plans[i].decoder.quantile() for i in decoding]
            told = {}
            for i, (token, below, freq) in zip(decoding, group.find(decoding, [qs[i] for i in decoding], quantiles)):
                piece = plans[i].take(token, below, freq)
                told[i] = token
                stats.raw_bytes += len(piece)
                stats.tokens += 1
            group.push_all(active, [told[i] if i in told else plans[i][step] for i in active])
            group.advance()
            if progress is not None and step % _PROGRESS_EVERY == 0:
                progress(stats)


def decompress_chunk(model: Model, info: ChunkInfo, payload: bytes, stats: Stats | None = None,
                     progress: Progress | None = None) -> bytes:
    """Decode one chunk (a group of one) and check its length and CRC."""
    return decompress_group(model, [(info, payload)], stats, progress)[0]


def _check(info: ChunkInfo, data: bytes) -> None:
    if len(data) != info.raw_len:
        raise _mismatch(f"decoded {len(data)} bytes, expected {info.raw_len}")
    if zlib.crc32(data) & 0xFFFFFFFF != info.data_crc:
        raise _mismatch("decoded data does not match its CRC-32")


#: what a payload that decodes wrongly may mean: the decoder cannot tell the two apart
_CAUSES = (": the compressed data was altered, or the model computed different probabilities than when "
           "compressing (same model file; with the llama.cpp backend, another build or CPU?)")


def _mismatch(what: str) -> ChecksumError:
    return ChecksumError(f"chunk is damaged: {what}{_CAUSES}")

