"""Run chunks (method 3, version 4): a chunk that is one byte repeated (issue 18: the
4,096 zero bytes at the start of Canterbury's ptt5 took 56 bytes by LZMA, brotli 13)."""

import struct

import pytest

import lmzip
from lmzip import format as fmt
from lmzip.classic import compress_classic, decompress_classic
from lmzip.errors import ChecksumError, CorruptError, LMZipError, TruncatedError

# 4,096 zero bytes (the ptt5 slice) and 100 bytes 0xff, as lmzip writes them: pinned.
# The whole input is one run chunk: code 10, raw_len, data CRC, the byte (13 bytes; brotli 13)
ZEROS_4096 = "894c4d5a" "04" "0a" "8020" "11001cc7" "00"
FF_100 = "894c4d5a" "04" "0a" "64" "8186d203" "ff"
# as lmzip wrote them before the one-chunk codes (code 1, a chunk record, an end record):
# they keep decoding
ZEROS_4096_RECORD = "894c4d5a0401838002000011001cc7264b32670001"
FF_100_RECORD = "894c4d5a0401a30600018186d2031c7acc11ff0001"


@pytest.mark.parametrize("data, golden", [(bytes(4096), ZEROS_4096), (b"\xff" * 100, FF_100)])
def test_golden_run_streams(data, golden):
    assert lmzip.compress(data, model="order1").hex() == golden
    assert lmzip.compress(data, model="order1", method="classic").hex() == golden
    assert lmzip.decompress(bytes.fromhex(golden)) == data
    assert lmzip.decompress(bytes.fromhex(golden), model="no-such-model") == data  # no model loaded


@pytest.mark.parametrize("data, golden", [(bytes(4096), ZEROS_4096_RECORD), (b"\xff" * 100, FF_100_RECORD)])
def test_run_streams_from_before_the_one_chunk_codes_still_decode(data, golden):
    assert lmzip.decompress(bytes.fromhex(golden)) == data
    assert lmzip.decompress(bytes.fromhex(golden) + bytes.fromhex(ZEROS_4096)) == data + bytes(4096)


@pytest.mark.parametrize("data", [b"a", b"\0", b"\0" * 3, b"z" * 5000, bytes([200]) * 70000])
def test_runs_round_trip(data):
    method, payload = compress_classic(data)
    assert method == fmt.METHOD_RUN and len(payload) == (data[0] != 0)
    assert lmzip.decompress(lmzip.compress(data, model="order1")) == data
    packed = lmzip.compress(data, model="order1", method="classic")
    assert lmzip.decompress(packed) == data
    assert len(packed) <= 15  # magic, version, code 10, raw_len (1 to 3 bytes here), data CRC, the byte


@pytest.mark.parametrize("data", [b"ab", b"\0" * 10 + b"\1", b"\1" + b"\0" * 10])
def test_almost_runs_are_not_runs(data):
    assert compress_classic(data)[0] != fmt.METHOD_RUN
    assert lmzip.decompress(lmzip.compress(data, model="order1")) == data


def test_runs_inside_a_longer_file():
    data = bytes(3 * 4096) + b"some text after the zeros, long enough to be text. " * 200
    packed = lmzip.compress(data, model="order1", chunk_size=4096)
    assert lmzip.decompress(packed) == data
    from io import BytesIO

    from lmzip.core import scan_streams
    methods = [c.method for c in scan_streams(BytesIO(packed))[0].end.chunks]
    assert methods[:3] == [fmt.METHOD_RUN] * 3


def test_version_3_writes_no_runs():
    data = bytes(4096)
    assert compress_classic(data, version=3)[0] == fmt.METHOD_LZMA
    packed = lmzip.compress(data, model="order1", format_version=3)
    assert lmzip.decompress(packed) == data
    info = fmt.ChunkInfo(4096, 0, 0, 0, fmt.METHOD_RUN)
    with pytest.raises(ValueError, match="unknown coding method 3"):
        fmt.pack_chunk_record(info, b"", version=3)
    with pytest.raises(CorruptError, match="unknown coding method 3"):
        fmt.validate_chunk_info(info, version=3)


def _record(raw_len, payload, crc):
    head = fmt.pack_varint(raw_len << 3 | fmt.METHOD_RUN) + b"\0" + fmt.pack_varint(len(payload))
    head += struct.pack("<I", crc)
    prefix = fmt.pack_header(bytes(32), {})
    return prefix + head + struct.pack("<I", fmt._crc(prefix + head)) + payload + b"\0\1"


def test_run_payload_of_a_zero_byte_is_damage():
    import zlib
    packed = _record(10, b"\0", zlib.crc32(bytes(10)))
    with pytest.raises(CorruptError, match="written as none"):
        lmzip.decompress(packed)
    with pytest.raises(CorruptError, match="at most 1"):
        fmt.parse_chunk_record(_record(10, b"ab", 0), 6, 4, fmt.pack_header(bytes(32), {}))


@pytest.mark.parametrize("golden, byte_at", [(FF_100_RECORD, -3), (FF_100, -1), (ZEROS_4096, -1)])
def test_damaged_run_streams_give_clear_errors(golden, byte_at):
    good = bytes.fromhex(golden)
    for pos in range(len(good)):
        for flip in (0x01, 0x80):
            bad = bytearray(good)
            bad[pos] ^= flip
            with pytest.raises(LMZipError):
                lmzip.decompress(bytes(bad))
    # the payload byte itself: no record CRC covers it, the data CRC does
    bad = bytearray(good)
    bad[byte_at] = 0xFE
    with pytest.raises(ChecksumError, match="does not match its CRC-32"):
        lmzip.decompress(bytes(bad))
    bad = bytearray(good)  # another length: the data CRC again
    if golden == FF_100:
        bad[6] = 0x65
        with pytest.raises(ChecksumError, match="does not match its CRC-32"):
            lmzip.decompress(bytes(bad))
    for cut in range(len(good)):
        with pytest.raises(TruncatedError):
            lmzip.decompress(good[:cut])


def test_decompress_classic_checks_the_length_and_crc():
    import zlib
    info = fmt.ChunkInfo(5, 0, 1, zlib.crc32(b"xxxxx"), fmt.METHOD_RUN)
    assert decompress_classic(info, b"x") == b"xxxxx"
    with pytest.raises(ChecksumError):
        decompress_classic(info, b"y")
