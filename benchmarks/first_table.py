"""bpb and speed of lmzip on one file beside gzip -9, bzip2 -9 and xz -9.

    python benchmarks/first_table.py ../shared/corpora/canterbury/alice29.txt

Prints a Markdown table.  lmzip's round trip is checked; times are wall clock on
this machine, one run each.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import lzma
import os
import platform
import time

import lmzip
from lmzip.predictors.registry import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("file")
    ap.add_argument("--model", default=None)
    ap.add_argument("--context", type=int, default=None)
    ap.add_argument("--limit-bytes", type=int, default=None)
    args = ap.parse_args()
    with open(args.file, "rb") as f:
        data = f.read(args.limit_bytes) if args.limit_bytes else f.read()
    n = len(data)
    rows = []
    for name, fn, dfn in [
        ("gzip -9", lambda d: gzip.compress(d, 9, mtime=0), gzip.decompress),
        ("bzip2 -9", lambda d: bz2.compress(d, 9), bz2.decompress),
        ("xz -9", lambda d: lzma.compress(d, preset=9), lzma.decompress),
    ]:
        t = time.perf_counter()
        c = fn(data)
        tc = time.perf_counter() - t
        t = time.perf_counter()
        assert dfn(c) == data
        td = time.perf_counter() - t
        rows.append((name, len(c), tc, td, None))
    model = load_model(args.model, context=args.context)
    comp = lmzip.LMZipCompressor(model)
    t = time.perf_counter()
    c = comp.compress(data) + comp.flush()
    tc = time.perf_counter() - t
    t = time.perf_counter()
    out = lmzip.decompress(c, model=model)
    td = time.perf_counter() - t
    assert out == data, "round trip failed"
    rows.append((f"lmzip ({model.name}, context {model.context})", len(c), tc, td, comp.stats))

    print(f"File: {os.path.basename(args.file)}, {n} bytes; machine: {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}\n")
    print("| compressor | size (bytes) | bits/byte | compress | decompress |")
    print("|---|---:|---:|---:|---:|")
    for name, size, tc, td, _ in rows:
        print(f"| {name} | {size} | {8 * size / n:.3f} | {n / tc / 1000:.2f} kB/s | {n / td / 1000:.2f} kB/s |")
    st = rows[-1][4]
    print(f"\nlmzip: {st.tokens} tokens ({n / st.tokens:.2f} bytes/token), "
          f"{st.tokens / rows[-1][2]:.1f} tokens/s compress, {st.tokens / rows[-1][3]:.1f} tokens/s decompress; "
          f"model cross-entropy {st.model_bpb:.4f} bpb, coded {8 * st.payload_bytes / n:.4f} bpb "
          f"(payload only; {100 * (8 * st.payload_bytes / st.model_bits - 1):.3f}% above the cross-entropy), "
          f"whole file {8 * rows[-1][1] / n:.4f} bpb")


if __name__ == "__main__":
    main()
