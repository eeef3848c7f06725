"""lmzip without torch: the torch backend is an optional extra (issue 7)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from .conftest import ROOT

# torch and transformers made unimportable, whether or not they are installed
_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None
    sys.modules["transformers"] = None
    import lmzip
    from lmzip import format as fmt
    from lmzip.errors import ModelNotFoundError
    from lmzip.predictors import registry, torch_backend

    assert not torch_backend.available()
    data = b"no torch needed " * 20
    assert lmzip.decompress(lmzip.compress(data, model="order1")) == data
    try:
        registry.load_model("smollm2-135m", backend="torch")
    except ModelNotFoundError as exc:
        assert "lmzip[torch]" in str(exc), exc
    else:
        raise AssertionError("loaded a torch model without torch")
    params = {"backend": "torch 2.13.0+cpu transformers 5.23.0", "context": 2048, "device": "cpu",
              "dtype": "float32", "model": "smollm2-135m", "threads": 2}
    header = fmt.pack_header(bytes(32), params, 3)
    try:
        registry.model_for_header(fmt.parse_header(header))
    except ModelNotFoundError as exc:
        assert "torch backend" in str(exc) and "lmzip[torch]" in str(exc), exc
    else:
        raise AssertionError("decoded a torch header without torch")
    assert "torch" not in sys.modules or sys.modules["torch"] is None
    print("ok")
""")


def test_lmzip_runs_without_torch():
    out = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


_NO_LLAMA = textwrap.dedent("""
    import sys
    sys.modules["llama_cpp"] = None  # not installed, as with the torch extra alone
    from pathlib import Path
    from lmzip.predictors import registry, torch_backend as tb
    from lmzip.predictors.gguf_tokenizer import GGUFTokenizer
    path = Path(registry._smollm2_path())
    tok, start, _ = tb._gguf_vocab_tokenizer(path)
    ref = GGUFTokenizer(path)
    n = len(ref.pieces)
    assert tok.pieces[:n] == ref.pieces and start == 1, start
    text = "Alice was beginning to get very tired of sitting by her sister on the bank.".encode()
    assert tok.encode(text) == tok.encode(text) and b"".join(tok.pieces[t] for t in tok.encode(text)) == text
    print("ok")
""")


def test_torch_backend_tokenizer_needs_no_llama_cpp():
    """Issue 28 item 6: the torch backend reads a GGUF model's tokenizer with lmzip's own
    GGUF tokenizer (llama.cpp's pieces and tokens), not with llama-cpp-python."""
    from lmzip.predictors.registry import _smollm2_path

    if _smollm2_path() is None:
        import pytest

        pytest.skip("the SmolLM2 model is not installed")
    out = subprocess.run([sys.executable, "-c", _NO_LLAMA], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
