"""Incremental compressor/decompressor objects and the one-shot functions.

Shaped like :mod:`lzma`: ``compress(data) == c.compress(data) + c.flush()`` for
``c = LMZipCompressor()``, and :class:`LMZipDecompressor` offers ``decompress``
with ``max_length``, ``eof``, ``needs_input`` and ``unused_data``.
"""

from __future__ import annotations

import io
import os
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from . import detect
from . import format as fmt
from .classic import compress_classic, decompress_classic
from .codec import Progress, Stats, compress_group, decompress_group
from .errors import CorruptError, FormatError, TruncatedError
from .predictors.base import Model
from .predictors.registry import MAX_CONTEXT, MIN_CONTEXT, load_model, model_for_header
from .sizing import chunk_size_for

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "METHODS",
    "LMZipCompressor",
    "LMZipDecompressor",
    "compress",
    "decompress",
    "iter_decompress",
    "scan_streams",
    "StreamInfo",
]

DEFAULT_CHUNK_SIZE = 1 << 20
#: chunks a batching model (the LLM backends) advances together by default
DEFAULT_STREAMS = 8
#: widest lockstep group a file may ask for (each stream holds its own KV cache)
MAX_STREAMS = fmt.MAX_STREAMS

#: bytes enough for any stream header (version 4: with the first record head) and record head
_HEADER_PEEK = 1 << 17
_HEAD_PEEK = 64

#: how the compressor chooses each chunk's coding method
METHODS = ("auto", "model", "classic")

ModelArg = str | os.PathLike | Model | None


def _utf8_cut(buf: bytes | bytearray, cut: int) -> int:
    """Move a cut point back (at most 3 bytes) so it does not split a UTF-8 character."""
    for back in range(4):
        pos = cut - back
        if pos <= 0:
            break
        if buf[pos] & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            return pos
    return cut


