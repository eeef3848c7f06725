"""lmzip._ngram (native/ngram.c) against the Python statistics it replaces
(lmzip/predictors/ngram.py's NGramStats, the reference): after every token of many
streams, the same features (slots, tokens in the same order, values bit for bit), the
same match prediction and the same guess."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmzip.predictors.ngram import NativeNGramStats, NGramStats

from .conftest import corpus_slice

pytest.importorskip("lmzip._ngram")


def _same_all_along(tokens, vocab, orders, match_min):
    ref = NGramStats(vocab, orders, match_min)
    fast = NativeNGramStats(vocab, orders, match_min)
    for i, t in enumerate(tokens):
        want, got = ref.features(), fast.features()
        assert [f.slot for f in got] == [f.slot for f in want], i
        for g, w in zip(got, want):
            assert g.tokens.tolist() == w.tokens.tolist(), i
            assert g.values.tobytes() == w.values.tobytes(), i
        assert fast.match_prediction() == ref.match_prediction(), i
        assert fast.guess() == ref.guess(), i
        ref.update(t)
        fast.update(t)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 11), max_size=300), st.sampled_from([(1, 2, 3, 4), (2, 1), (3,), ()]),
       st.sampled_from([0, 2, 3, 6]))
def test_small_alphabets_every_step(tokens, orders, match_min):
    # a small alphabet makes repeats, long matches and saturating guesses common
    _same_all_along(tokens, 12, orders, match_min)


def test_real_text_every_step():
    text = corpus_slice("alice29.txt", 0, 6000)
    text = text + text[:2500]  # a long repeat: matches up to their cap
    _same_all_along(list(text), 256, (1, 2, 3, 4, 6), 12)


def test_counts_saturate_like_the_reference():
    tokens = [1, 2] * 70_000  # past 65,535 counts of one successor
    ref, fast = NGramStats(50, (1,), 0), NativeNGramStats(50, (1,), 0)
    for t in tokens:
        ref.update(t)
        fast.update(t)
    (w,), (g,) = ref.features(), fast.features()
    assert (g.slot, g.tokens.tolist(), g.values.tobytes()) == (w.slot, w.tokens.tolist(), w.values.tobytes())
    flat = fast.features_flat()
    assert flat[0] == [w.slot] and flat[1] == [1]


def test_bad_input_is_refused():
    fast = NativeNGramStats(10, (1, 2), 3)
    with pytest.raises(ValueError):
        fast.update(10)
    with pytest.raises(ValueError):
        fast.update(-1)
    fast.update(3)
    assert fast.features() == []
