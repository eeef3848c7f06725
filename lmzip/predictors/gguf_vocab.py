"""Token pieces and the start token of a GGUF vocabulary for the portable engine, read
without llama.cpp (the pieces are :mod:`lmzip.predictors.gguf_tokenizer`'s).
"""

from __future__ import annotations

__all__ = ["gguf_pieces"]


def gguf_pieces(path_or_reader) -> tuple[list[bytes], int]:
    """(pieces, bos token id) of a GGUF file's vocabulary (a path or a ``GGUFReader``).
    The pieces are :func:`lmzip.predictors.gguf_tokenizer.gguf_pieces`' (llama.cpp's own)."""
    from gguf import GGUFReader

    from .gguf_tokenizer import gguf_pieces as pieces_of

    r = path_or_reader if isinstance(path_or_reader, GGUFReader) else GGUFReader(str(path_or_reader))
    bf = r.fields.get("tokenizer.ggml.bos_token_id")
    bos = int(bf.parts[bf.data[0]][0]) if bf is not None else 1
    return pieces_of(r), bos
