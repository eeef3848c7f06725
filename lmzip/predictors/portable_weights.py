"""GGUF -> the portable engine's weights file (docs/engine.md, "Weights file").

The engine (native/engine/) mmaps a flat file: a header, a tensor table and the
tensors, each 64-byte aligned.  Matrices keep their GGUF block form (Q4_1: 32
uint4 values, f16 scale d and f16 offset m; Q8_0: 32 int8 values and f16 d) but
16 rows are interleaved per 32-column block so that one SIMD vector holds the
same 4 columns of 16 rows (the engine puts vector lanes across output rows).

The file is converted once per model and engine format and cached at
``$LMZIP_CACHE/engine/<model-sha256>-<format>.bin`` (default ``~/.cache/lmzip``),
written to a temporary file and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["ENGINE_FORMAT", "convert", "cached_weights", "cache_dir", "file_sha256", "read_vocab", "vocab_path"]

#: version of the weights file layout (not of the numerics: that is the engine's own)
ENGINE_FORMAT = 1
MAGIC = b"LMZENG\x00\x01"
HEADER = 256
ALIGN = 64
ROWS = 16  # rows interleaved per group

T_F32, T_Q4_1, T_Q8_0 = 0, 1, 2
_GGML_F32, _GGML_Q4_1, _GGML_Q8_0 = 0, 3, 8


def cache_dir() -> Path:
    base = os.environ.get("LMZIP_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "lmzip"
    return root / "engine"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _pack_q4_1(raw: np.ndarray, rows: int, cols: int) -> bytes:
    """GGUF Q4_1 rows (``rows`` x ``cols/32`` blocks of 20 bytes) -> groups of 16 rows:
    per group and block, 4 chunks of 64 bytes (chunk c, lane l, byte j: low nibble
    column 8c+j, high nibble column 8c+4+j of row 16g+l), then 16 f16 d, 16 f16 m."""
    nb = cols // 32
    blk = raw.reshape(rows, nb, 20)
    d = blk[:, :, 0:2].copy().view(np.uint16).reshape(rows, nb)
    m = blk[:, :, 2:4].copy().view(np.uint16).reshape(rows, nb)
    qs = blk[:, :, 4:20]
    q = np.empty((rows, nb, 32), np.uint8)
    q[:, :, :16] = qs & 15  # ggml: byte j holds column j (low) and j+16 (high)
    q[:, :, 16:] = qs >> 4
    G = rows // ROWS
    q = q.reshape(G, ROWS, nb, 4, 2, 4)  # column = 8c + 4h + j
    packed = q[:, :, :, :, 0, :] | (q[:, :, :, :, 1, :] << 4)  # (G, l, b, c, j)
    packed = packed.transpose(0, 2, 3, 1, 4).reshape(G, nb, 256)  # (G, b, c, l, j)
    dd = d.reshape(G, ROWS, nb).transpose(0, 2, 1).copy().view(np.uint8).reshape(G, nb, 32)
    mm = m.reshape(G, ROWS, nb).transpose(0, 2, 1).copy().view(np.uint8).reshape(G, nb, 32)
    return np.concatenate([packed, dd, mm], axis=2).tobytes()  # 320 bytes per group-block


def _pack_q8_0(raw: np.ndarray, rows: int, cols: int) -> bytes:
    """GGUF Q8_0 rows -> groups of 16 rows: per group and block, 8 chunks of 64 bytes
    (chunk c, lane l, byte j: column 4c+j of row 16g+l, stored as q + 128), then 16 f16 d."""
    nb = cols // 32
    blk = raw.reshape(rows, nb, 34)
    d = blk[:, :, 0:2].copy().view(np.uint16).reshape(rows, nb)
    q = blk[:, :, 2:34] ^ np.uint8(0x80)
    G = rows // ROWS
    q = q.reshape(G, ROWS, nb, 8, 4).transpose(0, 2, 3, 1, 4).reshape(G, nb, 512)
    dd = d.reshape(G, ROWS, nb).transpose(0, 2, 1).copy().view(np.uint8).reshape(G, nb, 32)
    return np.concatenate([q, dd], axis=2).tobytes()  # 544 bytes per group-block


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.parts[f.data[0]].tolist()[0] if len(f.data) == 1 else [f.parts[i].tolist() for i in f.data]


VOCAB_MAGIC = b"LMZVOC\x00\x01"


def vocab_path(weights: str | os.PathLike) -> Path:
    """The vocabulary written beside a weights file: the GGUF's token pieces (reading them
    from the GGUF takes seconds)."""
    return Path(weights).with_suffix(".vocab")


@contextlib.contextmanager
def _atomic_file(path: Path):
    """A file opened for writing beside ``path``, renamed onto it only when the block ends
    without an error (synced first); removed otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_vocab(path: Path, pieces: list[bytes], bos: int) -> None:
    out = [VOCAB_MAGIC, struct.pack("<II", bos, len(pieces))]
    for p in pieces:
        out.append(struct.pack("<H", len(p)) + p)
    with _atomic_file(path) as f:
        f.write(b"".join(out))


