"""Damaged, truncated and foreign input: always an LMZipError subclass with a clear
message; never another exception, a hang, or output that differs from the original."""

import random
import struct

import pytest

import lmzip
from lmzip import format as fmt
from lmzip.errors import ChecksumError, CorruptError, FormatError, LMZipError, TruncatedError

from .conftest import corpus_slice

TEXT = (b"Alice was beginning to get very tired of sitting by her sister on the bank, "
        b"and of having nothing to do: once or twice she had peeped into the book.\n") * 3


VERSIONS = [3, 4]  # every check holds for the format written today and the one before


@pytest.fixture(scope="module", params=VERSIONS)
def packed(order1, request):
    return lmzip.compress(TEXT, model=order1, chunk_size=120, format_version=request.param)  # several chunks


def _first_payload(packed: bytes) -> int:
    """Offset of the first chunk's payload."""
    import io

    from lmzip.core import scan_streams

    at, head = scan_streams(io.BytesIO(packed))[0].records[0]
    return at + head


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
    first_payload = _first_payload(packed)
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
    old = lmzip.compress(b"third, older", model=order1, format_version=3)
    assert lmzip.decompress(packed + other + old + packed) == TEXT + b"second stream" + b"third, older" + TEXT


def _prefix(head: bytes, version: int) -> bytes:
    return head if version >= 4 else b""


@pytest.mark.parametrize("version", VERSIONS)
def test_forged_header_with_huge_sizes_does_not_allocate_or_hang(order1, version):
    head = fmt.pack_header(order1.model_sha256, order1.params(), version)
    # a valid-looking chunk that declares 1 GiB and 2**30 tokens, with a tiny payload
    huge = fmt.ChunkInfo(fmt.MAX_CHUNK_SIZE, fmt.MAX_CHUNK_SIZE, 8, 0, starts_group=True)
    forged = head + fmt.pack_chunk_record(huge, bytes(8), version, _prefix(head, version))
    with pytest.raises(CorruptError, match="more information than it holds"):
        lmzip.decompress(forged)  # 8 bytes cannot hold 2**30 tokens: stopped early
    # a decoder that reads garbage stops at the declared length, never runs on
    info = fmt.ChunkInfo(40, 40, 8, 0, starts_group=True)
    small = (head + fmt.pack_chunk_record(info, bytes(8), version, _prefix(head, version))
             + fmt.pack_end_record([info], version))
    with pytest.raises(CorruptError):
        lmzip.decompress(small)


def test_index_must_match_the_chunks(packed):
    version = packed[4]
    end_size = int.from_bytes(packed[-8:-4] if version < 4 else packed[-4:], "little")
    body = bytearray(packed[: len(packed) - end_size])
    info = lmzip.format.parse_end_record(packed, len(packed) - end_size, version)
    chunks = list(info.chunks)
    if version < 4:
        chunks[0] = fmt.ChunkInfo(chunks[0].raw_len, chunks[0].n_tokens, chunks[0].payload_len, 12345)
    else:  # the version 4 index has no data CRC
        chunks[0] = fmt.ChunkInfo(chunks[0].raw_len, chunks[0].n_tokens - 1, chunks[0].payload_len, 0,
                                  chunks[0].method, chunks[0].starts_group)
    with pytest.raises(CorruptError, match="index"):
        lmzip.decompress(bytes(body) + fmt.pack_end_record(chunks, version))


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_model_in_header(order1, version):
    params = {"backend": "llama.cpp", "model": "no-such-model", "context": 64}
    head = fmt.pack_header(bytes(32), params, version)
    data = head + fmt.pack_end_record([], version, _prefix(head, version))
    with pytest.raises(lmzip.ModelNotFoundError, match="no-such-model"):
        lmzip.decompress(data)


