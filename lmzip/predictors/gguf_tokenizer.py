"""A tokenizer built from a GGUF file's vocabulary alone, without llama.cpp.

lmzip's decoder only needs the *pieces* (token id -> bytes): :func:`gguf_pieces`
reads them from the GGUF metadata with nothing but the standard library and numpy.
The encoder also needs the model's tokenizer; :class:`GGUFTokenizer` rebuilds
llama.cpp's with Hugging Face ``tokenizers`` (Rust, fast on megabytes), so that the
token choice, and hence the compressed size, is the same as with llama.cpp.  It is
only ever given valid UTF-8, and :class:`~lmzip.tokenization.PieceTokenizer` checks
every result, so a difference could cost bytes but never lose data.

Supported: ``tokenizer.ggml.model = gpt2`` (byte-level BPE, ranked merges) with the
pre-tokenizers in :data:`SUPPORTED_PRE` (SmolLM2's is ``smollm``), and ``llama``
(SentencePiece BPE by token scores, with byte fallback and user-defined tokens:
Gemma 3).  The pieces follow llama.cpp's ``llama_token_to_piece(..., special=False)``:
control, unknown and unused tokens give ``b""``.

Checked against llama-cpp-python 0.3.36 (tests/test_gguf_tokenizer.py,
benchmarks/gguf_tokenizer.py): the same pieces for every id and the same tokens on all
of Canterbury and enwik6, for SmolLM2 and Gemma 3.  Known differences, all rare:

- characters whose Unicode class differs between llama.cpp's tables and those of
  ``tokenizers``, beyond the digits new in Unicode 16 and 17 that are handled
  (:data:`_NEWER`), may be split differently from their neighbours (gpt2);
- SentencePiece merges of equal score competing for one symbol (llama.cpp takes the
  leftmost pair, a ranked merge list cannot), never seen in testing;
- llama.cpp's name-based token type fixes are copied for the names it knows; a fill-in-
  the-middle name matched only when the GGUF names no such token is treated as control
  even if llama.cpp would have picked another of the same kind.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import LMZipError
from ..tokenization import PieceTokenizer

__all__ = [
    "GGUFVocab",
    "read_vocab",
    "gguf_pieces",
    "GGUFTokenizer",
    "piece_tokenizer",
    "SUPPORTED_PRE",
]

# ------------------------------------------------------------------ GGUF metadata

_GGUF_MAGIC = b"GGUF"
# value types (gguf spec): fixed-size scalars by struct code and numpy dtype
_SCALARS = {
    0: ("<B", np.uint8), 1: ("<b", np.int8), 2: ("<H", np.uint16), 3: ("<h", np.int16),
    4: ("<I", np.uint32), 5: ("<i", np.int32), 6: ("<f", np.float32), 7: ("<?", np.bool_),
    10: ("<Q", np.uint64), 11: ("<q", np.int64), 12: ("<d", np.float64),
}
_STRING, _ARRAY = 8, 9

# token types (tokenizer.ggml.token_type), as llama.cpp numbers them
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


class _Metadata:
    """Reads a GGUF file's key/value header only (not the tensors): fast, even for a
    262,144-token vocabulary, where ``gguf.GGUFReader`` takes seconds."""

    def __init__(self, path: str | os.PathLike):
        with open(path, "rb") as f:
            self._buf = f.read(1 << 20)
            self._f = f
            self._pos = 0
            if self._take(4) != _GGUF_MAGIC:
                raise LMZipError(f"{path} is not a GGUF file")
            version = self._unpack("<I")
            if version < 2:
                raise LMZipError(f"{path}: GGUF version {version} is not supported")
            self._unpack("<Q")  # tensor count
            n_kv = self._unpack("<Q")
            self.fields: dict[str, Any] = {}
            for _ in range(n_kv):
                key = self._string().decode("utf-8", "replace")
                self.fields[key] = self._value(self._unpack("<I"))
            self._f = None

    def _take(self, n: int) -> bytes:
        while self._pos + n > len(self._buf):
            more = self._f.read(max(n, 1 << 20))
            if not more:
                raise LMZipError("GGUF metadata is truncated")
            self._buf = self._buf[self._pos :] + more
            self._pos = 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def _unpack(self, fmt: str):
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _string(self) -> bytes:
        return self._take(self._unpack("<Q"))

    def _value(self, vtype: int):
        if vtype in _SCALARS:
            return self._unpack(_SCALARS[vtype][0])
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            itype = self._unpack("<I")
            n = self._unpack("<Q")
            if itype in _SCALARS:
                dtype = np.dtype(_SCALARS[itype][1]).newbyteorder("<")
                return np.frombuffer(self._take(n * dtype.itemsize), dtype=dtype).copy()
            return [self._value(itype) for _ in range(n)]
        raise LMZipError(f"GGUF metadata has an unknown value type {vtype}")


def _reader_fields(reader) -> dict[str, Any]:
    """The tokenizer fields of an open ``gguf.GGUFReader``, as :class:`_Metadata` gives them."""
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.") and key != "general.name":
            continue
        types = [int(t) for t in field.types]
        if types[0] == _ARRAY and types[-1] == _STRING:
            out[key] = [bytes(field.parts[i]) for i in field.data]
        elif types[0] == _ARRAY:
            out[key] = np.concatenate([np.asarray(field.parts[i]) for i in field.data]) if field.data else np.array([])
        elif types[0] == _STRING:
            out[key] = bytes(field.parts[field.data[0]])
        else:
            out[key] = field.parts[field.data[0]][0].item()
    return out


# llama.cpp forces these to CONTROL by their text, whatever the GGUF says (end-of-generation
# tokens; llama-vocab.cpp, "auto-detect special tokens by text")
_EOG_NAMES = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
}
# ... and these when the GGUF does not name the fill-in-the-middle token of their kind
_FIM_NAMES = {
    "prefix": {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
               "<|code_prefix|>", "<|prefix|>"},
    "suffix": {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
               "<|code_suffix|>", "<|suffix|>"},
    "middle": {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
               "<|code_middle|>", "<|middle|>"},
    "pad": {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"},
    "repo": {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"},
    "sep": {"<|file_sep|>"},
}
_FIM_KEYS = {
    "prefix": ("fim_pre_token_id", "prefix_token_id"), "suffix": ("fim_suf_token_id", "suffix_token_id"),
    "middle": ("fim_mid_token_id", "middle_token_id"), "pad": ("fim_pad_token_id",),
    "repo": ("fim_rep_token_id",), "sep": ("fim_sep_token_id",),
}
# ... and these (gpt-oss) to USER_DEFINED
_USER_NAMES = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"}


class GGUFVocab:
    """The tokenizer part of a GGUF file: model kind, pre-tokenizer, tokens, their types
    (as llama.cpp adjusts them), merges and scores."""

    def __init__(self, fields: dict[str, Any]):
        def text(key: str, default: str = "") -> str:
            v = fields.get(key)
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else default

        self.model = text("tokenizer.ggml.model")
        self.pre = text("tokenizer.ggml.pre", "default")
        tokens = fields.get("tokenizer.ggml.tokens")
        if not tokens:
            raise LMZipError("the GGUF file has no tokenizer vocabulary (tokenizer.ggml.tokens)")
        # llama.cpp renames empty tokens so that every text is unique
        self.tokens: list[bytes] = [t or b"[EMPTY_%d]" % i for i, t in enumerate(tokens)]
        types = fields.get("tokenizer.ggml.token_type")
        self.types = (np.asarray(types, dtype=np.int64).tolist() if types is not None
                      else [NORMAL] * len(self.tokens))[: len(self.tokens)]
        self.types += [NORMAL] * (len(self.tokens) - len(self.types))
        self.merges: list[bytes] = list(fields.get("tokenizer.ggml.merges") or [])
        scores = fields.get("tokenizer.ggml.scores")
        self.scores = None if scores is None else np.asarray(scores, dtype=np.float32)
        self.add_space_prefix = bool(fields.get("tokenizer.ggml.add_space_prefix", self.model == "llama"))
        self._adjust_types(fields)

    def _adjust_types(self, fields: dict[str, Any]) -> None:
        index = {t: i for i, t in enumerate(self.tokens)}

        def force(name: str, kind: int) -> None:
            i = index.get(name.encode())
            if i is not None and (kind != CONTROL or self.types[i] != CONTROL):
                self.types[i] = kind

        for name in _EOG_NAMES:
            force(name, CONTROL)
        for kind, names in _FIM_NAMES.items():
            if not any(f"tokenizer.ggml.{k}" in fields for k in _FIM_KEYS[kind]):
                for name in names:
                    force(name, CONTROL)
        for name in _USER_NAMES:
            force(name, USER_DEFINED)
        # end-of-generation tokens are control tokens; two workarounds of llama.cpp's
        eog = {self.tokens[i] for i, t in enumerate(self.types) if t == CONTROL}
        if {b"<|return|>", b"<|call|>", b"<|end|>"} <= eog or {b"<|calls|>", b"<|flush|>", b"<|end|>"} <= eog:
            self.types[index[b"<|end|>"]] = USER_DEFINED  # o200k_harmony, solar-open
        if b"</s>" in eog and eog & {b"<|tool_response>", b"<|plamo:eos|>"}:
            self.types[index[b"</s>"]] = NORMAL  # gemma4, plamo

    def __len__(self) -> int:
        return len(self.tokens)


def read_vocab(source) -> GGUFVocab:
    """The :class:`GGUFVocab` of a GGUF path, or of an open ``gguf.GGUFReader``."""
    if isinstance(source, GGUFVocab):
        return source
    if hasattr(source, "fields") and not isinstance(source, (str, os.PathLike)):
        return GGUFVocab(_reader_fields(source))
    return GGUFVocab(_Metadata(source).fields)


# ------------------------------------------------------------------ pieces


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable character map, character -> byte: printable
    Latin-1 bytes stand for themselves, the other 68 are shifted to U+0100 and up."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: b for b in keep}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 0x100 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


_BYTE_OF_CHAR = _byte_level_alphabet()


def _byte_level_decode(text: bytes) -> bytes:
    """A byte-level BPE token's bytes (llama.cpp's ``llama_decode_text``, including its
    marker for characters outside the alphabet)."""
    s = text.decode("utf-8", "replace")
    try:
        return bytes(_BYTE_OF_CHAR[c] for c in s)
    except KeyError:
        pass
    out = bytearray()
    for c in s:
        b = _BYTE_OF_CHAR.get(c)
        if b is not None:
            out.append(b)
        else:
            out += b"[UNK_BYTE_0x" + c.encode().hex().encode() + text + b"]"
    return bytes(out)


def _hex_byte(text: bytes) -> bytes:
    """The byte of a ``<0xXX>`` token."""
    try:
        if len(text) == 6 and text.startswith(b"<0x") and text.endswith(b">"):
            return bytes([int(text[3:5], 16)])
    except ValueError:
        pass
    raise LMZipError(f"byte token {text!r} is not of the form <0xXX>")


def gguf_pieces(source) -> list[bytes]:
    """The byte piece of every token id of a GGUF vocabulary (a path, an open
    ``gguf.GGUFReader`` or a :class:`GGUFVocab`): exactly what llama.cpp's
    ``llama_token_to_piece(vocab, id, buf, n, 0, special=False)`` gives, so ``b""``
    for control, unknown and unused tokens.  Needs neither llama.cpp nor ``tokenizers``."""
    v = read_vocab(source)
    if v.model in ("gpt2",):
        normal = _byte_level_decode
    elif v.model in ("llama", "t5", "bert"):  # SentencePiece-style: U+2581 is a space
        def normal(text: bytes) -> bytes:
            return text.replace("\u2581".encode(), b" ")
    else:
        raise LMZipError(f"tokenizer kind {v.model!r} is not supported (gpt2 and llama are)")
    pieces = []
    for text, kind in zip(v.tokens, v.types):
        if kind == NORMAL:
            pieces.append(normal(text))
        elif kind == USER_DEFINED:
            pieces.append(text)
        elif kind == BYTE:
            pieces.append(_hex_byte(text))
        else:  # CONTROL, UNKNOWN, UNUSED, undefined: llama.cpp gives nothing
            pieces.append(b"")
    return pieces


# ------------------------------------------------------------------ tokenizer

#: llama.cpp pre-tokenizer names (``tokenizer.ggml.pre``) whose split we rebuild: each
#: digit alone, then GPT-2's split (llama-vocab.cpp: ``\p{N}`` then GPT-2's regex)
SUPPORTED_PRE = {
    "gpt2": False, "mpt": False, "olmo": False, "jais": False,  # GPT-2's split only
    "smollm": True, "starcoder": True, "refact": True, "command-r": True, "codeshell": True,
    "exaone": True, "minerva-7b": True,  # one digit per word first
}


# GPT-2's split, as llama.cpp does it (unicode.cpp): its Unicode tables are older than
# those of tokenizers' regex engine (Oniguruma), and these digits, new in Unicode 16 and
# 17, are neither letters nor numbers there (found by comparing every code point up to
# U+3FFFF unassigned in Unicode 14 with llama-cpp-python 0.3.36)
_NEWER = (r"\x{10D40}-\x{10D49}\x{116D0}-\x{116E3}\x{11BF0}-\x{11BF9}\x{11DE0}-\x{11DE9}\x{16130}-\x{16139}"
          r"\x{16D70}-\x{16D79}\x{16FF4}-\x{16FF6}\x{1CCF0}-\x{1CCF9}\x{1E5F1}-\x{1E5FA}")
_LETTER = r"[\p{L}&&[^" + _NEWER + "]]"
_DIGIT = r"[\p{N}&&[^" + _NEWER + "]]"
_OTHER = r"[[^\s\p{L}\p{N}]" + _NEWER + "]"
_GPT2_SPLIT = (r"'s|'t|'re|'ve|'m|'ll|'d| ?" + _LETTER + "+| ?" + _DIGIT + "+| ?" + _OTHER
               + r"+|\s+(?!\S)|\s+")


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise LMZipError(
            "compressing without llama.cpp needs the Hugging Face tokenizers package: pip install tokenizers"
        ) from None
    return tokenizers


class GGUFTokenizer:
    """llama.cpp's tokenizer for a GGUF vocabulary, rebuilt on Hugging Face ``tokenizers``.

    ``tokenize_text(text)`` gives the ids llama.cpp's
    ``llama_tokenize(vocab, text, ..., add_special=False, parse_special=False)`` gives
    for valid UTF-8 ``text``.  Raises :class:`LMZipError` if the tokenizer kind or the
    pre-tokenizer is not supported, or ``tokenizers`` is not installed.
    """

    def __init__(self, source):
        self.vocab = v = read_vocab(source)
        self.pieces = gguf_pieces(v)
        tk = _tokenizers()
        self._drop: int | None = None  # a token id to remove from every result
        if v.model == "gpt2":
            self._tok, self._drop = self._byte_level_bpe(tk, v)
        elif v.model == "llama":
            self._tok = self._sentencepiece(tk, v)
        else:
            raise LMZipError(f"tokenizer kind {v.model!r} is not supported without llama.cpp (gpt2 and llama are)")

    @staticmethod
    def _vocab_dict(v: GGUFVocab) -> dict[str, int]:
        vocab: dict[str, int] = {}
        for i, t in enumerate(v.tokens):
            vocab.setdefault(t.decode("utf-8", "replace"), i)
        return vocab

    @classmethod
    def _byte_level_bpe(cls, tk, v: GGUFVocab):
        """gpt2: the GGUF's ranked merges over GPT-2's byte alphabet, after the split of
        llama.cpp's pre-tokenizer.  Returns the tokenizer and the id of its stand-in for
        characters outside the vocabulary (or None).

        A byte without a token of its own (SmolLM2 has none for 0x04 or 0x1d) stays a
        symbol in llama.cpp, so its neighbours cannot merge across it, and is dropped at
        the end; Hugging Face's BPE drops it first.  So it becomes an "unknown" token that
        no merge rule mentions, removed from the result afterwards."""
        if v.pre not in SUPPORTED_PRE:
            raise LMZipError(f"pre-tokenizer {v.pre!r} is not supported without llama.cpp "
                             f"(supported: {', '.join(sorted(SUPPORTED_PRE))})")
        if any(t == USER_DEFINED for t in v.types):
            # llama.cpp would split them out of the text first, then byte-level encode the rest;
            # not needed for the known models, so not done
            raise LMZipError("byte-level vocabularies with user-defined tokens are not supported without llama.cpp")
        merges = []
        for m in v.merges:
            s = m.decode("utf-8", "replace")
            cut = s.find(" ", 1)  # as llama.cpp splits a merge rule
            if cut < 0:
                raise LMZipError(f"GGUF merge rule {s!r} has no space")
            merges.append((s[:cut], s[cut + 1 :]))
        vocab = cls._vocab_dict(v)
        unk = None
        if any(c not in vocab for c in _BYTE_OF_CHAR):
            in_merges = {x for a, b in merges for x in (a, b, a + b)}
            unk = next((t for t, i in vocab.items() if len(t) > 1 and t not in in_merges
                        and v.types[i] in (CONTROL, UNKNOWN, UNUSED)), None)
            if unk is None:
                raise LMZipError("byte-level vocabulary without all 256 bytes and without a spare control "
                                 "token: not supported without llama.cpp")
        model = tk.models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=False,
                              byte_fallback=False, ignore_merges=False)
        tok = tk.Tokenizer(model)
        steps = []
        if SUPPORTED_PRE[v.pre]:
            steps.append(tk.pre_tokenizers.Split(tk.Regex(_DIGIT), behavior="isolated"))
        steps.append(tk.pre_tokenizers.Split(tk.Regex(_GPT2_SPLIT), behavior="isolated"))
        steps.append(tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
        tok.pre_tokenizer = tk.pre_tokenizers.Sequence(steps)
        return tok, (None if unk is None else vocab[unk])

    @classmethod
    def _sentencepiece(cls, tk, v: GGUFVocab):
        """llama (SentencePiece BPE with byte fallback), as llama.cpp's SPM tokenizer does it:
        user-defined tokens are cut out of the text first (longest first); in each other
        part spaces become U+2581 and adjacent symbols merge, the pair whose concatenation
        is the vocabulary token of highest score first, while any pair forms a token;
        characters left outside the vocabulary are spelled in <0xXX> byte tokens.

        As ranked merges: every split (a, b) of a token t with a and b tokens too, ranked
        by t's score (ties by id).  Exact except for equal-score pairs that compete for
        the same symbol (llama.cpp takes the leftmost; a static rank cannot)."""
        if v.scores is None:
            raise LMZipError("the GGUF's SentencePiece vocabulary has no scores (tokenizer.ggml.scores)")
        vocab = cls._vocab_dict(v)
        scores = v.scores.tolist()
        has = vocab.__contains__  # (a comprehension: this is most of the build time)
        cands = [(-scores[i], i, k, t[:k], t[k:]) for t, i in vocab.items() if len(t) > 1
                 for k in range(1, len(t)) if has(t[:k]) and has(t[k:])]
        cands.sort()
        merges = [(a, b) for _, _, _, a, b in cands]
        model = tk.models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False,
                              byte_fallback=True, ignore_merges=False)
        tok = tk.Tokenizer(model)
        steps = [tk.normalizers.Replace(" ", "\u2581")]
        if v.add_space_prefix:  # llama.cpp: at the start and after each token cut out
            steps.insert(0, tk.normalizers.Prepend("\u2581"))
        tok.normalizer = tk.normalizers.Sequence(steps)
        user = [v.tokens[i].decode("utf-8", "replace") for i, t in enumerate(v.types) if t == USER_DEFINED]
        if user:
            tok.add_tokens([tk.AddedToken(u, single_word=False, lstrip=False, rstrip=False,
                                          normalized=False, special=False) for u in user])
        return tok

    def tokenize_text(self, text: bytes) -> list[int]:
        """Token ids for valid UTF-8 ``text`` (as llama.cpp tokenizes it)."""
        if not text:
            return []
        # the batch call without character offsets is the faster one, even for one text
        ids = self._tok.encode_batch_fast([text.decode("utf-8")], add_special_tokens=False)[0].ids
        drop = self._drop
        return [t for t in ids if t != drop] if drop is not None and drop in ids else ids

    def tokenize_many(self, texts: Sequence[bytes]) -> list[list[int]]:
        """:meth:`tokenize_text` of each text, in one call (on Rust threads)."""
        encs = self._tok.encode_batch_fast([t.decode("utf-8") for t in texts], add_special_tokens=False)
        drop = self._drop
        return [[t for t in e.ids if t != drop] if drop is not None else e.ids for e in encs]

    def piece_tokenizer(self) -> PieceTokenizer:
        return PieceTokenizer(self.pieces, self.tokenize_text)


def piece_tokenizer(source) -> PieceTokenizer:
    """A ready lossless :class:`PieceTokenizer` for a GGUF path or ``gguf.GGUFReader``."""
    return GGUFTokenizer(source).piece_tokenizer()
