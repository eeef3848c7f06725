"""lmzip capacity: the formula, the samples, the FLOPs it divides by."""

from __future__ import annotations

import doctest
import importlib
import math
import subprocess
import sys

import pytest

from lmzip.measure import capacity, corpora
from lmzip.measure.flops import SMOLLM2_135M, Architecture, average_flops


def test_formula():
    # L = 8 bits/byte * 4 bytes/token = 32; NLL = 4; C = 2^28 FLOPs: (32 - 4 + 0) / 28 = 1
    assert capacity.information_capacity(32.0, 4.0, 2.0**28) == pytest.approx(1.0)
    assert capacity.information_capacity(32.0, 4.0, 2.0**28, bias=-7.0) == pytest.approx(0.75)


@pytest.mark.llm
def test_measure_smollm2_on_short_samples(llm):
    texts = [corpora.corpus_file("alice29.txt"), corpora.corpus_file("lcet10.txt")]
    row = capacity.measure("smollm2-135m", texts, samples=3, sample_tokens=32)
    assert (row.samples, row.tokens) == (3, 96)
    assert row.flops_per_token == average_flops(Architecture.from_metadata(SMOLLM2_135M), 32)
    assert row.text_bits_per_token == pytest.approx(8 * row.bytes / 96)
    assert 2.5 < row.bytes / row.tokens < 6  # English through a BPE vocabulary
    assert 0.5 < row.bpb < 3
    expected = (row.text_bits_per_token - row.nll_bits_per_token) / math.log2(row.flops_per_token)
    assert row.capacity == pytest.approx(expected)


def test_capacity_needs_a_gguf_model():
    p = subprocess.run([sys.executable, "-m", "lmzip", "capacity", "-m", "order1"], capture_output=True, text=True)
    assert p.returncode == 1 and "no FLOPs to count" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("module", ["capacity"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"lmzip.measure.{module}"))
    assert result.attempted and not result.failed
