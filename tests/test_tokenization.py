"""Lossless bytes <-> tokens with the real SmolLM2 vocabulary, on every kind of input."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmzip.tokenization import PieceTokenizer, utf8_runs

from .conftest import corpus_slice

EDGE_CASES = {
    "empty": b"",
    "one byte": b"a",
    "nul bytes": b"\x00\x00abc\x00",
    "all bytes": bytes(range(256)),
    "invalid utf8": b"caf\xc3 \xff\xfe \xed\xa0\x80 \xf4\x90\x80\x80 \xc0\xaf end",
    "truncated utf8 at end": "naïve".encode()[:-1] + b"\xc3",
    "special token text": b"<|endoftext|><|im_start|>user\nhi<|im_end|><repo_name>",
    "controls": b"\x01\x02\x03\x04\x06\x13\x14\x16\x1d\x1b[0m\x7f\xc2\x85\xc2\x9f",
    "crlf and tabs": b"line one\r\nline\ttwo\r\n\r\n",
    "unicode": "Grüße, 世界! 🦀 ﬁ Å Å \u200b\ufeff".encode(),
    "long spaces": b" " * 300 + b"x" + b"\n" * 200,
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases_round_trip(llm, name):
    data = EDGE_CASES[name]
    tokens = llm.tokenizer.encode(data)
    assert llm.tokenizer.decode(tokens) == data
    assert all(llm.tokenizer.pieces[t] for t in tokens)  # never a token that spells nothing


def test_smollm2_needs_escapes_for_21_byte_values(llm):
    tok = llm.tokenizer
    assert tok.n_model_tokens == 49_152
    assert tok.escapes == 21  # e.g. 0x04 and 0xff have no token of their own
    assert tok.byte_tokens[0x04] >= 49_152 and tok.byte_tokens[0xFF] >= 49_152
    assert tok.byte_tokens[ord("a")] < 49_152
    assert tok.decode([tok.byte_tokens[b] for b in range(256)]) == bytes(range(256))


def test_special_token_text_is_plain_text(llm):
    tokens = llm.tokenizer.encode(b"<|endoftext|>")
    assert len(tokens) > 1  # spelled out, not the control token
    assert 0 not in tokens


def test_english_uses_the_model_tokenizer(llm):
    text = corpus_slice("alice29.txt", 20_000, 4000)
    tokens = llm.tokenizer.encode(text)
    assert llm.tokenizer.decode(tokens) == text
    assert len(text) / len(tokens) > 3.5  # whole words, not bytes


def test_long_run_is_split_and_round_trips(llm):
    text = corpus_slice("enwik6", 0, 200_000)
    assert llm.tokenizer.decode(llm.tokenizer.encode(text)) == text


def test_random_binary(llm):
    rng = random.Random(5)
    data = bytes(rng.randrange(256) for _ in range(3000))
    assert llm.tokenizer.decode(llm.tokenizer.encode(data)) == data


@given(st.binary(max_size=300))
def test_property_any_bytes(llm, data):
    assert llm.tokenizer.decode(llm.tokenizer.encode(data)) == data


@given(st.text(max_size=200))
def test_property_any_text(llm, text):
    data = text.encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8, must survive
    assert llm.tokenizer.decode(llm.tokenizer.encode(data)) == data


@given(st.binary(max_size=200))
def test_utf8_runs_partition_the_input(data):
    parts = utf8_runs(data)
    assert b"".join(p for _, p in parts) == data
    for valid, part in parts:
        if valid:
            part.decode("utf-8")  # raises if not strictly valid
        else:
            assert part


def test_bad_tokenizer_output_is_caught():
    # a model tokenizer that drops characters must not lose data
    pieces = [bytes([b]) for b in range(256)] + [b"ab"]
    tok = PieceTokenizer(pieces, lambda text: [256] * (len(text) // 2))
    for data in [b"abab", b"abc", b"xyz\n\x01q"]:
        assert tok.decode(tok.encode(data)) == data
