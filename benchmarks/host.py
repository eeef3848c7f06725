"""The host side of coding alone: mixing, distribution and range coding, without the LLM.

    python benchmarks/host.py [--widths 1,8,64] [--tokens 2000] [--threads 1,2]
        [--file alice29.txt] [--build DIR]

A stand-in language model gives each stream fixed float32 logits (a bank of random rows
the size of SmolLM2's vocabulary, no engine call), so what is timed is everything lmzip
does per token besides the model: the n-gram and match models, the mixer, the quantized
distribution, the range coder (compress), or the decoder's search (decompress), for a
lockstep group of ``width`` chunks of the file (SmolLM2's tokens of it), each chunk
``--tokens`` tokens.  On a GPU the engine's logits come fast and this is the limit
(issue 28, item 4): tokens/s here bound ``lmzip compress`` there.  ``--build DIR`` times
another checkout's lmzip (extensions built in place) in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
_build = next((sys.argv[i + 1] for i, x in enumerate(sys.argv[:-1]) if x == "--build"), None)
sys.path.insert(0, str(Path(_build).resolve() if _build else ROOT))

from lmzip.codec import compress_group, decompress_group  # noqa: E402
from lmzip.predictors.base import Model, Stream, StreamGroup  # noqa: E402
from lmzip.predictors.mixing import DEFAULT_MIX, MixedModel  # noqa: E402

_BANK = 61  # rows of logits, a prime: a stream does not see the same row at the same step


class _BankStream(Stream):
    def __init__(self, bank: np.ndarray, offset: int):
        self._bank = bank
        self._n = offset

    def scores(self) -> np.ndarray:
        return self._bank[self._n % _BANK]

    def push(self, token: int) -> None:
        self._n += 1


class _BankGroup(StreamGroup):
    pass


class BankModel(Model):
    """A language model that costs nothing: logits from a fixed bank, tokens of a real tokenizer."""

    batches = True

    def __init__(self, tokenizer, seed: int = 0):
        self.name = "bank"
        self.tokenizer = tokenizer
        rng = np.random.default_rng(seed)
        self._bank = (rng.standard_normal((_BANK, tokenizer.vocab_size)) * 3.0).astype(np.float32)

    def params(self) -> dict:
        return {"backend": "bank", "model": self.name}

    def open_stream(self) -> Stream:
        return _BankStream(self._bank, 0)

    def open_group(self, lengths: list[int], width: int = 1) -> StreamGroup:
        return _BankGroup([_BankStream(self._bank, 7 * i) for i in range(len(lengths))])


def chunks_of(text: bytes, tokenizer, width: int, tokens: int) -> list[bytes]:
    """``width`` chunks of ``tokens`` tokens each, cut from ``text`` (repeated if short)."""
    toks = tokenizer.encode(text)
    while len(toks) < width * tokens:
        toks = toks + toks
    pieces = tokenizer.pieces
    return [b"".join(pieces[t] for t in toks[i * tokens : (i + 1) * tokens]) for i in range(width)]


def rates(width: int, tokens: int, threads: int, text: bytes, decompress: bool = True,
          model: str = "smollm2-135m") -> tuple[int, float, float]:
    """(tokens coded, compress tokens/s, decompress tokens/s or nan) of one lockstep group
    of ``width`` chunks of ``text``, ``tokens`` tokens each, on ``threads`` host threads;
    ``model`` (a registry name or a GGUF path) gives the tokenizer and the vocabulary."""
    from lmzip.predictors.registry import load_model

    tokenizer = load_model(model, device="cpu").tokenizer
    model = MixedModel(BankModel(tokenizer), DEFAULT_MIX)
    chunks = chunks_of(text, tokenizer, width, tokens)
    n = sum(len(tokenizer.encode(c)) for c in chunks)
    before = os.environ.get("LMZIP_HOST_THREADS")
    os.environ["LMZIP_HOST_THREADS"] = str(threads)
    try:
        t0 = time.perf_counter()
        coded = compress_group(model, chunks, width=width)
        tc = time.perf_counter() - t0
        td = float("nan")
        if decompress:
            t0 = time.perf_counter()
            out = decompress_group(model, coded, width=width)
            td = time.perf_counter() - t0
            assert out == chunks, "round trip failed"
    finally:
        if before is None:
            del os.environ["LMZIP_HOST_THREADS"]
        else:
            os.environ["LMZIP_HOST_THREADS"] = before
    return n, n / tc, n / td


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="1,8,64")
    ap.add_argument("--tokens", type=int, default=2000, help="tokens per chunk")
    ap.add_argument("--threads", default="1,2", help="host threads to try")
    ap.add_argument("--file", default=str(ROOT.parent / "shared/corpora/canterbury/alice29.txt"))
    ap.add_argument("--build", help="another checkout's lmzip")
    ap.add_argument("--no-decompress", action="store_true")
    a = ap.parse_args()
    import lmzip

    text = Path(a.file).read_bytes()
    from lmzip.measure.report import machine

    print(f"lmzip from {Path(lmzip.__file__).parent.parent}; CPU {machine()['cpu']}; {time.strftime('%Y-%m-%d')}")
    print(f"{'width':>6} {'threads':>7} {'tokens':>7} {'compress tok/s':>15} {'decompress tok/s':>17}")
    for width in map(int, a.widths.split(",")):
        for threads in map(int, a.threads.split(",")):
            n, c, d = rates(width, a.tokens, threads, text, not a.no_decompress)
            print(f"{width:>6} {threads:>7} {n:>7} {c:>15,.0f} {d:>17,.0f}", flush=True)


if __name__ == "__main__":
    main()