class LMZipCompressor:
    """Compresses data incrementally into one ``.lmz`` stream.

    Args:
        model: registry name (default ``"smollm2-135m"``), path of a GGUF file, or a
            loaded :class:`~lmzip.predictors.base.Model`.
        context: context window in tokens (default 2048).
        threads: CPU threads for the model (does not change the output).
        chunk_size: bytes per independently coded chunk (default 1 MiB; on a GPU, the
            input's size over the width, 64 KiB to 1 MiB: :mod:`lmzip.sizing`).
        streams: chunks coded together in lockstep, one batched model evaluation per
            step (default: on a GPU, as many as its free memory holds, at most 1,024;
            else 8 for a model that batches, else 1); stored in the header.
        executor: a :class:`lmzip.parallel.Executor` that codes groups on other workers
            (processes, Ray); the output is the same as without one.
        progress: called every few tokens with the running :class:`~lmzip.codec.Stats`.
        mix: a :class:`~lmzip.predictors.mixing.MixSettings` (default ``DEFAULT_MIX``; ``NO_MIX``
            for the bare language model); ignored when ``model`` is a loaded model.
        method: ``"auto"`` (default): text goes to the model, binary regions (found by
            :mod:`lmzip.detect`) to the classic coder (LZMA or stored), and a model-coded
            chunk that comes out larger than its classic coding is stored classically;
            ``"model"``: every chunk through the model; ``"classic"``: no model at all.
        format_version: the container version to write: 4 (default, compact) or 3 (what
            lmzip 0.1 reads).
        input_size: the input's size in bytes, when known beforehand (:func:`compress`
            passes it): on a GPU without ``chunk_size``, the chunks are sized to fill the
            group.  It never changes what a CPU writes.
    """

    def __init__(self, model: ModelArg = None, *, context: int | None = None, threads: int | None = None,
                 chunk_size: int | None = None, progress: Progress | None = None, method: str = "auto",
                 mix=None, streams: int | None = None, executor=None, format_version: int = fmt.VERSION,
                 input_size: int | None = None):
        if format_version not in fmt.WRITE_VERSIONS:
            raise ValueError(f"format_version must be one of {', '.join(map(str, fmt.WRITE_VERSIONS))}")
        self.version = format_version
        if chunk_size is not None and not 1 <= chunk_size <= fmt.MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be between 1 and {fmt.MAX_CHUNK_SIZE}")
        if context is not None and not MIN_CONTEXT <= context <= MAX_CONTEXT:
            raise ValueError(f"context must be between {MIN_CONTEXT} and {MAX_CONTEXT} tokens")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}")
        self.model = model if isinstance(model, Model) else load_model(model, context=context, threads=threads,
                                                                        mix=mix)
        gpu_width = self.model.gpu_width()  # None on the CPU
        if streams is None:
            streams = gpu_width or (DEFAULT_STREAMS if self.model.batches else 1)
        widest = min(MAX_STREAMS, self.model.max_width or MAX_STREAMS)
        if not 1 <= streams <= widest:
            raise ValueError(f"streams must be between 1 and {widest}"
                             + (f" with {self.model.name}'s backend" if widest < MAX_STREAMS else ""))
        self.streams = streams
        self.method = method
        if chunk_size is None:  # a GPU's group is filled from an input of known size
            chunk_size = (DEFAULT_CHUNK_SIZE if gpu_width is None
                          else chunk_size_for(input_size, streams, DEFAULT_CHUNK_SIZE))
        self.chunk_size = chunk_size
        self.progress = progress
        self.stats = Stats()
        self._buf = bytearray()
        self._cut: list[tuple[bytes, bool]] = []  # chunks cut from the input, not coded yet: (data, text)
        self.executor = executor
        self._inflight: deque = deque()  # (cut, future) of groups handed to the executor
        self._started = False
        self._prefix = b""  # version 4: the header, until the first record covers it
        self._finished = False

    def _names(self, uses_model: bool) -> tuple[bytes, dict]:
        """The model SHA-256 and params the header names."""
        if not uses_model or self.method == "classic":  # decompresses without loading any model
            return bytes(32), fmt.NO_MODEL_PARAMS
        params = {**self.model.params(), "chunk_size": self.chunk_size}
        if self.streams > 1:  # absent: 1, as in version 2
            params["streams"] = self.streams
        return self.model.model_sha256, params

    def _header(self, uses_model: bool = True) -> bytes:
        if self._started:
            return b""
        self._started = True
        head = fmt.pack_header(*self._names(uses_model), self.version)
        if self.version >= 4:  # the first record's CRC covers the header
            self._prefix = head
        return head

    def _pack(self, units: list[tuple[fmt.ChunkInfo, bytes]]) -> bytes:
        """The records of ``units``, the header first if not written yet."""
        if not units:
            return b""
        out = [self._header()]
        for info, payload in units:
            out.append(fmt.pack_chunk_record(info, payload, self.version, self._prefix))
            self._prefix = b""
        return b"".join(out)

    def _texts_cut(self) -> int:
        """How many of the chunks cut and not yet coded are text (coded by the model)."""
        return sum(text for _, text in self._cut)

    def _group_ready(self) -> bool:
        """A full lockstep group is cut, or enough binary data waits behind a short one."""
        return self._texts_cut() >= self.streams or sum(len(d) for d, _ in self._cut) >= self.streams * self.chunk_size

    def _code_cut(self) -> list[tuple[fmt.ChunkInfo, bytes]]:
        """Code the chunks cut so far (at most one lockstep group of text) into records;
        with an executor, hand the group over and return the records of groups done."""
        cut, self._cut = self._cut, []
        texts = [data for data, text in cut if text]
        if self.executor is None or not texts:
            if self._inflight:  # keep the order: what was handed over comes first
                return self._collect(wait_all=True) + self._code_cut_now(cut, texts)
            return self._code_cut_now(cut, texts)
        self._inflight.append((cut, self.executor.submit_compress(texts, self.streams, self.version)))
        return self._collect(wait_all=False)

    def _collect(self, wait_all: bool) -> list[tuple[fmt.ChunkInfo, bytes]]:
        """Records of the groups handed over, in order: those done (all with ``wait_all``,
        and enough that at most two per worker stay in flight)."""
        out: list[tuple[fmt.ChunkInfo, bytes]] = []
        while self._inflight and (wait_all or self._inflight[0][1].done()
                                  or len(self._inflight) > 2 * self.executor.workers):
            cut, future = self._inflight.popleft()
            result = future.result()
            self.stats.add_totals(result.stats)
            out += self._records(cut, result.out, len(self.stats.chunks))
        return out

    def _code_cut_now(self, cut: list[tuple[bytes, bool]], texts: list[bytes]) -> list[tuple[fmt.ChunkInfo, bytes]]:
        first = len(self.stats.chunks)
        coded = (compress_group(self.model, texts, self.stats, self.progress, self.streams, self.version)
                 if texts else [])
        return self._records(cut, coded, first)

    def _records(self, cut: list[tuple[bytes, bool]], coded_texts: list[tuple[fmt.ChunkInfo, bytes]],
                 first: int) -> list[tuple[fmt.ChunkInfo, bytes]]:
        """The records of ``cut``, its text chunks coded as ``coded_texts``; binary chunks
        are coded here, and a text chunk that LZMA codes smaller is stored so."""
        coded = iter(coded_texts)
        infos, payloads = [], []
        for data, text in cut:
            if text:
                info, payload = next(coded)
                if self.method == "auto":  # safety net: never worse than the classic coder
                    method, classic = compress_classic(data, self.version)
                    if len(classic) < len(payload):
                        self.stats.payload_bytes += len(classic) - len(payload)
                        info = fmt.ChunkInfo(len(data), info.n_tokens, len(classic), info.data_crc, method,
                                             info.starts_group)
                        payload = classic
            else:
                method, payload = compress_classic(data, self.version)
                info = fmt.ChunkInfo(len(data), 0, len(payload), zlib.crc32(data) & 0xFFFFFFFF, method)
                self.stats.raw_bytes += len(data)
                self.stats.payload_bytes += len(payload)
            infos.append(info)
            payloads.append(payload)
        if not any(i.method == fmt.METHOD_MODEL for i in infos):
            # the model's work was all thrown away: nothing for the decoder to replay
            infos = [fmt.ChunkInfo(i.raw_len, 0, i.payload_len, i.data_crc, i.method) for i in infos]
        self.stats.chunks[first:] = infos  # in place of what compress_group appended
        if self.progress is not None:
            self.progress(self.stats)
        return list(zip(infos, payloads))

    def _next_chunk(self, final: bool) -> None:
        """Cut the next chunk from the buffer: its first ``chunk_size`` bytes, or less at a
        text/binary boundary (``final``: the buffer holds the last of the input)."""
        view = bytes(self._buf[: self.chunk_size])
        if self.method == "auto":
            cut, text = detect.first_region(view)
        else:
            cut, text = len(view), self.method == "model"
        if text and cut == self.chunk_size and not final:
            cut = _utf8_cut(self._buf, cut)
        del self._buf[:cut]
        self._cut.append((view[:cut], text))

    def compress(self, data: bytes) -> bytes:
        """Feed ``data``; returns whatever compressed bytes are ready (maybe ``b""``)."""
        if self._finished:
            raise ValueError("compressor has been flushed")
        self._buf += memoryview(data).cast("B")
        units: list[tuple[fmt.ChunkInfo, bytes]] = []
        while len(self._buf) > self.chunk_size:  # '>': keep the last chunk for flush()
            self._next_chunk(final=False)
            if self._group_ready():
                units += self._code_cut()
        # later chunks are unknown yet: the header (written with the first record) names the model
        return self._pack(units)

    def flush(self) -> bytes:
        """Finish the stream: code what is buffered and write the end record."""
        if self._finished:
            raise ValueError("repeated call to flush()")
        out = [self.compress(b"")]
        first = len(self.stats.chunks)
        units: list[tuple[fmt.ChunkInfo, bytes]] = []
        while self._buf:
            self._next_chunk(final=True)
            if self._group_ready():
                units += self._code_cut()
        if self._cut:
            if not self._started and not self.stats.chunks and not self._inflight:
                # the whole input is one group short of its width: a narrower group
                # computes the same kind of schedule on a smaller cache (one chunk: the
                # single-stream schedule), and the header records the width used
                self.streams = max(1, min(self.streams, self._texts_cut()))
            units += self._code_cut()
        if self._inflight:
            units += self._collect(wait_all=True)
        # all chunks known before the header is written: name no model if none is scheduled
        uses_model = any(c.scheduled for c in self.stats.chunks[first:])
        if self.version >= 4 and not self._started and len(units) == 1:
            # the whole input is one chunk: a one-chunk code, no container field, no end record
            self._started = True
            out.append(fmt.pack_one_chunk_stream(*self._names(uses_model), *units[0]))
        else:
            out.append(self._header(uses_model))
            out.append(self._pack(units))
            out.append(fmt.pack_end_record(self.stats.chunks, self.version, self._prefix))  # prefix: an empty stream
            self._prefix = b""
        self._finished = True
        return b"".join(out)


