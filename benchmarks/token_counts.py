"""How many tokens each corpus file is for a model: what a full ``lmzip bench`` costs.

    python benchmarks/token_counts.py --corpus canterbury [--model smollm2-135m] [--limit-bytes 4096]

Tokenizes only (no model evaluation), so it takes about a minute for the whole
Canterbury corpus.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse

from lmzip.measure import corpora
from lmzip.predictors.registry import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="canterbury")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit-bytes", type=int, default=4096, help="also count this prefix of each file")
    args = ap.parse_args()
    model = load_model(args.model, context=64)
    print(f"| file | bytes | tokens ({model.name}) | bytes/token | tokens in the first {args.limit_bytes:,} bytes |")
    print("|---|---:|---:|---:|---:|")
    total_bytes = total_tokens = total_prefix = 0
    for f in corpora.resolve(args.corpus):
        data = f.path.read_bytes()
        n = len(model.tokenizer.encode(data))
        n_prefix = len(model.tokenizer.encode(data[: args.limit_bytes]))
        total_bytes += len(data)
        total_tokens += n
        total_prefix += n_prefix
        print(f"| {f.label} | {len(data):,} | {n:,} | {len(data) / n:.2f} | {n_prefix:,} |")
    print(f"| **all** | {total_bytes:,} | {total_tokens:,} | {total_bytes / total_tokens:.2f} | {total_prefix:,} |")


if __name__ == "__main__":
    main()
