"""The host side's steps one at a time (BENCHMARKS.md, "The host side").

    python benchmarks/host_steps.py [--build DIR] [--what learn,distributions,decode,python]

- ``learn``, ``distributions``: one call of ``lmzip._mix.learn`` / ``.distributions`` for
  64 streams of SmolLM2's vocabulary (random scores, bias and 30 feature tokens), the
  median of 60 calls, per stream, on 1 and 2 threads;
- ``decode``: ``lmzip.coding.Decoder.decode`` per token, 2,000 tokens of random
  distributions over SmolLM2's vocabulary;
- ``python``: 64 chunks of alice29.txt compressed through ``benchmarks/host.py``'s
  stand-in model on 2 threads, less the time inside ``lmzip._mix``: the Python per token
  and stream, the part that stays on one core.

``--build DIR`` times another checkout's lmzip (extensions built in place): run it and
this checkout alternately.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
_build = next((sys.argv[i + 1] for i, x in enumerate(sys.argv[:-1]) if x == "--build"), None)
sys.path.insert(0, str(Path(_build).resolve() if _build else ROOT))

V = 49173  # SmolLM2's vocabulary with lmzip's escapes
STREAMS = 64


def _quantized(rng) -> np.ndarray:
    from lmzip import cdf

    q = np.empty(V)
    cdf.quantize_into(rng.normal(scale=3, size=V), q)
    return q


def _per_stream(call, jobs, threads: int, calls: int = 60) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call(jobs, threads)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / len(jobs) * 1e6


def learn() -> None:
    from lmzip import _mix

    rng = np.random.default_rng(0)
    jobs = [(_quantized(rng), rng.normal(scale=3, size=V).astype(np.float32), rng.normal(scale=0.1, size=V), 5,
             1e-8, 0.12) for _ in range(STREAMS)]
    for threads in (1, 2):
        per = _per_stream(_mix.learn, jobs, threads)
        print(f"learn, {STREAMS} streams, {threads} threads: {per:.1f} µs per stream")


def distributions() -> None:
    from lmzip import _mix

    rng = np.random.default_rng(0)
    jobs = []
    for _ in range(STREAMS):
        llm = rng.normal(scale=3, size=V).astype(np.float32)
        llm[-21:] = -np.inf  # the escapes
        tokens = rng.choice(V, size=30, replace=False).astype(np.int64)
        jobs.append((llm, 1.1, rng.normal(scale=0.1, size=V), tokens, rng.normal(size=30), np.empty(V), np.empty(V)))
    for threads in (1, 2):
        print(f"distributions, {STREAMS} streams, {threads} threads: "
              f"{_per_stream(_mix.distributions, jobs, threads, 40):.1f} µs per stream")


def decode(n: int = 2000) -> None:
    from lmzip.coding import Decoder, Encoder

    rng = np.random.default_rng(0)
    qs = [_quantized(rng) for _ in range(16)]
    symbols = [int(rng.integers(V)) for _ in range(n)]
    enc = Encoder()
    for k, s in enumerate(symbols):
        enc.encode(s, qs[k % 16])
    payload = enc.finish()
    dec = Decoder(payload)
    t0 = time.perf_counter()
    got = [dec.decode(qs[k % 16]) for k in range(n)]
    seconds = time.perf_counter() - t0
    assert got == symbols
    print(f"decode, {len(payload):,} bytes of payload: {seconds / n * 1e6:.1f} µs per token")


def python_share() -> None:
    sys.argv = [sys.argv[0]] + (["--build", _build] if _build else [])
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from host import rates

    from lmzip.predictors import mixing

    inside = [0.0]

    class Timed:
        def __init__(self, native):
            self._native = native

        def __getattr__(self, name):
            fn = getattr(self._native, name)
            if name not in ("distributions", "learn"):
                return fn

            def timed(*args):
                t0 = time.perf_counter()
                try:
                    return fn(*args)
                finally:
                    inside[0] += time.perf_counter() - t0

            return timed

    mixing._native = Timed(mixing._native)
    text = (ROOT.parent / "shared" / "corpora" / "canterbury" / "alice29.txt").read_bytes()
    n, rate, _ = rates(STREAMS, 300, 2, text, decompress=False)
    total = n / rate
    print(f"python, {STREAMS} streams, 2 threads, compress: {rate:,.0f} tok/s; per token and stream "
          f"{total / n * 1e6:.1f} µs, inside lmzip._mix {inside[0] / n * 1e6:.1f} µs, "
          f"the rest (Python) {(total - inside[0]) / n * 1e6:.1f} µs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", help="another checkout's lmzip")
    ap.add_argument("--what", default="learn,distributions,decode,python")
    a = ap.parse_args()
    import lmzip
    from lmzip.measure.report import machine

    print(f"lmzip from {Path(lmzip.__file__).parent.parent}; CPU {machine()['cpu']}; {time.strftime('%Y-%m-%d')}")
    steps = {"learn": learn, "distributions": distributions, "decode": decode, "python": python_share}
    for what in a.what.split(","):
        steps[what]()


if __name__ == "__main__":
    main()
