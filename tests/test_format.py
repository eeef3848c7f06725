"""The .lmz container: golden vectors pin every byte of the v1 layout (docs/format.md)."""

import struct

import pytest

import lmzip
from lmzip import format as fmt
from lmzip.errors import CorruptError, FormatError, TruncatedError

SHA = bytes(range(32))
PARAMS = {"model": "x", "context": 16}

GOLDEN_HEADER = (
    "894c4d5a"  # magic
    "03"  # version
    "00"  # flags
    "1a00"  # params length 26
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"  # model sha256
    "7b22636f6e74657874223a31362c226d6f64656c223a2278227d"  # {"context":16,"model":"x"}
    "c4661452"  # CRC-32 of all the above
)
GOLDEN_CHUNK = (
    "05000000" "03000000" "08000000" "efbeadde"  # raw_len, n_tokens, payload_len, data crc
    "80"  # method: model (0), high bit: starts a lockstep group
    "c21fd94f"  # record CRC
    "0001020304050607"  # payload
)
GOLDEN_END = (
    "00000000" "02000000" "0700000000000000"  # end marker, 2 chunks, 7 bytes in all
    "050000000300000008000000efbeadde80"  # index entry 1 (starts a group)
    "0200000001000000040000000700000000"  # index entry 2 (same group)
    "67a7d8a5"  # CRC
    "3e000000" "4c4d5a45"  # size of this record (62), "LMZE"
)
_ORDER1_HEADER = (
    "894c4d5a03003a00" + "00" * 32
    # {"backend":"order1","chunk_size":1048576,"model":"order1"}
    + "7b226261636b656e64223a226f7264657231222c226368756e6b5f73697a65223a313034383537362c"
      "226d6f64656c223a226f7264657231227d" "2860c467"
)
# lmzip.compress(b"abracadabra, abracadabra!", model="order1"): a whole stream
GOLDEN_STREAM = (
    _ORDER1_HEADER
    + "1900000019000000140000008146f4c080f342c0db"  # 25 bytes, 25 tokens, 20 payload bytes, model, group start
    + "61726261e92232734caa52ad896f73e5c7974261"
    + "000000000100000019000000000000001900000019000000140000008146f4c0803074c3da"
    + "2d0000004c4d5a45"
)
# a stream whose chunks use no model: zero model_sha256, params {} (decompresses without a model)
_NO_MODEL_HEADER = "894c4d5a0300" "0200" + "00" * 32 + "7b7d" "c3e56519"
# lmzip.compress(bytes([7, 200, 33]), model="order1", method="classic"): a stored chunk
GOLDEN_STORED_STREAM = (
    _NO_MODEL_HEADER
    + "0300000000000000030000008f8244b5017880384e"  # 3 bytes, 0 tokens, 3 payload bytes, stored
    + "07c821"  # the bytes themselves
    + "000000000100000003000000000000000300000000000000030000008f8244b5013f2441ab"
    + "2d0000004c4d5a45"
)
# lmzip.compress(b"\0\1\2\3" * 16, model="order1", method="classic"): an LZMA chunk
GOLDEN_LZMA_STREAM = (
    _NO_MODEL_HEADER
    + "4000000000000000140000008e4f246002" "1b25931c"  # 64 bytes, 0 tokens, 20 payload bytes, lzma
    + "00" "5d"  # no BCJ filter; lc=3 lp=0 pb=2 ((2 * 5 + 0) * 9 + 3 = 93)
    + "e0003f000a5d000000525026c8f81b000000"  # raw LZMA2 (18 bytes; e0: LZMA2 chunk with new settings)
    + "00000000010000004000000000000000400000000000000014000000" "8e4f246002f6ac2a77"
    + "2d0000004c4d5a45"
)
# the same streams as lmzip 0.1 wrote them in format version 2 (no lockstep groups, no
# chunk size in the header): they must keep decompressing
V2_ORDER1_STREAM = (
    "894c4d5a020025000000000000000000000000000000000000000000000000000000000000000000"
    "7b226261636b656e64223a226f7264657231222c226d6f64656c223a226f7264657231227d656d0679"
    "1900000019000000140000008146f4c000d3c17836"
    "61726261e92232734caa52ad896f73e5c7974261"
    "000000000100000019000000000000001900000019000000140000008146f4c00010f77b37"
    "2d0000004c4d5a45"
)
V2_LZMA_STREAM = (
    "894c4d5a0200" "0200" + "00" * 32 + "7b7d" "2118ed94"
    "4000000000000000140000008e4f246002" "1b25931c" "005d" "e0003f000a5d000000525026c8f81b000000"
    "00000000010000004000000000000000400000000000000014000000" "8e4f246002f6ac2a77" "2d0000004c4d5a45"
)


