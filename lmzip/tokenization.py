"""Lossless bytes <-> tokens for any vocabulary whose tokens have byte pieces.

The decompressor never tokenizes: it maps each decoded token to its byte piece and
concatenates.  So the compressor may pick any token sequence whose pieces spell the
input, and it checks that they do.  The model's own tokenizer is only used where it
is safe and verified:

- input is split into maximal runs of valid UTF-8 and the bytes between them;
  invalid bytes become *byte tokens* (tokens whose piece is that single byte:
  byte-level BPE and SentencePiece byte-fallback vocabularies have all 256);
- each valid run is tokenized by the model and the pieces compared with the run;
  if they differ (some tokenizers drop or normalize control characters), the run
  is split at control characters and then at line ends, each part checked again,
  and any part that still does not round-trip is spelled in byte tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from .errors import LMZipError

__all__ = ["PieceTokenizer", "utf8_runs"]

# One well-formed UTF-8 character (RFC 3629: no overlongs, no surrogates, <= U+10FFFF).
_UTF8_CHAR = (
    rb"[\x00-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
    rb"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)
_UTF8_RUN = re.compile(rb"(?:" + _UTF8_CHAR + rb")+")
# C0 controls other than tab, LF and CR; DEL; C1 controls (U+0080..U+009F).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+|(?:\xc2[\x80-\x9f])+")
_LINE = re.compile(rb"[^\n]*\n|[^\n]+")

# Longest text handed to the model tokenizer at once: bounds its memory and time.
_MAX_RUN = 1 << 16


def utf8_runs(data: bytes) -> list[tuple[bool, bytes]]:
    """Split ``data`` into (is_valid_utf8, part) pieces, in order."""
    parts: list[tuple[bool, bytes]] = []
    pos = 0
    for m in _UTF8_RUN.finditer(data):
        if m.start() > pos:
            parts.append((False, data[pos : m.start()]))
        parts.append((True, m.group()))
        pos = m.end()
    if pos < len(data):
        parts.append((False, data[pos:]))
    return parts


def _split_bounded(run: bytes) -> list[bytes]:
    """Cut a long valid run into parts of at most ~_MAX_RUN bytes at line ends or spaces."""
    if len(run) <= _MAX_RUN:
        return [run]
    parts = []
    start = 0
    while len(run) - start > _MAX_RUN:
        end = start + _MAX_RUN
        cut = run.rfind(b"\n", start, end) + 1 or run.rfind(b" ", start, end) + 1
        if cut <= start:  # no break: cut before a UTF-8 lead byte
            cut = end
            while run[cut] & 0xC0 == 0x80:
                cut -= 1
        parts.append(run[start:cut])
        start = cut
    parts.append(run[start:])
    return parts


class PieceTokenizer:
    """Lossless tokenizer over a vocabulary of byte pieces.

    The coding alphabet is the model's vocabulary followed by :attr:`escapes`
    escape symbols, one per byte value the vocabulary cannot spell alone; the model
    never sees them (its scores for them are -inf, so they cost 24 bits).

    Args:
        pieces: the bytes each token id stands for (empty for control tokens,
            which are never emitted).
        tokenize_text: the model's tokenizer, called only with valid UTF-8 and
            returning token ids; its output is always verified.
    """

    def __init__(self, pieces: Sequence[bytes], tokenize_text: Callable[[bytes], list[int]]):
        self.n_model_tokens = len(pieces)
        self.pieces = list(pieces)
        self._tokenize_text = tokenize_text
        self.byte_tokens = self._find_byte_tokens(self.pieces)
        self.escapes = self.vocab_size - self.n_model_tokens

    def _find_byte_tokens(self, pieces: list[bytes]) -> list[int]:
        """A token for each byte value: the vocabulary's own single-byte token, else an
        *escape* symbol appended after the model's vocabulary (SmolLM2's BPE, for one,
        has no token for 21 byte values, among them 0x04 and 0xff)."""
        found: dict[int, int] = {}
        for tok, piece in enumerate(pieces):
            if len(piece) == 1 and piece[0] not in found:
                found[piece[0]] = tok
        for b in range(256):
            if b not in found:
                found[b] = len(pieces)
                pieces.append(bytes([b]))
        return [found[b] for b in range(256)]

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def spell_bytes(self, data: bytes) -> list[int]:
        return [self.byte_tokens[b] for b in data]

    def _verified(self, text: bytes) -> list[int] | None:
        tokens = self._tokenize_text(text)
        pieces = self.pieces
        n = len(pieces)
        if any(not 0 <= t < n or not pieces[t] for t in tokens):
            return None
        return tokens if b"".join(pieces[t] for t in tokens) == text else None

    def _encode_text(self, text: bytes) -> list[int]:
        tokens = self._verified(text)
        if tokens is not None:
            return tokens
        out: list[int] = []
        pos = 0
        for m in _CONTROL.finditer(text):  # controls are spelled in bytes, the rest retried
            out += self._encode_lines(text[pos : m.start()])
            out += self.spell_bytes(m.group())
            pos = m.end()
        out += self._encode_lines(text[pos:])
        return out

    def _encode_lines(self, text: bytes) -> list[int]:
        if not text:
            return []
        tokens = self._verified(text)
        if tokens is not None:
            return tokens
        out: list[int] = []
        for line in _LINE.findall(text):
            tokens = self._verified(line)
            out += tokens if tokens is not None else self.spell_bytes(line)
        return out

    def model_tokens(self, text: bytes) -> list[int]:
        """The model's own tokenizer's ids for valid UTF-8 ``text``, unchecked: what the
        model's reference tokenizer gives (a tokenizer that drops or normalizes some
        characters spells other bytes; :meth:`encode` is the lossless one)."""
        return list(self._tokenize_text(text))

    def encode(self, data: bytes) -> list[int]:
        """Token ids whose pieces concatenate to exactly ``data``."""
        out: list[int] = []
        for valid, part in utf8_runs(data):
            if not valid:
                out += self.spell_bytes(part)
                continue
            for run in _split_bounded(part):
                out += self._encode_text(run)
        if self.decode(out) != data:  # cheap final guard: lossless or nothing
            raise LMZipError("internal error: tokenization does not round-trip")
        return out

    def decode(self, tokens: Sequence[int]) -> bytes:
        pieces = self.pieces
        return b"".join(pieces[t] for t in tokens)
