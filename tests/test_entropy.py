"""lmzip entropy: the model's cross-entropy without coding, against what compressing measures."""

from __future__ import annotations

import doctest
import importlib
import json
import subprocess
import sys

import pytest

import lmzip
from lmzip.measure.entropy import cross_entropy, split_chunks

from .conftest import corpus_slice


def test_order1_matches_the_compressors_own_count_exactly(order1):
    data = corpus_slice("fields.c", 0, 5000)
    comp = lmzip.LMZipCompressor(order1, chunk_size=1800)  # three chunks, three fresh streams
    comp.compress(data)
    comp.flush()
    r = cross_entropy(order1, data, chunk_size=1800)
    assert (r.raw_bytes, r.tokens) == (5000, comp.stats.tokens)
    assert r.bits == pytest.approx(comp.stats.model_bits, rel=1e-9)
    assert [len(c) for c in split_chunks(data, 1800)] == [c.raw_len for c in comp.stats.chunks]


def test_chunks_are_not_cut_inside_a_utf8_character():
    data = "é".encode() * 5  # 10 bytes, 2 per character
    assert [len(c) for c in split_chunks(data, 3)] == [2, 2, 2, 2, 2]
    assert split_chunks(b"", 4) == []


@pytest.mark.llm
def test_batched_llm_estimate_is_within_a_fraction_of_a_percent(llm):
    # small window (128 tokens): the window slides several times; an escape byte (0x04) and
    # invalid UTF-8 cost what they cost when coding
    data = corpus_slice("alice29.txt", 10_000, 700) + b"\x04\xff" + corpus_slice("alice29.txt", 20_000, 200)
    comp = lmzip.LMZipCompressor(llm)
    comp.compress(data)
    comp.flush()
    r = cross_entropy(llm, data)
    assert r.tokens == comp.stats.tokens and r.raw_bytes == len(data)
    assert r.bits == pytest.approx(comp.stats.model_bits, rel=0.01)


def _lmzip(*args):
    return subprocess.run([sys.executable, "-m", "lmzip", *args], capture_output=True, text=True)


def test_cli_entropy(tmp_path, order1):
    path = tmp_path / "f.txt"
    path.write_bytes(corpus_slice("xargs.1", 0, 3000))
    p = _lmzip("entropy", "-m", "order1", "--json", str(path), "--limit-bytes", "2500")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert (doc["bytes"], doc["tokens"], doc["model"]) == (2500, 2500, "order1")
    assert doc["bpb"] == pytest.approx(cross_entropy(order1, path.read_bytes()[:2500]).bpb)
    p = _lmzip("entropy", "-m", "order1", str(path))
    assert p.returncode == 0 and "bits/byte" in p.stdout and "estimate" in p.stdout
    p = _lmzip("entropy", "-m", "order1", str(tmp_path / "missing.txt"))
    assert p.returncode == 1 and "missing.txt: no such file" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("module", ["entropy"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"lmzip.measure.{module}"))
    assert result.attempted and not result.failed
