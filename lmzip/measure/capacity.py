"""Information capacity: how much a model compresses text per unit of compute.

Yuan, Shao, Zhang, Li (2025), "Information Capacity: Evaluating the Efficiency of
Large Language Models via Text Compression" (arXiv:2511.08066), with reference code in
the GitHub repository TeleAI-AI-Flow/InformationCapacity (``calc_ic.py``).  lmzip
computes the reference's quantity::

    IC = (text size − NLL + b) / log2(FLOPs per token)

- samples: one per document, its first 1,024 tokens with the model's tokenizer
  (special tokens included), the first token context only (:mod:`lmzip.measure.samples`);
- text size: per sample, 8 × UTF-8 bytes of the decoded text of tokens 1 … n−1 over
  their count; averaged over samples and rounded to 2 decimals, as the reference does;
- NLL: ``−log2 p`` of every token but the first, averaged over all tokens of all
  samples (:mod:`lmzip.measure.likelihood`);
- FLOPs per token: the reference's convention (:mod:`lmzip.measure.reference_flops`)
  by default, or lmzip's own count of the model as it runs (``flops="physical"``,
  :mod:`lmzip.measure.flops`);
- b: chosen by the dataset's name as the reference does (−24 ``mixed_text.jsonl``,
  −18.7 ``Ch-FineWeb-Edu.jsonl``, −27 otherwise; :func:`lmzip.measure.documents.paper_bias`).

>>> round(information_capacity(text_size=30.0, nll=4.8, flops_per_token=304_314_624, bias=-27.0), 6)
-0.063873
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import LMZipError
from ..predictors.registry import DEFAULT_BACKEND, DEFAULT_CONTEXT, known_models, load_model
from .documents import Dataset, paper_bias
from .flops import Architecture, ArchitectureError, average_flops, gguf_file_metadata
from .likelihood import sample_bits
from .reference_flops import config_from_gguf, flops_per_token, read_config
from .samples import SAMPLE_TOKENS, GGUFSampler, HFSampler, cut_samples, gguf_adds_bos, text_size, text_size_exact

__all__ = [
    "CapacityRow",
    "information_capacity",
    "mean_nll",
    "measure",
    "installed_llms",
    "markdown_table",
    "terminal_table",
    "FLOPS_CONVENTIONS",
    "SAMPLE_TOKENS",
]

#: ``reference``: the paper's code's count (the default); ``physical``: lmzip's own
FLOPS_CONVENTIONS = ("reference", "physical")


def information_capacity(text_size: float, nll: float, flops_per_token: float, bias: float) -> float:
    """``(text size − NLL + b) / log2(FLOPs per token)``, sizes in bits per token."""
    return (text_size - nll + bias) / math.log2(flops_per_token)


def mean_nll(bits: Sequence[np.ndarray]) -> float:
    """Bits per token over every scored token of every sample (a long sample weighs more),
    as the reference's ``nanmean`` over its padded batch."""
    count = sum(len(b) for b in bits)
    if not count:
        raise ValueError("no scored tokens")
    return float(sum(float(np.sum(b)) for b in bits)) / count


@dataclass
class CapacityRow:
    model: str
    backend: str
    dataset: str
    #: samples measured (one per document) and tokens scored (the first of each sample is not)
    samples: int
    tokens: int
    #: the reference's text size: mean over samples of text bits per token, rounded to 2 decimals
    text_bits_per_token: float
    #: the same mean, unrounded
    text_bits_per_token_exact: float
    #: the model's negative log-likelihood, bits per scored token
    nll_bits_per_token: float
    flops_per_token: float
    #: "reference" (the paper's code) or "physical" (lmzip's count)
    flops_convention: str
    b: float
    information_capacity: float
    #: documents left out: with fewer than two tokens, or with an empty text field
    skipped: int
    #: UTF-8 bytes of the scored tokens' decoded text, all samples
    text_bytes: int
    seconds: float
    #: tokens per sample at most (special tokens included), and the decode FLOPs are averaged over
    sample_tokens: int = SAMPLE_TOKENS
    #: the numbers the FLOPs were counted from
    config: dict = field(default_factory=dict)

    @property
    def capacity(self) -> float:
        return self.information_capacity

    @property
    def bpb(self) -> float:
        """The model's cross-entropy of the scored text, bits per byte."""
        return self.nll_bits_per_token * self.tokens / self.text_bytes if self.text_bytes else 0.0

    def to_dict(self) -> dict:
        return dict(asdict(self), bpb=self.bpb)


def installed_llms() -> list[str]:
    """Names of the registry's language models (GGUF files) that are installed."""
    return [s.name for s in known_models() if s.kind == "gguf" and s.installed()]


def _gguf_path(name: str) -> Path | None:
    """The GGUF file behind a registry name or a path (None for a model folder)."""
    key = name.lower()
    for spec in known_models():
        if key == spec.name or key in spec.aliases:
            return spec.locate()
    p = Path(name)
    return p if p.is_file() else None