def test_llm_payload_damage_is_detected(llm):
    data = corpus_slice("alice29.txt", 5000, 600)
    packed = bytearray(lmzip.compress(data, model=llm))
    packed[_first_payload(bytes(packed)) + 3] ^= 0x40
    with pytest.raises((ChecksumError, CorruptError)):
        lmzip.decompress(bytes(packed))


# ---------------------------------------------------------------------------- forged fields
# Regression tests for what fuzzing and review found: each was a non-LMZipError, an
# allocation sized by a forged field, or a file opened because a header named it.


def _header(blob: bytes, version: int = 4, sha: bytes = bytes(32)) -> bytes:
    """A header whose params are ``blob`` (any bytes), and what makes its CRC check pass:
    version 3: nothing (its own CRC); version 4: an empty stream's end record."""
    if version < 4:
        head = struct.pack("<4sBBH32s", fmt.MAGIC, 3, 0, len(blob), sha) + blob
        return head + struct.pack("<I", fmt._crc(head))
    head = fmt.MAGIC + bytes([4, fmt.CODE_FULL, 0]) + sha + fmt.pack_varint(len(blob)) + blob
    return head + fmt.pack_end_record([], 4, head)


def _stream(order1, records: list[tuple[fmt.ChunkInfo, bytes]], version: int = 4) -> bytes:
    """A stream whose records all have valid CRCs, and a matching index."""
    if version >= 4:
        head = fmt.pack_header(order1.model_sha256, order1.params(), 4)
        out, prefix = [head], head
        for info, payload in records:
            out.append(fmt.pack_chunk_record(info, payload, 4, prefix))
            prefix = b""
        return b"".join(out) + fmt.pack_end_record([i for i, _ in records], 4, prefix)
    head = fmt.pack_header(order1.model_sha256, order1.params(), 3)
    body = b"".join(struct.pack("<IIIIB", i.raw_len, i.n_tokens, i.payload_len, i.data_crc, i.method) for i, _ in
                    records)
    chunks = b"".join(
        _sealed(struct.pack("<IIIIB", i.raw_len, i.n_tokens, i.payload_len, i.data_crc, i.method)) + p
        for i, p in records)
    end = struct.pack("<IIQ", 0, len(records), sum(i.raw_len for i, _ in records)) + body
    end = _sealed(end)
    return head + chunks + end + struct.pack("<I4s", len(end) + 8, fmt.END_MAGIC)


def _sealed(body: bytes) -> bytes:
    return body + struct.pack("<I", fmt._crc(body))


@pytest.mark.parametrize("version", VERSIONS)
def test_deeply_nested_header_json_is_corrupt_not_recursion_error(version):
    # was: RecursionError from json.loads (the header CRC was valid)
    with pytest.raises(CorruptError, match="not valid JSON"):
        lmzip.decompress(_header(b"[" * 60000, version) + bytes(4))


@pytest.mark.parametrize("version", VERSIONS)
def test_header_model_name_is_never_opened_as_a_path(monkeypatch, tmp_path, version):
    # was: the header's name was tried as a file path, hashed and handed to llama.cpp
    from lmzip.predictors import registry

    (tmp_path / "model.gguf").write_bytes(b"not a model")
    monkeypatch.setattr(registry, "file_sha256", lambda path: pytest.fail(f"opened {path}"))
    blob = fmt.canonical_json({"backend": "llama.cpp 0.3.36", "context": 64, "model": str(tmp_path / "model.gguf")})
    with pytest.raises(lmzip.ModelNotFoundError, match="not a known model name.*--model PATH.gguf"):
        lmzip.decompress(_header(blob, version) + bytes(4))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("context", [10**9, 2**40, -5, 0, 15, True, 2.5, "2048"])
def test_header_context_out_of_range_is_refused_before_any_model_is_built(monkeypatch, context, version):
    # was: a 10**9-token window reached llama.cpp, which sized its KV cache by it
    from lmzip.predictors import registry

    monkeypatch.setattr(registry, "load_model", lambda *a, **k: pytest.fail("a model was built"))
    blob = fmt.canonical_json({"backend": "llama.cpp 0.3.36", "context": context, "model": "smollm2-135m"})
    with pytest.raises(FormatError, match="context of"):
        lmzip.decompress(_header(blob, version) + bytes(4))