def read_vocab(path: str | os.PathLike) -> tuple[list[bytes], int]:
    data = Path(path).read_bytes()
    if data[:8] != VOCAB_MAGIC:
        raise ValueError(f"{path}: not an engine vocabulary file")
    bos, n = struct.unpack_from("<II", data, 8)
    pos = 16
    pieces = []
    for _ in range(n):
        (k,) = struct.unpack_from("<H", data, pos)
        pieces.append(data[pos + 2 : pos + 2 + k])
        pos += 2 + k
    return pieces, bos


def convert(gguf_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    """Write the engine file for a llama-architecture GGUF (Q4_1/Q8_0 matrices, F32 norms),
    and its vocabulary beside it (:func:`vocab_path`)."""
    from gguf import GGUFReader

    from .gguf_vocab import gguf_pieces

    r = GGUFReader(str(gguf_path))
    pieces, bos_id = gguf_pieces(r)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    if arch != "llama":
        raise ValueError(f"the portable engine runs llama models, not {arch}")
    p = "llama."
    n_layer = int(_field(r, p + "block_count"))
    n_embd = int(_field(r, p + "embedding_length"))
    n_ff = int(_field(r, p + "feed_forward_length"))
    n_head = int(_field(r, p + "attention.head_count"))
    n_kv = int(_field(r, p + "attention.head_count_kv", n_head))
    rope_dim = int(_field(r, p + "rope.dimension_count", n_embd // n_head))
    rope_base = float(_field(r, p + "rope.freq_base", 10000.0))
    eps = float(_field(r, p + "attention.layer_norm_rms_epsilon", 1e-5))
    bos = int(_field(r, "tokenizer.ggml.bos_token_id", 1))
    head_dim = n_embd // n_head
    tensors = {t.name: t for t in r.tensors}
    n_vocab = int(tensors["token_embd.weight"].shape[1])
    if "output.weight" in tensors:
        raise ValueError("untied output.weight is not supported yet")
    if head_dim != 64 or rope_dim != 64:
        raise ValueError("the engine needs head dimension 64")

    names = ["token_embd.weight", "output_norm.weight"]
    for i in range(n_layer):
        names += [f"blk.{i}.{n}.weight" for n in
                  ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                   "ffn_down")]
    blobs = []
    for name in names:
        t = tensors[name]
        cols = int(t.shape[0])
        rows = int(t.shape[1]) if len(t.shape) > 1 else 1
        ty = int(t.tensor_type)
        raw = np.asarray(t.data).reshape(-1).view(np.uint8)
        if ty == _GGML_F32:
            blobs.append((T_F32, rows, cols, raw.tobytes()))
        elif ty == _GGML_Q4_1:
            blobs.append((T_Q4_1, rows, cols, _pack_q4_1(raw, rows, cols)))
        elif ty == _GGML_Q8_0:
            blobs.append((T_Q8_0, rows, cols, _pack_q8_0(raw, rows, cols)))
        else:
            raise ValueError(f"{name}: tensor type {t.tensor_type.name} is not supported")
        if ty != _GGML_F32 and (rows % 32 or cols % 32):
            raise ValueError(f"{name}: rows and columns must be multiples of 32")

    table_size = 32 * len(blobs)
    offset = -(-(HEADER + table_size) // ALIGN) * ALIGN
    table = b""
    placed = []
    for ty, rows, cols, data in blobs:
        table += struct.pack("<IIIIQQ", ty, rows, cols, 0, offset, len(data))
        placed.append((offset, data))
        offset = -(-(offset + len(data)) // ALIGN) * ALIGN
    header = MAGIC + struct.pack("<IIIIIIIIIIdfI", ENGINE_FORMAT, n_layer, n_embd, n_ff, n_head, n_kv, head_dim,
                                 n_vocab, rope_dim, bos, rope_base, eps, len(blobs))
    header = header.ljust(HEADER, b"\0")

    out_path = Path(out_path)
    write_vocab(vocab_path(out_path), pieces, bos_id)
    with _atomic_file(out_path) as f:
        f.write(header)
        f.write(table)
        for off, data in placed:
            f.seek(off)
            f.write(data)
        f.truncate(offset)


def cached_weights(gguf_path: str | os.PathLike, sha256: str | None = None) -> Path:
    """The engine file for ``gguf_path``, converted on first use."""
    sha = sha256 or file_sha256(gguf_path)
    path = cache_dir() / f"{sha}-{ENGINE_FORMAT}.bin"
    if not path.exists() or not vocab_path(path).exists():
        convert(gguf_path, path)
    return path