class LMZipDecompressor:
    """Decompresses one ``.lmz`` stream incrementally.

    Args:
        model: use this model (name, GGUF path or loaded model) instead of the one
            the header names; it must match the header's fingerprint.
        threads: CPU threads for the model (does not change the output).
        progress: called every few tokens with the running :class:`~lmzip.codec.Stats`.
        executor: a :class:`lmzip.parallel.Executor` that decodes groups on other
            workers, several at once (output stays in order); or a callable that
            returns one (or None) for the model the stream header names.

    Data after the end of the stream is kept in :attr:`unused_data`.
    """

    def __init__(self, model: ModelArg = None, *, threads: int | None = None,
                 progress: Progress | None = None, executor=None):
        self._model_arg = model
        self._threads = threads
        self.progress = progress
        self.stats = Stats()
        self.header: fmt.StreamHeader | None = None
        self.model: Model | None = None
        self._buf = bytearray()
        self._pending = bytearray()
        self._group: list[tuple[fmt.ChunkInfo, bytes]] = []  # a lockstep group being read
        self._executor_arg = executor
        self.executor = None if callable(executor) else executor
        # decoded or in flight, in order: (chunks, classic data, decoded or indices, future)
        self._outq: deque = deque()
        self._width = 1
        self._ended = False  # end record read
        self._prefix = b""  # version 4: the header, until the first record's CRC has covered it
        self.eof = False
        self.needs_input = True
        self.unused_data = b""

    def _step(self) -> bool:
        """Consume one unit (header, chunk or end record) if fully buffered."""
        buf = self._buf
        if self.header is None:
            peek = bytes(buf[:_HEADER_PEEK])
            size = fmt.header_need(peek)  # version 4: with the head of the first record
            if size is None or len(buf) < size:
                if size is None and len(buf) >= _HEADER_PEEK:
                    raise CorruptError("stream header is damaged (impossible size)")
                return False
            header = fmt.parse_header(peek[:size])
            self._width = stream_width(header)
            if not header.names_no_model:
                self.model = model_for_header(header, self._model_arg, threads=self._threads)
                if callable(self._executor_arg):  # an executor for this stream's model
                    self.executor = self._executor_arg(self.model)
            self.header = header
            if header.version >= 4:
                self._prefix = header.raw  # the first record's CRC covers the header
                del buf[: len(header.raw)]
            else:
                del buf[:size]
            return True
        version = self.header.version
        if self.header.chunk is not None:  # one chunk without a model: its payload follows the header
            size = self.header.chunk.payload_len
            if len(buf) < size:
                return False
            info, payload = fmt.one_chunk_record(self.header.chunk, bytes(buf[:size]))
            del buf[:size]
            self._emit([(info, payload)])
            self._ended = True
            return True
        at_end = fmt.is_end_record(buf, 0, version)
        if at_end is None:
            return False
        read = len(self.stats.chunks) + len(self._group)
        if at_end and self.header.one_chunk:
            raise CorruptError("stream header is damaged: it announces one chunk, but no chunk record follows")
        if at_end:
            head = bytes(buf[:_HEAD_PEEK])
            size = fmt.end_record_size(head, chunks_read=read, version=version)
            if size is None or len(buf) < size:
                return False
            chunks = self.stats.chunks + [info for info, _ in self._group]
            fmt.parse_end_record(bytes(buf[:size]), version=version, chunks=chunks, prefix=self._prefix)
            self._decode_group()
            del buf[:size]
            self._ended = True
            return True
        head = bytes(buf[:_HEAD_PEEK])
        head_size = fmt.chunk_head_size(head, 0, version)
        if head_size is None or len(buf) < head_size:
            return False
        info = fmt.parse_chunk_record(head[:head_size], 0, version, self._prefix)
        assert info is not None
        total = head_size + info.payload_len
        if len(buf) < total:
            return False
        self._prefix = b""
        payload = bytes(buf[head_size:total])
        del buf[:total]
        number = read
        if info.scheduled:
            if self.model is None:
                raise CorruptError(f"chunk {number} is coded by a model, but the stream header names none")
            if info.opens_group(version):
                self._decode_group()
            elif not self._group:
                raise CorruptError(f"chunk {number} continues a lockstep group that never started")
        elif info.method == fmt.METHOD_MODEL:
            raise CorruptError(f"chunk {number} is coded by a model but declares no tokens")
        if info.scheduled or self._group:
            self._group.append((info, payload))  # decoded with its group
            if sum(i.scheduled for i, _ in self._group) == self._width:
                self._decode_group()  # full: nothing more can join it
        else:
            self._emit([(info, payload)])
        if self.header.one_chunk:  # the stream's only chunk: no end record follows
            self._decode_group()
            self._ended = True
        return True

    def _decode_group(self) -> None:
        """Decode the lockstep group collected so far (and the unscheduled chunks among it)."""
        group, self._group = self._group, []
        if group:
            self._emit(group)

    def _emit(self, chunks: list[tuple[fmt.ChunkInfo, bytes]]) -> None:
        """Decode ``chunks`` (a group and the unscheduled chunks among it), or hand the
        group to the executor; the output is queued in order either way."""
        classic = {}
        for i, (info, payload) in enumerate(chunks):
            if info.method != fmt.METHOD_MODEL:
                classic[i] = decompress_classic(info, payload)
        scheduled = [i for i, (info, _) in enumerate(chunks) if info.scheduled]
        self.stats.chunks += [info for info, _ in chunks]
        if not any(chunks[i][0].method == fmt.METHOD_MODEL for i in scheduled):
            self._outq.append((chunks, classic, [], None))
        else:
            assert self.model is not None
            replay = {k: classic[i] for k, i in enumerate(scheduled) if i in classic}
            records = [chunks[i] for i in scheduled]
            ex = self.executor
            if ex is None or (ex.key is not None and ex.key != (self.model.model_sha256, self.model.params())):
                out = decompress_group(self.model, records, self.stats, self.progress, self._width, replay,
                                       self.header.version)
                self._outq.append((chunks, classic, list(zip(scheduled, out)), None))
            else:
                future = self.executor.submit_decompress(records, self._width, replay, self.header.version)
                self._outq.append((chunks, classic, scheduled, future))
        self._drain("bound")

    def _drain(self, wait: str) -> None:
        """Move finished output from the queue to ``_pending``, in order.  ``wait``: "none"
        (only what is done), "bound" (also wait until at most two groups per worker are
        in flight), "all"."""
        while self._outq:
            chunks, classic, decoded, future = self._outq[0]
            if future is not None:
                in_flight = sum(f is not None for *_, f in self._outq)
                must = wait == "all" or (wait == "bound" and in_flight > 2 * self.executor.workers)
                if not (must or future.done()):
                    return
                result = future.result()
                decoded = list(zip(decoded, result.out))
                self.stats.add_totals(result.stats)
            self._outq.popleft()
            done = dict(decoded)
            for i, (info, _) in enumerate(chunks):
                if i in classic:
                    self.stats.raw_bytes += info.raw_len
                    self.stats.payload_bytes += info.payload_len
                self._pending += done[i] if i in done else classic[i]
            if self.progress is not None:
                self.progress(self.stats)

    def decompress(self, data: bytes = b"", max_length: int = -1) -> bytes:
        """Feed ``data``; return up to ``max_length`` bytes of output (all if negative)."""
        if self.eof:
            raise EOFError("already at end of stream")
        if not self._ended:
            self._buf += memoryview(data).cast("B")
        else:
            self.unused_data += bytes(data)
        out = bytearray()
        stalled = False  # the next unit is not fully buffered yet
        while True:
            self._drain("all" if self._ended else "none")
            room = len(self._pending) if max_length < 0 else max_length - len(out)
            if room > 0 and self._pending:
                out += self._pending[:room]
                del self._pending[:room]
            if max_length >= 0 and len(out) >= max_length:
                break
            if self._ended:
                break
            if not self._step():
                stalled = True
                break
        if self._ended:
            if self._buf:
                self.unused_data += bytes(self._buf)
                self._buf.clear()
            if not self._pending and not self._outq:
                self.eof = True
        self.needs_input = not self.eof and not self._pending and stalled
        return bytes(out)


