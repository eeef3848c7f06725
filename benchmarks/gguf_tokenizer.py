"""lmzip's own tokenizer (lmzip.predictors.gguf_tokenizer) against llama.cpp's.

    python benchmarks/gguf_tokenizer.py [--model smollm2-135m] [--corpus canterbury] [--corpus enwik6]

For every file: the tokens of ``PieceTokenizer.encode`` with each tokenizer behind it
(the token sequence lmzip codes) and how many differ; then the speed of both on
one file, once through ``PieceTokenizer.encode`` and once as bare calls on
its valid UTF-8 runs (enwik6 by default).  Needs llama-cpp-python.  Prints Markdown.
"""

from __future__ import annotations

import argparse
import difflib
import platform
import time

from lmzip.measure import corpora
from lmzip.predictors import gguf_tokenizer as gt
from lmzip.predictors.mixing import NO_MIX
from lmzip.predictors.registry import load_model
from lmzip.tokenization import _split_bounded, utf8_runs


def differences(a: list[int], b: list[int]) -> tuple[int, int | None]:
    """(tokens not in the longest common alignment, index of the first difference)."""
    if a == b:
        return 0, None
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    same = sum(m.size for m in sm.get_matching_blocks())
    return max(len(a), len(b)) - same, first


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corpus", action="append", help="corpus or file names (default: canterbury, enwik6)")
    ap.add_argument("--speed", default="enwik6", help="the file timed (default enwik6)")
    ap.add_argument("--repeat", type=int, default=3, help="timing runs, best kept")
    args = ap.parse_args()
    model = load_model(args.model, context=64, mix=NO_MIX)  # the llama.cpp backend: the reference
    t = time.perf_counter()
    ours = gt.GGUFTokenizer(model.path)
    build = time.perf_counter() - t
    pt = ours.piece_tokenizer()
    ref = model.tokenizer
    print(f"model {model.name}; tokenizers {gt._tokenizers().__version__}; built in {build:.2f} s; "
          f"{platform.processor() or platform.machine()}\n")
    print("| file | bytes | tokens (llama.cpp) | tokens (ours) | differing tokens | first difference |")
    print("|---|---:|---:|---:|---:|---|")
    files = [f for c in (args.corpus or ["canterbury", "enwik6"]) for f in corpora.resolve(c)]
    timed = next(f for f in corpora.resolve(args.speed))
    for f in files:
        data = f.path.read_bytes()
        a, b = ref.encode(data), pt.encode(data)
        n, first = differences(a, b)
        where = "" if first is None else (f"token {first}: llama.cpp {[ref.pieces[t] for t in a[first:first + 3]]}"
                                          f" ours {[pt.pieces[t] for t in b[first:first + 3]]}")
        print(f"| {f.label} | {len(data):,} | {len(a):,} | {len(b):,} | {n} | {where} |")
    data = timed.path.read_bytes()
    runs = [r for valid, p in utf8_runs(data) if valid for r in _split_bounded(p)]
    n = len(pt.encode(data))
    print(f"\nspeed on {timed.label} ({len(data):,} bytes, {n:,} tokens), best of {args.repeat}:\n")
    print("| tokenizer | PieceTokenizer.encode (tokens/s) | bare calls on the UTF-8 runs (tokens/s) |")
    print("|---|---:|---:|")
    for name, tok, fn in (("llama.cpp", ref, model._tokenize_text), ("gguf_tokenizer", pt, ours.tokenize_text)):
        enc = best_of(args.repeat, lambda tok=tok: tok.encode(data))
        bare = best_of(args.repeat, lambda fn=fn: [fn(r) for r in runs])
        print(f"| {name} | {n / enc:,.0f} | {n / bare:,.0f} |")
    batch = best_of(args.repeat, lambda: ours.tokenize_many(runs))
    print(f"| gguf_tokenizer, tokenize_many | | {n / batch:,.0f} |")


if __name__ == "__main__":
    main()
