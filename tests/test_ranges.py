"""Random access: lmzip.decompress_range and ``lmzip decompress --range``."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lmzip
from lmzip import core
from lmzip import format as fmt
from lmzip.errors import CorruptError, TruncatedError
from lmzip.ranges import parse_range

from .conftest import corpus_slice
from .test_cli import FAST, assert_one_line_error, run
from .test_format import V2_ORDER1_STREAM
from .test_groups import BatchSensitive


def _data() -> bytes:
    rng = random.Random(3)
    noise = bytes(rng.randrange(256) for _ in range(3000))
    text = corpus_slice("alice29.txt", 1000, 5200)
    return text[:2600] + noise + text[2600:]


@pytest.fixture(scope="module")
def packed() -> bytes:
    # order-1 codes short text worse than LZMA: keep LZMA for the binary region only
    classic = core.compress_classic
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core, "compress_classic", lambda d, v: (fmt.METHOD_STORED, d) if d.isascii() else classic(d, v))
        packed = lmzip.compress(_data(), model=BatchSensitive(), chunk_size=500, streams=3)
    methods = [c.method for c in lmzip.core.scan_streams(io.BytesIO(packed))[0].end.chunks]
    assert fmt.METHOD_MODEL in methods and fmt.METHOD_LZMA in methods
    return packed


@given(st.integers(0, 9000), st.integers(0, 9000))
def test_any_range_matches_the_slice(packed, a, b):
    a, b = min(a, b), max(a, b)
    assert lmzip.decompress_range(packed, a, b, model=BatchSensitive()) == _data()[a:b]


def test_open_ended_and_empty_ranges(packed):
    data = _data()
    assert lmzip.decompress_range(packed, 7000, model=BatchSensitive()) == data[7000:]
    assert lmzip.decompress_range(packed, 0, model=BatchSensitive()) == data
    assert lmzip.decompress_range(packed, 50, 50, model=BatchSensitive()) == b""
    assert lmzip.decompress_range(packed, len(data) + 10, len(data) + 20, model=BatchSensitive()) == b""
    with pytest.raises(ValueError):
        lmzip.decompress_range(packed, 10, 5)


def test_only_the_groups_covering_the_range_are_decoded(packed):
    model = BatchSensitive()
    assert lmzip.decompress_range(packed, 100, 200, model=model) == _data()[100:200]
    whole = BatchSensitive()
    lmzip.decompress(packed, model=whole)
    first_group = len(model.log)
    assert 0 < first_group < len(whole.log) / 2
    # bytes inside the binary region: LZMA chunks only, no model at all
    binary = BatchSensitive()
    assert lmzip.decompress_range(packed, 2700, 2800, model=binary) == _data()[2700:2800]
    assert binary.log == []


def test_ranges_across_concatenated_streams_and_files(packed, tmp_path):
    two = packed + lmzip.compress(b"second stream " * 40, model=BatchSensitive(), streams=3)
    whole = _data() + b"second stream " * 40
    for a, b in [(8000, 8500), (8600, 8700), (0, len(whole))]:
        assert lmzip.decompress_range(two, a, b, model=BatchSensitive()) == whole[a:b]
    path = tmp_path / "two.lmz"
    path.write_bytes(two)
    assert lmzip.decompress_range(path, 8790, 8830, model=BatchSensitive()) == whole[8790:8830]


def test_version_2_files_support_ranges():
    data = b"abracadabra, abracadabra!"
    assert lmzip.decompress_range(bytes.fromhex(V2_ORDER1_STREAM), 4, 15) == data[4:15]


def test_damage_is_reported(packed):
    with pytest.raises(TruncatedError):
        lmzip.decompress_range(packed[:-10], 0, 100, model=BatchSensitive())
    hurt = bytearray(packed)
    at, head = lmzip.core.scan_streams(io.BytesIO(packed))[0].records[0]
    hurt[at + head + 3] ^= 0x40  # first payload
    with pytest.raises(CorruptError):
        lmzip.decompress_range(bytes(hurt), 0, 100, model=BatchSensitive())


@pytest.mark.parametrize("text, expected", [("1:2", (1, 2)), (":9", (0, 9)), ("5:", (5, None)), ("0:0", (0, 0))])
def test_parse_range(text, expected):
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["", "5", "a:b", "9:3", "-1:4", "1:2:3"])
def test_parse_range_refuses(text):
    with pytest.raises(ValueError):
        parse_range(text)


def test_cli_range(tmp_path):
    data = corpus_slice("alice29.txt", 0, 6000)
    src = tmp_path / "a.txt"
    src.write_bytes(data)
    run("compress", *FAST, "--chunk-size", "1000", str(src), check=0)
    lmz = str(tmp_path / "a.txt.lmz")
    assert run("decompress", "--range", "2500:3100", lmz, check=0).stdout == data[2500:3100]
    run("decompress", "--range", "10:20", "-o", str(tmp_path / "part"), lmz, check=0)
    assert (tmp_path / "part").read_bytes() == data[10:20]
    assert (tmp_path / "a.txt.lmz").exists() and src.exists()  # nothing removed or replaced
    with open(lmz, "rb") as f:
        assert run("decompress", "--range", "5990:", input=f.read(), check=0).stdout == data[5990:]
    for args, message in [(("--range", "9:3"), "empty or negative"), (("--range", "1:2", "--rm"), "--rm"),
                          (("--range", "x"), "START:END")]:
        proc = run("decompress", *args, lmz)
        assert proc.returncode == 2 and message in proc.stderr.decode() and b"Traceback" not in proc.stderr
    assert_one_line_error(run("decompress", "--range", "1:2", str(tmp_path / "missing.lmz")), code=1)
