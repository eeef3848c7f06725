"""Range coding: golden words, exact cost, round trips under changing distributions."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmzip.cdf import TOTAL, quantize
from lmzip.coding import Decoder, Encoder
from lmzip.errors import CorruptError


def weights(freq):
    """What the coder takes: q = freq - 1 as float64."""
    return (np.asarray(freq) - 1).astype(np.float64)


SYMBOLS = [0, 1, 2, 3, 4, 0, 0, 1, 4, 2]
GOLDEN = "00bfbc5b"  # one word: 1+2+3+4+4+1+1+2+4+3 = 25 bits of information
GOLDEN_V4 = "5bbcbf"  # the same number, big-endian, its last byte (zero) cut


def test_golden_words():
    freq = np.array([8388608, 4194304, 2097152, 1048576, 1048576])
    enc = Encoder()
    for s in SYMBOLS:
        enc.encode(s, weights(freq))
    assert enc.finish(version=3).hex() == GOLDEN  # versions 2 and 3: little-endian 32-bit words
    dec = Decoder(bytes.fromhex(GOLDEN), version=3)
    assert [dec.decode(weights(freq)) for _ in SYMBOLS] == SYMBOLS
    # version 4: big-endian, cut to the bytes the decoder needs (25 bits: 4 bytes at most)
    assert enc.finish().hex() == GOLDEN_V4
    dec = Decoder(bytes.fromhex(GOLDEN_V4))
    assert [dec.decode(weights(freq)) for _ in SYMBOLS] == SYMBOLS


def test_empty():
    assert Encoder().finish() == b""
    assert Encoder().finish(version=3) == b""


def test_coder_uses_our_integer_cdf_exactly():
    # a symbol of frequency 1 costs exactly 24 bits: constriction did not re-quantize
    q = weights([1, 1, TOTAL - 4, 1, 1])
    enc = Encoder()
    for s in [0, 1, 3, 4] * 25:
        enc.encode(s, q)
    payload = enc.finish()
    assert len(payload) * 8 - 100 * 24 in range(0, 64)
    dec = Decoder(payload)
    assert [dec.decode(q) for _ in range(100)] == [0, 1, 3, 4] * 25


def test_cost_matches_ideal_on_a_large_vocabulary():
    rng = np.random.default_rng(0)
    rows = [quantize(rng.normal(scale=3, size=49_152)) for _ in range(100)]
    syms = [int(rng.integers(49_152)) for _ in rows]
    enc = Encoder()
    for s, f in zip(syms, rows):
        enc.encode(s, weights(f))
    payload = enc.finish()
    ideal = sum(-math.log2(f[s] / TOTAL) for s, f in zip(syms, rows))
    assert ideal <= len(payload) * 8 <= ideal + 64
    dec = Decoder(payload)
    assert [dec.decode(weights(f)) for f in rows] == syms


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2**32 - 1)), min_size=1, max_size=60),
       st.integers(2, 41))
def test_property_round_trip(items, n):
    rows, syms = [], []
    for sym, seed in items:
        rng = np.random.default_rng(seed)
        rows.append(quantize(rng.normal(scale=4, size=n)))
        syms.append(sym % n)
    enc = Encoder()
    for s, f in zip(syms, rows):
        enc.encode(s, weights(f))
    dec = Decoder(enc.finish())
    assert [dec.decode(weights(f)) for f in rows] == syms


def _random_stream(rng):
    n_sym = int(rng.integers(2, 400))
    rows = []
    for _ in range(int(rng.integers(1, 120))):
        # from flat to nearly certain: long runs of tiny costs make carries and short tails
        rows.append(quantize(rng.normal(scale=float(rng.choice([0.5, 4, 30, 300])), size=n_sym)))
    syms = [int(rng.choice(n_sym, p=f / TOTAL)) if rng.random() < 0.9 else int(rng.integers(n_sym)) for f in rows]
    return rows, syms


def test_version_4_flush_is_shorter_and_decodes_the_same_on_many_random_streams():
    """The version 4 payload (the final interval's shortest value, big-endian, trailing
    zero bytes cut and read back as zeros) decodes to the same symbols as constriction's
    own sealed words, and is never longer."""
    rng = np.random.default_rng(18)
    saved = []
    for _ in range(1500):
        rows, syms = _random_stream(rng)
        enc = Encoder()
        for s, f in zip(syms, rows):
            enc.encode(s, weights(f))
        old, new = enc.finish(version=3), enc.finish()
        assert len(new) <= len(old)
        saved.append(len(old) - len(new))
        for payload, version in ((old, 3), (new, 4)):
            dec = Decoder(payload, version=version)
            assert [dec.decode(weights(f)) for f in rows] == syms
        if new:  # not one byte can go: the decoder needs them all
            dec = Decoder(new[:-1])
            try:
                short = [dec.decode(weights(f)) for f in rows]
            except Exception:
                short = None
            assert short != syms or new[:-1] + bytes(1) == new  # (can only hold if it ended in a zero)
    assert np.mean(saved) > 1  # about 1.6 bytes per chunk


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2**32 - 1)), min_size=1, max_size=60),
       st.integers(2, 41))
def test_property_round_trip_version_3(items, n):
    rows, syms = [], []
    for sym, seed in items:
        rng = np.random.default_rng(seed)
        rows.append(quantize(rng.normal(scale=4, size=n)))
        syms.append(sym % n)
    enc = Encoder()
    for s, f in zip(syms, rows):
        enc.encode(s, weights(f))
    dec = Decoder(enc.finish(version=3), version=3)
    assert [dec.decode(weights(f)) for f in rows] == syms


def _constriction_words(symbols, qs) -> np.ndarray:
    """The reference: constriction coding each symbol under its whole distribution."""
    import constriction

    family = constriction.stream.model.Categorical(perfect=False)
    coder = constriction.stream.queue.RangeEncoder()
    for s, q in zip(symbols, qs):
        coder.encode(np.array([s], dtype=np.int32), family, q[None, :])
    return coder.get_compressed()


@given(st.lists(st.tuples(st.integers(2, 300), st.floats(0.01, 40.0), st.integers(0, 2**32 - 1)),
                min_size=1, max_size=40))
def test_encoder_codes_each_symbol_by_its_interval_exactly_like_the_whole_distribution(items):
    # the Encoder hands constriction three-symbol stand-ins (coding.interval_model), in
    # batches: the words must be those of the whole distributions, symbol by symbol
    rng = np.random.default_rng(len(items))
    symbols, qs = [], []
    for n, scale, pick in items:
        q = np.empty(n)
        from lmzip.cdf import quantize_into

        quantize_into(rng.normal(scale=scale, size=n), q)
        symbols.append([0, n - 1, pick % n][pick % 3])  # the first and last symbols are edge cases
        qs.append(q)
    enc = Encoder()
    for s, q in zip(symbols, qs):
        enc.encode(s, q)
    expected = _constriction_words(symbols, qs)
    assert enc.finish(version=3) == expected.astype("<u4").tobytes()


def test_interval_model_edges_and_batches():
    from lmzip import coding

    # a symbol holding almost all the mass, at either end and in the middle
    for freq in ([TOTAL - 2, 1, 1], [1, 1, TOTAL - 2], [1, TOTAL - 2, 1], [TOTAL - 4, 1, 1, 1, 1]):
        q = weights(freq)
        syms = list(range(len(freq))) * 3
        enc = Encoder()
        for s in syms:
            enc.encode(s, q)
        assert enc.finish(version=3) == _constriction_words(syms, [q] * len(syms)).astype("<u4").tobytes()
        index, q3 = coding.interval_model(0, q)
        assert sum(q3) == TOTAL - 3 and min(q3) >= 0
    # more symbols than one batch: flushed on the way, same words
    rng = np.random.default_rng(5)
    q = weights(quantize(rng.normal(scale=2, size=1000)))
    syms = rng.integers(0, 1000, size=coding._BATCH * 2 + 7).tolist()
    enc = Encoder()
    for s in syms:
        enc.encode(s, q)
    assert enc.finish(version=3) == _constriction_words(syms, [q] * len(syms)).astype("<u4").tobytes()


def _whole_distribution_decode(payload: bytes, qs: list[np.ndarray]) -> list:
    """constriction decoding under each whole distribution: the reference of Decoder."""
    import constriction

    padded = payload + bytes(-len(payload) % 4)
    coder = constriction.stream.queue.RangeDecoder(np.frombuffer(padded, dtype=">u4").astype(np.uint32))
    family = constriction.stream.model.Categorical(perfect=False)
    out = []
    for q in qs:
        try:
            out.append(int(coder.decode(family, q[None, :])[0]))
        except (AssertionError, ValueError, RuntimeError):
            out.append("damaged")
            break
    return out


@settings(max_examples=150, deadline=None)
@given(st.integers(3, 400), st.integers(0, 2**32 - 1), st.binary(max_size=64), st.booleans())
def test_the_decoder_reads_each_symbol_by_its_interval_exactly_like_the_whole_distribution(v, seed, noise, valid):
    """Decoder reads the quantile on a copy of the coder and decodes the symbol's interval
    as three symbols: the symbols constriction decodes under the whole distributions, for
    payloads the encoder wrote and for any bytes (damage), up to the same failure."""
    rng = np.random.default_rng(seed)
    qs = []
    for _ in range(40):
        q = quantize(rng.normal(scale=float(rng.uniform(0.1, 30)), size=v)).astype(np.float64) - 1.0
        qs.append(q)
    if valid:
        enc = Encoder()
        for q in qs:
            enc.encode(int(rng.integers(v)), q)
        payload = enc.finish()
    else:
        payload = noise
    want = _whole_distribution_decode(payload, qs)
    dec, got = Decoder(payload), []
    for q in qs[: len(want)]:
        try:
            got.append(dec.decode(q))
        except CorruptError:
            got.append("damaged")
            break
    assert got == want


def test_find_reads_the_symbol_at_every_interval_edge(monkeypatch):
    """cdf.find (C, and numpy without it): the symbol whose interval holds a quantile, at
    both edges of every interval, across blocks of the C scan and in its tail."""
    from lmzip import cdf

    rng = np.random.default_rng(4)
    q = quantize(rng.normal(scale=4, size=1003)).astype(np.float64) - 1.0
    starts = np.concatenate([[0.0], np.cumsum(q + 1.0)])
    for impl in ("c", "numpy"):
        if impl == "numpy":
            monkeypatch.setattr(cdf, "_cdf", None)
        for i in list(range(0, 1003, 7)) + [63, 64, 127, 128, 959, 960, 1002]:
            for quantile in {starts[i], starts[i + 1] - 1}:
                assert cdf.find(q, int(quantile)) == (i, float(q[:i].sum()))
        with pytest.raises(ValueError):
            cdf.find(q, TOTAL)
