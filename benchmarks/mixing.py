"""Ablation of the mixer: bits per token of each component switched on or off.

The LLM runs once per file (SmolLM2-135M, one token per call, as the compressor does)
and its scores feed every configuration side by side, each through the real mixer
(lmzip.predictors.mixing.MixedStream) and the real quantization rule.  The sizes are what the range
coder is asked to spend (sum of -log2(freq/2^24)), which the payload matches within
0.1 %.  Confirm the chosen configuration with a real `lmzip compress` run.

Two ways to feed them:
- live (default): the configurations run beside the LLM, on its exact float32 scores.
  Nothing is stored, so a megabyte costs only the LLM's time (92 min for enwik6 here);
  the mixers add well under a millisecond per token each.
- ``--store DIR``: the scores are recorded once (float16, minus each token's max: about
  2 bytes x vocabulary per token, 100 kB a token, so only for short texts) and replayed,
  so configurations can be added later without running the LLM again.  The float16
  rounding moves the figures by less than 0.01 %.

    python benchmarks/mixing.py ../shared/corpora/canterbury/alice29.txt
    python benchmarks/mixing.py ../shared/corpora/enwik/enwik6 --threads 1
    python benchmarks/mixing.py FILE --limit-bytes 65536 --store DIR --context 2048

Prints a Markdown table (and writes it as JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from lmzip.predictors.base import Stream
from lmzip.predictors.mixing import DEFAULT_MIX, NO_MIX, PRESETS, MixedStream, MixSettings
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


def llm_pass(path: Path, data: bytes, context: int, threads: int | None):
    """Yields ``(token count, None)`` once, then ``(token, scores)`` for every token of
    ``data``: the LLM's scores before it, one token per call as the compressor runs it.
    The scores are a float32 array the stream may reuse: copy them to keep them."""
    model = load_model("smollm2-135m", context=context, threads=threads, mix=NO_MIX)
    tokens = model.tokenizer.encode(data)
    yield len(tokens), None
    start = time.time()
    with model.open_stream() as stream:
        for i, t in enumerate(tokens):
            yield t, stream.scores()
            stream.push(t)
            if i % 5000 == 0 and i:
                rate = i / (time.time() - start)
                print(f"  {path.name}: {i}/{len(tokens)} tokens, {rate:.1f} tokens/s, "
                      f"about {(len(tokens) - i) / rate / 60:.0f} min left", flush=True)
    model.close()


def record(path: Path, data: bytes, store: Path, context: int, threads: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The LLM's scores for every token of ``data`` (cached in ``store``)."""
    stem = store / f"{path.name}.{len(data)}.ctx{context}"
    tok_file, score_file = Path(f"{stem}.tokens.npy"), Path(f"{stem}.scores.npy")
    if tok_file.is_file() and score_file.is_file():
        return np.load(tok_file), np.load(score_file, mmap_mode="r")
    store.mkdir(parents=True, exist_ok=True)
    rows = llm_pass(path, data, context, threads)
    n, _ = next(rows)
    tmp = Path(f"{stem}.scores.tmp.npy")
    scores = tokens = None
    for i, (t, s) in enumerate(rows):
        if scores is None:
            scores = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, len(s)))
            tokens = np.empty(n, dtype=np.int32)
        scores[i] = s - s[np.isfinite(s)].max()
        tokens[i] = t
    scores.flush()
    del scores
    tmp.rename(score_file)
    np.save(tok_file, tokens)
    return tokens, np.load(score_file, mmap_mode="r")


class _View(Stream):
    """Serves the scores set from outside: one LLM pass, recorded or live, feeds every
    configuration."""

    def __init__(self) -> None:
        self.current: np.ndarray | None = None

    def scores(self) -> np.ndarray:
        return self.current

    def push(self, token: int) -> None:
        pass


class _Tally:
    """One configuration's mixer and the bits the coder would spend with it."""

    def __init__(self, settings: MixSettings, vocab_size: int) -> None:
        self._view = _View()
        self._stream = MixedStream(self._view, vocab_size, settings) if settings.enabled else self._view
        self._q = np.empty(vocab_size)
        self.bits = 0.0

    def step(self, scores: np.ndarray, token: int) -> None:
        self._view.current = scores
        self._stream.distribution(self._q)
        self.bits += 24.0 - math.log2(self._q[token] + 1.0)
        self._stream.push(token)


def replayed_bits(tokens: np.ndarray, scores: np.ndarray, configs: dict[str, MixSettings]) -> dict[str, float]:
    """Bits of each configuration on recorded scores."""
    tallies = {name: _Tally(st, scores.shape[1]) for name, st in configs.items()}
    for i, t in enumerate(tokens.tolist()):
        row = np.asarray(scores[i], dtype=np.float32)
        for tally in tallies.values():
            tally.step(row, t)
    return {name: tally.bits for name, tally in tallies.items()}


def live_bits(path: Path, data: bytes, configs: dict[str, MixSettings], context: int,
              threads: int | None) -> dict[str, float]:
    """Bits of each configuration, fed beside one live pass of the LLM."""
    tallies = None
    for t, scores in llm_pass(path, data, context, threads):
        if scores is None:
            continue
        row = np.array(scores, dtype=np.float32)  # a copy: the stream may reuse its buffer
        if tallies is None:
            tallies = {name: _Tally(st, len(row)) for name, st in configs.items()}
        for tally in tallies.values():
            tally.step(row, t)
    return {name: tally.bits for name, tally in (tallies or {}).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--store", type=Path, default=None,
                    help="record the scores in this folder (100 kB a token) and replay them; default: live")
    ap.add_argument("--limit-bytes", type=int, default=None)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    ap.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    configs = {n: st for n, st in CONFIGS.items() if not args.only or n in args.only}
    rows = []
    for path in args.files:
        data = path.read_bytes()[: args.limit_bytes]
        start = time.time()
        if args.store is None:
            bits = live_bits(path, data, configs, args.context, args.threads)
        else:
            tokens, scores = record(path, data, args.store, args.context, args.threads)
            bits = replayed_bits(tokens, scores, configs)
        print(f"  {path.name}: {time.time() - start:.0f} s", flush=True)
        rows += [(path.name, len(data), name, b / len(data)) for name, b in bits.items()]
    print("\n| file | bytes | configuration | coded bpb | vs bare |\n|---|---:|---|---:|---:|")
    bare = {f: b for f, _, n, b in rows if n == "bare LLM"}
    for f, size, name, bpb in rows:
        rel = f"{100 * (bpb / bare[f] - 1):+.2f} %" if f in bare else ""
        print(f"| {f} | {size:,} | {name} | {bpb:.4f} | {rel} |")
    if args.json:
        args.json.write_text(json.dumps([{"file": f, "bytes": size, "configuration": name, "coded_bpb": bpb}
                                         for f, size, name, bpb in rows], indent=1))


if __name__ == "__main__":
    main()
