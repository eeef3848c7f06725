"""Per-token cost of the distribution step (scores -> quantized CDF), C vs numpy, and its
share of the per-token time inside lmzip compress.

    python benchmarks/cdf.py                       # micro-benchmarks + share on a text slice
    python benchmarks/cdf.py --text ../shared/corpora/canterbury/alice29.txt --limit-bytes 8000

Prints Markdown tables.  Times are medians of repeated runs, on this machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from lmzip import cdf, codec
from lmzip.coding import Decoder, Encoder
from lmzip.predictors.mixing import NO_MIX


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def micro(repeat: int) -> None:
    print("| step | 49,152 entries | 262,144 entries |")
    print("|---|---:|---:|")
    rng = np.random.default_rng(0)
    rows: dict[str, list[float]] = {}
    for n in (49_152, 262_144):
        x = (rng.normal(size=n) * 4).astype(np.float32)  # logits as llama.cpp returns them
        q = np.empty(n)
        for name in ("c", "numpy"):
            cdf.set_backend(name)
            rows.setdefault(f"quantize ({name})", []).append(median_ms(lambda: cdf.quantize_into(x, q), repeat))
        cdf.set_backend()
        cdf.quantize_into(x, q)
        sym = int(np.argmax(q))

        def enc():
            e = Encoder()
            e.encode(sym, q)
            e.finish()

        payload = Encoder()
        for _ in range(8):
            payload.encode(sym, q)
        words = payload.finish()
        rows.setdefault("constriction encode", []).append(median_ms(enc, repeat))
        rows.setdefault("constriction decode", []).append(median_ms(lambda: Decoder(words).decode(q), repeat))
    for name, (a, b) in rows.items():
        print(f"| {name} | {a:.3f} ms | {b:.3f} ms |")


def share(path: str, limit: int, model_name: str | None, context: int | None, with_mix: bool) -> None:
    from lmzip.predictors.registry import load_model

    with open(path, "rb") as f:
        data = f.read(limit)
    from lmzip.predictors.mixing import MixedModel, MixedStream

    model = load_model(model_name, context=context, mix=None if with_mix else NO_MIX)
    base = model.base if isinstance(model, MixedModel) else model
    backend = base.params().get("backend", "?")
    model_key = f"model ({backend})"
    spent = {model_key: 0.0, "mixing (n-grams, learning)": 0.0, "distribution (cdf)": 0.0, "range coder": 0.0}
    # time spent inside a timed call that is itself timed (the mixer asks the model for its
    # scores) counts for the inner part only
    nested: list[float] = []

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            nested.append(0.0)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t
                spent[key] += elapsed - nested.pop()
                if nested:
                    nested[-1] += elapsed
        return wrapper

    # the model's work happens in push (llama.cpp evaluates there), in scores (the
    # portable engine evaluates lazily, when asked) or in a group's advance (one batched
    # evaluation for all its streams; lmzip compress codes a chunk as a group of one)
    probe_stream, probe_group = base.open_stream(), base.open_group([2], 1)
    classes = {type(probe_stream), *(type(st) for st in probe_group.streams)}
    group_cls = type(probe_group)
    probe_stream.close(), probe_group.close()
    patches = [(c, name, timed(model_key, getattr(c, name))) for c in classes for name in ("push", "scores")]
    patches += [
        (group_cls, "advance", timed(model_key, group_cls.advance)),
        (cdf, "quantize_into", timed("distribution (cdf)", cdf.quantize_into)),
        (Encoder, "encode", timed("range coder", Encoder.encode)),
        (MixedStream, "_mix", timed("mixing (n-grams, learning)", MixedStream._mix)),
        (MixedStream, "_learn", timed("mixing (n-grams, learning)", MixedStream._learn)),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, fn in patches:
        setattr(obj, name, fn)
    try:
        t = time.perf_counter()
        stats = codec.Stats()
        codec.compress_chunk(model, data, stats)
        total = time.perf_counter() - t
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
    spent["other (tokenize, stats, Python)"] = total - sum(spent.values())
    if not with_mix:
        del spent["mixing (n-grams, learning)"]
    print(f"\nlmzip compress of {len(data)} bytes of {os.path.basename(path)} with {model.name} "
          f"(vocab {model.vocab_size}, context {base.context}, CDF backend {cdf.backend}, "
          f"{'mixing ' + str(model.settings.params()) if with_mix else 'no mixing'}): "
          f"{stats.tokens} tokens, {stats.tokens / total:.1f} tokens/s\n")
    print("| part | ms/token | share |")
    print("|---|---:|---:|")
    for key, seconds in spent.items():
        print(f"| {key} | {1e3 * seconds / stats.tokens:.3f} | {100 * seconds / total:.1f}% |")
    model_s = spent[model_key]
    if model_s > 0:
        print(f"\ndistribution step / model evaluation: {100 * spent['distribution (cdf)'] / model_s:.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--text", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpora",
                                                   "canterbury", "alice29.txt"))
    ap.add_argument("--limit-bytes", type=int, default=6000)
    ap.add_argument("--model", default=None)
    ap.add_argument("--context", type=int, default=None)
    ap.add_argument("--no-share", action="store_true")
    ap.add_argument("--mix", action="store_true", help="time the default mixing too")
    args = ap.parse_args()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"numpy {np.__version__}\n")
    micro(args.repeat)
    if not args.no_share:
        share(args.text, args.limit_bytes, args.model, args.context, args.mix)


if __name__ == "__main__":
    main()
