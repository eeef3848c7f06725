"""Information capacity: how much a model compresses text per unit of compute.

Yuan et al., 2025, "Information Capacity: Evaluating the Efficiency of Large
Language Models via Text Compression" (arXiv:2511.08066), measure a model by its
compression gain per token relative to the log of its forward compute per token.
lmzip computes, over samples of ``sample_tokens`` (1,024) tokens each::

    capacity = (L − NLL + b) / log2(C)

- ``L``: the text's raw size in bits per token, ``8 × bytes / tokens`` with the
  model's own tokenizer: a tokenizer that packs more bytes into a token gets a
  larger ``L``, which is how tokenizer efficiency enters the measure;
- ``NLL``: the model's negative log-likelihood of each token, in bits, averaged over
  the sample's tokens; every sample starts from a fresh context (the start token);
- ``C``: forward FLOPs per token, counted from the architecture in the GGUF
  metadata (:mod:`lmzip.measure.flops`) and averaged over a 1,024-token decode;
- ``b``: a constant offset, the same for every model compared.

Our reading, stated because the paper's own text could not be consulted while
this was written: ``L − NLL`` is the number of bits per token the model saves
over storing the text raw (its "compression gain"); ``b`` is the paper's bias
term, which lmzip leaves at 0 unless ``--bias`` sets it, so capacities reported
here are the gain over log-compute alone.  Samples are consecutive 1,024-token
spans from the start of each text, the texts taken in turn.

>>> from lmzip.measure.flops import SMOLLM2_135M, Architecture, average_flops
>>> round(information_capacity(text_bits_per_token=29.0, nll_bits_per_token=8.0,
...                            flops_per_token=average_flops(Architecture.from_metadata(SMOLLM2_135M))), 4)
0.7452
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from ..errors import LMZipError
from ..predictors.base import Model
from ..predictors.registry import DEFAULT_CONTEXT, known_models, load_model
from .corpora import CorpusFile, corpus_file
from .entropy import token_bits
from .flops import Architecture, average_flops, gguf_metadata

__all__ = [
    "CapacityRow",
    "information_capacity",
    "measure",
    "installed_llms",
    "default_texts",
    "DEFAULT_TEXTS",
    "SAMPLE_TOKENS",
    "markdown_table",
    "terminal_table",
]

SAMPLE_TOKENS = 1024
#: English prose from the Canterbury corpus: what the samples are cut from by default
DEFAULT_TEXTS = ("alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt")


def information_capacity(text_bits_per_token: float, nll_bits_per_token: float, flops_per_token: float,
                         bias: float = 0.0) -> float:
    """``(L − NLL + b) / log2(C)`` (see the module docstring)."""
    return (text_bits_per_token - nll_bits_per_token + bias) / math.log2(flops_per_token)


@dataclass
class CapacityRow:
    model: str
    samples: int
    tokens: int
    bytes: int
    #: L: raw text bits per token (8 × bytes / tokens)
    text_bits_per_token: float
    #: NLL: the model's negative log-likelihood, bits per token
    nll_bits_per_token: float
    #: C: forward FLOPs per token (mean over a 1,024-token decode)
    flops_per_token: float
    bias: float
    capacity: float
    seconds: float
    architecture: dict

    @property
    def bpb(self) -> float:
        """The model's cross-entropy on the samples in bits per byte."""
        return self.nll_bits_per_token * self.tokens / self.bytes if self.bytes else 0.0

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens if self.tokens else 0.0

    def to_dict(self) -> dict:
        return dict(asdict(self), bpb=self.bpb, bytes_per_token=self.bytes_per_token)


def installed_llms() -> list[str]:
    """Names of the registry's language models (GGUF files) that are installed."""
    return [s.name for s in known_models() if s.kind == "gguf" and s.installed()]


def default_texts(corpora: str | os.PathLike | None = None) -> list[CorpusFile]:
    return [corpus_file(n, corpora) for n in DEFAULT_TEXTS]


