"""An adaptive order-1 byte model: no LLM, tiny and fast.

It predicts each byte from counts of what followed the previous byte so far in
the same chunk.  Far weaker than a language model (about gzip's ratio on
English), it exists so that the container, the CLI and the API can be exercised
in seconds, and as the floor any real predictor must beat.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tokenization import PieceTokenizer
from .base import Model, Stream

__all__ = ["Order1Model"]

_LIMIT = 1 << 12  # halve a context's counts past this total: adapts, stays small


class _Order1Stream(Stream):
    def __init__(self) -> None:
        # counts[prev, next], with prev == 256 for "start of chunk"; start at 1 (Laplace)
        self._counts = np.ones((257, 256), dtype=np.int64)
        self._totals = np.full(257, 256, dtype=np.int64)
        self._prev = 256

    def scores(self) -> np.ndarray:
        # log of integer counts: the softmax in cdf.quantize turns them back into ratios
        return np.log(self._counts[self._prev].astype(np.float64))

    def push(self, token: int) -> None:
        row = self._counts[self._prev]
        row[token] += 32
        self._totals[self._prev] += 32
        if self._totals[self._prev] > _LIMIT:
            row[:] = (row + 1) // 2
            self._totals[self._prev] = int(row.sum())
        self._prev = token


class Order1Model(Model):
    name = "order1"

    def __init__(self) -> None:
        pieces = [bytes([b]) for b in range(256)]
        self.tokenizer = PieceTokenizer(pieces, lambda text: list(text))

    def params(self) -> dict[str, Any]:
        return {"backend": "order1", "model": self.name}

    def open_stream(self) -> Stream:
        return _Order1Stream()

    def describe(self) -> str:
        return "order1 (adaptive order-1 byte model, no LLM)"
