"""lmzip against xz -9e, file by file: sizes, coding method per chunk, time.

    python benchmarks/binary.py [--model NAME] [--limit BYTES] FILE...

Compresses each file (or its first --limit bytes) with lmzip's default "auto" method,
checks the round trip, and prints a Markdown table beside xz -9e
(``lzma.compress(data, preset=9 | PRESET_EXTREME)``). Binary files never reach the
model, so they take seconds even with the default LLM; text runs at the model's speed.
"""

from __future__ import annotations

import argparse
import io
import lzma
import time
from pathlib import Path

import lmzip
from lmzip.core import scan_streams
from lmzip.predictors.registry import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=None, help="use only the first BYTES of each file")
    args = ap.parse_args()
    model = load_model(args.model)
    print(f"model: {args.model}" + (f", first {args.limit} bytes of each file" if args.limit else ""))
    print()
    print("| file | bytes | xz -9e | lmzip | lmzip / xz | chunks (method: bytes in -> out) | compress |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for path in args.files:
        data = path.read_bytes()[: args.limit]
        xz = len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
        started = time.monotonic()
        packed = lmzip.compress(data, model=model)
        seconds = time.monotonic() - started
        assert lmzip.decompress(packed, model=model) == data, f"{path}: round trip failed"
        chunks = [c for s in scan_streams(io.BytesIO(packed)) for c in s.end.chunks]
        methods = ", ".join(f"{c.method_name}: {c.raw_len} -> {c.payload_len}" for c in chunks)
        print(f"| {path.name} | {len(data):,} | {xz:,} | {len(packed):,} | {len(packed) / xz:.3f} | {methods} "
              f"| {seconds:.1f} s |")


if __name__ == "__main__":
    main()
