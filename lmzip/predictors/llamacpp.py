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

Compressor and decompressor make the same calls, hence the same logits -- on a
machine whose llama.cpp computes the same numbers.  Its CPU kernels are chosen when it
is built (AVX2, AVX-512, AMX, ...) and give other logits, so the build's kernel family
is part of the file's settings (``params["kernels"]``): a file is refused at once on a
machine whose llama.cpp was built for other kernels, instead of failing as "damaged".

Weight buffers: with its "extra" buffer types llama.cpp repacks weights for AMX tiles
on CPUs that have them; that build segfaults on any call that evaluates more than one
token (llama-cpp-python 0.3.36 on an Intel Xeon with AMX) but runs one-token calls
twice as fast as plain weights.  So on a build with AMX, contexts that evaluate one
token per call use the repacked weights and batched contexts (lockstep groups, the
skipping schedule, ``lmzip entropy``) a second, plain copy of the model, loaded when
first needed.  Builds without AMX use one copy with the extra buffers everywhere, as
lmzip always did there.  The rule follows from the kernel family, so it is recorded
with it.
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

__all__ = ["LlamaCppModel", "backend_version", "build_features", "kernel_family"]

#: widest lockstep group one context runs (each stream holds a KV cache of `context` cells;
#: llama.cpp caps a context's sequences at its LLAMA_MAX_SEQ): the width lmzip always had
#: here, as groups wider than 64 are for the portable engine on a GPU
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


def build_features() -> list[str]:
    """The CPU features this llama.cpp was built for, lower case, in its own order
    (``llama_print_system_info``: the ``NAME = 1`` entries, e.g. ``avx2``, ``amx_int8``)."""
    info = _llama().llama_print_system_info()
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    features: list[str] = []
    for part in text.split("|"):
        name, _, value = part.rpartition("=")
        name = name.split(":")[-1].strip().lower()
        if name and value.strip() == "1" and name not in features:
            features.append(name)
    return features


def kernel_family() -> str:
    """What decides this build's logits besides its version: the machine type and the
    SIMD kernels it was compiled with, e.g. ``"x86_64 sse3 ssse3 avx avx2 f16c fma ..."``.
    Stored in a file's header (``params["kernels"]``) and compared when decoding."""
    import platform

    return " ".join([platform.machine().lower() or "unknown", *build_features()])


def _batches_on_plain_weights(features: list[str]) -> bool:
    """True for builds whose repacked (AMX) weights crash on batched calls."""
    return any(f.startswith("amx") for f in features)


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
    n_batch = batch or streams
    weights = model._weights_for(n_batch)
    cparams = L.llama_context_default_params()
    cparams.n_ctx = model.context * streams  # split evenly: each sequence gets `context` cells
    cparams.n_batch = n_batch
    cparams.n_ubatch = n_batch
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
    ctx = L.llama_init_from_model(weights, cparams)
    if not ctx:
        raise LMZipError("llama.cpp could not create a context (out of memory?)")
    mem = L.llama_get_memory(ctx)
    if not L.llama_memory_can_shift(mem):
        L.llama_free(ctx)
        raise LMZipError(f"model {model.name} does not support KV-cache shifting")
    return ctx, mem


def _slide(L, mem, m: LlamaCppModel, seq: int, pos: int, n: int) -> int:
    """Make room for ``n`` more tokens in sequence ``seq`` (``n <= m.discard``): when
    they would pass the window, drop ``[keep, keep+discard)`` and shift the rest down.
    Returns the new position."""
    if pos + n > m.context:
        L.llama_memory_seq_rm(mem, seq, m.keep, m.keep + m.discard)
        L.llama_memory_seq_add(mem, seq, m.keep + m.discard, pos, -m.discard)
        pos -= m.discard
    return pos


class _LlamaStream(Stream):
    """One chunk alone: a :class:`_LlamaGroup` of width 1 (the v2 schedule: one token per
    call, or after :meth:`defer` everything held back in one call), evaluated when
    scores are next asked for, so it needs no ``advance()`` from its caller."""

    def __init__(self, model: LlamaCppModel, defer: int = 0):
        # no known length: the last token is never evaluated anyway, scores() is not asked after it
        self._group = _LlamaGroup(model, [sys.maxsize], 1, defer)
        self._stream = self._group.streams[0]

    def scores(self) -> np.ndarray:
        self._group.advance()  # the tokens pushed since the last call, if any
        return self._stream.scores()  # valid until the next push()

    def push(self, token: int) -> None:
        self._stream.push(token)

    def close(self) -> None:
        self._group.close()


class _GroupStream(Stream):
    """One chunk's stream inside a :class:`_LlamaGroup`: its own sequence in the shared KV cache."""

    def __init__(self, group: _LlamaGroup, seq: int, length: int, n_vocab: int, vocab_size: int):
        self._group = group
        self.seq = seq
        self._left = length  # tokens still to be coded: the last one needs no evaluation
        self._n_vocab = n_vocab
        self.scores_buf = np.full(vocab_size, -np.inf, dtype=np.float32)
        self.pos = 0
        self.pending: list[int] = []  # pushed, not yet evaluated
        self.deferred = False

    def scores(self) -> np.ndarray:
        return self.scores_buf  # valid until the group's next advance()

    def push(self, token: int) -> None:
        self._left -= 1
        if token < self._n_vocab and self._left > 0:  # escape symbols are not shown to the model
            self.pending.append(token)

    def defer(self) -> None:
        self.deferred = True  # the next advance() leaves this stream's tokens for later


