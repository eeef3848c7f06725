"""The engine's forward pass on a GPU: weights on the device, the streams' caches, and the
step schedule of native/engine/engine.c's ``step`` (docs/engine.md), with the Triton
kernels of :mod:`lmzip.gpu.kernels`.

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

import os

import numpy as np

from ..errors import LMZipError
from . import kernels as K
from .rope import RopeTable
from .tiles import Blocks, _blocks, _pow2, product_tokens, triton_cdiv
from .weights import T_Q4_1, read_llama

__all__ = ["GPUEngine", "MAX_STEP", "launch"]

#: most tokens of one stream in one step (the ring holds context - 1 + 31 slots: LMZ_MAX_STEP)
MAX_STEP = 32


#: CUDA graphs kept, one per group width, the least recently used dropped first: a wide
#: group's tail (streams finishing step by step) passes through hundreds of widths, and a
#: graph of width T holds its own [T, n_vocab] logits (0.2 GB at 1,024 streams) and pool
MAX_GRAPHS = 4


#: the PTX of every kernel compiled in this process (name and constexprs -> text), for
#: lmzip.gpu.trust's scan; empty under the interpreter
COMPILED_PTX: dict[str, str] = {}


def launch(kernel, grid, *args, **meta):
    """Launch a kernel with floating-point contraction off (no a*b+c -> fma): always.  The
    PTX of each kernel compiled here is scanned once (lmzip.gpu.ptx): a forbidden
    instruction stops the run before its results are used."""
    compiled = kernel[grid](*args, enable_fp_fusion=False, **meta)
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


class _Stream:
    __slots__ = ("slot", "pos")

    def __init__(self, slot: int):
        self.slot = slot
        self.pos = 0


class GPUEngine:
    """A format 1 (llama) weights file on a torch device, evaluated with the Triton kernels."""

    def __init__(self, weights_path, device: str = "cuda", context: int = 2048, blocks: Blocks | None = None):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if not 16 <= int(context) <= 65536:
            raise ValueError("context must be 16 to 65536 tokens")
        self.window = int(context)
        self.ring = ((self.window - 1) + (MAX_STEP - 1) + 15) // 16 * 16  # the engine's C
        self.blocks = blocks or Blocks.from_env()
        w = read_llama(weights_path)
        self.n_layer, self.n_embd, self.n_ff = w.n_layer, w.n_embd, w.n_ff
        self.n_head, self.n_kv, self.n_vocab, self.bos = w.n_head, w.n_kv, w.n_vocab, w.bos
        self.eps = float(w.eps)
        self.group = self.n_head // self.n_kv
        dev = self.device

        def up(a):
            return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

        def mat(*ms):  # matrices over the same input, stacked by rows: every row is its own output
            out = {"kind": ms[0].kind, "rows": sum(m.rows for m in ms), "K": ms[0].cols,
                   "q": up(np.concatenate([m.q for m in ms])), "d": up(np.concatenate([m.d for m in ms]))}
            out["m"] = up(np.concatenate([m.m for m in ms])) if ms[0].kind == T_Q4_1 else out["d"]
            return out

        self.embd = mat(w.embd)
        self.out_norm = up(w.out_norm)
        self.layers = []
        for L in w.layers:
            self.layers.append({"attn_norm": up(L["attn_norm"]), "qkv": mat(L["wq"], L["wk"], L["wv"]),
                                "wo": mat(L["wo"]), "ffn_norm": up(L["ffn_norm"]), "gu": mat(L["wg"], L["wu"]),
                                "wd": mat(L["wd"])})
        self.rope = RopeTable(torch, dev, w.rope_base)
        self._streams: dict[int, _Stream] = {}
        self._free: list[int] = []
        self._cap = 0
        self._next_handle = 1
        self.kc = self.vc = self.sk = self.sv = self.hidden = None
        self._pinned = None
        # CUDA graphs of one-token steps, by width (None: off, on the CPU and with LMZIP_GPU_GRAPHS=0)
        self._graphs = {} if self.device.type == "cuda" and os.environ.get("LMZIP_GPU_GRAPHS", "1") != "0" else None
        self.stream_bytes_each = (2 * self.n_layer * self.n_kv * 64 * self.ring * 2
                                  + 2 * self.n_layer * self.n_kv * 64 * 4)

    # ------------------------------------------------------------------ streams

    def _grow(self, cap: int) -> None:
        t = self.torch
        L, KV, C, E = self.n_layer, self.n_kv, self.ring, self.n_embd

        def more(old, shape, dtype):
            new = t.zeros((cap, *shape), dtype=dtype, device=self.device)
            if old is not None:
                new[: old.shape[0]] = old
            return new

        self.kc = more(self.kc, (L, KV, 64, C), t.int16)
        self.vc = more(self.vc, (L, KV, C, 64), t.int16)
        self.sk = more(self.sk, (L, KV, 64), t.float32)
        self.sv = more(self.sv, (L, KV, 64), t.float32)
        self.hidden = more(self.hidden, (E,), t.float32)
        self._drop_graphs()  # the caches moved
        self._free.extend(range(self._cap, cap))
        self._cap = cap

    def new_stream(self, context: int | None = None) -> int:
        if context is not None and int(context) != self.window:
            raise ValueError(f"this GPU engine runs a window of {self.window} tokens, not {context}")
        if not self._free:
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
        streams = [self._streams[h] for h in handles]
        tokens = [[int(t) for t in tl] for tl in token_lists]
        for tl in tokens:
            if not tl:
                raise LMZipError("every stream needs at least one token")
            if min(tl) < 0 or max(tl) >= self.n_vocab:
                raise LMZipError("token out of range")
        done = 0
        logits = None
        while True:
            cnt = [max(0, min(MAX_STEP, len(tl) - done)) for tl in tokens]
            if not any(cnt):
                break
            want = [c > 0 and len(tl) - done <= MAX_STEP for c, tl in zip(cnt, tokens)]
            step_toks = [tl[done: done + c] for tl, c in zip(tokens, cnt)]
            if every is None and all(c == 1 for c in cnt) and self._graphs is not None:
                logits = self._graph_step(streams, [tl[0] for tl in step_toks])  # every stream: its logits
            else:
                logits = self._step(streams, step_toks, want, every is not None)
            if every is not None:
                every.append(logits)
            elif out is not None and logits is not None:
                rows = [i for i, w in enumerate(want) if w]
                out[rows] = self._to_host(logits)
            done += MAX_STEP
        return logits

    def eval_rows(self, handles, token_lists, rows: np.ndarray) -> None:
        """The C engine's ``eval_rows``: the logits after every token, stream by stream in
        order, into ``rows`` (float32 [sum of the counts, n_vocab], host).  One token per
        stream is an ordinary step (a CUDA graph on a GPU)."""
        lists = [[int(t) for t in tl] for tl in token_lists]
        if all(len(tl) == 1 for tl in lists):
            self.eval(handles, lists, rows)
            return
        every: list = []
        self.eval(handles, lists, every=every)
        # each step holds, stream by stream, that stream's tokens of the step: put them back
        # in stream order
        starts = np.cumsum([0] + [len(tl) for tl in lists])
        done = 0
        for step in every:
            host = step.cpu().numpy()
            r = 0
            for i, tl in enumerate(lists):
                k = max(0, min(MAX_STEP, len(tl) - done))
                rows[starts[i] + done: starts[i] + done + k] = host[r: r + k]
                r += k
            done += MAX_STEP

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
        NS = (min(top, self.window - 1) + 1 + 15) // 16 * 16  # the longest score row
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
        if size > self.rope.size:
            self.rope.ensure(size)
            self._drop_graphs()  # the tables moved

    def _forward(self, tok_d, slot_d, pos_d, T: int, NS: int, rows_d, lslot_d, lrow_d, logits) -> None:
        """The step's kernels, on device tensors only (so that a CUDA graph can hold them):
        tokens, their streams' cache slots and positions [T]; NS >= every token's scores
        (the window's, in a graph); the rows whose logits go to ``logits``; the hidden state
        of row lrow[i] to stream slot lslot[i]."""
        t = self.torch
        dev = self.device
        B = self.blocks
        E, F, NH, KV, G = self.n_embd, self.n_ff, self.n_head, self.n_kv, self.group
        GP = _pow2(G)
        QKV = (NH + 2 * KV) * 64
        x = t.empty((T, E), dtype=t.float32, device=dev)
        qkv = t.empty((T, QKV), dtype=t.float32, device=dev)
        ao = t.empty((T, E), dtype=t.float32, device=dev)
        gu = t.empty((T, 2 * F), dtype=t.float32, device=dev)
        aq_e = t.empty((T, E), dtype=t.int8, device=dev)
        aq_f = t.empty((T, F), dtype=t.int8, device=dev)
        nb = max(E, F) // 32
        a_s = t.empty((T, nb), dtype=t.float32, device=dev)
        a_sa = t.empty((T, nb), dtype=t.float32, device=dev)
        scores = t.empty((T, KV, GP, NS), dtype=t.float32, device=dev)
        rk = t.empty((T, KV, 64), dtype=t.float32, device=dev)
        cos, sin = self.rope.cos, self.rope.sin
        nt = triton_cdiv(T, B.norm_tokens)
        na = triton_cdiv(T, B.attn_tokens)
        nbe = _blocks(E, B.quant_blocks)

        launch(K.embed_kernel, (nt,), tok_d, self.embd["q"], self.embd["d"], x, T, E=E, BT=B.norm_tokens)
        for li, L in enumerate(self.layers):
            launch(K.norm_quant_kernel, (nt,), x, L["attn_norm"], slot_d, x, aq_e, a_s, a_sa, T, self.eps,
                   E=E, NORM=True, GATHER=False, STORE_Y=False, BT=B.norm_tokens, NBLK=nbe)
            self._matmul(L["qkv"], aq_e, a_s, a_sa, qkv, T, QKV, residual=False)
            launch(K.rope_cache_kernel, (nt,), qkv, slot_d, pos_d, cos, sin, self.kc, self.vc, self.sk, self.sv, T,
                   li, self.ring, self.n_layer, NH=NH, NKV=KV, HP=_pow2(NH), KP=_pow2(KV), BT=B.norm_tokens)
            launch(K.sink_rope_kernel, (nt,), slot_d, pos_d, cos, sin, self.sk, rk, T, li, self.n_layer,
                   self.window, NKV=KV, KP=_pow2(KV), BT=B.norm_tokens)
            launch(K.attn_scores_kernel, (na, KV, triton_cdiv(NS, B.slots)), qkv, slot_d, pos_d, self.kc, rk, scores,
                   T, li, self.ring, self.n_layer, self.window, NS, NH=NH, NKV=KV, G=G, GP=GP, BT=B.attn_tokens,
                   BS=B.slots)
            launch(K.attn_values_kernel, (na, KV, 64 // B.dims), slot_d, pos_d, self.vc, self.sv, scores, ao, T, li,
                   self.ring, self.n_layer, self.window, NS, NH=NH, NKV=KV, G=G, GP=GP, BT=B.attn_tokens, BD=B.dims,
                   STAGES=B.stages)
            launch(K.norm_quant_kernel, (nt,), ao, L["attn_norm"], slot_d, ao, aq_e, a_s, a_sa, T, self.eps,
                   E=E, NORM=False, GATHER=False, STORE_Y=False, BT=B.norm_tokens, NBLK=nbe)
            self._matmul(L["wo"], aq_e, a_s, a_sa, x, T, E, residual=True)
            launch(K.norm_quant_kernel, (nt,), x, L["ffn_norm"], slot_d, x, aq_e, a_s, a_sa, T, self.eps,
                   E=E, NORM=True, GATHER=False, STORE_Y=False, BT=B.norm_tokens, NBLK=nbe)
            self._matmul(L["gu"], aq_e, a_s, a_sa, gu, T, 2 * F, residual=False)
            launch(K.silu_quant_kernel, (nt,), gu, aq_f, a_s, a_sa, T, F=F, BT=B.norm_tokens,
                   NBLK=_blocks(F, B.quant_blocks))
            self._matmul(L["wd"], aq_f, a_s, a_sa, x, T, E, residual=True)
        if logits is None:
            return
        ns = logits.shape[0]
        y = t.empty((ns, E), dtype=t.float32, device=dev)
        launch(K.norm_quant_kernel, (triton_cdiv(ns, B.norm_tokens),), x, self.out_norm, rows_d, y, aq_e, a_s, a_sa,
               ns, self.eps, E=E, NORM=True, GATHER=True, STORE_Y=True, BT=B.norm_tokens, NBLK=nbe)
        self._matmul(self.embd, aq_e, a_s, a_sa, logits, ns, self.n_vocab, residual=False)
        # the hidden state behind each stream's latest logits (the output head's input)
        if lslot_d.numel():
            self.hidden.index_copy_(0, lslot_d, y.index_select(0, lrow_d))

    def _matmul(self, W, aq, a_s, a_sa, out, T, ldo, residual: bool) -> None:
        B = self.blocks
        R = W["rows"]
        bt = product_tokens(T, B.tokens)
        launch(K.matmul_kernel, (triton_cdiv(R, B.rows), triton_cdiv(T, bt)), aq, a_s, a_sa, W["q"], W["d"],
               W["m"], out, T, R, ldo, K=W["K"], Q4=W["kind"] == T_Q4_1, RESIDUAL=residual, BT=bt, BR=B.rows,
               DOT_F32=B.dot_f32)

    # ------------------------------------------------------------------ CUDA graphs

    def _drop_graphs(self) -> None:
        if self._graphs:
            self._graphs = {}

    def _graph_step(self, streams, toks):
        """A step of one token for every stream (the lockstep case), replayed from a CUDA
        graph of the same kernels (one per number of streams): ~420 launches cost one.  The
        first step of a width runs the graph's own call eagerly on the same tensors (it
        compiles exactly the kernels the graph holds), then captures it."""
        t = self.torch
        T = len(streams)
        self._ensure_rope(max(s.pos for s in streams) + 1)
        host = t.tensor(toks + [s.slot for s in streams] + [s.pos for s in streams], dtype=t.int64)
        g = self._graphs.pop(T, None)
        if g is None:
            while len(self._graphs) >= MAX_GRAPHS:
                del self._graphs[next(iter(self._graphs))]
            g = self._static(T)
            g["ints"].copy_(host)
            self._run_static(g)
            try:
                graph = t.cuda.CUDAGraph()
                t.cuda.synchronize()
                with t.cuda.graph(graph):
                    self._run_static(g)
                g["graph"] = graph
                self._graphs[T] = g
            except Exception as exc:  # graphs are a speed-up: never a failure
                import sys

                print(f"lmzip: note: CUDA graphs off ({type(exc).__name__}: {str(exc)[:120]})", file=sys.stderr)
                self._graphs = None
        else:
            self._graphs[T] = g  # the most recently used last
            g["ints"].copy_(host)
            g["graph"].replay()
        for s in streams:
            s.pos += 1
        return g["logits"]

    def _static(self, T: int) -> dict:
        """The tensors a graph of width T reads and writes."""
        t = self.torch
        dev = self.device
        rows = t.arange(T, dtype=t.int32, device=dev)
        return {"T": T, "ints": t.zeros(3 * T, dtype=t.int64, device=dev),  # tokens, cache slots, positions
                "rows": rows, "rows64": rows.long(), "logits": t.empty((T, self.n_vocab), dtype=t.float32, device=dev)}

    def _run_static(self, g: dict) -> None:
        t = self.torch
        T, ints = g["T"], g["ints"]
        tok = ints[:T].to(t.int32)
        slot = ints[T: 2 * T].to(t.int32)
        NS = (self.window + 15) // 16 * 16  # every depth: the kernels mask what a token does not see
        self._forward(tok, slot, ints[2 * T:], T, NS, g["rows"], slot.long(), g["rows64"], g["logits"])
