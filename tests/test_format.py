"""The .lmz container: golden vectors pin every byte of versions 3 and 4 (docs/format.md),
and version 2 files still decode."""

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
    assert fmt.pack_header(SHA, PARAMS, 3).hex() == GOLDEN_HEADER
    h = fmt.parse_header(bytes.fromhex(GOLDEN_HEADER))
    assert h.model_sha256 == SHA and h.params == PARAMS and h.version == 3 and h.flags == 0
    assert fmt.header_size(bytes.fromhex(GOLDEN_HEADER)[:8]) == len(GOLDEN_HEADER) // 2


def test_golden_chunk_record():
    info = fmt.ChunkInfo(raw_len=5, n_tokens=3, payload_len=8, data_crc=0xDEADBEEF, starts_group=True)
    assert fmt.pack_chunk_record(info, bytes(range(8)), 3).hex() == GOLDEN_CHUNK
    assert fmt.parse_chunk_record(bytes.fromhex(GOLDEN_CHUNK), 0, 3) == info


def test_golden_end_record():
    chunks = [fmt.ChunkInfo(5, 3, 8, 0xDEADBEEF, starts_group=True), fmt.ChunkInfo(2, 1, 4, 7)]
    assert fmt.pack_end_record(chunks, 3).hex() == GOLDEN_END
    end = fmt.parse_end_record(bytes.fromhex(GOLDEN_END), 0, 3)
    assert list(end.chunks) == chunks and end.original_len == 7


def test_golden_stream(order1):
    data = b"abracadabra, abracadabra!"
    packed = lmzip.compress(data, model=order1, format_version=3)
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
    assert lmzip.compress(data, model=order1, method="classic", format_version=3).hex() == golden
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
    # version 4: the no-model header is 6 bytes; the chunk's CRC covers it
    head = fmt.pack_header(bytes(32), fmt.NO_MODEL_PARAMS)
    info = fmt.ChunkInfo(25, 25, 20, 0, starts_group=True)
    forged = head + fmt.pack_chunk_record(info, bytes(20), 4, head) + fmt.pack_end_record([info])
    with pytest.raises(CorruptError, match="coded by a model, but the stream header names none"):
        lmzip.decompress(forged)


def test_empty_input_is_header_and_end_record(order1):
    packed = lmzip.compress(b"", model=order1, format_version=3)
    assert packed.startswith(fmt.MAGIC)
    assert packed.endswith(fmt.END_MAGIC)
    assert lmzip.decompress(packed) == b""
    packed = lmzip.compress(b"", model=order1)
    assert packed.hex() == V4_EMPTY_STREAM
    assert lmzip.decompress(packed) == b""


# ---------------------------------------------------------------------------- version 4

