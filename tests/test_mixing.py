"""The online models and the mixer: feature arithmetic, settings in the header, round
trips with the byte model and with the LLM, and determinism pinned by golden files."""

import hashlib
import math

import numpy as np
import pytest

import lmzip
from lmzip import cdf
from lmzip.errors import FormatError
from lmzip.mixing import BYTE_MIX, DEFAULT_MIX, NO_MIX, PRESETS, MixedModel, MixSettings
from lmzip.predictors.ngram import COUNT_BUCKETS, NGramStats, ln_table
from lmzip.predictors.registry import load_model

from .conftest import TEST_CONTEXT, corpus_slice


def test_ln_table_is_the_natural_log():
    t = ln_table()
    for c in (1, 2, 3, 10, 49_152, 262_144):
        assert t[c] == pytest.approx(math.log(c), rel=1e-15, abs=1e-15)
    assert t[1] == 0.0 and t[2] == 0.6931471805599453


def test_ngram_features_by_hand():
    st = NGramStats(vocab_size=100, orders=(1, 2), match_min=0)
    for tok in [5, 7, 5, 7, 5, 9, 5]:
        st.update(tok)
    feats = {f.slot: f for f in st.features()}
    # order 1, context (5,): followed by 7 twice and 9 once -> n=3 (bucket 1), u=2
    f1 = feats[0 * COUNT_BUCKETS + 1]
    got = dict(zip(f1.tokens.tolist(), f1.values.tolist()))
    base = math.log(98) - math.log(2)
    assert got == pytest.approx({7: math.log(2) + base, 9: 0.0 + base}, rel=1e-14)
    # order 2, context (9, 5): never seen followed by anything -> no feature
    assert all(s < COUNT_BUCKETS for s in feats)


def test_match_model_predicts_the_continuation_of_a_repeat():
    st = NGramStats(vocab_size=50, orders=(), match_min=3)
    seq = [1, 2, 3, 4, 5, 6, 7, 8]
    for tok in seq + [10, 11] + seq[:4]:
        st.update(tok)
    (f,) = st.features()
    assert f.tokens.tolist() == [5]  # 1 2 3 4 was followed by 5
    st.update(5)
    (f,) = st.features()
    assert f.tokens.tolist() == [6]
    st.update(42)  # the repeat breaks
    assert st.features() == []


def test_settings_validation_and_presets():
    with pytest.raises(ValueError):
        MixSettings(orders=(0,))
    with pytest.raises(ValueError):
        MixSettings(match=1)
    with pytest.raises(ValueError):
        MixSettings(rate=2.0)
    assert DEFAULT_MIX.params() == "m1" and BYTE_MIX.params() == "b1"
    custom = MixSettings(orders=(2, 3), match=0, rate=0.01, llm_rate=0.0, bias_rate=0.001)
    assert MixSettings.from_params(custom.params()) == custom
    for name, preset in PRESETS.items():
        assert MixSettings.from_params(name) == preset
    for bad in ("m99", {"orders": [1]}, {**custom.params(), "orders": "x"}, 7, None):
        with pytest.raises(FormatError):
            MixSettings.from_params(bad)
    assert not NO_MIX.enabled


@pytest.mark.parametrize("name,offset,length", [("alice29.txt", 0, 20_000), ("cp.html", 0, 12_000),
                                                 ("ptt5", 2_000, 6_000), ("fields.c", 0, 11_150)])
def test_ngram_model_round_trips_and_compresses(name, offset, length):
    data = corpus_slice(name, offset, length)
    packed = lmzip.compress(data, model="ngram")
    assert lmzip.decompress(packed) == data
    if name != "ptt5":
        assert len(packed) < 0.5 * len(data)  # far better than 8 bits per byte on text


@pytest.mark.parametrize("settings", [
    BYTE_MIX,
    MixSettings(orders=(1, 2, 3), match=4, rate=0.05, llm_rate=0.0, bias_rate=0.01),  # every part, fast rates
    MixSettings(orders=(), match=0, rate=0.0, llm_rate=0.0, bias_rate=0.02),
])
def test_ngram_settings_round_trip_across_cdf_backends(settings):
    data = corpus_slice("asyoulik.txt", 1000, 5000) + bytes(range(256))
    before = cdf.backend
    try:
        cdf.set_backend("c")
        packed = lmzip.compress(data, model="ngram", mix=settings)
        cdf.set_backend("numpy")
        assert lmzip.decompress(packed) == data
    finally:
        cdf.set_backend(before)


# Compressed files pinned byte for byte: any change to the n-gram statistics, the
# mixer's arithmetic or the quantization rule changes them, and then old files would
# no longer decode.  If a change is intended, it needs a new preset name.  (Format v3
# changed only the container around the same payloads: the header's version and
# chunk_size, the group mark; the v2 files these replaced, rebuilt from the v3 ones
# record by record, had the hashes c7cd2c1e... and 7dd63b3f....)
GOLDEN = {
    "b1": "a040684df9c3d6b19c74d15a1318f831484849cbbc0ff4b401c0626abbff5996",
    "custom": "375f27313bb210896368b517fa29edb423b323cb5560a013ebe4804744060e12",
}


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_golden_files(key):
    data = corpus_slice("alice29.txt", 5000, 4000)
    mix = BYTE_MIX if key == "b1" else MixSettings(orders=(1, 3), match=5, rate=0.02, llm_rate=0.0,
                                                    bias_rate=0.005)
    packed = lmzip.compress(data, model="ngram", mix=mix, method="model")
    assert hashlib.sha256(packed).hexdigest() == GOLDEN[key]


# ---------------------------------------------------------------------------- with the LLM


def test_llm_mixing_round_trip_with_every_component(llm):
    base = llm.base if isinstance(llm, MixedModel) else llm
    mixed = MixedModel(base, MixSettings(orders=(1, 2, 3), match=4, rate=0.01, llm_rate=0.002, bias_rate=0.005))
    data = corpus_slice("alice29.txt", 30_000, 1500) + b"\x00\xff escapes too"
    packed = lmzip.compress(data, model=mixed)
    assert lmzip.decompress(packed) == data  # the header's settings rebuild the same mixer
    assert lmzip.decompress(packed, model=base) == data  # even from a bare model object


def test_default_is_mixed_and_beats_the_bare_model_on_repetitive_text(llm):
    base = llm.base if isinstance(llm, MixedModel) else llm
    assert isinstance(load_model("default", context=TEST_CONTEXT), MixedModel)
    # a passage repeated beyond the 128-token window: only the match/n-gram models can see it
    text = corpus_slice("lcet10.txt", 20_000, 900)
    data = text + corpus_slice("lcet10.txt", 40_000, 600) + text
    mixed = lmzip.compress(data, model=MixedModel(base, DEFAULT_MIX))
    bare = lmzip.compress(data, model=base)
    assert lmzip.decompress(mixed) == data
    assert len(mixed) < len(bare)


def test_mixed_stream_probabilities_are_a_valid_distribution(llm):
    base = llm.base if isinstance(llm, MixedModel) else llm
    model = MixedModel(base, MixSettings(orders=(1, 2), match=3, rate=0.01, llm_rate=0.001, bias_rate=0.01))
    tokens = model.tokenizer.encode(corpus_slice("alice29.txt", 0, 400))
    q = np.empty(model.vocab_size)
    with model.open_stream() as stream:
        for t in tokens:
            stream.distribution(q)
            assert q.sum() == cdf.TOTAL - model.vocab_size and q.min() >= 0
            stream.push(t)