def stream_width(header: fmt.StreamHeader) -> int:
    """The stream's lockstep width (``params["streams"]``, 1 if absent), checked."""
    width = header.params.get("streams", 1)
    if type(width) is not int or not 1 <= width <= MAX_STREAMS:
        raise FormatError(f"stream header asks for {str(width)[:40]} lockstep streams "
                          f"(lmzip supports 1 to {MAX_STREAMS})")
    return width


def compress(data: bytes, *, model: ModelArg = None, context: int | None = None, threads: int | None = None,
             chunk_size: int | None = None, progress: Progress | None = None, method: str = "auto",
             mix=None, streams: int | None = None, executor=None, format_version: int = fmt.VERSION) -> bytes:
    """Compress ``data`` into one ``.lmz`` stream (see :class:`LMZipCompressor`)."""
    data = memoryview(data).cast("B")
    comp = LMZipCompressor(model, context=context, threads=threads, chunk_size=chunk_size, progress=progress,
                           method=method, mix=mix, streams=streams, executor=executor,
                           format_version=format_version, input_size=len(data))
    return comp.compress(data) + comp.flush()


def decompress(data: bytes, *, model: ModelArg = None, threads: int | None = None,
               progress: Progress | None = None, executor=None) -> bytes:
    """Decompress ``.lmz`` data; concatenated streams decompress to the concatenation."""
    return b"".join(iter_decompress(io.BytesIO(bytes(data)), model=model, threads=threads,
                                    progress=progress, read_size=max(1, len(data)), executor=executor))