# fmt.pack_header(SHA, PARAMS) + the end record of an empty stream: a model no code names
V4_FULL_HEADER = (
    "894c4d5a" "04"  # magic, version 4
    "00"  # model code 0: the SHA-256 and the JSON follow in full
    "00"  # container varint: streams - 1 + 64 * chunk field (0: 1 MiB)
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"  # model sha256
    "1a" "7b22636f6e74657874223a31362c226d6f64656c223a2278227d"  # varint 26, {"context":16,"model":"x"}
)
V4_FULL_EMPTY_END = "00" "00" "e353cd89"  # end marker, 0 chunks, CRC-32 of the header and these 2 bytes
# Version 4 streams as lmzip wrote them before the one-chunk codes (they keep decoding):
# lmzip.compress(b"abracadabra, abracadabra!", model="order1"): 42 bytes (version 3: 194)
V4_ORDER1_STREAM = (
    "894c4d5a" "04" "02" "00"  # magic, version, code 2 (order1), container: 1 stream, 1 MiB chunks
    "26f3915a"  # check: the first 4 bytes of the model fingerprint (SHA-256 of sha256 + params JSON)
    "cc01" "19" "11"  # tag 204 = 25 << 3 | group start (4) | model (0); 25 tokens; 17 payload bytes
    "8146f4c0"  # CRC-32 of the 25 bytes
    "2ab57736"  # CRC-32 of the header and this record head
    "61627261733222e9ad52aa4ce5736f8962"  # the coder's number, big-endian, cut after its last non-zero byte
    "00" "01"  # end record: marker, 1 chunk (no index: the chunk read is the whole table)
)
# lmzip.compress(bytes([7, 200, 33]), model="order1", method="classic"): no model at all
V4_STORED_STREAM = (
    "894c4d5a" "04" "01"  # code 1: no chunk is coded by a model (nothing else in the header)
    "19" "00" "03"  # tag 25 = 3 << 3 | stored (1); 0 tokens; 3 payload bytes
    "8f8244b5" "bb873df2"  # data CRC, CRC of the header and the record head
    "07c821"  # the bytes themselves
    "0001"
)
# lmzip.compress(b"\0\1\2\3" * 16, model="order1", method="classic")
V4_LZMA_STREAM = (
    "894c4d5a" "04" "01"
    "8204" "00" "14" "8e4f2460" "4fdacf4b"  # tag 514 = 64 << 3 | lzma (2); 0 tokens; 20 bytes
    "00" "5d" "e0003f000a5d000000525026c8f81b000000"  # no BCJ, lc=3 lp=0 pb=2, raw LZMA2 (as in version 3)
    "0001"
)
# The same inputs as the compressor writes them now, each the whole input in one chunk:
# a one-chunk code, no container field, no end record
V4_ONE_ORDER1_STREAM = (
    "894c4d5a" "04" "82"  # code 2 (order1) with the one-chunk flag 0x80: no container field
    "26f3915a"  # check, as above
    "cc01" "19" "11" "8146f4c0"  # the same chunk head
    "862b4cf8"  # CRC-32 of the header and this record head
    "61627261733222e9ad52aa4ce5736f8962"  # the same payload; the stream ends here: 39 bytes
)
V4_ONE_STORED_STREAM = (
    "894c4d5a" "04" "08"  # code 8: one stored chunk, no model; its head is in the header
    "03" "8f8244b5"  # raw_len 3, data CRC (no record CRC: the data CRC checks every field)
    "07c821"  # the bytes: 14 bytes in all
)
V4_ONE_LZMA_STREAM = (
    "894c4d5a" "04" "09"  # code 9: one LZMA chunk, no model
    "40" "14" "8e4f2460"  # raw_len 64, payload_len 20, data CRC
    "00" "5d" "e0003f000a5d000000525026c8f81b000000"
)
# lmzip.compress(b"", model="order1"): no chunk, so no model
V4_EMPTY_STREAM = "894c4d5a" "04" "01" "00" "00" "2d6d38e5"
# lmzip.compress(b"abracadabra, abracadabra! " * 3, model="ngram", chunk_size=30): three chunks and an index
V4_NGRAM_STREAM = (
    "894c4d5a" "04" "03" "800f"  # code 3 (ngram, mix b1); container 1920 = 64 * 30: 30-byte chunks, 1 stream
    "87013a21"  # check
    "f401" "1e" "1d" "0a8f58a3" "dd2f129a"  # 30 bytes (group start, model), 30 tokens, 29 payload bytes
    "6162726161cb00fffe1ffee4ac07fd045bae5b823c60eb8c98758e3360"
    "f401" "1e" "1d" "4efd38c2" "5f2efabd"
    "6361646160e8feb9bf35420af024817da137cd84261653a7dbbb6fc3e0"
    "9401" "12" "12" "e5c54834" "bddd7053"  # the last 18 bytes
    "6272612c1f00421100da0ea0cfe051cdfa57"
    "00" "03" "0c"  # end record: marker, 3 chunks, 12 bytes of index
    "f4011e1d" "f4011e1d" "94011212"  # tag, n_tokens, payload_len of each chunk
    "92bdb217"  # CRC-32 of the end record up to here
    "17000000"  # size of the end record (23), for readers that start from the end
)
# the header of a default file (smollm2-135m through llama.cpp 0.3.36, context 2048, mix m2)
V4_DEFAULT_HEADER = "894c4d5a" "04" "04" "00" "dc681eb0"


def test_version_4_golden_header_with_the_settings_in_full():
    head = fmt.pack_header(SHA, PARAMS)
    assert head.hex() == V4_FULL_HEADER
    assert fmt.pack_end_record([], 4, head).hex() == V4_FULL_EMPTY_END
    data = bytes.fromhex(V4_FULL_HEADER + V4_FULL_EMPTY_END)
    h = fmt.parse_header(data)
    assert h.version == 4 and h.code == fmt.CODE_FULL and h.model_sha256 == SHA and h.check == b""
    assert h.params == {**PARAMS, "chunk_size": 1 << 20}
    assert h.raw == head and fmt.header_size(data) == len(head) and fmt.header_need(data) == len(data)


