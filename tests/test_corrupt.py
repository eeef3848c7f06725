"""Damaged, truncated and foreign input: always an LMZipError subclass with a clear
message; never another exception, a hang, or output that differs from the original."""

import random

import pytest

import lmzip
from lmzip import format as fmt
from lmzip.errors import ChecksumError, CorruptError, FormatError, LMZipError, TruncatedError

from .conftest import corpus_slice

TEXT = (b"Alice was beginning to get very tired of sitting by her sister on the bank, "
        b"and of having nothing to do: once or twice she had peeped into the book.\n") * 3


@pytest.fixture(scope="module")
def packed(order1):
    return lmzip.compress(TEXT, model=order1, chunk_size=120)  # several chunks


def decompress_or_error(data, model="order1"):
    """Returns the output, or the LMZipError raised; anything else fails the test."""
    try:
        return lmzip.decompress(data, model=model)
    except LMZipError as exc:
        assert str(exc)  # a message that says something
        return exc


def test_every_truncation_is_detected(packed):
    for cut in range(len(packed)):
        result = decompress_or_error(packed[:cut])
        assert isinstance(result, (TruncatedError, FormatError)), cut


def test_every_single_bit_flip_is_detected_or_harmless(packed):
    # flip one bit at every byte position, cycling through bit numbers
    for pos in range(len(packed)):
        bad = bytearray(packed)
        bad[pos] ^= 1 << (pos % 8)
        result = decompress_or_error(bytes(bad))
        assert result == TEXT or isinstance(result, LMZipError), pos
        if result == TEXT:
            # only possible where the bit is not information: never in headers or CRCs
            assert pos >= 4, pos


@pytest.mark.parametrize("seed", range(20))
def test_random_mutations(packed, seed):
    rng = random.Random(seed)
    bad = bytearray(packed)
    for _ in range(rng.randrange(1, 6)):
        op = rng.choice(["flip", "insert", "delete", "set"])
        pos = rng.randrange(len(bad))
        if op == "flip":
            bad[pos] ^= 1 << rng.randrange(8)
        elif op == "insert":
            bad[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == "delete":
            del bad[pos : pos + rng.randrange(1, 9)]
        else:
            bad[pos] = rng.randrange(256)
    result = decompress_or_error(bytes(bad))
    assert result == TEXT or isinstance(result, LMZipError)


def test_payload_damage_is_a_checksum_error(packed):
    # the first payload byte of the first chunk: the range decoder decodes garbage,
    # the CRC (or length) catches it
    first_payload = fmt.header_size(packed) + fmt.CHUNK_RECORD_SIZE
    bad = bytearray(packed)
    bad[first_payload] ^= 0xFF
    with pytest.raises((ChecksumError, CorruptError), match="damaged"):
        lmzip.decompress(bytes(bad))


def test_not_an_lmzip_file():
    for data in [b"hello world", b"\x1f\x8b\x08\x00" + bytes(20), b"\xfd7zXZ\x00", corpus_slice("sum", 0, 500)]:
        with pytest.raises(FormatError, match="not an lmzip file"):
            lmzip.decompress(data)


def test_empty_input():
    with pytest.raises(TruncatedError, match="empty"):
        lmzip.decompress(b"")


def test_trailing_garbage(packed):
    with pytest.raises(FormatError, match="trailing data"):
        lmzip.decompress(packed + b"garbage")


def test_concatenated_streams(packed, order1):
    other = lmzip.compress(b"second stream", model=order1)
    assert lmzip.decompress(packed + other + packed) == TEXT + b"second stream" + TEXT


def test_forged_header_with_huge_sizes_does_not_allocate_or_hang(order1):
    head = fmt.pack_header(order1.model_sha256, order1.params())
    # a valid-looking chunk that declares 1 GiB and 2**30 tokens, with a tiny payload
    forged = head + fmt.pack_chunk_record(fmt.ChunkInfo(fmt.MAX_CHUNK_SIZE, fmt.MAX_CHUNK_SIZE, 8, 0), bytes(8))
    with pytest.raises(CorruptError, match="more information than it holds"):
        lmzip.decompress(forged)  # 8 bytes cannot hold 2**30 tokens: stopped early
    # a decoder that reads garbage stops at the declared length, never runs on
    small = head + fmt.pack_chunk_record(fmt.ChunkInfo(40, 40, 8, 0), bytes(8)) + fmt.pack_end_record(
        [fmt.ChunkInfo(40, 40, 8, 0)])
    with pytest.raises(CorruptError):
        lmzip.decompress(small)


def test_index_must_match_the_chunks(packed):
    end_size = int.from_bytes(packed[-8:-4], "little")
    body = bytearray(packed[: len(packed) - end_size])
    info = lmzip.format.parse_end_record(packed, len(packed) - end_size)
    chunks = list(info.chunks)
    chunks[0] = fmt.ChunkInfo(chunks[0].raw_len, chunks[0].n_tokens, chunks[0].payload_len, 12345)
    with pytest.raises(CorruptError, match="index"):
        lmzip.decompress(bytes(body) + fmt.pack_end_record(chunks))


def test_unknown_model_in_header(order1):
    params = {"backend": "llama.cpp", "model": "no-such-model", "context": 64}
    data = fmt.pack_header(bytes(32), params) + fmt.pack_end_record([])
    with pytest.raises(lmzip.ModelNotFoundError, match="no-such-model"):
        lmzip.decompress(data)


def test_llm_payload_damage_is_detected(llm):
    data = corpus_slice("alice29.txt", 5000, 600)
    packed = bytearray(lmzip.compress(data, model=llm))
    packed[fmt.header_size(bytes(packed)) + fmt.CHUNK_RECORD_SIZE + 3] ^= 0x40
    with pytest.raises((ChecksumError, CorruptError)):
        lmzip.decompress(bytes(packed))
