"""Random access: decode only the chunks that cover a byte range of the original.

Chunks are independent except within a lockstep group, whose chunks were coded in
the same batches: a chunk that overlaps the range brings its whole group along.
The chunk table comes from walking the records (:func:`lmzip.core.scan_streams`:
headers, chunk heads and end records, payloads skipped), so the file must be seekable.
"""

from __future__ import annotations

import io
import os
from typing import IO

from . import format as fmt
from .classic import decompress_classic
from .codec import Progress, Stats, decompress_group
from .core import ModelArg, scan_streams, stream_width
from .errors import CorruptError, TruncatedError
from .predictors.registry import model_for_header

__all__ = ["decompress_range", "parse_range"]


def parse_range(text: str) -> tuple[int, int | None]:
    """``START:END`` (END exclusive; either may be empty: ``:100``, ``5000:``) -> (start, end)."""
    start_text, sep, end_text = text.partition(":")
    try:
        if not sep:
            raise ValueError
        start = int(start_text) if start_text else 0
        end = int(end_text) if end_text else None
    except ValueError:
        raise ValueError(f"range must be START:END in bytes (e.g. 1000:2000), not {text!r}") from None
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"range {text!r} is empty or negative")
    return start, end


def decompress_range(source: bytes | IO[bytes] | str | os.PathLike, start: int, end: int | None = None, *,
                     model: ModelArg = None, threads: int | None = None,
                     progress: Progress | None = None) -> bytes:
    """Bytes ``start`` to ``end`` (exclusive; ``None``: to the end) of the original data,
    decoding only the chunks (and lockstep groups) that cover them.

    ``source`` is compressed data, a seekable binary file object, or a path.  A range
    beyond the end is cut short, as slicing is.  Every decoded chunk is checked (length
    and CRC) as in a full decompression.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return decompress_range(f, start, end, model=model, threads=threads, progress=progress)
    fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    if start < 0 or (end is not None and end < start):
        raise ValueError("range must have 0 <= start <= end")
    origin = fp.tell()
    streams = scan_streams(fp)
    out = bytearray()
    offset = origin  # of the current stream in fp
    base = 0  # original bytes before the current stream
    stats = Stats()
    for s in streams:
        if end is not None and base >= end:
            break
        if base + s.end.original_len > start:
            out += _stream_range(fp, offset, s, start - base, None if end is None else end - base,
                                 model, threads, stats, progress)
        offset += s.compressed_size
        base += s.end.original_len
    return bytes(out)


def _stream_range(fp: IO[bytes], offset: int, s, start: int, end: int | None, model: ModelArg,
                  threads: int | None, stats: Stats, progress: Progress | None) -> bytes:
    header = s.header
    chunks = list(s.end.chunks)
    # where each chunk's record starts (and its head's size), and its first original byte
    at = [(offset + rel, size) for rel, size in s.records]
    raw_at = []
    raw = 0
    for c in chunks:
        raw_at.append(raw)
        raw += c.raw_len
    stop = raw if end is None else min(end, raw)
    wanted = [i for i, c in enumerate(chunks) if raw_at[i] < stop and raw_at[i] + c.raw_len > start]
    if not wanted:
        return b""
    group_of = _groups(header, chunks)
    lm = None
    width = stream_width(header)
    pieces: dict[int, bytes] = {}
    for i in wanted:
        if i in pieces:  # decoded with its group
            continue
        c = chunks[i]
        g = group_of.get(i)
        if g is None or all(chunks[k].method != fmt.METHOD_MODEL for k in g):
            pieces[i] = decompress_classic(c, _payload(fp, at[i], c, header, i))
            continue
        if lm is None:
            lm = model_for_header(header, model, threads=threads)
        records = [(chunks[k], _payload(fp, at[k], chunks[k], header, k)) for k in g]
        replay = {n: decompress_classic(info, payload) for n, (info, payload) in enumerate(records)
                  if info.method != fmt.METHOD_MODEL}
        for k, data in zip(g, decompress_group(lm, records, stats, progress, width, replay, header.version)):
            pieces[k] = data
    data = b"".join(pieces[i] for i in wanted)
    first = raw_at[wanted[0]]
    return data[start - first if start > first else 0 : stop - first]


def _groups(header: fmt.StreamHeader, chunks: list[fmt.ChunkInfo]) -> dict[int, list[int]]:
    """Chunk index -> the indices of its lockstep group (scheduled chunks only)."""
    groups: dict[int, list[int]] = {}
    current: list[int] | None = None
    for i, c in enumerate(chunks):
        if not c.scheduled:
            continue
        if c.opens_group(header.version):
            current = []
        elif current is None:
            raise CorruptError(f"chunk {i} continues a lockstep group that never started")
        current.append(i)
        groups[i] = current
    return groups


def _payload(fp: IO[bytes], record: tuple[int, int], info: fmt.ChunkInfo, header: fmt.StreamHeader,
             number: int) -> bytes:
    record_at, head_size = record
    fp.seek(record_at)
    if header.chunk is not None:  # one chunk without a model: the header is its head
        payload = fp.read(header.chunk.payload_len)
        if len(payload) != header.chunk.payload_len:
            raise TruncatedError("input ends inside a chunk payload")
        return fmt.one_chunk_record(header.chunk, payload)[1]
    head = fp.read(head_size)
    # version 4: the first record's CRC covers the header
    prefix = header.raw if header.version >= 4 and number == 0 else b""
    if fmt.parse_chunk_record(head, 0, header.version, prefix) != info:  # the index and the record agree
        raise CorruptError("chunk record does not match the index")
    payload = fp.read(info.payload_len)
    if len(payload) != info.payload_len:
        raise TruncatedError("input ends inside a chunk payload")
    return payload