def test_version_4_golden_default_header():
    params = {"backend": "llama.cpp 0.3.36", "context": 2048, "mix": "m2", "model": "smollm2-135m"}
    sha, preset = fmt.PRESETS[4]
    assert preset == params
    head = fmt.pack_header(sha, {**params, "chunk_size": 1 << 20})
    assert head.hex() == V4_DEFAULT_HEADER  # 11 bytes instead of 139
    assert head[-4:] == fmt.fingerprint(sha, params)[:4]
    h = fmt.parse_header(head + fmt.pack_end_record([], 4, head))
    assert h.code == 4 and h.model_sha256 == sha and h.params == {**params, "chunk_size": 1 << 20}
    # other settings: written in full; a width and chunk size: in the container varint
    wider = fmt.parse_header(bytes.fromhex(V4_FULL_HEADER + V4_FULL_EMPTY_END))
    assert wider.code == fmt.CODE_FULL
    head = fmt.pack_header(sha, {**params, "context": 1024, "streams": 8, "chunk_size": 1000})
    h = fmt.parse_header(head + fmt.pack_end_record([], 4, head))
    assert h.code == fmt.CODE_FULL and h.params == {**params, "context": 1024, "streams": 8, "chunk_size": 1000}
    head = fmt.pack_header(sha, {**params, "streams": 8, "chunk_size": 1 << 20})
    assert len(head) == 11 and fmt.parse_header(head + fmt.pack_end_record([], 4, head)).params["streams"] == 8