class _LlamaGroup(StreamGroup):
    """Chunks advanced in lockstep: one ``llama_decode`` per step holding the tokens of
    every stream that has some, each stream its own sequence (``seq_id``) in one context
    with a KV cache per sequence (``kv_unified`` off, so a token attends to its own
    window only).  Batch shapes follow from the chunk lengths and the tokens, which the
    decoder knows when it needs them: both directions make the same calls.

    Without deferral a stream has one token per step.  A stream that deferred
    (:meth:`Stream.defer`) sits out the step; its tokens go in later, all at once (in
    pieces of at most ``discard`` per call, so a slide always makes room).

    Every stream starts with the start token at position 0 (all in the first batch) and
    slides exactly as the single stream does (same ``keep``/``discard``).
    """

    def __init__(self, model: LlamaCppModel, lengths: list[int], width: int, defer: int = 0):
        L = model._L
        self._L = L
        self._model = model
        self._ctx = None
        self._batch = None
        self._cap = min(max(defer, 1), model.discard)  # tokens per stream per call
        S = width
        self._ctx, self._mem = new_context(model, S, S * self._cap if defer else None)
        self._batch = L.llama_batch_init(S * self._cap, 0, 1)
        n_vocab = model.tokenizer.n_model_tokens
        self._n_vocab = n_vocab
        super().__init__([_GroupStream(self, i, n, n_vocab, model.vocab_size) for i, n in enumerate(lengths)])
        for s in self.streams:
            s.pending.append(model.start_token)
        self.advance()

    def advance(self) -> None:
        L, m, b, cap = self._L, self._model, self._batch, self._cap
        while True:
            todo = [s for s in self.streams if s.pending and not s.deferred]
            if not todo:
                break
            j = 0
            outputs = []
            for s in todo:
                piece = s.pending[:cap]
                del s.pending[:cap]
                s.pos = _slide(L, self._mem, m, s.seq, s.pos, len(piece))
                for k, token in enumerate(piece):
                    b.token[j] = token
                    b.pos[j] = s.pos + k
                    b.n_seq_id[j] = 1
                    b.seq_id[j][0] = s.seq
                    b.logits[j] = 0
                    j += 1
                s.pos += len(piece)
                if not s.pending:  # its last token: the scores of the stream's next token
                    b.logits[j - 1] = 1
                    outputs.append((j - 1, s))
            b.n_tokens = j
            rc = L.llama_decode(self._ctx, b)
            if rc != 0:
                raise LMZipError(f"llama_decode failed (code {rc})")
            n = self._n_vocab
            for j, s in outputs:
                ptr = L.llama_get_logits_ith(self._ctx, j)
                s.scores_buf[:n] = np.ctypeslib.as_array(ptr, shape=(n,))
        for s in self.streams:
            s.deferred = False

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

    max_width = MAX_WIDTH

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
        self.kernels = kernel_family()
        self._plain_batches = _batches_on_plain_weights(build_features())
        self._plain = None  # the copy without repacked weights, for batched calls (AMX builds)
        self._model = self._load(extra_buffers=True)
        self._vocab = L.llama_model_get_vocab(self._model)
        n_vocab = L.llama_vocab_n_tokens(self._vocab)
        bos = L.llama_vocab_bos(self._vocab)
        self.start_token = bos if bos >= 0 else L.llama_vocab_eos(self._vocab)
        if self.start_token < 0:
            raise LMZipError(f"model {name} has neither a BOS nor an EOS token")
        self.tokenizer = PieceTokenizer([self._piece(t) for t in range(n_vocab)], self._tokenize_text)
        self.n_ctx_train = L.llama_model_n_ctx_train(self._model)

    def _load(self, *, extra_buffers: bool):
        L = self._L
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = 0  # CPU only: results must not depend on an accelerator
        mparams.use_extra_bufts = extra_buffers
        model = L.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not model:
            raise ModelNotFoundError(f"llama.cpp could not load {self.path} (not a GGUF model?)")
        return model

    def _weights_for(self, n_batch: int):
        """The llama.cpp model a context of batches of ``n_batch`` tokens runs on (module
        docstring, "Weight buffers")."""
        if n_batch <= 1 or not self._plain_batches:
            return self._model
        if self._plain is None:
            self._plain = self._load(extra_buffers=False)
        return self._plain

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
            "kernels": self.kernels,
            "model": self.name,
        }

    def open_stream(self, defer: int = 0) -> Stream:
        return _LlamaStream(self, defer)

    batches = True
    defers = True

    def open_group(self, lengths: list[int], width: int = 1, defer: int = 0) -> StreamGroup:
        if width == 1:  # format v2's schedule: a context of its own, one token per call
            if len(lengths) != 1:
                raise ValueError(f"a group of width 1 holds 1 chunk, not {len(lengths)}")
            return StreamGroup([self.open_stream(defer)])
        if not 1 <= len(lengths) <= width <= MAX_WIDTH:
            raise ValueError(f"a group of width {width} (at most {MAX_WIDTH}) holds 1 to {width} chunks, "
                             f"not {len(lengths)}")
        return _LlamaGroup(self, lengths, width, defer)

    def describe(self) -> str:
        return f"{self.name} ({self.path.name}, llama.cpp {backend_version()}, context {self.context})"

    @property
    def closed(self) -> bool:
        return not getattr(self, "_model", None)

    def close(self) -> None:
        """Free the weights; the model must not be used afterwards."""
        if getattr(self, "_plain", None):
            self._L.llama_model_free(self._plain)
            self._plain = None
        if getattr(self, "_model", None):
            self._L.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
