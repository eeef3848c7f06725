"""The portable backend: lmzip's own deterministic inference engine (docs/engine.md).

Unlike llama.cpp, whose logits differ between CPUs, builds and batch shapes, the
engine (``lmzip._engine``, native/engine/) computes bit-identical logits on every
CPU, compiler, SIMD width, thread count and batch grouping, so a file written on one
machine decodes on any other.  The schedule:

- every stream starts with the start token (BOS) at position 0, kept as an attention
  sink; each later token at position p attends to the last ``context - 1`` tokens
  (positions ``max(1, p - context + 2) .. p``) and to the sink, which is rotated as if
  it sat just before them (so RoPE only sees distances below ``context``);
- a group evaluates the tokens pushed since its last :meth:`advance` for all its
  streams in one engine call (the weights are read once per call); a stream's logits
  do not depend on the group, so widths and batching are free.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LMZipError, ModelNotFoundError
from ..format import MAX_STREAMS
from ..tokenization import PieceTokenizer
from .base import Model, Stream, StreamGroup
from .gguf_vocab import gguf_pieces
from .portable_weights import cached_weights, read_vocab, vocab_path

__all__ = ["PortableModel", "engine_module", "MAX_WIDTH"]

#: widest lockstep group: the format's (each stream holds its own cache of ``context``
#: positions, ~48 MB at 2048 for SmolLM2; the engine has no limit of its own)
MAX_WIDTH = MAX_STREAMS
#: streams of a group a CPU holds at once (3 GB of SmolLM2 caches at 2048); a wider
#: group, written on a GPU, is coded in slices of this many, to the same bits
CPU_RESIDENT = 64


def engine_module():
    try:
        from .. import _engine
    except ImportError as exc:  # pragma: no cover - depends on the build
        raise ModelNotFoundError(f"the portable backend needs the C extension lmzip._engine: {exc}") from None
    return _engine


def default_threads() -> int:
    env = os.environ.get("LMZIP_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(os.cpu_count() or 1, 8))


class _GroupStream(Stream):
    """One chunk's stream inside a :class:`_PortableGroup`."""

    def __init__(self, group: _PortableGroup, handle: int, length: int, n_vocab: int, vocab_size: int):
        self._group = group
        self.handle = handle
        self._left = length  # tokens still to be coded: the last one needs no evaluation
        self._n_vocab = n_vocab
        self.scores_buf = np.full(vocab_size, -np.inf, dtype=np.float32)
        self._scores = self.scores_buf
        self.pending: list[int] = []
        # lookahead (compression): the tokens the model will be shown, how many of them it
        # has been shown (pushed, and their scores taken), how many the engine was given,
        # and the rows evaluated ahead, oldest first
        self.future: list[int] | None = None
        self.shown = 0
        self.sent = 0
        self.segments: deque[_Segment] = deque()
        self.n_embd = group._eng.n_embd
        self.n_model = n_vocab
        self._hidden = np.zeros(self.n_embd, dtype=np.float32)

    def scores(self) -> np.ndarray:
        return self._scores  # valid until the group's next advance()

    def take(self, row: np.ndarray) -> None:
        """The scores after the stream's latest token: a row of the engine's logits, itself
        when it spans the vocabulary (a GPU's rows; no copy), else copied before the escapes."""
        if len(row) == len(self.scores_buf):
            self._scores = row
        else:
            self.scores_buf[: len(row)] = row
            self._scores = self.scores_buf

    def hidden(self) -> np.ndarray:
        """The final normalized hidden state behind :meth:`scores` (float32, n_embd):
        what the output head read; valid until the group's next advance()."""
        self._group._eng.stream_hidden(self.handle, self._hidden)
        return self._hidden

    def push(self, token: int) -> None:
        self._left -= 1
        if token < self._n_vocab and self._left > 0:  # escape symbols are not shown to the model
            self.pending.append(token)


