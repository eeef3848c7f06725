"""The llama.cpp backend, on llama-cpp-python's low-level C API.

Determinism is the whole game: llama.cpp's logits are bit-identical across runs,
instances and thread counts *for the same sequence of calls*, but batched and
one-token evaluation differ, and flash attention changes results.  So every
stream is driven one token per ``llama_decode`` call, flash attention is off, and
the sliding window moves at fixed points:

- the stream starts by evaluating one start token (BOS, else EOS) at position 0;
- when ``context`` positions are used, the ``discard`` tokens after the start
  token are removed from the KV cache and the rest shifted down (llama.cpp
  re-rotates the cached keys), so the window slides without re-evaluation.

Compressor and decompressor make the same calls, hence the same logits.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LMZipError, ModelNotFoundError
from ..tokenization import PieceTokenizer
from .base import Model, Stream, StreamGroup

__all__ = ["LlamaCppModel", "backend_version"]

#: widest lockstep group one context runs (each stream holds a KV cache of `context` cells)
MAX_WIDTH = 64

_init_lock = threading.Lock()
_initialized = False


def _llama():
    """Import llama_cpp lazily (it is heavy) and initialise the backend once, quietly."""
    global _initialized
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelNotFoundError(f"the llama.cpp backend needs llama-cpp-python: {exc}") from None
    with _init_lock:
        if not _initialized:
            global _log_callback
            # llama.cpp logs model loading to stderr; lmzip's stderr is for the user
            _log_callback = llama_cpp.llama_log_callback(_quiet_log)
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _initialized = True
    return llama_cpp


def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    if os.environ.get("LMZIP_LLAMA_LOG"):  # for debugging: LMZIP_LLAMA_LOG=1
        sys.stderr.write(text.decode("utf-8", "replace"))


_log_callback = None  # kept alive: llama.cpp holds the pointer


def backend_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception:  # pragma: no cover
        return "unknown"


def default_threads() -> int:
    """``$LMZIP_THREADS``, else one per core up to 8 (llama.cpp's threads spin while
    waiting, so on a machine busy with other work fewer threads can be much faster)."""
    env = os.environ.get("LMZIP_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(os.cpu_count() or 1, 8))


def new_context(model: LlamaCppModel, streams: int, batch: int | None = None):
    """A context with the format's settings (docs/format.md, "Model calls"): ``streams``
    sequences of ``model.context`` cells each, a KV cache per sequence, batches of up to
    ``batch`` tokens (default ``streams``), flash attention off, f16 cache.  Returns
    ``(ctx, memory)``; free ``ctx`` with ``llama_free``."""
    L = model._L
    cparams = L.llama_context_default_params()
    cparams.n_ctx = model.context * streams  # split evenly: each sequence gets `context` cells
    cparams.n_batch = batch or streams
    cparams.n_ubatch = batch or streams
    cparams.n_seq_max = streams
    cparams.kv_unified = False
    cparams.n_threads = model.threads
    cparams.n_threads_batch = model.threads
    cparams.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cparams.type_k = 1  # GGML_TYPE_F16
    cparams.type_v = 1
    cparams.embeddings = False
    cparams.no_perf = True
    cparams.swa_full = True
    ctx = L.llama_init_from_model(model._model, cparams)
    if not ctx:
        raise LMZipError("llama.cpp could not create a context (out of memory?)")
    mem = L.llama_get_memory(ctx)
    if not L.llama_memory_can_shift(mem):
        L.llama_free(ctx)
        raise LMZipError(f"model {model.name} does not support KV-cache shifting")
    return ctx, mem


class _LlamaStream(Stream):
    def __init__(self, model: LlamaCppModel):
        L = model._L
        self._model = model
        self._L = L
        self._ctx, self._mem = new_context(model, 1)  # one token per decode call: the v2 schedule
        self._batch = L.llama_batch_init(1, 0, 1)
        self._batch.n_tokens = 1
        self._batch.n_seq_id[0] = 1
        self._batch.seq_id[0][0] = 0
        self._batch.logits[0] = 1
        self._n_vocab = model.tokenizer.n_model_tokens
        # scores for the whole coding alphabet: escape symbols stay at -inf
        self._scores = np.full(model.vocab_size, -np.inf, dtype=np.float32)
        self._pos = 0
        self._eval(model.start_token)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def _eval(self, token: int) -> None:
        L = self._L
        m = self._model
        if self._pos >= m.context:  # slide: drop [keep, keep+discard), shift the rest down
            L.llama_memory_seq_rm(self._mem, 0, m.keep, m.keep + m.discard)
            L.llama_memory_seq_add(self._mem, 0, m.keep + m.discard, self._pos, -m.discard)
            self._pos -= m.discard
        self._batch.token[0] = token
        self._batch.pos[0] = self._pos
        rc = L.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise LMZipError(f"llama_decode failed (code {rc})")
        self._pos += 1
        ptr = L.llama_get_logits_ith(self._ctx, -1)
        self._scores[: self._n_vocab] = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def scores(self) -> np.ndarray:
        return self._scores  # valid until the next push()

    def push(self, token: int) -> None:
        if token < self._n_vocab:  # escape symbols are not shown to the model
            self._eval(token)

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self._L.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            self._L.llama_free(self._ctx)
            self._ctx = None


class _GroupStream(Stream):
    """One chunk's stream inside a :class:`_LlamaGroup`: its own sequence in the shared KV cache."""

    def __init__(self, group: _LlamaGroup, seq: int, length: int, n_vocab: int, vocab_size: int):
        self._group = group
        self.seq = seq
        self._left = length  # tokens still to be coded: the last one needs no evaluation
        self._n_vocab = n_vocab
        self.scores_buf = np.full(vocab_size, -np.inf, dtype=np.float32)
        self.pos = 0
        self.next_token: int | None = None

    def scores(self) -> np.ndarray:
        return self.scores_buf  # valid until the group's next advance()

    def push(self, token: int) -> None:
        self._left -= 1
        if token < self._n_vocab and self._left > 0:  # escape symbols are not shown to the model
            self.next_token = token