def _count_flops(meta: dict | None, folder: Path | None, convention: str, tokens: int) -> tuple[float, dict]:
    if convention == "reference":
        config = config_from_gguf(meta) if meta is not None else read_config(folder)
        return flops_per_token(config, tokens), config
    if convention == "physical":
        if meta is None:
            raise ArchitectureError("the physical FLOPs count reads a GGUF file's metadata; for a model folder "
                                    "use --flops reference")
        arch = Architecture.from_metadata(meta)
        return average_flops(arch, tokens), asdict(arch)
    raise ValueError(f"flops must be one of {', '.join(FLOPS_CONVENTIONS)}, not {convention!r}")


def measure(model_name: str, dataset: Dataset, *, samples: int | None = None, sample_tokens: int = SAMPLE_TOKENS,
            bias: float | None = None, flops: str = "reference", threads: int | None = None,
            backend: str | None = None, progress: Callable[[int, int], None] | None = None) -> CapacityRow:
    """Information capacity of one model on ``dataset``: one sample per document (the first
    ``samples`` documents; None: all), ``bias`` None for the paper's b for the dataset's name.

    ``backend``: None is lmzip's engine for a GGUF model and torch for a Hugging Face model
    folder.  ``progress(tokens_done, tokens_total)`` is called as the samples are evaluated.
    """
    if sample_tokens < 2:
        raise ValueError("samples need at least two tokens")
    started = time.monotonic()
    folder = Path(model_name) if Path(model_name).is_dir() else None
    if backend is None:
        backend = "torch" if folder is not None else DEFAULT_BACKEND
    if folder is not None and backend != "torch":
        raise LMZipError(f"{model_name} is a model folder: it runs on the torch backend (--backend torch)")
    from ..predictors.mixing import NO_MIX

    # the model alone, with a window longer than a sample: nothing slides
    model = load_model(model_name, context=max(DEFAULT_CONTEXT, sample_tokens + 1), threads=threads, mix=NO_MIX,
                       backend=backend)
    meta = None
    if folder is None:
        path = _gguf_path(model_name)
        if path is None or path.suffix != ".gguf":
            raise ArchitectureError(f"model '{model_name}' is not a transformer in a GGUF file or a model folder: "
                                    f"no FLOPs to count")
        meta = gguf_file_metadata(path, model.tokenizer.n_model_tokens)
    flops_value, config = _count_flops(meta, folder, flops, sample_tokens)
    sampler = (HFSampler(folder, sample_tokens) if folder is not None
               else GGUFSampler(model, gguf_adds_bos(meta), sample_tokens))
    chosen, skipped = cut_samples(sampler, dataset.documents, samples)
    if not chosen:
        raise LMZipError(f"{dataset.label}: no document holds two tokens or more")
    total = sum(s.scored for s in chosen)
    bits = sample_bits(model, chosen, (lambda n: progress(n, total)) if progress else None)
    nll = mean_nll(bits)
    b = paper_bias(dataset.name) if bias is None else float(bias)
    ts = text_size(chosen)
    return CapacityRow(model=model.name, backend=backend, dataset=dataset.label, samples=len(chosen), tokens=total,
                       text_bits_per_token=ts, text_bits_per_token_exact=text_size_exact(chosen),
                       nll_bits_per_token=nll, flops_per_token=flops_value, flops_convention=flops, b=b,
                       information_capacity=information_capacity(ts, nll, flops_value, b),
                       skipped=skipped + dataset.empty, text_bytes=sum(s.text_bytes for s in chosen),
                       seconds=time.monotonic() - started, sample_tokens=sample_tokens, config=config)


def _cells(r: CapacityRow) -> list[str]:
    return [r.model, r.dataset, f"{r.flops_per_token:,.0f}", f"{r.text_bits_per_token:.2f}",
            f"{r.nll_bits_per_token:.4f}", f"{r.b:g}", f"{r.information_capacity:.4f}", f"{r.samples:,}",
            f"{r.tokens:,}"]


_HEAD = ["model", "dataset", "FLOPs/token", "text bits/token", "NLL bits/token", "b", "IC", "samples", "tokens"]


def markdown_table(rows: Sequence[CapacityRow]) -> str:
    out = ["| " + " | ".join(_HEAD) + " |", "|---|---|" + "---:|" * (len(_HEAD) - 2)]
    for r in rows:
        c = _cells(r)
        c[6] = f"**{c[6]}**"
        out.append("| " + " | ".join(c) + " |")
    return "\n".join(out)


def terminal_table(rows: Sequence[CapacityRow]) -> str:
    body = [_cells(r) for r in rows]
    widths = [max(len(x[i]) for x in [_HEAD, *body]) for i in range(len(_HEAD))]
    fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(_HEAD), "  ".join("-" * w for w in widths), *map(fmt, body)])


def describe(rows: Sequence[CapacityRow]) -> str:
    """One line on how the figures were computed (under the table)."""
    if not rows:
        return ""
    conv = {r.flops_convention for r in rows}
    what = ("the reference code's FLOPs convention" if conv == {"reference"}
            else "lmzip's physical FLOPs count" if conv == {"physical"} else "mixed FLOPs conventions")
    return (f"IC = (text bits/token - NLL bits/token + b) / log2(FLOPs/token) (Yuan et al. 2025), {what}; "
            f"one sample per document, its first {rows[0].sample_tokens:,} tokens, the first one not scored.")
