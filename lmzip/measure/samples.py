"""Samples as the information-capacity reference code cuts them, and their text size.

The reference (``text_size.py``, ``likelihood.py``) encodes each document with the
model's Hugging Face tokenizer as ``tokenizer.encode(text, truncation=True,
max_length=1024)`` (special tokens included: Gemma's BOS, none for SmolLM2), drops the
first token from what it measures (``ids[1:]``: it is context only, never scored),
and takes the text size of a sample from the decoded text: ``8 × UTF-8 bytes of
decode(ids[1:]) / len(ids[1:])`` bits per token.  The dataset's text size is the mean
over samples, rounded to 2 decimals (``round(np.mean(...), 2)``), as ``calc_ic.py``
uses it.

For a GGUF model the tokens are the model's own tokenizer's (llama.cpp's), with the
BOS token first when the GGUF says the tokenizer adds one
(``tokenizer.ggml.add_bos_token``; absent, llama.cpp's default: yes for SentencePiece
vocabularies, no for byte-level BPE), and the decoded text is the tokens' bytes,
invalid UTF-8 replaced by U+FFFD as Hugging Face's decoders do.  For a Hugging Face
model folder the folder's own tokenizer is called exactly as the reference calls it.

>>> s = Sample(ids=(2, 10, 11, 12), text_bytes=9)
>>> s.scored, s.text_bits_per_token
(3, 24.0)
>>> text_size([Sample((1, 2), 4), Sample((1, 2, 3), 3)])   # mean of 32 and 12 bits per token
22.0
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LMZipError

__all__ = ["Sample", "Sampler", "GGUFSampler", "HFSampler", "cut_samples", "text_size", "text_size_exact",
           "gguf_adds_bos", "SAMPLE_TOKENS"]

#: the reference's max_sample_length
SAMPLE_TOKENS = 1024


@dataclass(frozen=True)
class Sample:
    """One document's first tokens (special tokens included) and the size of their text."""

    ids: tuple[int, ...]
    #: UTF-8 bytes of the decoded text of ids[1:]
    text_bytes: int

    @property
    def scored(self) -> int:
        """Tokens the likelihood and the text size count: all but the first."""
        return len(self.ids) - 1

    @property
    def text_bits_per_token(self) -> float:
        return self.text_bytes * 8 / self.scored


#: text -> Sample (or None for a document of fewer than two tokens)
Sampler = Callable[[str], "Sample | None"]


def _decoded_bytes(pieces: Sequence[bytes], ids: Iterable[int]) -> int:
    raw = b"".join(pieces[t] for t in ids)
    return len(raw.decode("utf-8", "replace").encode("utf-8"))


def gguf_adds_bos(meta: dict[str, str]) -> bool:
    """Whether the GGUF's tokenizer puts BOS first (``tokenizer.ggml.add_bos_token``)."""
    flag = meta.get("tokenizer.ggml.add_bos_token")
    if flag is not None:
        return flag.strip("[] ").lower() in ("1", "true")
    return meta.get("tokenizer.ggml.model") == "llama"  # llama.cpp: SentencePiece adds BOS, BPE does not


class GGUFSampler:
    """Samples with a GGUF model's own tokenizer (lmzip's engine, llama.cpp, torch from GGUF)."""

    def __init__(self, model, add_bos: bool, sample_tokens: int = SAMPLE_TOKENS):
        self.tokenizer = model.tokenizer
        self.bos = int(model.start_token) if add_bos else None
        self.sample_tokens = sample_tokens

    def __call__(self, text: str) -> Sample | None:
        ids = self.tokenizer.model_tokens(text.encode("utf-8"))
        if self.bos is not None:
            ids = [self.bos, *ids]
        ids = ids[: self.sample_tokens]
        if len(ids) < 2:
            return None
        return Sample(tuple(ids), _decoded_bytes(self.tokenizer.pieces, ids[1:]))


class HFSampler:
    """Samples with a Hugging Face model folder's tokenizer, called as the reference calls it."""

    def __init__(self, folder: str | os.PathLike, sample_tokens: int = SAMPLE_TOKENS):
        os.environ["HF_HUB_OFFLINE"] = "1"  # never reach a model hub
        try:
            from transformers import AutoTokenizer

            self.hf = AutoTokenizer.from_pretrained(str(Path(folder)), local_files_only=True)
        except ImportError:
            raise LMZipError("a model folder needs transformers: pip install 'lmzip[torch]'") from None
        except (OSError, ValueError) as exc:
            raise LMZipError(f"cannot load the tokenizer of {folder}: {str(exc).splitlines()[0][:200]}") from None
        self.sample_tokens = sample_tokens

    def __call__(self, text: str) -> Sample | None:
        ids = self.hf.encode(text, truncation=True, max_length=self.sample_tokens)
        if len(ids) < 2:
            return None
        return Sample(tuple(ids), len(self.hf.decode(ids[1:]).encode("utf-8")))


def cut_samples(sampler: Sampler, documents: Iterable[str], count: int | None = None) -> tuple[list[Sample], int]:
    """One sample per document, the first ``count`` (None: all) that hold two tokens or more.
    Returns (samples, documents skipped for holding fewer)."""
    samples: list[Sample] = []
    skipped = 0
    for doc in documents:
        if count is not None and len(samples) >= count:
            break
        s = sampler(doc)
        if s is None:
            skipped += 1  # the reference divides by zero on these
        else:
            samples.append(s)
    return samples, skipped


def _per_sample(samples: Sequence[Sample]) -> np.ndarray:
    if not samples:
        raise ValueError("no samples")
    return np.array([s.text_bits_per_token for s in samples])


def text_size_exact(samples: Sequence[Sample]) -> float:
    """Mean over samples of each sample's text bits per token (unrounded)."""
    return float(np.mean(_per_sample(samples)))


def text_size(samples: Sequence[Sample]) -> float:
    """The reference's text size: :func:`text_size_exact` rounded to 2 decimals, as numpy rounds."""
    return float(round(np.mean(_per_sample(samples)), 2))