def _samples(model: Model, texts: Sequence[CorpusFile], count: int, sample_tokens: int) -> list[list[int]]:
    """``count`` samples of ``sample_tokens`` tokens: consecutive spans from the start of each
    text, taking the texts in turn."""
    per_text = [count // len(texts) + (1 if i < count % len(texts) else 0) for i in range(len(texts))]
    spans: list[list[list[int]]] = []
    for f, k in zip(texts, per_text):
        if k == 0:
            spans.append([])
            continue
        with open(f.path, "rb") as fh:
            data = fh.read(k * sample_tokens * 16)  # 16 bytes per token is far more than any text needs
        tokens = model.tokenizer.encode(data)
        got = [tokens[i * sample_tokens : (i + 1) * sample_tokens] for i in range(k)]
        spans.append([s for s in got if len(s) == sample_tokens])
    out = []
    for i in range(max(per_text)):  # interleave: text 1 sample 1, text 2 sample 1, ...
        out += [s[i] for s in spans if i < len(s)]
    if len(out) < count:
        raise LMZipError(f"the texts hold only {len(out)} samples of {sample_tokens} tokens, {count} asked")
    return out


def measure(model_name: str, texts: Sequence[CorpusFile], *, samples: int = 8, sample_tokens: int = SAMPLE_TOKENS,
            bias: float = 0.0, threads: int | None = None,
            progress: Callable[[int, int], None] | None = None, backend: str | None = None) -> CapacityRow:
    """Information capacity of one model on ``samples`` samples cut from ``texts``.

    ``progress(tokens_done, tokens_total)`` is called as the samples are evaluated.
    """
    if samples < 1 or sample_tokens < 2:
        raise ValueError("need at least one sample of at least two tokens")
    started = time.monotonic()
    # a window longer than a sample: every token sees its whole sample, nothing slides
    from ..predictors.mixing import NO_MIX

    # the model's own capacity: no mixing with the text's statistics
    model = load_model(model_name, context=max(DEFAULT_CONTEXT, sample_tokens + 1), threads=threads, mix=NO_MIX,
                       backend=backend)
    arch = Architecture.from_metadata(gguf_metadata(model))
    flops = average_flops(arch, sample_tokens)
    pieces = model.tokenizer.pieces
    total_bits = 0.0
    total_bytes = 0
    chosen = _samples(model, texts, samples, sample_tokens)
    for i, sample in enumerate(chosen):
        base = i * sample_tokens
        bits = token_bits(model, sample, (lambda n, base=base: progress(base + n, samples * sample_tokens))
                          if progress else None)
        total_bits += float(bits.sum())
        total_bytes += sum(len(pieces[t]) for t in sample)
    tokens = len(chosen) * sample_tokens
    text_bits = 8 * total_bytes / tokens
    nll = total_bits / tokens
    return CapacityRow(model=model.name, samples=len(chosen), tokens=tokens, bytes=total_bytes,
                       text_bits_per_token=text_bits, nll_bits_per_token=nll, flops_per_token=flops, bias=bias,
                       capacity=information_capacity(text_bits, nll, flops, bias),
                       seconds=time.monotonic() - started, architecture=asdict(arch))


def markdown_table(rows: Sequence[CapacityRow]) -> str:
    out = ["| model | samples × tokens | bytes/token | L (text bits/token) | NLL (bits/token) | bpb | "
           "FLOPs/token | log2 FLOPs | information capacity |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r.model} | {r.samples} × {r.tokens // max(r.samples, 1):,} | {r.bytes_per_token:.3f} | "
                   f"{r.text_bits_per_token:.3f} | {r.nll_bits_per_token:.3f} | {r.bpb:.3f} | "
                   f"{r.flops_per_token:.4g} | {math.log2(r.flops_per_token):.3f} | **{r.capacity:.4f}** |")
    return "\n".join(out)


def terminal_table(rows: Sequence[CapacityRow]) -> str:
    head = ["model", "tokens", "bytes/token", "L bits/tok", "NLL bits/tok", "bpb", "FLOPs/token", "capacity"]
    body = [[r.model, f"{r.tokens:,}", f"{r.bytes_per_token:.3f}", f"{r.text_bits_per_token:.3f}",
             f"{r.nll_bits_per_token:.3f}", f"{r.bpb:.3f}", f"{r.flops_per_token:.4g}", f"{r.capacity:.4f}"]
            for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, body)])
