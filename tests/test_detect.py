"""Text/binary detection (lmzip/detect.py), the classic coder (lmzip/classic.py) and how
the compressor uses them: binary regions never reach the model, no binary Canterbury file
comes out larger than ``xz -9e``, and mixed files round-trip."""

from __future__ import annotations

import io
import lzma
import random

import pytest

import lmzip
from lmzip import detect
from lmzip import format as fmt
from lmzip.classic import compress_classic, decompress_classic
from lmzip.core import LMZipCompressor, scan_streams

from .conftest import corpus_file, corpus_slice

XZ_9E = 9 | lzma.PRESET_EXTREME


def chunks_of(packed: bytes) -> list[fmt.ChunkInfo]:
    return [c for s in scan_streams(io.BytesIO(packed)) for c in s.end.chunks]


def test_text_fraction():
    assert detect.text_fraction(b"plain text,\ttabs and\r\nline ends\x0c") == 1.0
    assert detect.text_fraction("Größe, 大きさ, размер — ∑".encode()) == 1.0
    assert detect.text_fraction(bytes(100)) == 0.0  # NULs are not text
    assert detect.text_fraction(b"\xff\xfe" * 50) == 0.0  # not UTF-8
    assert detect.text_fraction(random.Random(1).randbytes(4096)) < 0.5
    assert detect.text_fraction(b"") == 1.0
    strings = b"int:t1=r1;-2147483648;2147483647;\x00char:t2=r2;0;127;\x00" * 60  # a string table
    assert detect.text_fraction(strings) > 0.95 and not detect.is_text(strings)


@pytest.mark.parametrize("name, text", [
    ("alice29.txt", True), ("asyoulik.txt", True), ("cp.html", True), ("fields.c", True),
    ("grammar.lsp", True), ("lcet10.txt", True), ("plrabn12.txt", True), ("xargs.1", True),
    ("kennedy.xls", False), ("ptt5", False), ("sum", False),
])
def test_canterbury_files_are_one_region_of_their_kind(name, text):
    data = corpus_file(name).read_bytes()[: 1 << 20]
    assert detect.first_region(data) == (len(data), text)


def test_region_boundaries_are_exact():
    text = corpus_slice("alice29.txt", 0, 20_000)
    binary = corpus_slice("kennedy.xls", 1, 20_000)  # starts with a NUL (byte 0 is a tab)
    for n in (20_000, 18_000, 16_384, 12_500):  # wherever the boundary falls in a block
        assert detect.first_region(text[:n] + binary) == (n, True)
        cut, kind = detect.first_region(binary[:n] + text)
        assert not kind and n - 8 <= cut <= n  # the spreadsheet may end in printable bytes
    assert detect.first_region(binary[:5000] + text) == (5000, False)
    # text shorter than MIN_TEXT_BLOCKS blocks before binary goes with the binary
    assert detect.first_region(text[:5000] + binary) == (25_000, False)
    assert detect.first_region(text[:100]) == (100, True)
    assert detect.first_region(binary[:100]) == (100, False)
    # a short text run between binary blocks stays with the binary
    assert detect.first_region(binary[:8192] + text[:4096] + binary[:8192]) == (20480, False)


def test_mixed_file_round_trips_with_each_region_coded_its_way(order1):
    text = corpus_slice("alice29.txt", 0, 30_000)
    binary = corpus_slice("kennedy.xls", 1, 40_000)
    data = text + binary + text[:9000] + random.Random(2).randbytes(10_000) + text[:12_000]
    comp = LMZipCompressor(order1, chunk_size=1 << 20)
    packed = comp.compress(data) + comp.flush()
    assert lmzip.decompress(packed) == data
    chunks = chunks_of(packed)
    # regions: text, spreadsheet, text, random (stored; its boundary with the text before is
    # at a 4 kB block), text
    assert chunks[0].raw_len == 30_000 and 39_998 <= chunks[1].raw_len <= 40_000  # its last bytes are printable
    assert chunks[1].method == fmt.METHOD_LZMA
    assert any(c.method == fmt.METHOD_STORED and c.raw_len >= 8192 for c in chunks[2:])
    assert sum(c.raw_len for c in chunks) == len(data)
    assert comp.stats.payload_bytes == sum(c.payload_len for c in chunks)


