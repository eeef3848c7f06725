"""The engine's forward pass on a GPU: weights on the device, the streams' caches, and the
step schedule of native/engine/engine.c's ``step`` (llama) and gemma.inc's ``gemma_step``
(Gemma 3: query and key norms, NEOX RoPE, local layers with their own RoPE base and
sliding window, post-norms, GELU; docs/engine.md), with the Triton kernels of
:mod:`lmzip.gpu.kernels`.

:class:`GPUEngine` has the interface of the C engine (``lmzip._engine.Engine``):
``new_stream``, ``eval(handles, token_lists, out)``, ``free_stream``, ``stream_pos``,
``stream_hidden``, ``n_vocab``, ``bos``, ``n_embd``.  A call evaluates every stream's
tokens in steps of at most 32 tokens per stream, all streams of a step together (the
weights are read once per step); a stream's logits do not depend on the others, nor on
how its tokens are split into calls, exactly as on the CPU.

Under ``TRITON_INTERPRET=1`` the same code runs on the CPU (torch CPU tensors, Triton's
interpreter): the tests use it to compare the kernels with the C engine.
"""

from __future__ import annotations

import contextlib
import itertools
import os

import numpy as np

from ..errors import LMZipError
from . import kernels as K
from .constants import F32
from .rope import RopeTable
from .tiles import Blocks, _blocks, _pow2, head_split, product_tokens, rope_tokens, triton_cdiv
from .weights import T_K16, T_Q4_1, read_weights

__all__ = ["GPUEngine", "MAX_STEP", "RowsJob", "launch"]

#: most tokens of one stream in one step (the ring holds context - 1 + 31 slots: LMZ_MAX_STEP)
MAX_STEP = 32
#: bytes of logits one lookahead call brings to the host at most (``GPUEngine.ahead_rows``)
AHEAD_BYTES = 256 << 20


#: CUDA graphs kept, one per step shape (streams, tokens each, score rows), the least recently used
#: dropped first: a wide group's tail (streams finishing step by step) passes through
#: hundreds of widths, and a graph of T tokens holds its own [T, n_vocab] logits (0.2 GB
#: at 1,024 streams, 0.26 GB for a lookahead block of 1,365 rows) and pool
MAX_GRAPHS = 4
#: a graph's score rows: the next power of two from this up that holds the step's longest
#: (the window's at most), so that shallow streams do not loop over the whole window
GRAPH_LEAST_ROW = 128


#: the PTX of every kernel compiled in this process (name and constexprs -> text), for
#: lmzip.gpu.trust's scan; empty under the interpreter
COMPILED_PTX: dict[str, str] = {}
#: the compiled kernels whose PTX was scanned, by id (launch() looks there first)
_SCANNED: dict[int, object] = {}


def launch(kernel, grid, *args, **meta):
    """Launch a kernel with floating-point contraction off (no a*b+c -> fma): always.  The
    PTX of each kernel compiled here is scanned once (lmzip.gpu.ptx): a forbidden
    instruction stops the run before its results are used."""
    compiled = kernel[grid](*args, enable_fp_fusion=False, **meta)
    if id(compiled) in _SCANNED:  # the usual case: a step launches some 420 kernels
        return
    asm = getattr(compiled, "asm", None)
    if asm and "ptx" in asm:
        key = f"{kernel.__name__}{sorted(meta.items())} {getattr(compiled, 'hash', '')}"
        if key not in COMPILED_PTX:
            from .ptx import scan_ptx

            text = asm["ptx"]
            bad = scan_ptx(text)
            if bad:
                raise LMZipError(f"the GPU kernel {kernel.__name__} was compiled with {bad[0]}: it would not "
                                 f"compute the engine's numbers (use --device cpu)")
            COMPILED_PTX[key] = text
        _SCANNED[id(compiled)] = compiled  # held, so that its id is never another kernel's


