"""Ablation of the mixer: bits per token of each component switched on or off.

Running the LLM once per configuration would take hours, so this runs it once per file
and records its scores (float16, minus each token's max: about 2 bytes x vocabulary per
token on disk), then replays them through the real mixer (lmzip.mixing.MixedStream) and
the real quantization rule for each configuration.  The sizes are what the range coder
is asked to spend (sum of -log2(freq/2^24)), which the payload matches within 0.1 %;
the float16 rounding of the recorded logits moves them by about 0.1 % too.  Confirm the
chosen configuration with a real `lmzip compress` run.

    python benchmarks/mixing.py ../shared/corpora/canterbury/alice29.txt --store /tmp/lmzip-scores
    python benchmarks/mixing.py FILE --limit-bytes 65536 --store DIR --context 2048

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from lmzip.mixing import DEFAULT_MIX, NO_MIX, PRESETS, MixedStream, MixSettings
from lmzip.predictors.base import Stream
from lmzip.predictors.registry import load_model

CONFIGS = {
    "bare LLM": NO_MIX,
    "+ adaptive LLM weight": MixSettings(orders=(), match=0, rate=0.0, llm_rate=DEFAULT_MIX.llm_rate, bias_rate=0.0),
    "+ adaptive bias": MixSettings(orders=(), match=0, rate=0.0, llm_rate=0.0, bias_rate=DEFAULT_MIX.bias_rate),
    "+ n-grams 1-4": MixSettings(orders=DEFAULT_MIX.orders, match=0, rate=DEFAULT_MIX.rate, llm_rate=0.0,
                                 bias_rate=0.0),
    "+ match model": MixSettings(orders=(), match=DEFAULT_MIX.match, rate=DEFAULT_MIX.rate, llm_rate=0.0,
                                 bias_rate=0.0),
    "all but bias": MixSettings(orders=DEFAULT_MIX.orders, match=DEFAULT_MIX.match, rate=DEFAULT_MIX.rate,
                                llm_rate=DEFAULT_MIX.llm_rate, bias_rate=0.0),
    "all but n-grams": MixSettings(orders=(), match=DEFAULT_MIX.match, rate=DEFAULT_MIX.rate,
                                   llm_rate=DEFAULT_MIX.llm_rate, bias_rate=DEFAULT_MIX.bias_rate),
    "previous default (m1: all, bias rate 0.01)": PRESETS["m1"],
    "default (m2: all)": DEFAULT_MIX,
    "default + skip 16": dataclasses.replace(DEFAULT_MIX, skip=16),
    "default + skip 32": dataclasses.replace(DEFAULT_MIX, skip=32),
}


def record(path: Path, data: bytes, store: Path, context: int) -> tuple[np.ndarray, np.ndarray]:
    """The LLM's scores for every token of ``data`` (cached in ``store``)."""
    stem = store / f"{path.name}.{len(data)}.ctx{context}"
    tok_file, score_file = Path(f"{stem}.tokens.npy"), Path(f"{stem}.scores.npy")
    if tok_file.is_file() and score_file.is_file():
        return np.load(tok_file), np.load(score_file, mmap_mode="r")
    store.mkdir(parents=True, exist_ok=True)
    model = load_model("smollm2-135m", context=context, mix=NO_MIX)
    tokens = np.array(model.tokenizer.encode(data), dtype=np.int32)
    tmp = Path(f"{stem}.scores.tmp.npy")
    scores = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(tokens), model.vocab_size))
    start = time.time()
    with model.open_stream() as stream:
        for i, t in enumerate(tokens):
            s = stream.scores()
            scores[i] = s - s[np.isfinite(s)].max()
            stream.push(int(t))
            if i % 1000 == 0:
                print(f"  recording {path.name}: {i}/{len(tokens)} tokens, {time.time() - start:.0f} s", flush=True)
    scores.flush()
    del scores
    tmp.rename(score_file)
    np.save(tok_file, tokens)
    return tokens, np.load(score_file, mmap_mode="r")


class _Replay(Stream):
    def __init__(self, scores: np.ndarray):
        self._scores, self._i = scores, 0

    def scores(self) -> np.ndarray:
        return np.asarray(self._scores[self._i], dtype=np.float32)

    def push(self, token: int) -> None:
        self._i += 1


def coded_bits(tokens: np.ndarray, scores: np.ndarray, settings: MixSettings) -> float:
    replay = _Replay(scores)
    stream = MixedStream(replay, scores.shape[1], settings) if settings.enabled else replay
    q = np.empty(scores.shape[1])
    bits = 0.0
    for t in tokens.tolist():
        stream.distribution(q)
        bits += 24.0 - math.log2(q[t] + 1.0)
        stream.push(t)
    return bits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--store", type=Path, required=True, help="folder for the recorded scores (GBs)")
    ap.add_argument("--limit-bytes", type=int, default=None)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    args = ap.parse_args()
    rows = []
    for path in args.files:
        data = path.read_bytes()[: args.limit_bytes]
        tokens, scores = record(path, data, args.store, args.context)
        for name, settings in CONFIGS.items():
            if args.only and name not in args.only:
                continue
            start = time.time()
            bits = coded_bits(tokens, scores, settings)
            rows.append((path.name, len(data), name, bits / len(data), time.time() - start))
            print(f"  {path.name} {name}: {bits / len(data):.4f} bpb ({time.time() - start:.0f} s)", flush=True)
    print("\n| file | bytes | configuration | coded bpb | vs bare |\n|---|---:|---|---:|---:|")
    bare = {f: b for f, _, n, b, _ in rows if n == "bare LLM"}
    for f, size, name, bpb, _ in rows:
        rel = f"{100 * (bpb / bare[f] - 1):+.2f} %" if f in bare else ""
        print(f"| {f} | {size:,} | {name} | {bpb:.4f} | {rel} |")


if __name__ == "__main__":
    main()