class _Segment:
    """Rows evaluated ahead for a stream: rows ``offset ..`` of ``job`` are the logits after
    its tokens ``future[start : start + count]``."""

    __slots__ = ("job", "start", "count", "offset")

    def __init__(self, job, start: int, count: int, offset: int):
        self.job, self.start, self.count, self.offset = job, start, count, offset


class _Ready:
    """The C engine's rows, computed by the call that made them (the job of a GPU's
    ``rows_job``, already done)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: np.ndarray):
        self._rows = rows

    def rows(self) -> np.ndarray:
        return self._rows


#: rows of logits one engine call evaluates ahead for a group, at most (lookahead), unless
#: the engine says otherwise (``engine.ahead_rows``: a GPU's steps take far more rows)
AHEAD_ROWS = 64


class _PortableGroup(StreamGroup):
    """Chunks in lockstep: :meth:`advance` evaluates every stream's pending tokens in one
    engine call.  Every stream starts with the start token.

    With :meth:`lookahead` (compression), a call evaluates each stream's next tokens too,
    up to the engine's step (``MAX_STEP`` tokens) and AHEAD_ROWS rows for the group, and later
    advances use those rows: the weights are read once for all of them.  An engine whose
    calls return before their work is done (a GPU's ``rows_job``) is given each stream's
    next block as soon as the stream starts on the rows of the last: the GPU evaluates it
    while the host mixes and codes.  Streams that fell behind the others (escapes) join
    their calls.  The logits are the engine's for those tokens however the calls are
    split, so the file is the same."""

    def __init__(self, model: PortableModel, lengths: list[int], device_rows: bool = False):
        self._model = model
        self._eng = model._engine
        #: the rows stay where the engine computed them (a GPU's, for its mixer): each
        #: stream's scores() is then a row of a device tensor
        self._device_rows = device_rows
        n_vocab = model.tokenizer.n_model_tokens
        self._n_vocab = n_vocab
        self._width = model.vocab_size
        self._out = np.empty((len(lengths), n_vocab), dtype=np.float32)
        #: an engine whose calls return before their work is done (a GPU's); whether the
        #: compressor gives it each stream's next block while the host codes the last
        self._jobs = hasattr(self._eng, "rows_job")
        self._overlap = self._jobs and getattr(self._eng, "overlap", True)
        streams = []
        try:
            for n in lengths:
                streams.append(_GroupStream(self, self._eng.new_stream(model.context), n, n_vocab, model.vocab_size))
        except BaseException:
            for s in streams:
                self._eng.free_stream(s.handle)
            raise
        super().__init__(streams)
        for s in self.streams:
            s.pending.append(model.start_token)
        self.advance()

    def lookahead(self, tokens: list[list[int]]) -> None:
        for s, toks in zip(self.streams, tokens):
            # what push() will show the model: every token but the last, escapes left out
            s.future = [t for t in toks[:-1] if t < self._n_vocab]
            s.shown = s.sent = 0

    def advance(self) -> None:
        todo = [s for s in self.streams if s.pending]
        if not todo:
            return
        if any(s.handle is None for s in todo):
            raise LMZipError("stream used after close")
        if any(s.future is not None for s in todo):
            late = [s for s in todo if not self._from_ahead(s)]
            if not late and not self._overlap:  # every stream had its rows: no call this step
                return
            per = self._per(self._ahead_streams())
            self._eval_ahead(late, join_below=per)
            for s in late:
                self._from_ahead(s)
            if self._overlap:  # the next block of each stream that has less than one left
                self._eval_ahead([s for s in todo if s.future is not None and s.sent < len(s.future)
                                  and s.sent - s.shown < per], join_below=2 * per)
            return
        rows = self._job(todo, [s.pending for s in todo], every=False).rows()
        for s, row in zip(todo, rows):
            s.take(row)
            s.pending = []

    def _job(self, streams: list[_GroupStream], lists: list[list[int]], every: bool):
        """One engine call: the logits after each stream's tokens in ``lists`` (``every``:
        after each of them, stream by stream in order; else after each stream's last)."""
        handles = [s.handle for s in streams]
        if self._jobs:
            if self._device_rows:  # (only a GPU's own engine keeps its rows: stand-ins need not know)
                return self._eng.rows_job(handles, lists, self._width, every, to_host=False)
            return self._eng.rows_job(handles, lists, self._width, every)
        if every:
            rows = np.empty((sum(len(t) for t in lists), self._n_vocab), dtype=np.float32)
            self._eng.eval_rows(handles, lists, rows)
        else:
            rows = self._out[: len(streams)]
            self._eng.eval(handles, lists, rows)
        return _Ready(rows)

    def _check_future(self, s: _GroupStream) -> None:
        k = len(s.pending)
        if s.future is None or s.future[s.shown : s.shown + k] != s.pending:
            raise LMZipError("internal error: a stream was pushed other tokens than its lookahead announced")

    def _from_ahead(self, s: _GroupStream) -> bool:
        """The stream's scores from the rows evaluated ahead, if the engine was given its
        pending tokens (the rows before them are dropped)."""
        if s.future is None:
            return False
        self._check_future(s)
        last = s.shown + len(s.pending) - 1  # the scores asked for follow future[last]
        while s.segments and s.segments[0].start + s.segments[0].count <= last:
            s.segments.popleft()
        if not s.segments:
            return False
        seg = s.segments[0]
        s.take(seg.job.rows()[seg.offset + last - seg.start])
        s.shown = last + 1
        s.pending = []
        return True

    def _ahead_streams(self) -> list[_GroupStream]:
        """The streams with tokens of their lookahead the engine was not given yet."""
        return [s for s in self.streams if s.future is not None and s.handle is not None and s.sent < len(s.future)]

    def _per(self, streams: list) -> int:
        """Tokens a stream of an engine call of ``streams`` is evaluated ahead: the engine's
        step, or fewer so that the call's rows stay in the engine's budget."""
        budget = getattr(self._eng, "ahead_rows", AHEAD_ROWS)
        return max(1, min(engine_module().MAX_STEP, budget // max(1, len(streams))))

    def _eval_ahead(self, streams: list[_GroupStream], join_below: int = 0) -> None:
        """One engine call: each stream's pending tokens the engine was not given yet and as
        many of its next ones as fit.  Every other stream with fewer than ``join_below`` rows
        evaluated ahead and not yet used joins the call: a stream that fell behind the
        others (an escape codes a symbol the model is not shown) is given its next block
        with theirs, not in a call of its own, so the group's calls stay as wide as the
        group and, on a GPU, of one shape (a CUDA graph's)."""
        if not streams:
            return
        if join_below:
            chosen = {id(s) for s in streams}
            streams = streams + [s for s in self._ahead_streams()
                                 if id(s) not in chosen and s.sent - s.shown < join_below]
        per = self._per(streams)
        lists = []
        for s in streams:
            if s.future is None:
                lists.append(list(s.pending))
                continue
            self._check_future(s)
            k = max(s.shown + len(s.pending) - s.sent, min(per, len(s.future) - s.sent))
            lists.append(s.future[s.sent : s.sent + k])
        job = self._job(streams, lists, every=True)
        r = 0
        for s, toks in zip(streams, lists):
            if s.future is None:
                s.take(job.rows()[r + len(toks) - 1])
                s.pending = []
            else:
                s.segments.append(_Segment(job, s.sent, len(toks), r))
                s.sent += len(toks)
            r += len(toks)

    def close(self) -> None:
        for s in self.streams:
            s.segments.clear()
            if s.handle is not None:
                self._eng.free_stream(s.handle)
                s.handle = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


class _PortableStream(Stream):
    """One chunk alone: a group of one, evaluated when scores are next asked for."""

    def __init__(self, model: PortableModel):
        self._group = _PortableGroup(model, [sys.maxsize])
        self._stream = self._group.streams[0]
        self.n_embd, self.n_model = self._stream.n_embd, self._stream.n_model

    def scores(self) -> np.ndarray:
        self._group.advance()
        return self._stream.scores()

    def hidden(self) -> np.ndarray:
        self._group.advance()
        return self._stream.hidden()

    def push(self, token: int) -> None:
        self._stream.push(token)

    def close(self) -> None:
        self._group.close()


class PortableModel(Model):
    """A GGUF llama model (Q4_1/Q8_0) or gemma3 model (Q8_0/Q5_0/Q4_K/Q6_K) run by lmzip's
    portable engine.

    Args:
        path: the GGUF file.
        name: registry name stored in headers.
        sha256: hex SHA-256 of the GGUF file (part of the fingerprint; names the cache).
        context: window in tokens (16..65536).
        threads: CPU threads (does not change results).
        isa: force a kernel set ("scalar", "sse2", "avx2", "avx512"; "neon" on aarch64; default: the best,
            or ``$LMZIP_ENGINE_ISA``); does not change results.
        tokenize_text: the text tokenizer (valid UTF-8 -> ids); default the GGUF's own
            (:class:`lmzip.predictors.gguf_tokenizer.GGUFTokenizer`), which needs no llama.cpp.
        weights: an engine weights file to use instead of the cached conversion.
    """

    batches = True
    #: the engine's logits do not depend on the calls (docs/engine.md)
    independent_streams = True

    def __init__(self, path: str | os.PathLike, *, name: str, sha256: str, context: int = 2048,
                 threads: int | None = None, isa: str | None = None,
                 tokenize_text: Callable[[bytes], list[int]] | None = None,
                 weights: str | os.PathLike | None = None):
        E = engine_module()
        self.path = Path(path)
        if not self.path.exists():
            raise ModelNotFoundError(f"no model file {self.path}")
        self.name = name
        self.sha256 = sha256
        self.model_sha256 = bytes.fromhex(sha256)
        self.context = int(context)
        if not 16 <= self.context <= 65536:
            raise ValueError("context must be 16 to 65536 tokens")
        self.threads = int(threads) if threads else default_threads()
        self.weights = Path(weights) if weights else cached_weights(self.path, sha256)
        try:
            self._engine = self._make_engine(E, isa)
        except RuntimeError as exc:
            raise LMZipError(f"portable engine: {exc}") from None
        self.numerics = E.NUMERICS
        vp = vocab_path(self.weights)
        pieces, bos = read_vocab(vp) if vp.exists() else gguf_pieces(self.path)
        if len(pieces) != self._engine.n_vocab:
            raise LMZipError("the weights file does not match the model's vocabulary")
        self.start_token = bos
        if tokenize_text is None:  # the model's own tokenizer, without llama.cpp
            from .gguf_tokenizer import GGUFTokenizer

            tokenize_text = GGUFTokenizer(self.path).tokenize_text
        self.tokenizer = PieceTokenizer(pieces, tokenize_text)

    def _make_engine(self, E, isa: str | None):
        """The engine that computes the logits (lmzip.gpu.model.GPUModel puts a GPU's here)."""
        return E.Engine(str(self.weights), self.threads, isa or "")

    @property
    def isa(self) -> str:
        return self._engine.isa

    def params(self) -> dict[str, Any]:
        return {"backend": f"portable {self.numerics}", "context": self.context, "model": self.name}

    def open_stream(self) -> Stream:
        return _PortableStream(self)

    def resident_width(self) -> int | None:
        return self.gpu_width() or CPU_RESIDENT

    def open_group(self, lengths: list[int], width: int = 1, device_rows: bool = False) -> StreamGroup:
        """``device_rows`` (a GPU's engine): each stream's scores stay on the device."""
        if not 1 <= len(lengths) <= width <= MAX_WIDTH:
            raise ValueError(f"a group of width {width} (at most {MAX_WIDTH}) holds 1 to {width} chunks, "
                             f"not {len(lengths)}")
        return _PortableGroup(self, lengths, device_rows)

    def describe(self) -> str:
        return (f"{self.name} ({self.path.name}, portable engine {self.numerics}, {self.isa}, "
                f"context {self.context})")

    @property
    def closed(self) -> bool:
        return getattr(self, "_engine", None) is None

    def close(self) -> None:
        self._engine = None
