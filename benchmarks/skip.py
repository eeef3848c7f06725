"""What the confidence-based skip of the language model buys and costs (``--skip N``).

    python benchmarks/skip.py ../shared/corpora/enwik/enwik6 --limit-bytes 65536 --skip 0,16,32 \
        [--context 2048] [--threads T] [--streams S --chunk-size B]
    python benchmarks/skip.py FILE... --count-only --skip 16,32

For each setting, compresses the file (the default mixing with ``skip=N``) and
decompresses it again: tokens coded without the model, size in bits per byte (the
chunks' payloads, and the whole file: a non-preset setting writes its fields into the
header, about 80 bytes more), compress and decompress tokens/s; the round trip is
checked.  Wall clock, one run each: run it on a quiet machine.  Prints a Markdown table.

``--count-only``: how many tokens each setting would skip, from the decisions alone
(they read only the n-gram and match statistics, so no model runs; seconds per MB).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import lmzip
from lmzip.predictors import mixing
from lmzip.predictors.mixing import DEFAULT_MIX, MixedModel
from lmzip.predictors.registry import load_model


class _Counting(mixing.MixedStream):
    """Adds up the tokens each stream coded without the model."""

    skipped = 0

    def close(self) -> None:
        type(self).skipped += self.skipped
        super().close()


def count_decisions(base, args) -> None:
    print("| file | bytes | tokens | skip | tokens skipped | guesses missed |\n|---|---:|---:|---:|---:|---:|")
    for path in args.files:
        data = path.read_bytes()[: args.limit_bytes or None]
        tokens = base.tokenizer.encode(data)
        for n in (int(x) for x in args.skip.split(",") if int(x)):
            stream = mixing.MixedStream(None, base.vocab_size, dataclasses.replace(DEFAULT_MIX, skip=n))
            skipped = missed = 0
            for t in tokens:  # push() alone updates the statistics and decides
                guess = stream.skips_next
                if guess is not None:
                    skipped += 1
                    missed += guess != t
                stream.push(t)
            print(f"| {path.name} | {len(data):,} | {len(tokens):,} | {n} | {skipped:,} "
                  f"({100 * skipped / len(tokens):.1f} %) | {missed:,} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--count-only", action="store_true", help="count skip decisions, run no model")
    ap.add_argument("--limit-bytes", type=int, default=0)
    ap.add_argument("--skip", default="0,16,32", help="comma-separated skip settings (0: off)")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--chunk-size", type=int, default=1 << 20)
    args = ap.parse_args()

    base = load_model("smollm2-135m", context=args.context, threads=args.threads, mix=mixing.NO_MIX)
    if args.count_only:
        count_decisions(base, args)
        return
    if len(args.files) != 1:
        ap.error("one file (or --count-only)")
    path = args.files[0]
    data = path.read_bytes()[: args.limit_bytes or None]
    n_tokens = len(base.tokenizer.encode(data))
    mixing.MixedStream = _Counting  # count through the real code path
    print(f"{path.name}, {len(data):,} bytes, {n_tokens:,} tokens, context {args.context}, "
          f"streams {args.streams}, chunk size {args.chunk_size:,}\n")
    print("| skip | tokens skipped | payload bpb | file bpb | compress tok/s | decompress tok/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (int(x) for x in args.skip.split(",")):
        model = MixedModel(base, dataclasses.replace(DEFAULT_MIX, skip=n))
        _Counting.skipped = 0
        t0 = time.perf_counter()
        comp = lmzip.LMZipCompressor(model, chunk_size=args.chunk_size, streams=args.streams, method="model")
        packed = comp.compress(data) + comp.flush()
        t1 = time.perf_counter()
        skipped = _Counting.skipped
        assert lmzip.decompress(packed, model=base) == data, "round trip failed"
        t2 = time.perf_counter()
        print(f"| {n or 'off'} | {skipped:,} ({100 * skipped / n_tokens:.1f} %) "
              f"| {8 * comp.stats.payload_bytes / len(data):.4f} | {8 * len(packed) / len(data):.4f} "
              f"| {n_tokens / (t1 - t0):.1f} | {n_tokens / (t2 - t1):.1f} |", flush=True)


if __name__ == "__main__":
    main()
