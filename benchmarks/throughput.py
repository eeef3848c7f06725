"""Throughput of lmzip against the model's own batched evaluation rate, in one run.

    python benchmarks/throughput.py ../shared/corpora/canterbury/alice29.txt \
        --chunk-size 19000 --streams 8 [--limit-bytes N] [--no-mix] [--threads T] [--workers W]

Measures, on the same machine and model:

1. the limit: raw batched evaluation (llama.cpp, 512-token batches, no coding), tokens/s,
   from position 0 and, as lmzip's sliding window lives, with the window prefilled to
   3/4 of the context (attention over ~1,500-2,000 cached tokens costs more);
2. the lockstep rate: ``--streams`` sequences advanced one token each per ``llama_decode``
   (the schedule lmzip uses, without any coding), tokens/s, from position 0 and prefilled;
3. ``lmzip.compress`` and ``lmzip.decompress`` of the file with ``--chunk-size`` and
   ``--streams``: tokens/s, bytes/s, bits per byte; the round trip is checked.

Prints a Markdown table and, with ``--json PATH``, writes the figures.  Wall clock,
one run each: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

import lmzip
from lmzip.parallel import executor_for
from lmzip.predictors.llamacpp import LlamaCppModel
from lmzip.predictors.mixing import NO_MIX
from lmzip.predictors.registry import load_model


def _context(llm: LlamaCppModel, n_ctx: int, n_batch: int, n_seq: int):
    L = llm._L
    p = L.llama_context_default_params()
    p.n_ctx = n_ctx
    p.n_batch = p.n_ubatch = n_batch
    p.n_seq_max = n_seq
    p.kv_unified = False
    p.n_threads = p.n_threads_batch = llm.threads
    p.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    p.type_k = p.type_v = 1
    p.no_perf = True
    ctx = L.llama_init_from_model(llm._weights_for(n_batch), p)  # plain weights for batches on AMX builds
    assert ctx, "could not create a llama.cpp context"
    return ctx


def raw_batched(llm: LlamaCppModel, tokens: list[int], window: int = 512) -> float:
    """tokens/s evaluating ``tokens`` in windows of ``window`` tokens, one batch each."""
    L = llm._L
    ctx = _context(llm, window, window, 1)
    mem = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(window, 0, 1)
    n_vocab = llm.tokenizer.n_model_tokens
    done = 0
    t = time.perf_counter()
    for start in range(0, len(tokens) - window + 1, window):
        L.llama_memory_clear(mem, True)
        for j, tok in enumerate(tokens[start : start + window]):
            batch.token[j] = tok
            batch.pos[j] = j
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = 0
            batch.logits[j] = 1
        batch.n_tokens = window
        assert L.llama_decode(ctx, batch) == 0
        for j in range(window):  # read every row's logits, as a coder would
            np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, j), shape=(n_vocab,)).max()
        done += window
    elapsed = time.perf_counter() - t
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    return done / elapsed


def _prefill(llm: LlamaCppModel, ctx, batch, tokens: list[int], seq: int, n: int, chunk: int) -> None:
    """Evaluate ``n`` tokens into sequence ``seq`` (positions 0..n-1), ``chunk`` per call."""
    L = llm._L
    for start in range(0, n, chunk):
        part = tokens[start : min(n, start + chunk)]
        for j, tok in enumerate(part):
            batch.token[j] = tok
            batch.pos[j] = start + j
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = seq
            batch.logits[j] = 0
        batch.n_tokens = len(part)
        assert L.llama_decode(ctx, batch) == 0


def steady_batched(llm: LlamaCppModel, tokens: list[int], rounds: int = 3) -> float:
    """tokens/s of batched evaluation where lmzip's sliding window lives: the window
    prefilled to 3/4 of ``context`` (not timed), then the last quarter as one batch."""
    L = llm._L
    c = llm.context
    depth, width = 3 * c // 4, c - 3 * c // 4
    ctx = _context(llm, c, width, 1)
    mem = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(width, 0, 1)
    n_vocab = llm.tokenizer.n_model_tokens
    elapsed = 0.0
    for r in range(rounds):
        L.llama_memory_clear(mem, True)
        seq = tokens[r * c : (r + 1) * c] if len(tokens) >= (r + 1) * c else tokens[:c]
        _prefill(llm, ctx, batch, seq, 0, depth, width)
        for j, tok in enumerate(seq[depth:c]):
            batch.token[j] = tok
            batch.pos[j] = depth + j
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = 0
            batch.logits[j] = 1
        batch.n_tokens = width
        t = time.perf_counter()
        assert L.llama_decode(ctx, batch) == 0
        for j in range(width):
            np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, j), shape=(n_vocab,)).max()
        elapsed += time.perf_counter() - t
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    return rounds * width / elapsed


def lockstep(llm: LlamaCppModel, tokens: list[int], streams: int, steps: int, depth: int = 0) -> float:
    """tokens/s advancing ``streams`` sequences one token each per decode call (lmzip's
    schedule without any coding), each prefilled to ``depth`` tokens first (not timed)."""
    L = llm._L
    n_batch = max(streams, 512) if depth else streams  # room for the prefill
    ctx = _context(llm, llm.context * streams, n_batch, streams)
    batch = L.llama_batch_init(n_batch, 0, 1)
    n_vocab = llm.tokenizer.n_model_tokens
    for s in range(streams if depth else 0):
        _prefill(llm, ctx, batch, tokens[(s * depth) % max(1, len(tokens) - depth):], s, depth, 512)
    t = time.perf_counter()
    for step in range(steps):
        for s in range(streams):
            batch.token[s] = tokens[(s * 7919 + step) % len(tokens)]
            batch.pos[s] = depth + step
            batch.n_seq_id[s] = 1
            batch.seq_id[s][0] = s
            batch.logits[s] = 1
        batch.n_tokens = streams
        assert L.llama_decode(ctx, batch) == 0
        for s in range(streams):
            np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, s), shape=(n_vocab,)).max()
    elapsed = time.perf_counter() - t
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    return streams * steps / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--model", default=None)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--chunk-size", type=int, default=lmzip.DEFAULT_CHUNK_SIZE)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--limit-bytes", type=int, default=None)
    ap.add_argument("--no-mix", action="store_true")
    ap.add_argument("--skip-raw", action="store_true", help="only lmzip's own rates")
    ap.add_argument("--raw-only", action="store_true", help="only the model's raw rates")
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes for lmzip's compress and decompress (their start-up is timed too)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with open(args.file, "rb") as f:
        data = f.read(args.limit_bytes) if args.limit_bytes else f.read()
    model = load_model(args.model, context=args.context, threads=args.threads,
                       mix=NO_MIX if args.no_mix else None)
    llm = getattr(model, "base", model)
    assert isinstance(llm, LlamaCppModel), "throughput is measured for llama.cpp models"
    tokens = llm.tokenizer.encode(data)
    tokens = [t for t in tokens if t < llm.tokenizer.n_model_tokens]
    res: dict = {"file": os.path.basename(args.file), "bytes": len(data), "model": llm.name,
                 "context": args.context, "chunk_size": args.chunk_size, "streams": args.streams,
                 "threads": llm.threads, "workers": args.workers, "mix": not args.no_mix,
                 "machine": platform.machine(),
                 "cores": os.cpu_count()}
    if not args.skip_raw:
        res["raw_batched_tok_s"] = raw_batched(llm, tokens[:4096])
        res["raw_lockstep_tok_s"] = lockstep(llm, tokens, args.streams, max(32, 2048 // args.streams))
        res["steady_batched_tok_s"] = steady_batched(llm, tokens)
        res["steady_lockstep_tok_s"] = lockstep(llm, tokens, args.streams, 128, 3 * args.context // 4)
    if args.raw_only:
        print(json.dumps(res, indent=1))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        return

    t = time.perf_counter()
    executor = executor_for(model, args.workers)
    try:
        comp = lmzip.LMZipCompressor(model, chunk_size=args.chunk_size, streams=args.streams, method="model",
                                     executor=executor)
        packed = comp.compress(data) + comp.flush()
        tc = time.perf_counter() - t
        n_tokens = comp.stats.tokens
        t = time.perf_counter()
        out = lmzip.decompress(packed, model=model, executor=executor)
        td = time.perf_counter() - t
    finally:
        if executor is not None:
            executor.close()
    assert out == data, "round trip failed"
    res.update(compressed=len(packed), bpb=8 * len(packed) / len(data), tokens=n_tokens,
               compress_s=tc, decompress_s=td, compress_tok_s=n_tokens / tc, decompress_tok_s=n_tokens / td,
               compress_bytes_s=len(data) / tc, decompress_bytes_s=len(data) / td)

    print(f"{res['file']}: {len(data)} bytes, {n_tokens} tokens; {llm.name}, context {args.context}, "
          f"chunks of {args.chunk_size} bytes, {args.streams} streams, {llm.threads} threads, "
          f"{args.workers} worker(s), "
          f"mixing {'on' if res['mix'] else 'off'}; {res['cores']} cores\n")
    print("| measure | tokens/s | bytes/s | share of raw batched |")
    print("|---|---:|---:|---:|")
    limit = res.get("raw_batched_tok_s")
    bpt = len(data) / n_tokens

    def row(name: str, tok_s: float) -> None:
        share = f"{100 * tok_s / limit:.0f} %" if limit else ""
        print(f"| {name} | {tok_s:.1f} | {tok_s * bpt:,.0f} | {share} |")

    if limit:
        row("raw batched evaluation (512-token batches from position 0)", limit)
        row(f"raw lockstep, {args.streams} sequences x 1 token per call (positions 0..)", res["raw_lockstep_tok_s"])
        row(f"raw batched, window prefilled to 3/4 of {args.context}", res["steady_batched_tok_s"])
        row(f"raw lockstep, {args.streams} sequences prefilled to 3/4 of {args.context}",
            res["steady_lockstep_tok_s"])
    row("lmzip compress", res["compress_tok_s"])
    row("lmzip decompress", res["decompress_tok_s"])
    print(f"\ncompressed {len(packed)} bytes = {res['bpb']:.4f} bits per byte; "
          f"compress {tc:.1f} s, decompress {td:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