def test_preset_codes_are_frozen():
    """A code means these settings forever: a new default gets a new code."""
    frozen = {
        2: ("00" * 32, '{"backend":"order1","model":"order1"}'),
        3: ("00" * 32, '{"backend":"ngram","mix":"b1","model":"ngram"}'),
        4: ("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            '{"backend":"llama.cpp 0.3.36","context":2048,"mix":"m2","model":"smollm2-135m"}'),
        5: ("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            '{"backend":"llama.cpp 0.3.36","context":2048,"mix":"m2","model":"gemma3-270m"}'),
        6: ("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            '{"backend":"portable 1","context":2048,"mix":"m2","model":"smollm2-135m"}'),
        7: ("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            '{"backend":"portable 1","context":2048,"mix":"m2","model":"gemma3-270m"}'),
    }
    assert {c: (sha.hex(), fmt.canonical_json(p).decode()) for c, (sha, p) in fmt.PRESETS.items()} == frozen
    assert fmt.CODE_FULL == 0 and fmt.CODE_NO_MODEL == 1


@pytest.mark.parametrize("data, golden, kwargs", [
    (b"abracadabra, abracadabra!", V4_ORDER1_STREAM, {}),
    (bytes([7, 200, 33]), V4_STORED_STREAM, {"method": "classic"}),
    (b"\0\1\2\3" * 16, V4_LZMA_STREAM, {"method": "classic"}),
    (b"", V4_EMPTY_STREAM, {}),
])
def test_version_4_golden_streams_from_before_the_one_chunk_codes_still_decode(order1, data, golden, kwargs):
    assert lmzip.decompress(bytes.fromhex(golden)) == data
    assert lmzip.decompress(bytes.fromhex(golden) * 2) == data * 2
    if data:  # the empty stream is still written so
        assert lmzip.compress(data, model=order1, **kwargs).hex() != golden


@pytest.mark.parametrize("data, golden, kwargs", [
    (b"abracadabra, abracadabra!", V4_ONE_ORDER1_STREAM, {}),
    (bytes([7, 200, 33]), V4_ONE_STORED_STREAM, {"method": "classic"}),
    (b"\0\1\2\3" * 16, V4_ONE_LZMA_STREAM, {"method": "classic"}),
    (b"", V4_EMPTY_STREAM, {}),
])
def test_version_4_golden_streams(order1, data, golden, kwargs):
    assert lmzip.compress(data, model=order1, **kwargs).hex() == golden
    assert lmzip.decompress(bytes.fromhex(golden)) == data
    assert lmzip.decompress(bytes.fromhex(golden) * 3) == data * 3  # concatenated streams


def test_one_chunk_streams_have_one_chunk(order1):
    """A one-chunk code promises exactly one chunk: what follows it is another stream or
    nothing, and a record where its chunk should be is damage."""
    import io

    from lmzip.core import scan_streams

    one = bytes.fromhex(V4_ONE_ORDER1_STREAM)
    [s] = scan_streams(io.BytesIO(one))
    assert s.header.one_chunk and s.header.params == fmt.PRESETS[2][1] and len(s.end.chunks) == 1
    assert s.container_size == 22 and s.payload_size == 17 and s.end.original_len == 25
    with pytest.raises(FormatError, match="trailing data"):
        lmzip.decompress(one + b"\x00\x01")  # an end record after it is not a stream
    [s] = scan_streams(io.BytesIO(bytes.fromhex(V4_ONE_STORED_STREAM)))
    assert s.header.chunk == fmt.ChunkInfo(3, 0, 3, 0xB544828F, fmt.METHOD_STORED)
    assert s.container_size == 11 and s.end.original_len == 3
    from lmzip.ranges import decompress_range  # random access needs no index here

    assert decompress_range(one, 3, 9) == b"abracadabra, abracadabra!"[3:9]
    assert decompress_range(bytes.fromhex(V4_ONE_LZMA_STREAM) * 2, 60, 70) == (b"\0\1\2\3" * 32)[60:70]
    # writing: the whole input in one chunk gets a one-chunk code, a longer one does not
    assert lmzip.compress(b"abc" * 10, model=order1, chunk_size=30)[5] == 0x82
    assert lmzip.compress(b"abc" * 11, model=order1, chunk_size=30)[5] == 0x02
    assert lmzip.compress(b"abc" * 10, model=order1, format_version=3)[4] == 3


def test_one_chunk_classic_streams_catch_damage_by_their_data_crc():
    """No record CRC: a damaged field or payload byte makes other data, which the data
    CRC (or the LZMA decoder, or the length) refuses; the output is never wrong (a few
    LZMA settings bits, such as an unused filter, change nothing)."""
    for golden, original in ((V4_ONE_STORED_STREAM, bytes([7, 200, 33])), (V4_ONE_LZMA_STREAM, b"\0\1\2\3" * 16)):
        data = bytes.fromhex(golden)
        caught = 0
        for pos in range(5, len(data)):
            for bit in (0x01, 0x80):
                bad = bytearray(data)
                bad[pos] ^= bit
                try:
                    assert lmzip.decompress(bytes(bad)) == original
                except (CorruptError, FormatError, TruncatedError):
                    caught += 1
        assert caught >= 2 * (len(data) - 5) - 3  # all but the harmless LZMA bits
        for cut in range(len(data)):
            with pytest.raises(TruncatedError):
                lmzip.decompress(data[:cut])


def test_one_chunk_model_streams_check_their_header_with_the_record_crc():
    data = bytes.fromhex(V4_ONE_ORDER1_STREAM)
    for pos in range(4, 22):  # the header and the record head: one CRC covers both
        bad = bytearray(data)
        bad[pos] ^= 0x20
        with pytest.raises((CorruptError, FormatError, TruncatedError)):
            lmzip.decompress(bytes(bad))
    for cut in range(len(data)):
        with pytest.raises(TruncatedError):
            lmzip.decompress(data[:cut])
    for code in (0x81, 0x88, 0x8A, 11, 0xFF):  # no model or classic with the flag; unknown
        bad = bytearray(data)
        bad[5] = code
        with pytest.raises(FormatError, match=f"unknown model code {code}"):
            fmt.parse_header(bytes(bad))


def test_version_4_golden_stream_with_an_index():
    data = b"abracadabra, abracadabra! " * 3
    assert lmzip.compress(data, model="ngram", chunk_size=30).hex() == V4_NGRAM_STREAM
    packed = bytes.fromhex(V4_NGRAM_STREAM)
    assert lmzip.decompress(packed) == data
    from lmzip.ranges import decompress_range

    assert decompress_range(packed, 25, 65) == data[25:65]
    # the index can be read from the end of the file
    end_size = int.from_bytes(packed[-4:], "little")
    end = fmt.parse_end_record(packed, len(packed) - end_size, 4)
    assert [(c.raw_len, c.n_tokens, c.payload_len) for c in end.chunks] == [(30, 30, 29), (30, 30, 29), (18, 18, 18)]
    assert end.original_len == len(data)


def test_version_4_costs_little(order1):
    """The container of a one-chunk file: 29 bytes at most, whatever the chunk's size."""
    import io

    from lmzip.core import scan_streams

    sizes = {}
    for n in (1, 100, 5000):
        packed = lmzip.compress(b"abracadabra! " * n, model=order1, method="model")
        s = scan_streams(io.BytesIO(packed))[0]
        assert len(s.end.chunks) == 1
        sizes[n] = s.container_size
    assert sizes[1] == 21 and max(sizes.values()) <= 29, sizes
    # the largest one-chunk file: 1 MiB of text, about 2**20 tokens and payload bytes
    sha, params = fmt.PRESETS[6]
    big = fmt.ChunkInfo(1 << 20, 1 << 20, 3 << 20, 0, starts_group=True)
    assert len(fmt.pack_one_chunk_stream(sha, params, big, bytes(3 << 20))) - (3 << 20) <= 29
    # before the one-chunk codes: 3 bytes more (the container field and the end record)
    head = fmt.pack_header(sha, params)
    record = fmt.pack_chunk_record(big, bytes(3 << 20), 4, head)
    assert len(head) + len(record) - (3 << 20) + len(fmt.pack_end_record([big])) <= 32


def test_version_4_header_errors():
    data = bytearray.fromhex(V4_ORDER1_STREAM)
    for pos in range(4, 23):  # the header and the first record head: one CRC covers both
        bad = bytearray(data)
        bad[pos] ^= 0x20
        with pytest.raises((CorruptError, FormatError, TruncatedError)):
            lmzip.decompress(bytes(bad))
    bad = bytearray(data)
    bad[5] = 99
    with pytest.raises(FormatError, match="unknown model code 99"):
        fmt.parse_header(bytes(bad))
    for cut in range(23):
        with pytest.raises(TruncatedError):
            fmt.parse_header(bytes(data[:cut]))
    # numbers have one encoding only: a padded varint is damage, not another file
    with pytest.raises(CorruptError, match="non-shortest"):
        fmt.parse_header(bytes(data[:6]) + b"\x80\x00" + bytes(data[7:]))


# groups wider than 64: the WIDE flag 0x40 on the code, then chunk and streams - 65 (varints)
V4_WIDE_HEADERS = {
    # width: header of ngram (code 3, mix b1) with 1 MiB chunks, then with 65,536-byte chunks
    64: ("894c4d5a" "04" "03" "3f" "87013a21", "894c4d5a" "04" "03" "bf808002" "87013a21"),  # as always
    65: ("894c4d5a" "04" "43" "00" "00" "87013a21", "894c4d5a" "04" "43" "808004" "00" "87013a21"),
    200: ("894c4d5a" "04" "43" "00" "8701" "87013a21", "894c4d5a" "04" "43" "808004" "8701" "87013a21"),
    1024: ("894c4d5a" "04" "43" "00" "bf07" "87013a21", "894c4d5a" "04" "43" "808004" "bf07" "87013a21"),
}
NGRAM = {"backend": "ngram", "mix": "b1", "model": "ngram"}


@pytest.mark.parametrize("width", sorted(V4_WIDE_HEADERS))
def test_version_4_wide_headers(width):
    for chunk, golden in zip((1 << 20, 65536), V4_WIDE_HEADERS[width]):
        params = {**NGRAM, "streams": width, "chunk_size": chunk}
        head = fmt.pack_header(bytes(32), params)
        assert head.hex() == golden
        assert bool(head[5] & fmt.WIDE) == (width > fmt.NARROW_STREAMS)  # only above 64
        data = head + fmt.pack_end_record([], 4, head)
        h = fmt.parse_header(data)
        assert h.params == params and h.raw == head and fmt.header_need(data) == len(data)


def test_version_4_narrow_headers_are_written_as_before():
    """Up to 64 streams the container is the one varint lmzip always wrote."""
    for width in (1, 2, 8, 63, 64):
        for chunk in (1 << 20, 1, 1000, 65536, fmt.MAX_CHUNK_SIZE):
            head = fmt.pack_header(bytes(32), {**NGRAM, "streams": width, "chunk_size": chunk})
            field = fmt.pack_varint((width - 1) + 64 * (0 if chunk == 1 << 20 else chunk))
            assert head == bytes.fromhex("894c4d5a0403") + field + bytes.fromhex("87013a21")


def test_version_4_wide_header_errors():
    with pytest.raises(ValueError, match="between 1 and 1024"):
        fmt.pack_header(bytes(32), {**NGRAM, "streams": fmt.MAX_STREAMS + 1})

    def stream(code: int, container: bytes) -> bytes:
        head = bytes.fromhex("894c4d5a04") + bytes([code]) + container + bytes.fromhex("87013a21")
        return head + fmt.pack_end_record([], 4, head)

    # a width above the limit with a good CRC: written by a newer lmzip, refused by name
    with pytest.raises(FormatError, match="1025 lockstep streams .* 1 to 1024"):
        fmt.parse_header(stream(0x43, b"\x00" + fmt.pack_varint(1025 - 65)))
    with pytest.raises(FormatError, match="lockstep streams"):
        lmzip.decompress(stream(0x43, b"\x00" + fmt.pack_varint(1 << 40)))
    # the flag where no container is (one chunk, no model, one classic chunk): no code
    for code in (0xC3, 0xC0, 0x41, 0x48, 0x49, 0x4A):
        with pytest.raises(FormatError, match=f"unknown model code {code}"):
            fmt.parse_header(stream(code, b"\x00\x00"))
    # a damaged width (or flag) is caught by the CRC of the first record, which covers the header
    good = stream(0x43, b"\x00\x87\x01")
    assert fmt.parse_header(good).params["streams"] == 200
    for pos, bit in ((5, 0x40), (7, 0x01), (8, 0x01), (8, 0x40)):
        bad = bytearray(good)
        bad[pos] ^= bit
        with pytest.raises((CorruptError, TruncatedError)):
            fmt.parse_header(bytes(bad))
    for cut in range(len(good)):
        with pytest.raises(TruncatedError):
            fmt.parse_header(good[:cut])
    with pytest.raises(CorruptError, match="non-shortest"):  # one encoding per width
        fmt.parse_header(stream(0x43, b"\x00\x80\x00"))


@pytest.mark.parametrize("tag, message", [
    (0 << 3 | 1, "zero bytes"),
    (10 << 3 | 3, "run chunk declares 10 payload bytes"),
    (10 << 3 | 4 | 1, "starts a lockstep group but declares no tokens"),
])
def test_version_4_chunk_records_with_impossible_fields(tag, message):
    head = fmt.pack_varint(tag) + b"\x00\x0a" + bytes(4)
    head += struct.pack("<I", fmt._crc(head))
    with pytest.raises(CorruptError, match=message):
        fmt.parse_chunk_record(head, 0, 4)


def test_version_4_model_payloads_need_not_be_whole_words():
    info = fmt.ChunkInfo(10, 5, 3, 0, starts_group=True)
    record = fmt.pack_chunk_record(info, b"abc", 4)
    assert fmt.parse_chunk_record(record, 0, 4) == info
    with pytest.raises(ValueError):
        fmt.pack_chunk_record(info, b"abc", 3)


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
    for other in (1, 5):  # version 1 (before chunk methods) and future versions are refused
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
    body = fmt._FIXED.pack(fmt.MAGIC, 3, 0, 2, SHA) + b"[]"
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
        fmt.parse_chunk_record(_chunk_head(*fields), 0, 3)


def test_chunk_record_crc():
    raw = bytearray.fromhex(GOLDEN_CHUNK)
    raw[0] ^= 1
    with pytest.raises(CorruptError, match="CRC"):
        fmt.parse_chunk_record(bytes(raw), 0, 3)


def test_end_record_errors():
    raw = bytes.fromhex(GOLDEN_END)
    for cut in range(len(raw)):
        with pytest.raises((TruncatedError, CorruptError)):
            fmt.parse_end_record(raw[:cut], 0, 3)
    bad = bytearray(raw)
    bad[30] ^= 4
    with pytest.raises(CorruptError):
        fmt.parse_end_record(bytes(bad), 0, 3)


@pytest.mark.parametrize("version", [3, 4])
def test_pack_rejects_inconsistent_input(version):
    with pytest.raises(ValueError):
        fmt.pack_chunk_record(fmt.ChunkInfo(0, 0, 0, 0), b"", version)
    with pytest.raises(ValueError):
        fmt.pack_chunk_record(fmt.ChunkInfo(5, 3, 8, 0), b"1234", version)
    with pytest.raises(ValueError):
        fmt.pack_header(b"short", {}, version)


def test_llama_cpp_presets_keep_the_kernels_in_their_check():
    """Codes 4 and 5 leave llama.cpp's kernel family out of the header, not out of the check."""
    sha, preset = fmt.PRESETS[4]
    mine = {**preset, "kernels": "x86_64 avx avx2 f16c fma"}
    head = fmt.pack_header(sha, {**mine, "chunk_size": 1 << 20})
    assert len(head) == 11 and head[5] == 4
    h = fmt.parse_header(head + fmt.pack_end_record([], 4, head))
    assert h.params == {**preset, "chunk_size": 1 << 20}  # the kernels are not spelled out
    assert h.check == fmt.model_check(sha, mine)
    assert h.check != fmt.model_check(sha, {**preset, "kernels": "x86_64 avx avx2 avx512 amx_int8"})
