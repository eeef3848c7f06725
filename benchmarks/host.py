"""The host side of coding alone: mixing, distribution and range coding, without the LLM.

    python benchmarks/host.py [--widths 1,8,64] [--tokens 2000] [--threads 1,2]
        [--file alice29.txt] [--build DIR] [--through-group] [--gpu-mixer]

A stand-in language model gives each stream fixed float32 logits (a bank of random rows
the size of SmolLM2's vocabulary, no engine call), so what is timed is everything lmzip
does per token besides the model: the n-gram and match models, the mixer, the quantized
distribution, the range coder (compress), or the decoder's search (decompress), for a
lockstep group of ``width`` chunks of the file (SmolLM2's tokens of it), each chunk
``--tokens`` tokens.  On a GPU the engine's logits come fast and this is the limit
(issue 28, item 4): tokens/s here bound ``lmzip compress`` there.  ``--build DIR`` times
another checkout's lmzip (extensions built in place) in the same run.

``--through-group`` also times the path a GPU's logits take: the portable engine's group
(lmzip.predictors.portable, its lookahead) over a stand-in engine with free logits, once
as a GPU's engine (``rows_job``: rows as wide as the vocabulary, read in place, the next
block asked for while the host codes) and once as the C engine (each call's rows copied
into the caller's array and each stream's row into its scores: the copies the GPU's
logits went through before ``rows_job``).

``--gpu-mixer`` also times what the host does when the GPU mixes (lmzip.gpu.mixer's
group with the GPU's work left out: the statistics, packing the features, the feature
weights' step, the coder), compression only.

``--shapes N`` compresses the file in N equal chunks through that group (a GPU's engine
interface, free logits) and counts the engine calls by shape: a call where every stream
has the same number of tokens replays a CUDA graph on a GPU, any other is launched
kernel by kernel (docs/gpu.md).
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


class BankEngine:
    """The C engine's interface (``lmzip._engine.Engine``) with free logits: the row after a
    stream's token at position p is a bank's row (of the stream and p, so the decompressor
    sees the compressor's), copied into the caller's array."""

    def __init__(self, n_vocab: int, ahead_rows: int, seed: int = 0):
        self.n_vocab = n_vocab
        self.n_embd = 64
        self.ahead_rows = ahead_rows
        rng = np.random.default_rng(seed)
        self._bank = (rng.standard_normal((_BANK, n_vocab)) * 3.0).astype(np.float32)
        self._pos: dict[int, int] = {}

    def new_stream(self, context=None) -> int:
        free = [h for h, p in self._pos.items() if p < 0]  # a freed stream's handle, as a cache slot
        h = min(free) if free else len(self._pos) + 1
        self._pos[h] = 0
        return h

    def free_stream(self, handle: int) -> None:
        self._pos[handle] = -1

    def _rows(self, handles, token_lists, every: bool) -> list[int]:
        """The bank's rows of a call, in order."""
        at = []
        for h, tl in zip(handles, token_lists):
            p = self._pos[h]
            at.extend((7 * h + p + k) % _BANK for k in (range(len(tl)) if every else [len(tl) - 1]))
            self._pos[h] = p + len(tl)
        return at

    def eval(self, handles, token_lists, out) -> None:
        for r, b in enumerate(self._rows(handles, token_lists, False)):
            out[r, : self.n_vocab] = self._bank[b]

    def eval_rows(self, handles, token_lists, rows) -> None:
        for r, b in enumerate(self._rows(handles, token_lists, True)):
            rows[r, : self.n_vocab] = self._bank[b]


class _InPlace:
    """A job's rows, each read where it lies (``rows()[i]``, as the group reads them)."""

    def __init__(self, wide: np.ndarray, at: list[int]):
        self._wide = wide
        self._at = at

    def rows(self):
        return self

    def __len__(self) -> int:
        return len(self._at)

    def __getitem__(self, i: int) -> np.ndarray:
        return self._wide[self._at[i]]

    def __iter__(self):
        return (self._wide[b] for b in self._at)


class BankGPUEngine(BankEngine):
    """A GPU's engine interface (``rows_job``) with free logits: rows as wide as the
    vocabulary, read in place (on a GPU the DMA engine writes them, not the host)."""

    def __init__(self, n_vocab: int, ahead_rows: int, width: int, seed: int = 0):
        super().__init__(n_vocab, ahead_rows, seed)
        self._wide = np.full((_BANK, width), -np.inf, dtype=np.float32)
        self._wide[:, :n_vocab] = self._bank

    def rows_job(self, handles, token_lists, width, every=True):
        return _InPlace(self._wide, self._rows(handles, token_lists, every))


def group_model(model: str, gpu: bool):
    """The portable engine's model (``model``'s tokenizer) over a stand-in engine with free
    logits: a GPU's (``gpu``: rows_job, 256 MiB of rows ahead) or the C engine's."""
    from lmzip.predictors.registry import load_model

    mixed = load_model(model, device="cpu")
    base = mixed.base
    n_vocab = base.tokenizer.n_model_tokens
    ahead = max(64, (256 << 20) // (4 * n_vocab))
    base._engine = BankGPUEngine(n_vocab, ahead, base.vocab_size) if gpu else BankEngine(n_vocab, ahead)
    return MixedModel(base, DEFAULT_MIX)


class _NoDeviceMixer:
    """lmzip.gpu.mixer.DeviceMixer's interface doing none of the GPU's work (no kernels, no
    copies): timing a DeviceMixedGroup with it leaves what the host does beside a GPU's
    mixer (the statistics, packing the features, the feature weights' step, the coder)."""

    def __init__(self, *args, **kwargs):
        pass

    def step(self, idx, rows, feats, tokens=None, quantiles=None) -> dict:
        zero, one = np.zeros(len(idx)), np.ones(len(idx))
        return {"top": zero, "sum": one, "below": zero, "freq": one, "score": zero, "q_at": np.zeros(len(feats.row))}

    def learn(self, tokens) -> None:
        pass


class BankGPUMixModel(BankModel):
    """The stand-in model as a GPU model that mixes on the GPU, without the GPU's work."""

    def open_mixed_group(self, lengths, width, vocab, settings):
        from lmzip.gpu import mixer

        mixer.DeviceMixer = _NoDeviceMixer
        return mixer.DeviceMixedGroup(self.open_group(lengths, width), vocab, settings, None, None,
                                      int(os.environ["LMZIP_HOST_THREADS"]))


def chunks_of(text: bytes, tokenizer, width: int, tokens: int) -> list[bytes]:
    """``width`` chunks of ``tokens`` tokens each, cut from ``text`` (repeated if short)."""
    toks = tokenizer.encode(text)
    while len(toks) < width * tokens:
        toks = toks + toks
    pieces = tokenizer.pieces
    return [b"".join(pieces[t] for t in toks[i * tokens : (i + 1) * tokens]) for i in range(width)]


def rates(width: int, tokens: int, threads: int, text: bytes, decompress: bool = True,
          model: str = "smollm2-135m", through: str = "") -> tuple[int, float, float]:
    """(tokens coded, compress tokens/s, decompress tokens/s or nan) of one lockstep group
    of ``width`` chunks of ``text``, ``tokens`` tokens each, on ``threads`` host threads;
    ``model`` (a registry name or a GGUF path) gives the tokenizer and the vocabulary.
    ``through``: "" (a stand-in model), "gpu" or "cpu" (the portable group over a stand-in
    engine of that kind: :func:`group_model`), "gpu-mixer" (the host's share of mixing
    on a GPU: :class:`BankGPUMixModel`; compression only)."""
    from lmzip.predictors.registry import load_model

    if through == "gpu-mixer":
        import lmzip.gpu.mixer  # noqa: F401  (imports triton: not part of the time)

        tokenizer = load_model(model, device="cpu").tokenizer
        model, decompress = MixedModel(BankGPUMixModel(tokenizer), DEFAULT_MIX), False
    elif through:
        model = group_model(model, through == "gpu")
        tokenizer = model.tokenizer
    else:
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


def step_shapes(text: bytes, chunks: int, model: str = "smollm2-135m") -> None:
    """Print the shapes of the GPU engine's calls compressing ``text`` in ``chunks`` equal
    chunks (one lockstep group): what share of the tokens a CUDA graph's step would take."""
    from collections import Counter

    calls: list[tuple[int, ...]] = []
    mixed = group_model(model, True)
    eng = mixed.base._engine
    plain = eng.rows_job

    def logged(handles, token_lists, width, every=True):  # each call's tokens per stream
        calls.append(tuple(len(t) for t in token_lists))
        return plain(handles, token_lists, width, every)

    eng.rows_job = logged
    size = -(-len(text) // chunks)
    pieces = [text[i * size:(i + 1) * size] for i in range(chunks)]
    tok = mixed.tokenizer
    escapes = sum(t >= tok.n_model_tokens for p in pieces for t in tok.encode(p))
    compress_group(mixed, pieces, width=chunks)
    uniform = [c for c in calls if len(set(c)) == 1]
    total, in_uniform = sum(map(sum, calls)), sum(map(sum, uniform))
    print(f"{len(text):,} bytes in {chunks} chunks of {size:,}: {escapes} escapes; {len(calls)} engine calls, "
          f"{total:,} tokens; {len(uniform)} calls of one shape ({in_uniform / total:.1%} of the tokens)")
    shapes = Counter((len(c), c[0]) for c in uniform).most_common(8)
    print("  most frequent (streams, tokens each): " + ", ".join(f"{s} x{n}" for s, n in shapes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="1,8,64")
    ap.add_argument("--tokens", type=int, default=2000, help="tokens per chunk")
    ap.add_argument("--threads", default="1,2", help="host threads to try")
    ap.add_argument("--file", default=str(ROOT.parent / "shared/corpora/canterbury/alice29.txt"))
    ap.add_argument("--build", help="another checkout's lmzip")
    ap.add_argument("--no-decompress", action="store_true")
    ap.add_argument("--through-group", action="store_true",
                    help="also through the portable engine's group, as a GPU's engine and as the C engine")
    ap.add_argument("--gpu-mixer", action="store_true",
                    help="also the host's share when the GPU mixes (no GPU work: the statistics, the features, "
                         "the feature weights, the coder; compression)")
    ap.add_argument("--shapes", type=int, default=0, metavar="N",
                    help="only count the GPU engine's call shapes, the file in N chunks")
    a = ap.parse_args()
    import lmzip

    text = Path(a.file).read_bytes()
    if a.shapes:
        return step_shapes(text, a.shapes)
    from lmzip.measure.report import machine

    print(f"lmzip from {Path(lmzip.__file__).parent.parent}; CPU {machine()['cpu']}; {time.strftime('%Y-%m-%d')}")
    print(f"{'model':>14} {'width':>6} {'threads':>7} {'tokens':>7} {'compress tok/s':>15} "
          f"{'decompress tok/s':>17}")
    for width in map(int, a.widths.split(",")):
        for threads in map(int, a.threads.split(",")):
            kinds = ("", "gpu", "cpu") if a.through_group else ("",)
            for through in kinds + (("gpu-mixer",) if a.gpu_mixer else ()):
                n, c, d = rates(width, a.tokens, threads, text, not a.no_decompress, through=through)
                name = {"": "stand-in", "gpu": "group, GPU's", "cpu": "group, C's", "gpu-mixer": "GPU mixes"}[through]
                print(f"{name:>14} {width:>6} {threads:>7} {n:>7} {c:>15,.0f} {d:>17,.0f}", flush=True)


if __name__ == "__main__":
    main()