class RowsJob:
    """Logits on their way to the host (:meth:`GPUEngine.rows_job`): :meth:`rows` waits for
    them, the first time."""

    __slots__ = ("_rows", "_event", "_keep")

    def __init__(self, rows: np.ndarray, event, keep):
        self._rows = rows
        self._event = event  # None: already there
        self._keep = keep  # the tensors the copy reads and writes, alive until it is done

    def rows(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
            self._keep = None
        return self._rows


class _Stream:
    __slots__ = ("slot", "pos")

    def __init__(self, slot: int):
        self.slot = slot
        self.pos = 0


class GPUEngine:
    """A weights file (format 1, llama; format 2, Gemma 3) on a torch device, evaluated with
    the Triton kernels."""

    def __init__(self, weights_path, device: str = "cuda", context: int = 2048, blocks: Blocks | None = None):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if not 16 <= int(context) <= 65536:
            raise ValueError("context must be 16 to 65536 tokens")
        self.window = int(context)
        self.blocks = blocks or Blocks.from_env()
        w = read_weights(weights_path)
        self.gemma = w.gemma
        self.n_layer, self.n_embd, self.n_ff = w.n_layer, w.n_embd, w.n_ff
        self.n_head, self.n_kv, self.n_vocab, self.bos = w.n_head, w.n_kv, w.n_vocab, w.bos
        self.head_dim = w.head_dim
        #: rows of logits a compressor's call may evaluate ahead for a group (its lookahead,
        #: lmzip.predictors.portable): 256 MiB of them, so that 64 streams take up to 21
        #: tokens each per call (SmolLM2) instead of the CPU's one; the logits are the same
        self.ahead_rows = max(64, AHEAD_BYTES // (4 * self.n_vocab))
        self.eps = float(w.eps)
        self.group = self.n_head // self.n_kv
        self.swa = w.swa_window if self.gemma else 0
        # the engine's C (lmz_stream_new): the ring holds the window, Gemma's local window when
        # that is longer, and the rest of a step's tokens
        span = max(self.window - 1, self.swa)
        self.ring = (span + (MAX_STEP - 1) + 15) // 16 * 16
        # Gemma: x = embed * f32(sqrt(n_embd)); queries times f32(1 / sqrt(head_dim)) (lmz_load)
        f32 = np.float32
        self.emb_scale = float(np.sqrt(f32(self.n_embd)))
        self.q_scale = float(f32(1.0) / np.sqrt(f32(self.head_dim))) if self.gemma else F32["Q_SCALE"]
        dev = self.device

        def up(a):
            return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

        def product(*ms):
            """Matrices over the same input: each run of one kind stacked by rows (every row
            is its own output), one launch per run, at its columns of the output."""
            parts, offset = [], 0
            for kind, run in itertools.groupby(ms, key=lambda m: m.kind):
                run = list(run)
                part = {"kind": kind, "rows": sum(m.rows for m in run), "K": run[0].cols, "offset": offset,
                        "q": up(np.concatenate([m.q for m in run])), "d": up(np.concatenate([m.d for m in run]))}
                part["m"] = up(np.concatenate([m.m for m in run])) if kind in (T_Q4_1, T_K16) else part["d"]
                parts.append(part)
                offset += part["rows"]
            return parts

        self.embd = product(w.embd)
        self.out_norm = up(w.out_norm)
        self.rope_global = RopeTable(torch, dev, w.rope_base, self.head_dim)
        self.rope_local = RopeTable(torch, dev, w.rope_base_local, self.head_dim) if self.gemma else None
        self.layers = []
        for li, L in enumerate(w.layers):
            layer = {"attn_norm": up(L["attn_norm"]), "qkv": product(L["wq"], L["wk"], L["wv"]),
                     "wo": product(L["wo"]), "ffn_norm": up(L["ffn_norm"]), "gu": product(L["wg"], L["wu"]),
                     "wd": product(L["wd"])}
            # span, sink: what a query sees (kernels._window); scores: the most it has, a
            # multiple of 64 (a local layer's attention loops over its own window, not the step's
            # longest row: masked positions add exact zeros, so the bound changes no number)
            if w.is_global(li):  # the window, the start token always first
                layer.update(span=self.window - 1, sink_until=-1, rope=self.rope_global,
                             scores=(self.window + 63) // 64 * 64)
            else:  # Gemma's local layers: the last swa positions, the start token while p < swa
                layer.update(span=self.swa, sink_until=self.swa, rope=self.rope_local,
                             scores=(self.swa + 63) // 64 * 64)
            if self.gemma:
                for name in ("q_norm", "k_norm", "post_attn_norm", "post_ffn_norm"):
                    layer[name] = up(L[name])
            else:  # not read (QK_NORM off): any float32 tensor
                layer["q_norm"] = layer["k_norm"] = layer["attn_norm"]
            self.layers.append(layer)
        self._streams: dict[int, _Stream] = {}
        self._free: list[int] = []
        self._cap = 0
        self._next_handle = 1
        self.kc = self.vc = self.sk = self.sv = self.hidden = None
        self._pinned = None
        # CUDA graphs of steps of the same number of tokens for every stream, by (streams,
        # tokens, score rows) (None: off, on the CPU and with LMZIP_GPU_GRAPHS=0)
        self._graphs = {} if self.device.type == "cuda" and os.environ.get("LMZIP_GPU_GRAPHS", "1") != "0" else None
        #: a compressor's group gives the engine each stream's next block while the host codes
        #: the last (lmzip.predictors.portable; off with LMZIP_GPU_OVERLAP=0, to measure it)
        self.overlap = os.environ.get("LMZIP_GPU_OVERLAP", "1") != "0"
        D = self.head_dim
        self.stream_bytes_each = (self.n_layer * self.n_kv * D * (2 * self.ring + K.RING_TAIL.value) * 2
                                  + 2 * self.n_layer * self.n_kv * D * 4)

    def _score_len(self, top: int) -> int:
        """Score row length (a multiple of 64: attn_values_kernel's loop trip) for queries up
        to position ``top``: the sink and the ring positions of the longest window, global
        or local."""
        n = min(top, self.window - 1) + 1
        if self.gemma:
            n = max(n, min(top + 1, self.swa))
        return (n + 63) // 64 * 64

    # ------------------------------------------------------------------ streams

    def _grow(self, cap: int) -> None:
        t = self.torch
        L, KV, C, E, D = self.n_layer, self.n_kv, self.ring, self.n_embd, self.head_dim

        def more(old, shape, dtype):
            new = t.zeros((cap, *shape), dtype=dtype, device=self.device)
            if old is not None:
                new[: old.shape[0]] = old
            return new

        self.kc = more(self.kc, (L, KV, D, C), t.int16)
        self.vc = more(self.vc, (L, KV, C + K.RING_TAIL.value, D), t.int16)  # the ring's tail repeats its start
        self.sk = more(self.sk, (L, KV, D), t.float32)
        self.sv = more(self.sv, (L, KV, D), t.float32)
        self.hidden = more(self.hidden, (E,), t.float32)
        self._drop_graphs()  # the caches moved
        self._free.extend(range(self._cap, cap))
        self._cap = cap

    def new_stream(self, context: int | None = None) -> int:
        if context is not None and int(context) != self.window:
            raise ValueError(f"this GPU engine runs a window of {self.window} tokens, not {context}")
        if not self._free:
            with self._on_device():
                self._grow(max(8, 2 * self._cap))
        self._free.sort(reverse=True)
        h = self._next_handle
        self._next_handle += 1
        self._streams[h] = _Stream(self._free.pop())
        return h

    def free_stream(self, handle: int) -> None:
        s = self._streams.pop(handle, None)
        if s is not None:
            self._free.append(s.slot)

    def stream_pos(self, handle: int) -> int:
        return self._streams[handle].pos

    def stream_bytes(self, handle: int) -> int:
        return self.stream_bytes_each

    def stream_hidden(self, handle: int, out: np.ndarray) -> None:
        out[:] = self.hidden[self._streams[handle].slot].cpu().numpy()

    # ------------------------------------------------------------------ evaluation

    def eval(self, handles, token_lists, out: np.ndarray | None = None, every: list | None = None):
        """Evaluate each stream's tokens; the logits after each stream's last token go to
        ``out[i]`` (float32 [n, n_vocab], host), and the last step's logits (a device tensor,
        rows of the streams whose last token it held) are returned.  ``every`` (a list)
        instead receives, for each step, the logits of every token (device tensor
        [tokens, n_vocab], tokens in stream order): the golden checks use it."""
        logits = None
        with self._on_device():
            for _, want, logits in self._steps(handles, token_lists, every is not None, graphs=every is None):
                if every is not None:
                    every.append(logits)
                elif out is not None and logits is not None:
                    out[[i for i, w in enumerate(want) if w]] = self._to_host(logits)
        return logits

    def eval_rows(self, handles, token_lists, rows: np.ndarray) -> None:
        """The C engine's ``eval_rows``: the logits after every token, stream by stream in
        order, into ``rows`` (float32 [sum of the counts, n_vocab], host)."""
        rows[:] = self.rows_job(handles, token_lists, self.n_vocab).rows()

    def rows_job(self, handles, token_lists, width: int, every: bool = True, to_host: bool = True) -> RowsJob:
        """Launch the evaluation of each stream's tokens and the copy of their logits to the
        host, and return at once: on a GPU the work runs while the host goes on (the
        compressor mixes one block of tokens while the next is evaluated).  The job's
        ``rows()`` waits for them: float32 [rows, width] on the host, -inf past n_vocab (the
        tokenizer's escapes, which the model never gives); with ``every``, the logits after
        every token, stream by stream in order (:meth:`eval_rows`), else after each stream's
        last token (:meth:`eval`'s ``out``).  Rows go straight from the device to pinned host
        memory, where the mixer reads them: no copy on the host.  Not ``to_host``: the rows
        stay on the device (a tensor), for the GPU's mixer (lmzip.gpu.mixer)."""
        t = self.torch
        n = self.n_vocab
        counts = [len(tl) for tl in token_lists]
        starts = np.cumsum([0] + counts[:-1]).tolist()
        with self._on_device():
            dest = t.empty((sum(counts) if every else len(counts), width), dtype=t.float32, device=self.device)
            if width > n:
                dest[:, n:] = float("-inf")
            for (done, cnt), want, logits in self._steps(handles, token_lists, every, graphs=True):
                if every:  # the step's tokens, stream by stream: to their rows
                    at = [starts[i] + done + k for i, c in enumerate(cnt) for k in range(c)]
                else:  # the last tokens of the streams it ends
                    at = [i for i, w in enumerate(want) if w]
                if not at:
                    continue
                if at == list(range(at[0], at[0] + len(at))):
                    dest[at[0]: at[0] + len(at), :n] = logits
                else:
                    dest[:, :n].index_copy_(0, t.tensor(at, dtype=t.int64, device=self.device), logits)
            if not to_host:  # rows() waits for the logits, as for the host's
                if self.device.type != "cuda":
                    return RowsJob(dest, None, None)
                done_event = t.cuda.Event()
                done_event.record(t.cuda.current_stream(self.device))
                return RowsJob(dest, done_event, None)
            if self.device.type != "cuda":
                return RowsJob(dest.numpy(), None, dest)
            host = t.empty(dest.shape, dtype=t.float32, pin_memory=True)
            host.copy_(dest, non_blocking=True)
            done_event = t.cuda.Event()
            done_event.record(t.cuda.current_stream(self.device))
            return RowsJob(host.numpy(), done_event, (host, dest))

    def _steps(self, handles, token_lists, every: bool, graphs: bool):
        """Evaluate each stream's tokens in steps of at most MAX_STEP tokens per stream;
        yields for each step ((tokens of each stream before it, its tokens per stream),
        which streams' last token it holds, its logits: with ``every`` each token's, in
        stream order, else the rows of the streams whose last token it holds).  A step of
        the same number of tokens for every stream is a CUDA graph's (``graphs``, on a
        GPU): a lockstep group's one token a step, the lookahead's blocks."""
        streams = [self._streams[h] for h in handles]
        tokens = [[int(t) for t in tl] for tl in token_lists]
        for tl in tokens:
            if not tl:
                raise LMZipError("every stream needs at least one token")
            if min(tl) < 0 or max(tl) >= self.n_vocab:
                raise LMZipError("token out of range")
        done = 0
        while True:
            cnt = [max(0, min(MAX_STEP, len(tl) - done)) for tl in tokens]
            if not any(cnt):
                break
            want = [c > 0 and len(tl) - done <= MAX_STEP for c, tl in zip(cnt, tokens)]
            step_toks = [tl[done: done + c] for tl, c in zip(tokens, cnt)]
            if graphs and self._graphs is not None and len(set(cnt)) == 1 and (every or all(want)):
                logits = self._graph_step(streams, step_toks)  # every stream, every token
                if not every and cnt[0] > 1:
                    logits = logits[cnt[0] - 1:: cnt[0]]  # each stream's last token
            else:
                logits = self._step(streams, step_toks, want, every)
            yield (done, cnt), want, logits
            done += MAX_STEP

    @contextlib.contextmanager
    def _on_device(self):
        """This engine's GPU as the current device while it works (Triton launches on the
        current device, and a worker's engine may be on another than cuda:0); the GPU
        running out of memory is an LMZipError that says what to do, not a traceback."""
        t = self.torch
        try:
            with t.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
                yield
        except t.cuda.OutOfMemoryError:
            raise LMZipError(f"the GPU ({self.device}) ran out of memory with {len(self._streams)} streams "
                             f"(each holds its cache and its rows of logits): give fewer with --streams, "
                             f"or use --device cpu") from None

    def _to_host(self, logits) -> np.ndarray:
        if self.device.type != "cuda":
            return logits.numpy()
        n = logits.shape[0]
        if self._pinned is None or self._pinned.shape[0] < n:
            self._pinned = self.torch.empty((max(n, 8), self.n_vocab), dtype=self.torch.float32, pin_memory=True)
        host = self._pinned[:n]
        host.copy_(logits)
        return host.numpy()

    def _step(self, streams, toks, want, all_logits: bool):
        """One step, launched eagerly: the streams' tokens (at most MAX_STEP each)."""
        t = self.torch
        dev = self.device
        tok_ids, slots, poss, last = [], [], [], []
        for s, tl in zip(streams, toks):
            for k, tok in enumerate(tl):
                tok_ids.append(tok)
                slots.append(s.slot)
                poss.append(s.pos + k)
            last.append(len(tok_ids) - 1)
        T = len(tok_ids)
        top = max(poss)
        self._ensure_rope(top + 1)
        NS = self._score_len(top)  # the longest score row
        if all_logits:
            rows = list(range(T))
            latest = [(s.slot, last[i]) for i, (s, tl) in enumerate(zip(streams, toks)) if tl]
        else:
            rows = [r for r, w in zip(last, want) if w]
            latest = [(s.slot, k) for k, s in enumerate(s for s, w in zip(streams, want) if w)]
        ints = t.tensor(tok_ids + slots + rows + [a for a, _ in latest] + [b for _, b in latest], dtype=t.int32)
        ints = ints.to(dev)
        pos_d = t.tensor(poss, dtype=t.int64).to(dev)
        n_r, n_l = len(rows), len(latest)
        tok_d, slot_d = ints[:T], ints[T: 2 * T]
        rows_d = ints[2 * T: 2 * T + n_r]
        lslot_d = ints[2 * T + n_r: 2 * T + n_r + n_l].long()
        lrow_d = ints[2 * T + n_r + n_l:].long()
        logits = t.empty((n_r, self.n_vocab), dtype=t.float32, device=dev) if rows else None
        self._forward(tok_d, slot_d, pos_d, T, NS, rows_d, lslot_d, lrow_d, logits)
        for s, tl in zip(streams, toks):
            s.pos += len(tl)
        return logits

    def _ensure_rope(self, size: int) -> None:
        for table in (self.rope_global, self.rope_local):
            if table is not None and size > table.size:
                table.ensure(size)
                self._drop_graphs()  # the tables moved

    def _forward(self, tok_d, slot_d, pos_d, T: int, NS: int, rows_d, lslot_d, lrow_d, logits) -> None:
        """The step's kernels, on device tensors only (so that a CUDA graph can hold them):
        tokens, their streams' cache slots and positions [T]; NS >= every token's scores
        (the window's, in a graph); the rows whose logits go to ``logits``; the hidden state
        of row lrow[i] to stream slot lslot[i]."""
        t = self.torch
        dev = self.device
        B = self.blocks
        E, F, NH, KV, G, HD = self.n_embd, self.n_ff, self.n_head, self.n_kv, self.group, self.head_dim
        QD = NH * HD
        GP = _pow2(G)
        QKV = (NH + 2 * KV) * HD
        gemma = self.gemma
        x = t.empty((T, E), dtype=t.float32, device=dev)
        y = t.empty((T, E), dtype=t.float32, device=dev) if gemma else None  # a product before its post-norm
        qkv = t.empty((T, QKV), dtype=t.float32, device=dev)
        ao = t.empty((T, QD), dtype=t.float32, device=dev)
        gu = t.empty((T, 2 * F), dtype=t.float32, device=dev)
        aq_e = t.empty((T, E), dtype=t.int8, device=dev)
        aq_o = aq_e if QD == E else t.empty((T, QD), dtype=t.int8, device=dev)
        aq_f = t.empty((T, F), dtype=t.int8, device=dev)
        nb = max(E, F, QD) // 32  # the block scales of whichever width is quantized
        a_s = t.empty((T, nb), dtype=t.float32, device=dev)
        a_sa = t.empty((T, nb), dtype=t.float32, device=dev)
        scores = t.empty((T, KV, GP, NS), dtype=t.float32, device=dev)  # then their exponentials
        sums = t.empty((T, KV, GP), dtype=t.float32, device=dev)  # the exponentials' sums
        rk = t.empty((T, KV, HD), dtype=t.float32, device=dev)
        nt = triton_cdiv(T, B.norm_tokens)
        rt = rope_tokens(B, HD)
        na = triton_cdiv(T, B.attn_tokens)

        def quant_tiles(width):
            """A norm's or quantization's blocks of 32 a program takes at a time, how many times
            (all in one program only where B.quant_loop), and its programs along a row."""
            nblk = _blocks(width, B.quant_blocks)
            groups = width // 32 // nblk if B.quant_loop else 1
            return nblk, groups, width // 32 // nblk // groups

        nbe, ge, pe = quant_tiles(E)
        nbo, go, po = quant_tiles(QD)
        nbf = _blocks(F, B.quant_blocks)  # the gate's blocks: side by side everywhere

        def post_norm(out, w):  # Gemma: x = x + RMSNorm(out, w)
            launch(K.norm_quant_kernel, (nt, pe), out, w, slot_d, x, aq_e, a_s, a_sa, T, self.eps,
                   E=E, NORM=True, GATHER=False, STORE_Y=False, BT=B.norm_tokens, NBLK=nbe, RESIDUAL=True,
                   QUANT=False, GROUPS=ge, STAGES=B.norm_stages)

        launch(K.embed_kernel, (nt,), tok_d, self.embd[0]["q"], self.embd[0]["d"], x, T, self.emb_scale, E=E,
               BT=B.norm_tokens, SCALED=gemma)
        for li, L in enumerate(self.layers):
            rope = L["rope"]
            ns = min(NS, L["scores"])  # this layer's longest score row (and the rows' stride)
            launch(K.norm_quant_kernel, (nt, pe), x, L["attn_norm"], slot_d, x, aq_e, a_s, a_sa, T, self.eps,
                   E=E, NORM=True, GATHER=False, STORE_Y=False, BT=B.norm_tokens, NBLK=nbe, GROUPS=ge,
                   STAGES=B.norm_stages)
            self._matmul(L["qkv"], aq_e, a_s, a_sa, qkv, T, residual=False)
            launch(K.rope_cache_kernel, (triton_cdiv(T, rt),), qkv, slot_d, pos_d, rope.cos, rope.sin, L["q_norm"],
                   L["k_norm"], self.kc, self.vc, self.sk, self.sv, T, li, self.ring, self.n_layer, self.eps,
                   self.q_scale, NH=NH, NKV=KV, HP=_pow2(NH), KP=_pow2(KV), BT=rt, HD=HD, NEOX=gemma,
                   QK_NORM=gemma, STAGES=B.norm_stages)
            launch(K.sink_rope_kernel, (triton_cdiv(T, rt),), slot_d, pos_d, rope.cos, rope.sin, self.sk, rk, T, li,
                   self.n_layer, L["span"], NKV=KV, KP=_pow2(KV), BT=rt, HD=HD, NEOX=gemma)
            launch(K.attn_scores_kernel, (na, KV, triton_cdiv(ns, B.slots)), qkv, slot_d, pos_d, self.kc, rk, scores,
                   T, li, self.ring, self.n_layer, L["span"], L["sink_until"], ns, NH=NH, NKV=KV, G=G, GP=GP,
                   BT=B.attn_tokens, BS=B.slots, HD=HD, GA=head_split(G), num_warps=B.score_warps)
            launch(K.attn_softmax_kernel, (na, KV, G), pos_d, scores, sums, T, L["span"], L["sink_until"], ns,
                   NKV=KV, GP=GP, BT=B.attn_tokens, ROWS=B.soft_rows, STAGES=B.soft_stages,
                   num_warps=B.soft_warps)
            launch(K.attn_values_kernel, (na, KV, HD // B.dims), slot_d, pos_d, self.vc, self.sv, scores, sums, ao,
                   aq_o, a_s, a_sa, T, li, self.ring, self.n_layer, L["span"], L["sink_until"], ns, NH=NH, NKV=KV,
                   G=G, GP=GP, BT=B.attn_tokens, BD=B.dims, STAGES=B.stages, HD=HD, UNROLL=B.unroll,
                   QUANT=B.values_quantize, num_warps=B.value_warps)
            if not B.values_quantize:  # the output projection's activations, quantized
                launch(K.norm_quant_kernel, (nt, po), ao, L["attn_norm"], slot_d, ao, aq_o, a_s, a_sa, T, self.eps,
                       E=QD, NORM=False, GATHER=False, STORE_Y=False, BT=B.norm_tokens, NBLK=nbo, GROUPS=go,
                       STAGES=B.norm_stages)
            if gemma:
                self._matmul(L["wo"], aq_o, a_s, a_sa, y, T, residual=False)
                post_norm(y, L["post_attn_norm"])
            else:
                self._matmul(L["wo"], aq_o, a_s, a_sa, x, T, residual=True)
            launch(K.norm_quant_kernel, (nt, pe), x, L["ffn_norm"], slot_d, x, aq_e, a_s, a_sa, T, self.eps,
                   E=E, NORM=True, GATHER=False, STORE_Y=False, BT=B.norm_tokens, NBLK=nbe, GROUPS=ge,
                   STAGES=B.norm_stages)
            self._matmul(L["gu"], aq_e, a_s, a_sa, gu, T, residual=False)
            launch(K.gate_quant_kernel, (nt, F // 32 // nbf), gu, aq_f, a_s, a_sa, T, F=F, BT=B.norm_tokens,
                   NBLK=nbf, GELU=gemma)
            if gemma:
                self._matmul(L["wd"], aq_f, a_s, a_sa, y, T, residual=False)
                post_norm(y, L["post_ffn_norm"])
            else:
                self._matmul(L["wd"], aq_f, a_s, a_sa, x, T, residual=True)
        if logits is None:
            return
        ns = logits.shape[0]
        h = t.empty((ns, E), dtype=t.float32, device=dev)
        launch(K.norm_quant_kernel, (triton_cdiv(ns, B.norm_tokens), pe), x, self.out_norm, rows_d, h, aq_e, a_s, a_sa,
               ns, self.eps, E=E, NORM=True, GATHER=True, STORE_Y=True, BT=B.norm_tokens, NBLK=nbe, GROUPS=ge,
               STAGES=B.norm_stages)
        self._matmul(self.embd, aq_e, a_s, a_sa, logits, ns, residual=False)
        # the hidden state behind each stream's latest logits (the output head's input)
        if lslot_d.numel():
            self.hidden.index_copy_(0, lslot_d, h.index_select(0, lrow_d))

    def _matmul(self, parts, aq, a_s, a_sa, out, T, residual: bool) -> None:
        """out (+)= the product's matrices times the quantized activations, each part at its
        columns of out."""
        B = self.blocks
        bt = product_tokens(T, B.tokens, B.least_tokens)
        ldo = out.shape[1]
        for W in parts:
            R = W["rows"]
            br = min(B.rows, _pow2(R))  # the interpreter's wide tiles: no wider than the matrix
            dest = out[:, W["offset"]:] if W["offset"] else out
            launch(K.matmul_kernel, (triton_cdiv(R, br), triton_cdiv(T, bt)), aq, a_s, a_sa, W["q"], W["d"],
                   W["m"], dest, T, R, ldo, K=W["K"], KIND=W["kind"], RESIDUAL=residual, BT=bt, BR=br,
                   DOT_F32=B.dot_f32, STAGES=B.product_stages)

    # ------------------------------------------------------------------ CUDA graphs

    def _drop_graphs(self) -> None:
        if self._graphs:
            self._graphs = {}

    def _graph_step(self, streams, toks):
        """A step of the same number of tokens c for every stream (the lockstep cases: one
        token a step decoding, a block of the lookahead compressing), replayed from a CUDA
        graph of the same kernels (one per number of streams, c and the length of the score
        rows, :meth:`_graph_row`): ~420 launches cost one.  The logits of every token, stream
        by stream.  The first step of a shape runs the graph's own call eagerly on the same
        tensors (it compiles exactly the kernels the graph holds), then captures it."""
        t = self.torch
        S, c = len(streams), len(toks[0])
        top = max(s.pos for s in streams) + c - 1
        self._ensure_rope(top + 1)
        key = (S, c, self._graph_row(top))
        host = t.tensor([tok for tl in toks for tok in tl] + [s.slot for s in streams for _ in range(c)]
                        + [s.pos + k for s in streams for k in range(c)], dtype=t.int64)
        g = self._graphs.pop(key, None)
        if g is None:
            while len(self._graphs) >= MAX_GRAPHS:
                del self._graphs[next(iter(self._graphs))]
            g = self._static(S, c, key[2])
            g["ints"].copy_(host)
            self._run_static(g)
            try:
                graph = t.cuda.CUDAGraph()
                t.cuda.synchronize()
                with t.cuda.graph(graph):
                    self._run_static(g)
                g["graph"] = graph
                self._graphs[key] = g
            except Exception as exc:  # graphs are a speed-up: never a failure
                import sys

                print(f"lmzip: note: CUDA graphs off ({type(exc).__name__}: {str(exc)[:120]})", file=sys.stderr)
                self._graphs = None
        else:
            self._graphs[key] = g  # the most recently used last
            g["ints"].copy_(host)
            g["graph"].replay()
        for s in streams:
            s.pos += c
        return g["logits"]

    def _graph_row(self, top: int) -> int:
        """The score rows' length of a graph whose queries reach position ``top``: a power of
        two (GRAPH_LEAST_ROW at least) that holds them, or the window's whole row.  Only
        masked positions lie beyond a token's row (exact zeros), so the length changes no
        number, only the work: a graph replays for every step until its streams outgrow it."""
        whole = self._score_len(self.window + self.swa)
        need = self._score_len(top)
        return min(whole, max(GRAPH_LEAST_ROW, 1 << (need - 1).bit_length()))

    def _static(self, S: int, c: int, NS: int) -> dict:
        """The tensors a graph of S streams of c tokens, score rows of NS, reads and writes."""
        t = self.torch
        dev = self.device
        T = S * c
        rows = t.arange(T, dtype=t.int32, device=dev)
        return {"T": T, "c": c, "NS": NS,
                "ints": t.zeros(3 * T, dtype=t.int64, device=dev),  # tokens, cache slots, positions
                "rows": rows, "last": t.arange(c - 1, T, c, dtype=t.int64, device=dev),  # each stream's last token
                "logits": t.empty((T, self.n_vocab), dtype=t.float32, device=dev)}

    def _run_static(self, g: dict) -> None:
        t = self.torch
        T, c, ints = g["T"], g["c"], g["ints"]
        tok = ints[:T].to(t.int32)
        slot = ints[T: 2 * T].to(t.int32)
        self._forward(tok, slot, ints[2 * T:], T, g["NS"], g["rows"], slot[c - 1:: c].long(), g["last"], g["logits"])