@pytest.mark.parametrize("version", VERSIONS)
def test_forged_index_count_is_refused_before_the_index_is_read(order1, tmp_path, version):
    # was: MemoryError in `lmzip info` (a 64 GiB read) and a TruncatedError from decompress
    from lmzip.core import scan_streams

    head = fmt.pack_header(order1.model_sha256, order1.params(), version)
    if version < 4:
        forged = head + struct.pack("<IIQ", 0, 2**32 - 1, 5)
    else:
        forged = head + b"\0" + fmt.pack_varint(2**32 - 1) + fmt.pack_varint(15 * (2**32 - 1))
    forged += bytes(64)
    path = tmp_path / "forged.lmz"
    path.write_bytes(forged)
    with open(path, "rb") as f, pytest.raises(CorruptError, match="lists 4294967295 chunks, the stream has 0"):
        scan_streams(f)
    with pytest.raises(CorruptError, match="lists 4294967295 chunks"):
        lmzip.decompress(forged)


def _lzma_info(raw: bytes, payload: bytes, raw_len: int | None = None) -> tuple[fmt.ChunkInfo, bytes]:
    import zlib

    return fmt.ChunkInfo(raw_len or len(raw), 0, len(payload), zlib.crc32(raw), fmt.METHOD_LZMA), payload


@pytest.mark.parametrize("payload, message", [
    (b"\x00", "too short"),
    (b"\x09\x5d\x00", "unknown filter 9"),
    (b"\x00\xff\x00", "invalid settings byte"),
    (b"\x00\x5d" + bytes(20), "damaged"),
])
def test_lzma_chunks_with_bad_settings_or_data(order1, payload, message):
    with pytest.raises(CorruptError, match=message):
        lmzip.decompress(_stream(order1, [_lzma_info(b"x" * 50, payload)]))


def test_lzma_chunk_longer_or_shorter_than_declared(order1):
    from lmzip.classic import compress_classic

    data = b"abcd" * 100 + bytes(range(200))
    method, payload = compress_classic(data)
    assert method == fmt.METHOD_LZMA
    assert lmzip.decompress(_stream(order1, [_lzma_info(data, payload)])) == data
    with pytest.raises(ChecksumError, match="longer than the declared 599"):
        lmzip.decompress(_stream(order1, [_lzma_info(data, payload, raw_len=599)]))
    with pytest.raises(ChecksumError, match="has 600 bytes, expected 601"):
        lmzip.decompress(_stream(order1, [_lzma_info(data, payload, raw_len=601)]))
    with pytest.raises(CorruptError, match="does not end where the payload ends"):
        lmzip.decompress(_stream(order1, [_lzma_info(data, payload + b"\x00")]))


def test_lzma_dictionary_is_bounded_whatever_the_declared_size(order1):
    from lmzip.classic import MAX_DICT, dict_size

    assert dict_size(fmt.MAX_CHUNK_SIZE) == MAX_DICT == 64 << 20
    assert dict_size(1) == 4096
    # a forged 1 GiB chunk with a tiny payload fails at once
    with pytest.raises(CorruptError):
        lmzip.decompress(_stream(order1, [_lzma_info(b"", b"\x00\x5d" + bytes(30), raw_len=fmt.MAX_CHUNK_SIZE)]))


def test_stored_chunk_is_checked(order1):
    import zlib

    info = fmt.ChunkInfo(5, 0, 5, zlib.crc32(b"hello"), fmt.METHOD_STORED)
    assert lmzip.decompress(_stream(order1, [(info, b"hello")])) == b"hello"
    with pytest.raises(ChecksumError, match="stored data does not match its CRC-32"):
        lmzip.decompress(_stream(order1, [(info, b"jello")]))
