"""Text or binary: where the compressor cuts its input, and which coder a piece gets.

Only the compressor runs this; the decoder reads each chunk's method byte.  The rule
is cheap (a few C-speed passes over the bytes) and depends only on the bytes it is
shown, so the same input always gives the same chunks, however it is fed.

A *block* (4 KiB) is text when at least 90 % of its bytes are printable UTF-8
(printable ASCII, tab, line ends, form feed, escape, and well-formed multi-byte
characters) and at most 0.1 % are NULs (string tables and UTF-16 are binary: they
compress better with the code or data around them).  Runs of text blocks shorter than ``MIN_TEXT_BLOCKS`` between binary
ones are binary too: string tables inside executables or spreadsheets are not worth
a model restart and a separate chunk.  At a boundary the cut moves from the block
edge to the byte where the text really ends or starts (``_refine``), so little binary
reaches the model and little text the classic coder.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BLOCK", "TEXT_FRACTION", "MIN_TEXT_BLOCKS", "text_fraction", "is_text", "first_region"]

BLOCK = 4096
TEXT_FRACTION = 0.90
MIN_TEXT_BLOCKS = 2
MAX_NUL_FRACTION = 0.001

# control bytes that do not occur in text (tab, LF, CR, form feed and escape do)
_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\r\x0c\x1b") + b"\x7f"
_SCORE = np.full(256, -1, dtype=np.int64)
_SCORE[list(_CONTROL)] = -9
_SCORE[[*b"\t\n\r\x0c\x1b", *range(0x20, 0x7F)]] = 1


def text_fraction(data: bytes) -> float:
    """Share of ``data`` that is printable UTF-8 (1.0 for empty data)."""
    if not data:
        return 1.0
    # bytes in well-formed UTF-8 sequences (controls included), then minus the controls
    valid = len(data.decode("utf-8", "ignore").encode("utf-8"))
    controls = len(data) - len(data.translate(None, _CONTROL))
    return max(0, valid - controls) / len(data)


def is_text(data: bytes) -> bool:
    # NULs do not occur in text but separate strings in string tables and UTF-16: binary
    return data.count(0) <= len(data) * MAX_NUL_FRACTION and text_fraction(data) >= TEXT_FRACTION


def first_region(view: bytes) -> tuple[int, bool]:
    """Length and kind (True: text) of the first region of ``view`` (non-empty).

    The compressor shows the next ``chunk_size`` bytes (or what is left at the end);
    if the whole view is one kind the length is ``len(view)``.  Blocks are classified
    only as far as the first region reaches (and ``MIN_TEXT_BLOCKS`` beyond), so the
    cost follows the region, not the view.
    """
    n_blocks = -(-len(view) // BLOCK)
    raw: dict[int, bool] = {}

    def text_block(i: int) -> bool:
        if i not in raw:
            raw[i] = is_text(view[i * BLOCK : (i + 1) * BLOCK])
        return raw[i]

    def kind(i: int) -> bool:
        """Block i's kind once short text runs beside binary count as binary."""
        if not text_block(i):
            return False
        start, end = i, i + 1
        while start > 0 and end - start < MIN_TEXT_BLOCKS and text_block(start - 1):
            start -= 1
        while end < n_blocks and end - start < MIN_TEXT_BLOCKS and text_block(end):
            end += 1
        return end - start >= MIN_TEXT_BLOCKS or (start == 0 and end == n_blocks)

    first = kind(0)
    n = 1
    while n < n_blocks and kind(n) == first:
        n += 1
    if n == n_blocks:
        return len(view), first
    return max(1, _refine(view, n * BLOCK, first)), first


def _refine(view: bytes, cut: int, text_first: bool) -> int:
    """Move a block-aligned cut to the byte where the text really ends (or starts).

    Each byte of the two blocks around the cut scores +1 if printable ASCII, -1 if
    above 0x7f, -9 if a control byte (so text at the 90 % threshold breaks even); text
    ends where the running score peaks and starts where it bottoms out.
    """
    lo, hi = max(0, cut - BLOCK), min(len(view), cut + BLOCK)
    window = np.frombuffer(view, dtype=np.uint8, count=hi - lo, offset=lo)
    running = np.concatenate(([0], np.cumsum(_SCORE[window])))
    return lo + int(np.argmax(running) if text_first else np.argmin(running))