def test_chunks_do_not_depend_on_how_the_input_is_fed(order1):
    text = corpus_slice("alice29.txt", 0, 9000)
    data = text + corpus_slice("kennedy.xls", 0, 9000) + text
    one_shot = lmzip.compress(data, model=order1, chunk_size=5000)
    rng = random.Random(3)
    comp = LMZipCompressor(order1, chunk_size=5000)
    out, pos = [], 0
    while pos < len(data):
        step = rng.randrange(1, 3000)
        out.append(comp.compress(data[pos : pos + step]))
        pos += step
    assert b"".join(out) + comp.flush() == one_shot
    assert lmzip.decompress(one_shot) == data


def test_model_chunks_never_come_out_larger_than_the_classic_coder(order1):
    # the order-1 model loses to LZMA on repetitive text: the safety net keeps LZMA
    data = b"the same sentence, over and over again. " * 200
    auto = chunks_of(lmzip.compress(data, model=order1))
    model = chunks_of(lmzip.compress(data, model=order1, method="model"))
    assert [c.method for c in auto] == [fmt.METHOD_LZMA] and model[0].method == fmt.METHOD_MODEL
    assert auto[0].payload_len < model[0].payload_len
    assert len(compress_classic(data)[1]) == auto[0].payload_len


def test_method_model_and_classic(order1):
    data = corpus_slice("kennedy.xls", 0, 5000) + b"text " * 100
    for method, allowed in (("model", {fmt.METHOD_MODEL}), ("classic", {fmt.METHOD_LZMA, fmt.METHOD_STORED})):
        packed = lmzip.compress(data, model=order1, method=method, chunk_size=2000)
        assert {c.method for c in chunks_of(packed)} <= allowed
        assert lmzip.decompress(packed) == data
    with pytest.raises(ValueError, match="method"):
        LMZipCompressor(order1, method="xz")


def test_classic_coder_choices():
    noise = random.Random(4).randbytes(50_000)
    assert compress_classic(noise) == (fmt.METHOD_STORED, noise)  # incompressible: stored
    elf = corpus_file("sum").read_bytes()
    method, payload = compress_classic(elf)
    assert method == fmt.METHOD_LZMA and payload[0] == 2  # a SPARC executable gets the SPARC filter
    assert len(payload) < len(lzma.compress(elf, preset=XZ_9E)) - 100
    info = fmt.ChunkInfo(len(elf), 0, len(payload), __import__("zlib").crc32(elf), method)
    assert decompress_classic(info, payload) == elf


def test_llm_never_runs_on_binary_files(monkeypatch, order1):
    from lmzip import core

    monkeypatch.setattr(core, "compress_group", lambda *a, **k: pytest.fail("the model ran"))
    data = corpus_slice("ptt5", 0, 100_000)
    assert lmzip.decompress(lmzip.compress(data, model=order1)) == data


@pytest.mark.parametrize("name", ["kennedy.xls", "ptt5", "sum"])
def test_binary_canterbury_files_beat_xz_9e(name):
    """Whole files, with the default model (which never runs on them: the streams name no
    model; sum's NUL-separated string tables stay with its code)."""
    from lmzip.predictors.registry import load_model

    data = corpus_file(name).read_bytes()
    packed = lmzip.compress(data, model=load_model("smollm2-135m"))
    xz = len(lzma.compress(data, preset=XZ_9E))
    print(f"{name}: {len(data)} bytes, lmzip {len(packed)}, xz -9e {xz}")
    assert len(packed) < xz
    assert lmzip.decompress(packed) == data
