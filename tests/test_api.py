"""The Python API: one-shot functions and incremental objects, in the shape of lzma."""

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lmzip
from lmzip.core import scan_streams

from .conftest import corpus_slice


@pytest.fixture(scope="module")
def data():
    return corpus_slice("asyoulik.txt", 0, 2500)


def test_compress_equals_compressor_plus_flush(order1, data):
    c = lmzip.LMZipCompressor(order1, chunk_size=1000)
    assert lmzip.compress(data, model=order1, chunk_size=1000) == c.compress(data) + c.flush()


@given(cuts=st.lists(st.integers(0, 2500), max_size=6))
def test_feeding_in_pieces_gives_the_same_bytes(order1, data, cuts):
    c = lmzip.LMZipCompressor(order1, chunk_size=700)
    out = b""
    prev = 0
    for cut in sorted(cuts) + [len(data)]:
        out += c.compress(data[prev:cut])
        prev = max(prev, cut)
    out += c.flush()
    assert out == lmzip.compress(data, model=order1, chunk_size=700)


def test_chunk_cuts_do_not_split_utf8(order1):
    text = ("é" * 1000).encode()
    packed = lmzip.compress(text, model=order1, chunk_size=101)
    chunks = scan_streams(io.BytesIO(packed))[0].end.chunks
    assert all(c.raw_len % 2 == 0 for c in chunks)
    assert lmzip.decompress(packed) == text


def test_decompressor_max_length_and_state(order1, data):
    packed = lmzip.compress(data, model=order1, chunk_size=1000)
    d = lmzip.LMZipDecompressor()
    assert d.needs_input and not d.eof
    out = d.decompress(packed[:10])
    assert out == b"" and d.needs_input
    out += d.decompress(packed[10:], max_length=100)
    assert len(out) == 100 and not d.needs_input and not d.eof
    while not d.eof:
        more = d.decompress(b"", max_length=333)
        assert len(more) <= 333
        out += more
    assert out == data and d.unused_data == b""
    with pytest.raises(EOFError):
        d.decompress(b"x")


def test_decompressor_byte_by_byte_and_unused_data(order1, data):
    packed = lmzip.compress(data[:300], model=order1)
    d = lmzip.LMZipDecompressor()
    out = b"".join(d.decompress(packed[i : i + 1]) for i in range(len(packed)))
    assert out == data[:300] and d.eof
    d = lmzip.LMZipDecompressor()
    assert d.decompress(packed + b"next") == data[:300]
    assert d.eof and d.unused_data == b"next"


def test_compressor_misuse(order1):
    c = lmzip.LMZipCompressor(order1)
    c.flush()
    with pytest.raises(ValueError):
        c.compress(b"more")
    with pytest.raises(ValueError):
        c.flush()
    with pytest.raises(ValueError):
        lmzip.LMZipCompressor(order1, chunk_size=0)
    with pytest.raises(TypeError):
        lmzip.compress("text, not bytes", model=order1)


def test_unknown_model():
    with pytest.raises(lmzip.ModelNotFoundError, match="unknown model"):
        lmzip.compress(b"x", model="no-such-model")


def test_accepts_bytes_like(order1):
    raw = bytearray(b"bytes-like input")
    assert lmzip.decompress(lmzip.compress(memoryview(raw), model=order1)) == bytes(raw)


def test_stats(order1, data):
    c = lmzip.LMZipCompressor(order1, chunk_size=1000)
    packed = c.compress(data) + c.flush()
    s = c.stats
    assert s.raw_bytes == len(data) == s.tokens
    assert len(s.chunks) == 3 and sum(ch.raw_len for ch in s.chunks) == len(data)
    assert s.payload_bytes < len(packed)
    assert 0 < s.model_bpb < 8


def test_errors_are_one_hierarchy():
    for cls in [lmzip.FormatError, lmzip.CorruptError, lmzip.ChecksumError, lmzip.TruncatedError,
                lmzip.ModelMismatchError, lmzip.ModelNotFoundError]:
        assert issubclass(cls, lmzip.LMZipError)
    assert issubclass(lmzip.TruncatedError, EOFError)
    assert issubclass(lmzip.ChecksumError, lmzip.CorruptError)


def test_scan_streams_reads_records_without_decoding(order1, data):
    one = lmzip.compress(data, model=order1, chunk_size=1000)
    two = lmzip.compress(b"tail", model=order1)
    streams = scan_streams(io.BytesIO(one + two))
    assert [s.end.original_len for s in streams] == [len(data), 4]
    assert [s.compressed_size for s in streams] == [len(one), len(two)]
    assert streams[0].header.params["model"] == "order1"
    for cut in [5, 60, len(one) // 2, len(one) - 3]:
        with pytest.raises(lmzip.TruncatedError):
            scan_streams(io.BytesIO(one[:cut]))
    with pytest.raises(lmzip.FormatError, match="trailing"):
        scan_streams(io.BytesIO(one + b"junk"))