def iter_decompress(fp: IO[bytes], *, model: ModelArg = None, threads: int | None = None,
                    progress: Progress | None = None, read_size: int = 1 << 16,
                    executor=None) -> Iterator[bytes]:
    """Decompress a file object of concatenated streams, yielding output as it is decoded.

    Raises :class:`TruncatedError` if the input ends inside a stream and
    :class:`FormatError` for anything but another stream after one ends.
    """
    done = Stats()  # totals of the streams already finished

    def report(st: Stats) -> None:
        assert progress is not None
        total = Stats()
        total.add_totals(done)
        total.add_totals(st)
        progress(total)

    d: LMZipDecompressor | None = None
    while True:
        if d is None or d.eof:
            raw = (d.unused_data if d is not None else b"") or fp.read(read_size)
            if not raw:
                if d is None:
                    raise TruncatedError("empty input is not an lmzip stream")
                return
            if d is not None:
                if not raw.startswith(fmt.MAGIC[: len(raw)]):
                    raise FormatError("trailing data after the end of the lmzip stream")
                done.add_totals(d.stats)
            d = LMZipDecompressor(model, threads=threads, progress=report if progress else None,
                                  executor=executor)
        else:
            raw = fp.read(read_size) if d.needs_input else b""
            if d.needs_input and not raw:
                raise TruncatedError("compressed data ended before the end of the lmzip stream")
        out = d.decompress(raw)
        if out:
            yield out


