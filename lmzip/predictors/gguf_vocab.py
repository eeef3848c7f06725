"""Token pieces of a GGUF vocabulary, read without llama.cpp.

For a byte-level BPE vocabulary (``tokenizer.ggml.model == "gpt2"``) each token's
text is spelled in GPT-2's printable mapping of the 256 byte values; this inverts it.
Control tokens (``token_type`` 3) get empty pieces, like llama.cpp's
``llama_token_to_piece(..., special=False)``.
"""

from __future__ import annotations

__all__ = ["gguf_pieces", "greedy_tokenize"]


def _byte_decoder() -> dict[str, int]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def gguf_pieces(path_or_reader) -> tuple[list[bytes], int]:
    """(pieces, bos token id) of a GGUF file's vocabulary (a path or a ``GGUFReader``)."""
    from gguf import GGUFReader

    r = path_or_reader if isinstance(path_or_reader, GGUFReader) else GGUFReader(str(path_or_reader))
    model = bytes(r.fields["tokenizer.ggml.model"].parts[-1]).decode()
    f = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    tf = r.fields.get("tokenizer.ggml.token_type")
    types = [int(tf.parts[i][0]) for i in tf.data] if tf is not None else [1] * len(tokens)
    bf = r.fields.get("tokenizer.ggml.bos_token_id")
    bos = int(bf.parts[bf.data[0]][0]) if bf is not None else 1
    if model != "gpt2":
        raise ValueError(f"only byte-level BPE vocabularies are supported here, not {model!r}")
    dec = _byte_decoder()
    pieces = []
    for text, ty in zip(tokens, types):
        if ty == 3:  # control
            pieces.append(b"")
        else:
            try:
                pieces.append(bytes(dec[c] for c in text))
            except KeyError:
                pieces.append(text.encode("utf-8"))
    return pieces, bos


def greedy_tokenize(pieces: list[bytes], data: bytes) -> list[int]:
    """Longest-match tokenization (valid, not the model's own): for tests and fallbacks."""
    index: dict[bytes, int] = {}
    longest = 1
    for t, p in enumerate(pieces):
        if p and p not in index:
            index[p] = t
            longest = max(longest, len(p))
    out = []
    i = 0
    while i < len(data):
        for n in range(min(longest, len(data) - i), 0, -1):
            t = index.get(data[i : i + n])
            if t is not None:
                out.append(t)
                i += n
                break
        else:
            raise ValueError(f"byte {data[i]:#x} has no token")
    return out
