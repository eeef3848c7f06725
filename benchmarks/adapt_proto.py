"""Offline prototypes of online adaptation on the final hidden state (issue 20), on top
of the real mixer (MixedStream, default settings), from benchmarks/adapt_dump.py output.

Logits are recomputed in numpy from the dumped hidden states (the engine's activation
quantization, float32 matmul with the dequantized Q8_0 head: not bit-exact, within
1e-5 bpb).  Each configuration codes through the real quantization rule.

    PYTHONPATH=. python benchmarks/adapt_proto.py /tmp/adapt/alice [N_TOKENS]
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace  # noqa: F401

import numpy as np

from lmzip import cdf
from lmzip.predictors.base import Stream
from lmzip.predictors.mixing import ADAPT_MIX, DEFAULT_MIX, NO_MIX, MixedStream, MixSettings  # noqa: F401
from lmzip.predictors.registry import _smollm2_path

_T = float(cdf.TOTAL)


def head():
    import gguf
    from gguf.quants import dequantize

    r = gguf.GGUFReader(str(_smollm2_path()))
    for t in r.tensors:
        if t.name == "token_embd.weight":
            return dequantize(t.data, t.tensor_type).astype(np.float32)


def quant(h):
    b = h.reshape(len(h), -1, 32)
    amax = np.abs(b).max(axis=2, keepdims=True)
    inv = np.where(amax > 0, 127.0 / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.clip(np.rint(b * inv), -127, 127)
    return (q * (amax / 127.0)).reshape(h.shape).astype(np.float32)


class View(Stream):
    current = None
    hid = None
    n_embd = 576
    n_model = 49152

    def scores(self):
        return self.current

    def hidden(self):
        return self.hid

    def push(self, token):
        pass


class Cached(MixedStream):
    """MixedStream + a neural cache over the hidden states: for the last ``win`` tokens j,
    c_j = cos(h_j, h) and token y_j (the one that followed h_j) gets acc += exp(theta (c_j - 1));
    s_y += lam * log1p(acc_y), lam learned (plain SGD on the code length, rate ``rate``)."""

    def __init__(self, base, V, settings, n_model, win=4096, theta=20.0, rate=0.02, lam=0.0):
        super().__init__(base, V, settings)
        self.win, self.theta, self.rate, self.lam = win, theta, rate, lam
        self.H = np.zeros((win, 576), np.float32)
        self.Y = np.zeros(win, np.int64)
        self.n = 0
        self._hn = None
        self._ft = None

    def _mix(self):
        super()._mix()
        h = self._base.hid
        self._hn = (h / np.sqrt(float(h @ h))).astype(np.float32)
        self._ft = None
        m = min(self.n, self.win)
        if m:
            c = self.H[:m] @ self._hn
            e = np.exp(self.theta * (c - 1.0))
            toks, inv = np.unique(self.Y[:m], return_inverse=True)
            v = np.log1p(np.bincount(inv, e))
            self._ft = (toks, v)
            self._s[toks] += self.lam * v

    def _learn(self, token, q):
        super()._learn(token, q)
        if self._ft is not None:
            toks, v = self._ft
            hit = np.flatnonzero(toks == token)
            val = float(v[hit[0]]) if hit.size else 0.0
            exp = float(((q[toks] + 1.0) * v).sum()) / _T
            self.lam = min(8.0, max(0.0, self.lam + self.rate * (val - exp)))
        self.H[self.n % self.win] = self._hn
        self.Y[self.n % self.win] = token
        self.n += 1


class LowRank(MixedStream):
    """MixedStream + a context-conditioned bias: z = P h / |h| * sqrt(r) (P a fixed
    random +-1/sqrt(576) matrix, r rows), s += U z, U (vocab x r) learned like the bias
    (dense SGD on the code length at ``rate``)."""

    def __init__(self, base, V, settings, n_model, r=16, rate=0.05, seed=1):
        super().__init__(base, V, settings)
        rng = np.random.default_rng(seed)
        self.P = (rng.integers(0, 2, (r, 576)) * 2 - 1) / math.sqrt(576)
        self.U = np.zeros((V, r))
        self.rate, self.r = rate, r
        self._z = None

    def _mix(self):
        super()._mix()
        h = self._base.hid.astype(np.float64)
        z = self.P @ h
        z = z / math.sqrt(float(z @ z))
        self._z = z
        self._s += self.U @ z

    def _learn(self, token, q):
        super()._learn(token, q)
        z = self._z * self.rate
        self.U -= ((q + 1.0) / _T)[:, None] * z[None, :]
        self.U[token] += z


class Adapted(MixedStream):
    """MixedStream + sparse updates of output rows D (logit_i += D_i . h for the top-K
    tokens of the mixed scores), SGD on the code length with step lr / |h|^2."""

    def __init__(self, base, V, settings, n_model, K=64, lr=0.0, mode="rows", center=0.0):
        super().__init__(base, V, settings)
        self.K, self.lr, self.n_model, self.mode = K, lr, n_model, mode
        self.center = center
        self.mu = None
        self.D = np.zeros((n_model, 576), np.float32) if lr else None
        self._top = None

    def _mix(self):
        super()._mix()
        if not self.lr:
            return
        s = self._s
        n = self.n_model
        top = np.argpartition(-s[:n], self.K)[: self.K]
        h = self._base.hid
        if self.center:
            if self.mu is None:
                self.mu = h.copy()
            h = h - self.mu
            self.mu = self.center * self.mu + (1 - self.center) * self._base.hid
        self._h = h
        s[top] += self.D[top] @ h
        self._top = top

    def _learn(self, token, q):
        super()._learn(token, q)
        if not self.lr or token >= self.n_model:
            return
        h = self._h
        step = self.lr / float(h @ h + 1e-9)
        top = self._top
        p = (q[top] + 1.0) / _T
        self.D[top] -= (step * p)[:, None].astype(np.float32) * h[None, :]
        self.D[token] += np.float32(step) * h


def main():
    pre = sys.argv[1]
    hid = np.load(pre + ".hidden.npy")
    tok = np.load(pre + ".tokens.npy")
    N = min(int(sys.argv[2]), len(tok)) if len(sys.argv) > 2 else len(tok)
    configs = eval(sys.argv[3]) if len(sys.argv) > 3 else None
    W = head()
    n_model = W.shape[0]
    V = n_model + 256 + 2  # placeholder; fixed below from the tokenizer
    from lmzip.predictors.registry import load_model

    V = load_model("smollm2-135m", backend="portable", mix=NO_MIX, threads=1).vocab_size
    if configs is None:
        configs = {"bare": (NO_MIX, 0, 0.0), "mix": (DEFAULT_MIX, 0, 0.0),
                   "mix+rows K64 lr.5": (DEFAULT_MIX, 64, 0.5), "mix+rows K64 lr1": (DEFAULT_MIX, 64, 1.0),
                   "rows alone K64 lr.5": (NO_MIX, 64, 0.5)}
    runs = {}
    for name, (st, K, lr) in configs.items():
        v = View()
        if isinstance(st, MixSettings) and K == "c":
            m = MixedStream(v, V, st)
        elif isinstance(K, dict) and "r" in K:
            m = LowRank(v, V, st, n_model, **K)
        elif isinstance(K, dict):
            m = Cached(v, V, st, n_model, **K)
        else:
            m = Adapted(v, V, st, n_model, K=K or 64, lr=lr[0] if isinstance(lr, tuple) else lr,
                        center=lr[1] if isinstance(lr, tuple) else 0.0)
        runs[name] = [v, m, np.empty(V), 0.0]
    full = np.full(V, -np.inf, np.float32)
    t0 = time.time()
    for c0 in range(0, N, 256):
        c1 = min(N, c0 + 256)
        L = quant(hid[c0:c1]) @ W.T
        for i in range(c0, c1):
            full[:n_model] = L[i - c0]
            t = int(tok[i])
            for r in runs.values():
                r[0].current = full
                r[0].hid = hid[i]
                r[1].distribution(r[2])
                r[3] += 24.0 - math.log2(r[2][t] + 1.0)
                r[1].push(t)
        print(f"{c1}/{N} {time.time() - t0:.0f}s " + " ".join(f"{k}={r[3] / c1:.4f}" for k, r in runs.items()),
              file=sys.stderr, flush=True)
    print(f"{pre} {N} tokens; bits/token:")
    base = runs["mix"][3] if "mix" in runs else None
    for k, r in runs.items():
        if isinstance(r[1], Cached):
            print("   lam", r[1].lam)
        print(f"  {k:30s} {r[3] / N:.4f} bits/token  {r[3] / 8:.0f} bytes" +
              (f"  {100 * (r[3] / base - 1):+.2f} % vs mix" if base else ""))


if __name__ == "__main__":
    main()