@dataclass(frozen=True)
class StreamInfo:
    """What ``lmzip info`` shows of one stream: read from its records, nothing decoded."""

    header: fmt.StreamHeader
    end: fmt.EndRecord
    compressed_size: int
    #: bytes of the header (version 4: without the first record, whose CRC covers it)
    header_size: int = 0
    #: where each chunk's record starts (from the start of the stream) and its head's size
    records: tuple[tuple[int, int], ...] = ()

    @property
    def payload_size(self) -> int:
        """Bytes of chunk payloads (the coded data itself)."""
        return sum(c.payload_len for c in self.end.chunks)

    @property
    def container_size(self) -> int:
        """Bytes of everything else: header, chunk heads and end record."""
        return self.compressed_size - self.payload_size


def scan_streams(fp: IO[bytes]) -> list[StreamInfo]:
    """Walk the streams of a seekable file from record to record, skipping payloads.

    Checks every header, chunk record and end record (CRCs, sizes, the index against
    the chunks) without running a model.
    """

    def peek(n: int) -> bytes:
        at = fp.tell()
        data = fp.read(n)
        fp.seek(at)
        return data

    origin = fp.tell()
    total = fp.seek(0, io.SEEK_END)
    fp.seek(origin)
    streams: list[StreamInfo] = []
    while True:
        start = fp.tell()
        head = peek(_HEADER_PEEK)
        if not head and streams:
            return streams
        if not head:
            raise TruncatedError("empty input is not an lmzip stream")
        if streams and not head.startswith(fmt.MAGIC[: len(head)]):
            raise FormatError("trailing data after the end of the lmzip stream")
        need = fmt.header_need(head)
        if need is None or len(head) < need:
            raise TruncatedError("input ends inside the lmzip stream header")
        header = fmt.parse_header(head[:need])
        version = header.version
        prefix = header.raw if version >= 4 else b""
        fp.seek(start + len(header.raw))
        chunks: list[fmt.ChunkInfo] = []
        records: list[tuple[int, int]] = []
        if header.chunk is not None:  # one chunk without a model: its head is the header's
            if fp.tell() + header.chunk.payload_len > total:
                raise TruncatedError("input ends inside a chunk payload")
            fp.seek(header.chunk.payload_len, io.SEEK_CUR)
            streams.append(StreamInfo(header=header, end=fmt.EndRecord((header.chunk,), header.chunk.raw_len),
                                      compressed_size=fp.tell() - start, header_size=len(header.raw),
                                      records=((len(header.raw), 0),)))
            continue
        while True:
            if header.one_chunk and chunks:  # no end record
                end = fmt.EndRecord(tuple(chunks), chunks[0].raw_len)
                break
            head = peek(_HEAD_PEEK)
            at_end = fmt.is_end_record(head, 0, version)
            if at_end is None:
                raise TruncatedError("input ends inside the lmzip stream (no end record)")
            if at_end and header.one_chunk:
                raise CorruptError("stream header is damaged: it announces one chunk, but no chunk record follows")
            if at_end:
                size = fmt.end_record_size(head, chunks_read=len(chunks), version=version)
                if size is None:
                    raise TruncatedError("input ends inside the end record")
                data = fp.read(size)
                if len(data) < size:
                    raise TruncatedError("input ends inside the end record")
                end = fmt.parse_end_record(data, version=version, chunks=chunks, prefix=prefix)
                break
            head_size = fmt.chunk_head_size(head, 0, version)
            if head_size is None or len(head) < head_size:
                raise TruncatedError("input ends inside a chunk header")
            info = fmt.parse_chunk_record(head[:head_size], 0, version, prefix)
            prefix = b""
            assert info is not None
            if info.method == fmt.METHOD_MODEL and header.names_no_model:
                raise CorruptError(f"chunk {len(chunks)} is coded by a model, but the stream header names none")
            records.append((fp.tell() - start, head_size))
            if fp.tell() + head_size + info.payload_len > total:
                raise TruncatedError("input ends inside a chunk payload")
            fp.seek(head_size + info.payload_len, io.SEEK_CUR)
            chunks.append(info)
        streams.append(StreamInfo(header=header, end=end, compressed_size=fp.tell() - start,
                                  header_size=len(header.raw), records=tuple(records)))
