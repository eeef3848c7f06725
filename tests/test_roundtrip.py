"""Round trips with the real default model (SmolLM2-135M, 128-token window) on real files
and edge cases; determinism across thread counts; cost against the model's cross-entropy."""

import pytest

import lmzip
from lmzip.codec import Stats
from lmzip.predictors.registry import load_model

from .conftest import TEST_CONTEXT, corpus_slice
from .test_tokenization import EDGE_CASES

# (file, offset, length): short slices of real text, each longer than the 128-token window
SLICES = [
    ("alice29.txt", 30_000, 1500),
    ("asyoulik.txt", 10_000, 1200),
    ("lcet10.txt", 100_000, 1200),
    ("plrabn12.txt", 50_000, 1200),
    ("cp.html", 2_000, 1200),
    ("fields.c", 1_000, 1200),
    ("xargs.1", 0, 1200),
    ("enwik6", 400_000, 1500),
    ("kennedy.xls", 10_000, 200),  # binary: coded through byte tokens and escapes
    ("ptt5", 0, 150),
]


@pytest.mark.parametrize("name, offset, length", SLICES, ids=[s[0] for s in SLICES])
def test_corpus_slices(llm, name, offset, length):
    data = corpus_slice(name, offset, length)
    packed = lmzip.compress(data, model=llm)
    assert lmzip.decompress(packed) == data  # model found from the header


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases(llm, name):
    data = EDGE_CASES[name]
    assert lmzip.decompress(lmzip.compress(data, model=llm), model=llm) == data


def test_window_slides_many_times_and_chunks_are_independent(llm):
    data = corpus_slice("alice29.txt", 60_000, 3000)  # ~800 tokens: slides ~25 times
    one = lmzip.compress(data, model=llm)
    many = lmzip.compress(data, model=llm, chunk_size=700)
    assert lmzip.decompress(one) == data
    assert lmzip.decompress(many) == data
    assert len(many) > len(one)  # each chunk starts from an empty context


def test_thread_count_does_not_change_the_output(llm):
    data = corpus_slice("enwik6", 200_000, 900)
    try:
        llm.threads = 1
        single = lmzip.compress(data, model=llm)
        llm.threads = 2
        double = lmzip.compress(data, model=llm)
        assert single == double
        assert lmzip.decompress(single, threads=2) == data
        llm.threads = 1
        assert lmzip.decompress(double, model=llm) == data
    finally:
        llm.threads = 2


def test_coded_size_within_one_percent_of_cross_entropy(llm):
    data = corpus_slice("alice29.txt", 80_000, 4000)
    stats = []
    comp = lmzip.LMZipCompressor(llm, progress=stats.append)
    packed = comp.compress(data) + comp.flush()
    st: Stats = comp.stats
    assert st.raw_bytes == len(data) and st.tokens > 900
    assert stats and stats[-1] is st  # progress reports the running totals
    payload_bits = 8 * st.payload_bytes
    assert st.model_bits <= payload_bits <= 1.01 * st.model_bits
    assert abs(st.coded_bits - st.model_bits) <= 0.005 * st.model_bits
    assert 0.5 < 8 * len(packed) / len(data) < 2.0  # a real LLM on English: roughly 1 bpb
    assert lmzip.decompress(packed) == data


def test_other_settings_are_a_clear_mismatch(llm):
    data = b"The same text, two windows."
    packed = lmzip.compress(data, model=llm, method="model")  # (auto might store it: no model named)
    other = load_model("smollm2-135m", context=TEST_CONTEXT * 2)
    with pytest.raises(lmzip.ModelMismatchError, match="context"):
        lmzip.decompress(packed, model=other)
    with pytest.raises(lmzip.ModelMismatchError):
        lmzip.decompress(packed, model="order1")
    with pytest.raises(lmzip.ModelMismatchError):
        lmzip.decompress(lmzip.compress(data, model="order1", method="model"), model=llm)


@pytest.mark.slow
def test_alice29_whole(llm):
    from .conftest import corpus_file

    data = corpus_file("alice29.txt").read_bytes()
    model = load_model("smollm2-135m")  # the default 2048-token window
    packed = lmzip.compress(data, model=model)
    assert lmzip.decompress(packed) == data
    assert 8 * len(packed) / len(data) < 1.2


@pytest.mark.parametrize("writer, reader", [("numpy", "c"), ("c", "numpy")])
def test_files_cross_cdf_backends(llm, writer, reader):
    from lmzip import cdf

    data = corpus_slice("lcet10.txt", 200_000, 700)
    try:
        cdf.set_backend(writer)
        packed = lmzip.compress(data, model=llm)
        cdf.set_backend(reader)
        assert lmzip.decompress(packed) == data
    finally:
        cdf.set_backend()