class _LlamaGroup(StreamGroup):
    """Chunks advanced in lockstep: one ``llama_decode`` per step holding one token of
    every stream that has one, each stream its own sequence (``seq_id``) in one context
    with a KV cache per sequence (``kv_unified`` off, so a token attends to its own
    window only).  Batch shapes follow from the chunk lengths and the tokens, which the
    decoder knows when it needs them: both directions make the same calls.

    Every stream starts with the start token at position 0 (all in the first batch) and
    slides exactly as the single stream does (same ``keep``/``discard``).
    """

    def __init__(self, model: LlamaCppModel, lengths: list[int], width: int):
        L = model._L
        self._L = L
        self._model = model
        self._ctx = None
        self._batch = None
        S = width
        self._ctx, self._mem = new_context(model, S)
        self._batch = L.llama_batch_init(S, 0, 1)
        n_vocab = model.tokenizer.n_model_tokens
        self._n_vocab = n_vocab
        super().__init__([_GroupStream(self, i, n, n_vocab, model.vocab_size) for i, n in enumerate(lengths)])
        for s in self.streams:
            s.next_token = model.start_token
        self.advance()

    def advance(self) -> None:
        L, m, b = self._L, self._model, self._batch
        todo = [s for s in self.streams if s.next_token is not None]
        if not todo:
            return
        for j, s in enumerate(todo):
            if s.pos >= m.context:  # slide this sequence's window, as the single stream does
                L.llama_memory_seq_rm(self._mem, s.seq, m.keep, m.keep + m.discard)
                L.llama_memory_seq_add(self._mem, s.seq, m.keep + m.discard, s.pos, -m.discard)
                s.pos -= m.discard
            b.token[j] = s.next_token
            b.pos[j] = s.pos
            b.n_seq_id[j] = 1
            b.seq_id[j][0] = s.seq
            b.logits[j] = 1
        b.n_tokens = len(todo)
        rc = L.llama_decode(self._ctx, b)
        if rc != 0:
            raise LMZipError(f"llama_decode failed (code {rc})")
        n = self._n_vocab
        for j, s in enumerate(todo):
            ptr = L.llama_get_logits_ith(self._ctx, j)
            s.scores_buf[:n] = np.ctypeslib.as_array(ptr, shape=(n,))
            s.pos += 1
            s.next_token = None

    def close(self) -> None:
        if self._batch is not None:
            self._L.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            self._L.llama_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