def test_golden_header():
    assert fmt.pack_header(SHA, PARAMS).hex() == GOLDEN_HEADER
    h = fmt.parse_header(bytes.fromhex(GOLDEN_HEADER))
    assert h.model_sha256 == SHA and h.params == PARAMS and h.version == 3 and h.flags == 0
    assert fmt.header_size(bytes.fromhex(GOLDEN_HEADER)[:8]) == len(GOLDEN_HEADER) // 2


def test_golden_chunk_record():
    info = fmt.ChunkInfo(raw_len=5, n_tokens=3, payload_len=8, data_crc=0xDEADBEEF, starts_group=True)
    assert fmt.pack_chunk_record(info, bytes(range(8))).hex() == GOLDEN_CHUNK
    assert fmt.parse_chunk_record(bytes.fromhex(GOLDEN_CHUNK)) == info


def test_golden_end_record():
    chunks = [fmt.ChunkInfo(5, 3, 8, 0xDEADBEEF, starts_group=True), fmt.ChunkInfo(2, 1, 4, 7)]
    assert fmt.pack_end_record(chunks).hex() == GOLDEN_END
    end = fmt.parse_end_record(bytes.fromhex(GOLDEN_END))
    assert list(end.chunks) == chunks and end.original_len == 7


def test_golden_stream(order1):
    data = b"abracadabra, abracadabra!"
    packed = lmzip.compress(data, model=order1)
    assert packed.hex() == GOLDEN_STREAM
    assert lmzip.decompress(bytes.fromhex(GOLDEN_STREAM)) == data


@pytest.mark.parametrize("data, golden", [
    (b"abracadabra, abracadabra!", V2_ORDER1_STREAM),
    (b"\0\1\2\3" * 16, V2_LZMA_STREAM),
])
def test_version_2_streams_still_decompress(data, golden):
    assert fmt.parse_header(bytes.fromhex(golden)).version == 2
    assert lmzip.decompress(bytes.fromhex(golden)) == data


@pytest.mark.parametrize("data, golden", [
    (bytes([7, 200, 33]), GOLDEN_STORED_STREAM),
    (b"\0\1\2\3" * 16, GOLDEN_LZMA_STREAM),
])
def test_golden_classic_streams(order1, data, golden):
    assert lmzip.compress(data, model=order1, method="classic").hex() == golden
    assert lmzip.decompress(bytes.fromhex(golden)) == data
    assert lmzip.decompress(bytes.fromhex(golden), model="no-such-model") == data  # no model is loaded


def test_a_stream_names_no_model_only_when_no_chunk_uses_one(order1):
    def header(packed):
        return fmt.parse_header(packed)

    assert header(lmzip.compress(b"", model=order1)).names_no_model
    assert header(lmzip.compress(bytes(300), model=order1)).names_no_model  # one LZMA chunk
    assert not header(lmzip.compress(b"abracadabra, abracadabra!", model=order1)).names_no_model
    # chunks coded before flush() cannot know what follows: the header names the model
    assert not header(lmzip.compress(bytes(300), model=order1, chunk_size=100)).names_no_model
    assert header(lmzip.compress(bytes(300), model=order1, chunk_size=100, method="classic")).names_no_model
    # a model-coded chunk in a stream that names no model is damage
    forged = bytearray.fromhex(GOLDEN_STREAM)
    no_model = bytes.fromhex(_NO_MODEL_HEADER)
    forged[: len(bytes.fromhex(_ORDER1_HEADER))] = no_model
    with pytest.raises(CorruptError, match="coded by a model, but the stream header names none"):
        lmzip.decompress(bytes(forged))


def test_empty_input_is_header_and_end_record(order1):
    packed = lmzip.compress(b"", model=order1)
    assert packed.startswith(fmt.MAGIC)
    assert packed.endswith(fmt.END_MAGIC)
    assert lmzip.decompress(packed) == b""


