"""The torch backend's size and speed against its batched-scoring limit (issue 7).

Codes a slice of a file with SmolLM2-135M run by PyTorch (the GGUF file dequantized to
float32 by transformers, bare model, no mixing) in groups of 1 and 8 streams: the slice
is cut into as many chunks (at spaces), each chunk coded independently, all of them
advanced together, one ``[k, 1]`` forward per token step, exactly as the compressor does
(lmzip.predictors.torch_backend.TorchGroup).  Each chunk is range-coded and, with
``--verify``, decoded again by a second model instance.  The llama.cpp backend codes
the same chunks one token per call for comparison (``--llama``).

The *batched-scoring limit* is the speed of one forward over ``window`` tokens without a
cache (what a model evaluating a whole window at once manages: the ceiling for
multi-stream decoding on this machine).

    python benchmarks/torch_backend.py ../shared/corpora/canterbury/alice29.txt \\
        --limit-bytes 8192 --context 512 --streams 1,8 --threads 2 --llama --verify

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from lmzip.cdf import TOTAL
from lmzip.coding import Decoder, Encoder
from lmzip.predictors.mixing import NO_MIX
from lmzip.predictors.registry import load_model


def cut(data: bytes, n: int) -> list[bytes]:
    """``n`` chunks of about equal size, each cut after a space."""
    out, start = [], 0
    for i in range(1, n):
        at = data.find(b" ", max(start, len(data) * i // n)) + 1 or len(data)
        out.append(data[start:at])
        start = at
    out.append(data[start:])
    return [c for c in out if c]


def code_group(model, chunks: list[list[int]]) -> tuple[list[bytes], float, float, int, int]:
    """Range-code ``chunks`` in one group: (payloads, coded bits, seconds, forwards, re-primes)."""
    encs = [Encoder() for _ in chunks]
    q = np.empty(model.vocab_size, dtype=np.float64)
    bits = 0.0
    t0 = time.perf_counter()
    with model.open_group([len(c) for c in chunks], width=64) as g:
        for step in range(max(len(c) for c in chunks)):
            for c, st, enc in zip(chunks, g.streams, encs):
                if step < len(c):
                    st.distribution(q)
                    enc.encode(c[step], q)
                    bits += math.log2(TOTAL) - math.log2(q[c[step]] + 1)
                    st.push(c[step])
            g.advance()
        forwards, primes = g.forwards, g.primes
    return [e.finish() for e in encs], bits, time.perf_counter() - t0, forwards, primes


def decode_group(model, payloads: list[bytes], lengths: list[int]) -> tuple[list[list[int]], float]:
    decs = [Decoder(p) for p in payloads]
    out: list[list[int]] = [[] for _ in payloads]
    q = np.empty(model.vocab_size, dtype=np.float64)
    t0 = time.perf_counter()
    with model.open_group(lengths, width=64) as g:
        for step in range(max(lengths)):
            for i, (st, dec) in enumerate(zip(g.streams, decs)):
                if step < lengths[i]:
                    st.distribution(q)
                    tok = dec.decode(q)
                    out[i].append(tok)
                    st.push(tok)
            g.advance()
    return out, time.perf_counter() - t0


def code_serial(model, chunks: list[list[int]]) -> tuple[float, float]:
    """The llama.cpp backend, one token per call: (coded bits, seconds)."""
    q = np.empty(model.vocab_size, dtype=np.float64)
    bits = 0.0
    t0 = time.perf_counter()
    for c in chunks:
        with model.open_stream() as st:
            for t in c:
                st.distribution(q)
                bits += math.log2(TOTAL) - math.log2(q[t] + 1)
                st.push(t)
    return bits, time.perf_counter() - t0


def batched_limit(model, tokens: list[int], window: int, repeats: int = 3) -> float:
    """Tokens/s of one forward over ``window`` tokens, no cache (best of ``repeats``)."""
    import torch

    w = model._workers[0]
    ids = torch.tensor([[model.start_token] + tokens[: window - 1]], device=w.device)
    best = math.inf
    for _ in range(repeats):
        model._pin_threads()
        t0 = time.perf_counter()
        with torch.inference_mode():
            w.module(input_ids=ids, use_cache=False, logits_to_keep=1)
        best = min(best, time.perf_counter() - t0)
    return ids.shape[1] / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--limit-bytes", type=int, default=8192)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--verify", action="store_true", help="decode every group again with a second instance")
    ap.add_argument("--llama", action="store_true", help="also code the chunks with the llama.cpp backend")
    args = ap.parse_args()
    data = args.file.read_bytes()[: args.limit_bytes]
    counts = [int(s) for s in args.streams.split(",")]

    t0 = time.perf_counter()
    model = load_model("smollm2-135m", backend="torch", context=args.context, threads=args.threads,
                       dtype=args.dtype, mix=NO_MIX, device="cpu", streams=max(counts))
    print(f"loaded {model.describe()} in {time.perf_counter() - t0:.1f} s; params {model.params()}")
    checker = None
    if args.verify:  # the decompressor's own instance (not the loader's cache)
        from lmzip.predictors import registry
        from lmzip.predictors import torch_backend as tb

        checker = tb.load_torch_model(registry._smollm2_path(), name=model.name, context=args.context,
                                      dtype=args.dtype, threads=args.threads, streams=max(counts), device="cpu")
    all_tokens = model.tokenizer.encode(data)
    limit = batched_limit(model, all_tokens, args.context)
    rows = []
    for n in counts:
        chunks = [model.tokenizer.encode(c) for c in cut(data, n)]
        ntok = sum(len(c) for c in chunks)
        payloads, bits, secs, forwards, primes = code_group(model, chunks)
        payload = sum(len(p) for p in payloads)
        verified = ""
        if checker is not None:
            decoded, dsecs = decode_group(checker, payloads, [len(c) for c in chunks])
            assert decoded == chunks, "round trip failed"
            verified = f"yes ({ntok / dsecs:.1f} tokens/s)"
        rows.append((f"torch fp32, {n} stream(s)", len(chunks), ntok, 8 * payload / len(data), bits / len(data),
                     ntok / secs, forwards, primes, verified))
        print(rows[-1], flush=True)
    if args.llama:
        lm = load_model("smollm2-135m", context=args.context, threads=args.threads, mix=NO_MIX)
        for n in counts:
            chunks = [lm.tokenizer.encode(c) for c in cut(data, n)]
            ntok = sum(len(c) for c in chunks)
            bits, secs = code_serial(lm, chunks)
            rows.append((f"llama.cpp Q4_1, {n} chunk(s), one token per call", len(chunks), ntok, math.nan,
                         bits / len(data), ntok / secs, ntok + len(chunks), 0, ""))
            print(rows[-1], flush=True)
    print()
    print(f"{args.file.name}, first {len(data):,} bytes, window {args.context}, {args.threads} thread(s); "
          f"torch batched-scoring limit (one {args.context}-token forward): {limit:.1f} tokens/s")
    print()
    print("| backend | chunks | tokens | payload bpb | coded bpb | tokens/s | % of batched limit | forwards | "
          "re-primes | decoded by a 2nd instance |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, nch, ntok, pbpb, cbpb, tps, fw, pr, ver in rows:
        pb = "—" if math.isnan(pbpb) else f"{pbpb:.4f}"
        print(f"| {name} | {nch} | {ntok:,} | {pb} | {cbpb:.4f} | {tps:.1f} | {100 * tps / limit:.0f} % | {fw:,} | "
              f"{pr} | {ver} |")


if __name__ == "__main__":
    main()