class LlamaCppModel(Model):
    """A GGUF model run by llama.cpp on the CPU.

    Args:
        path: the GGUF file.
        name: registry name stored in headers.
        sha256: hex SHA-256 of the file (part of the fingerprint).
        context: window in tokens; when full, ``discard`` tokens slide out.
        threads: CPU threads (does not change results).
    """

    def __init__(self, path: str | os.PathLike, *, name: str, sha256: str, context: int = 2048,
                 threads: int | None = None):
        L = _llama()
        self._L = L
        self.path = Path(path)
        self.name = name
        self.sha256 = sha256
        self.model_sha256 = bytes.fromhex(sha256)
        self.context = int(context)
        if self.context < 16:
            raise ValueError("context must be at least 16 tokens")
        # format v1 derives these from the context (docs/format.md): the start token
        # stays (an attention sink keeps sliding windows sane), a quarter slides out
        self.keep = 1
        self.discard = max(1, (self.context - self.keep) // 4)
        self.threads = int(threads) if threads else default_threads()
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = 0  # CPU only: results must not depend on an accelerator
        self._model = L.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise ModelNotFoundError(f"llama.cpp could not load {self.path} (not a GGUF model?)")
        self._vocab = L.llama_model_get_vocab(self._model)
        n_vocab = L.llama_vocab_n_tokens(self._vocab)
        bos = L.llama_vocab_bos(self._vocab)
        self.start_token = bos if bos >= 0 else L.llama_vocab_eos(self._vocab)
        if self.start_token < 0:
            raise LMZipError(f"model {name} has neither a BOS nor an EOS token")
        self.tokenizer = PieceTokenizer([self._piece(t) for t in range(n_vocab)], self._tokenize_text)
        self.n_ctx_train = L.llama_model_n_ctx_train(self._model)

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self._L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:  # long piece: ask again with the size it needs
            buf = ctypes.create_string_buffer(-n)
            n = self._L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[: max(n, 0)]

    def _tokenize_text(self, text: bytes) -> list[int]:
        # only ever called with valid UTF-8 (llama_tokenize aborts the process otherwise)
        cap = len(text) + 16
        out = (self._L.llama_token * cap)()
        n = self._L.llama_tokenize(self._vocab, text, len(text), out, cap, False, False)
        if n < 0:
            cap = -n
            out = (self._L.llama_token * cap)()
            n = self._L.llama_tokenize(self._vocab, text, len(text), out, cap, False, False)
        if n < 0:
            return []  # treated as a failed round trip: the caller spells the text in bytes
        return list(out[:n])

    def params(self) -> dict[str, Any]:
        return {
            "backend": f"llama.cpp {backend_version()}",
            "context": self.context,
            "model": self.name,
        }

    def open_stream(self) -> Stream:
        return _LlamaStream(self)

    batches = True

    def open_group(self, lengths: list[int], width: int = 1) -> StreamGroup:
        if width == 1:  # format v2's schedule: a context of its own, one token per call
            return super().open_group(lengths, width)
        if not 1 <= len(lengths) <= width <= MAX_WIDTH:
            raise ValueError(f"a group of width {width} (at most {MAX_WIDTH}) holds 1 to {width} chunks, "
                             f"not {len(lengths)}")
        return _LlamaGroup(self, lengths, width)

    def describe(self) -> str:
        return f"{self.name} ({self.path.name}, llama.cpp {backend_version()}, context {self.context})"

    @property
    def closed(self) -> bool:
        return not getattr(self, "_model", None)

    def close(self) -> None:
        """Free the weights; the model must not be used afterwards."""
        if getattr(self, "_model", None):
            self._L.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