def test_fingerprint_covers_file_and_settings():
    a = fmt.fingerprint(SHA, PARAMS)
    assert a != fmt.fingerprint(bytes(32), PARAMS)
    assert a != fmt.fingerprint(SHA, {**PARAMS, "context": 17})
    assert a == fmt.fingerprint(SHA, dict(reversed(list(PARAMS.items()))))  # canonical JSON


@pytest.mark.parametrize("cut", range(len(GOLDEN_HEADER) // 2))
def test_truncated_header(cut):
    with pytest.raises(TruncatedError):
        fmt.parse_header(bytes.fromhex(GOLDEN_HEADER)[:cut])


def test_header_errors():
    raw = bytearray.fromhex(GOLDEN_HEADER)
    with pytest.raises(FormatError, match="not an lmzip file"):
        fmt.parse_header(b"PK\x03\x04" + bytes(raw[4:]))
    for other in (1, 4):  # version 1 (before chunk methods) and future versions are refused
        future = bytearray(raw)
        future[4] = other
        with pytest.raises(FormatError, match=f"version {other}"):
            fmt.parse_header(bytes(future))
    flipped = bytearray(raw)
    flipped[50] ^= 0x10
    with pytest.raises(CorruptError, match="CRC"):
        fmt.parse_header(bytes(flipped))
    flags = bytearray(raw[:-4])
    flags[5] = 1
    flags += struct.pack("<I", fmt._crc(bytes(flags)))
    with pytest.raises(FormatError, match="flags"):
        fmt.parse_header(bytes(flags))


def test_header_params_must_be_a_json_object():
    body = fmt._FIXED.pack(fmt.MAGIC, fmt.VERSION, 0, 2, SHA) + b"[]"
    with pytest.raises(CorruptError, match="JSON object"):
        fmt.parse_header(body + struct.pack("<I", fmt._crc(body)))


def _chunk_head(raw_len, n_tokens, payload_len, crc=0, method=0):
    head = struct.pack("<IIIIB", raw_len, n_tokens, payload_len, crc, method)
    return head + struct.pack("<I", fmt._crc(head))


@pytest.mark.parametrize("fields, message", [
    ((fmt.MAX_CHUNK_SIZE + 1, 1, 4), "above the limit"),
    ((10, 11, 4), "tokens"),
    ((10, 0, 4), "tokens"),
    ((10, 5, 6), "impossible payload"),
    ((10, 5, 4 * 1000), "impossible payload"),
    ((10, 0, 10, 0, 3), "unknown coding method 3"),
    ((10, 0, 10, 0, 127), "unknown coding method 127"),
    ((10, 1, 4, 0, 255), "unknown coding method 127"),
    ((10, 0, 10, 0, fmt.METHOD_STORED | fmt.GROUP_START), "starts a lockstep group but declares no tokens"),
    ((10, 0, 8, 0, fmt.METHOD_MODEL | fmt.GROUP_START), "declares no tokens"),
    ((10, 0, 9, 0, fmt.METHOD_STORED), "stored chunk declares 9 payload bytes"),
    ((10, 0, 47, 0, fmt.METHOD_LZMA), "impossible payload"),
    ((10, 11, 8, 0, fmt.METHOD_LZMA), "11 tokens for 10 bytes"),
])
def test_chunk_records_with_impossible_sizes(fields, message):
    with pytest.raises(CorruptError, match=message):
        fmt.parse_chunk_record(_chunk_head(*fields))


def test_chunk_record_crc():
    raw = bytearray.fromhex(GOLDEN_CHUNK)
    raw[0] ^= 1
    with pytest.raises(CorruptError, match="CRC"):
        fmt.parse_chunk_record(bytes(raw))


def test_end_record_errors():
    raw = bytes.fromhex(GOLDEN_END)
    for cut in range(len(raw)):
        with pytest.raises((TruncatedError, CorruptError)):
            fmt.parse_end_record(raw[:cut])
    bad = bytearray(raw)
    bad[30] ^= 4
    with pytest.raises(CorruptError):
        fmt.parse_end_record(bytes(bad))


def test_pack_rejects_inconsistent_input():
    with pytest.raises(ValueError):
        fmt.pack_chunk_record(fmt.ChunkInfo(0, 0, 0, 0), b"")
    with pytest.raises(ValueError):
        fmt.pack_chunk_record(fmt.ChunkInfo(5, 3, 8, 0), b"1234")
    with pytest.raises(ValueError):
        fmt.pack_header(b"short", {})
