"""GGUF -> the portable engine's weights file (docs/engine.md, "Weights file").

The engine (native/engine/) mmaps a flat file: a header, a tensor table and the
tensors, each 64-byte aligned.  Matrices keep their GGUF block form (Q4_1: 32
uint4 values, f16 scale d and f16 offset m; Q8_0: 32 int8 values and f16 d) but
16 rows are interleaved per 32-column block so that one SIMD vector holds the
same 4 columns of 16 rows (the engine puts vector lanes across output rows).

A gemma3 GGUF becomes format 2 (:func:`_convert_gemma3`: Q5_0 as Q8_0 blocks, Q4_K and
Q6_K as K16 rows with per-16-column f32 scales and mins, every value the GGUF's).

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

from .cache import cache_dir as lmzip_cache_dir

__all__ = ["ENGINE_FORMAT", "convert", "cached_weights", "cache_dir", "file_sha256", "read_vocab", "vocab_path"]

#: version of the weights file layout (not of the numerics: that is the engine's own)
ENGINE_FORMAT = 1
MAGIC = b"LMZENG\x00\x01"
HEADER = 256
ALIGN = 64
ROWS = 16  # rows interleaved per group

T_F32, T_Q4_1, T_Q8_0, T_K16 = 0, 1, 2, 3
_GGML_F32, _GGML_Q4_1, _GGML_Q5_0, _GGML_Q8_0, _GGML_Q4_K, _GGML_Q6_K = 0, 3, 6, 8, 12, 14
#: weights file layout of gemma3 models (format 1 stays the llama layout, byte for byte)
GEMMA3_FORMAT = 2


def cache_dir() -> Path:
    """Where converted weights are kept: ``engine/`` in lmzip's cache folder."""
    return lmzip_cache_dir() / "engine"


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


def _f16(raw: np.ndarray) -> np.ndarray:
    """little-endian f16 bytes (..., 2) -> float32 (exact)"""
    return raw.copy().view(np.float16)[..., 0].astype(np.float32)


def _q5_0_as_q8_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """GGUF Q5_0 rows (22-byte blocks: f16 d, u32 qh, 16 bytes of nibbles) -> the same
    values as Q8_0 blocks (f16 d, 32 int8 q in -16..15): exact, value = d * q."""
    nb = cols // 32
    blk = raw.reshape(rows, nb, 22)
    qh = blk[:, :, 2:6].copy().view("<u4")[..., 0]
    qs = blk[:, :, 6:22]
    j = np.arange(16, dtype=np.uint32)
    lo = (qs & 15).astype(np.int16) | ((((qh[..., None] >> j) << 4) & 0x10).astype(np.int16))
    hi = (qs >> 4).astype(np.int16) | (((qh[..., None] >> (j + 12)) & 0x10).astype(np.int16))
    q = np.concatenate([lo, hi], axis=2) - 16
    out = np.empty((rows, nb, 34), np.uint8)
    out[:, :, 0:2] = blk[:, :, 0:2]
    out[:, :, 2:] = q.astype(np.int8).view(np.uint8)
    return out.reshape(-1)


def _k16(q: np.ndarray, scale: np.ndarray, mn: np.ndarray) -> bytes:
    """K16: row-major int8 q (rows x cols), then f32 scales, then f32 mins (rows x cols/16)."""
    return (q.astype(np.int8).tobytes() + scale.astype("<f4").tobytes() + mn.astype("<f4").tobytes())


def _unpack_q4_k(raw: np.ndarray, rows: int, cols: int):
    """GGUF Q4_K (144-byte super-blocks of 256: f16 d, f16 dmin, 12 bytes of 6-bit scales
    and mins, 128 bytes of nibbles) -> q (0..15), per-16 scale d*sc and min -(dmin*m)
    exactly as ggml's dequantize_row_q4_K forms them (f32 products; value = scale*q + min)."""
    ns = cols // 256
    blk = raw.reshape(rows, ns, 144)
    d = _f16(blk[:, :, 0:2])
    dmin = _f16(blk[:, :, 2:4])
    sc12 = blk[:, :, 4:16].astype(np.uint8)
    qs = blk[:, :, 16:144]
    sc = np.empty((rows, ns, 8), np.uint8)
    mm = np.empty((rows, ns, 8), np.uint8)
    for j in range(8):
        if j < 4:
            sc[:, :, j] = sc12[:, :, j] & 63
            mm[:, :, j] = sc12[:, :, j + 4] & 63
        else:
            sc[:, :, j] = (sc12[:, :, j + 4] & 0xF) | ((sc12[:, :, j - 4] >> 6) << 4)
            mm[:, :, j] = (sc12[:, :, j + 4] >> 4) | ((sc12[:, :, j] >> 6) << 4)
    q = np.empty((rows, ns, 256), np.int8)
    for c in range(4):  # 64 values per chunk of 32 bytes: low nibbles, then high nibbles
        b = qs[:, :, 32 * c:32 * c + 32]
        q[:, :, 64 * c:64 * c + 32] = b & 15
        q[:, :, 64 * c + 32:64 * c + 64] = b >> 4
    scale32 = d[..., None] * sc.astype(np.float32)  # f32 product, as ggml's d1 = d * sc
    min32 = -(dmin[..., None] * mm.astype(np.float32))  # exact negation of ggml's m1 = dmin * m
    scale = np.repeat(scale32, 2, axis=2).reshape(rows, cols // 16)
    mn = np.repeat(min32, 2, axis=2).reshape(rows, cols // 16)
    return q.reshape(rows, cols), scale, mn


def _unpack_q6_k(raw: np.ndarray, rows: int, cols: int):
    """GGUF Q6_K (210-byte super-blocks of 256: 128 bytes ql, 64 bytes qh, 16 int8 scales,
    f16 d) -> q (-32..31), per-16 scale d*sc (f32, as ggml's d * sc[is] before * q), min 0."""
    ns = cols // 256
    blk = raw.reshape(rows, ns, 210)
    ql = blk[:, :, 0:128].astype(np.int16)
    qh = blk[:, :, 128:192].astype(np.int16)
    sc = blk[:, :, 192:208].copy().view(np.int8).astype(np.float32)
    d = _f16(blk[:, :, 208:210])
    q = np.empty((rows, ns, 256), np.int16)
    for n in range(2):  # halves of 128 values
        L = ql[:, :, 64 * n:64 * n + 64]
        Hh = qh[:, :, 32 * n:32 * n + 32]
        base = 128 * n
        q[:, :, base + 0:base + 32] = ((L[:, :, 0:32] & 0xF) | (((Hh >> 0) & 3) << 4)) - 32
        q[:, :, base + 32:base + 64] = ((L[:, :, 32:64] & 0xF) | (((Hh >> 2) & 3) << 4)) - 32
        q[:, :, base + 64:base + 96] = ((L[:, :, 0:32] >> 4) | (((Hh >> 4) & 3) << 4)) - 32
        q[:, :, base + 96:base + 128] = ((L[:, :, 32:64] >> 4) | (((Hh >> 6) & 3) << 4)) - 32
    # 16 sub-blocks of 16 values in order; ggml's scale index of value 16*i.. is i
    scale = (d[..., None] * sc).reshape(rows, cols // 16)
    return q.reshape(rows, cols), scale, np.zeros_like(scale)


#: GGUF tensor types each weights format takes (format 1 has no K16 tensors)
_LLAMA_TYPES = frozenset({_GGML_F32, _GGML_Q4_1, _GGML_Q8_0})
_GEMMA3_TYPES = frozenset({_GGML_F32, _GGML_Q8_0, _GGML_Q5_0, _GGML_Q4_K, _GGML_Q6_K})


#: GGUF block types: (bytes per block, offsets of its f16 scales)
_F16_SCALES = {_GGML_Q4_1: (20, (0, 2)), _GGML_Q5_0: (22, (0,)), _GGML_Q8_0: (34, (0,)),
               _GGML_Q4_K: (144, (0, 2)), _GGML_Q6_K: (210, (208,))}


def _check_finite(name: str, ty: int, raw: np.ndarray) -> None:
    """Refuse inf and NaN in a tensor's floats: the engine's f16 conversions (table, SSE2
    integer steps, F16C, NEON) agree on every finite value only, and NaN's bits are not the
    same on every CPU."""
    if ty == _GGML_F32:
        bad = not np.isfinite(raw.view("<f4")).all()
    else:
        size, offsets = _F16_SCALES[ty]
        blk = raw.reshape(-1, size)
        bad = any(not np.isfinite(_f16(blk[:, o:o + 2])).all() for o in offsets)
    if bad:
        raise ValueError(f"{name}: the tensor holds inf or NaN (a damaged model file?)")


def _blob(name: str, t, accepted: frozenset[int]) -> tuple[int, int, int, bytes]:
    """A GGUF tensor as the engine stores it: (engine type, rows, cols, bytes), every value
    the GGUF's; a type outside ``accepted`` or a shape off the engine's blocks is refused."""
    cols = int(t.shape[0])
    rows = int(t.shape[1]) if len(t.shape) > 1 else 1
    ty = int(t.tensor_type)
    if ty not in accepted:
        raise ValueError(f"{name}: tensor type {t.tensor_type.name} is not supported")
    if ty != _GGML_F32 and (rows % 32 or cols % (256 if ty in (_GGML_Q4_K, _GGML_Q6_K) else 32)):
        raise ValueError(f"{name}: {rows} x {cols} does not fit the engine's blocks")
    raw = np.asarray(t.data).reshape(-1).view(np.uint8)
    _check_finite(name, ty, raw)
    if ty == _GGML_F32:
        return T_F32, rows, cols, raw.tobytes()
    if ty == _GGML_Q4_1:
        return T_Q4_1, rows, cols, _pack_q4_1(raw, rows, cols)
    if ty == _GGML_Q8_0:
        return T_Q8_0, rows, cols, _pack_q8_0(raw, rows, cols)
    if ty == _GGML_Q5_0:
        return T_Q8_0, rows, cols, _pack_q8_0(_q5_0_as_q8_0(raw, rows, cols), rows, cols)
    if ty == _GGML_Q4_K:
        return T_K16, rows, cols, _k16(*_unpack_q4_k(raw, rows, cols))
    return T_K16, rows, cols, _k16(*_unpack_q6_k(raw, rows, cols))  # Q6_K, the last accepted type


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
    if arch == "gemma3":
        return _convert_gemma3(r, pieces, bos_id, out_path)
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
    blobs = [_blob(name, tensors[name], _LLAMA_TYPES) for name in names]
    header = MAGIC + struct.pack("<IIIIIIIIIIdfI", ENGINE_FORMAT, n_layer, n_embd, n_ff, n_head, n_kv, head_dim,
                                 n_vocab, rope_dim, bos, rope_base, eps, len(blobs))
    _write(out_path, header, blobs, pieces, bos_id)


def _write(out_path, header: bytes, blobs, pieces, bos_id) -> None:
    table_size = 32 * len(blobs)
    offset = -(-(HEADER + table_size) // ALIGN) * ALIGN
    table = b""
    placed = []
    for ty, rows, cols, data in blobs:
        table += struct.pack("<IIIIQQ", ty, rows, cols, 0, offset, len(data))
        placed.append((offset, data))
        offset = -(-(offset + len(data)) // ALIGN) * ALIGN
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


def _convert_gemma3(r, pieces, bos_id, out_path) -> None:
    """Format 2: a gemma3 GGUF (Q5_0 and Q8_0 matrices become Q8_0 blocks, Q4_K and Q6_K
    become K16; all values exactly the GGUF's).  Header: format 1's fields, then f64 local
    RoPE base, u32 sliding window, u32 layer pattern (every n-th layer global).  Tensors:
    token_embd, output_norm, per layer attn_norm, attn_q, attn_k, attn_v, attn_q_norm,
    attn_k_norm, attn_output, post_attention_norm, ffn_norm, ffn_gate, ffn_up, ffn_down,
    post_ffw_norm."""
    p = "gemma3."
    n_layer = int(_field(r, p + "block_count"))
    n_embd = int(_field(r, p + "embedding_length"))
    n_ff = int(_field(r, p + "feed_forward_length"))
    n_head = int(_field(r, p + "attention.head_count"))
    n_kv = int(_field(r, p + "attention.head_count_kv", n_head))
    head_dim = int(_field(r, p + "attention.key_length", 256))
    if int(_field(r, p + "attention.value_length", head_dim)) != head_dim:
        raise ValueError("gemma3: key and value lengths differ")
    rope_base = float(_field(r, p + "rope.freq_base", 1000000.0))
    rope_local = float(_field(r, p + "rope.local.freq_base", 10000.0))  # llama.cpp's default for gemma3
    window = int(_field(r, p + "attention.sliding_window", 512))
    pattern = 6  # llama.cpp: hparams.set_swa_pattern(6) for gemma3
    eps = float(_field(r, p + "attention.layer_norm_rms_epsilon", 1e-6))
    if _field(r, p + "rope.scaling.type") not in (None, "none") or _field(r, p + "rope.scaling.factor") not in (
            None, 1.0):
        raise ValueError("gemma3: RoPE scaling is not supported")
    if _field(r, p + "final_logit_softcapping") is not None:
        raise ValueError("gemma3: final logit soft-capping is not supported")
    bos = int(_field(r, "tokenizer.ggml.bos_token_id", 2))
    tensors = {t.name: t for t in r.tensors}
    n_vocab = int(tensors["token_embd.weight"].shape[1])
    if "output.weight" in tensors:
        raise ValueError("untied output.weight is not supported yet")
    names = ["token_embd.weight", "output_norm.weight"]
    for i in range(n_layer):
        names += [f"blk.{i}.{n}.weight" for n in
                  ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm", "attn_output",
                   "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm")]
    blobs = [_blob(name, tensors[name], _GEMMA3_TYPES) for name in names]
    header = MAGIC + struct.pack("<IIIIIIIIIIdfIdII", GEMMA3_FORMAT, n_layer, n_embd, n_ff, n_head, n_kv, head_dim,
                                 n_vocab, head_dim, bos, rope_base, eps, len(blobs), rope_local, window, pattern)
    _write(out_path, header, blobs, pieces, bos_id)


def weights_format(gguf_path: str | os.PathLike) -> int:
    """The weights file format a GGUF converts to (2 for gemma3, else 1)."""
    from gguf import GGUFReader

    r = GGUFReader(str(gguf_path))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    return GEMMA3_FORMAT if arch == "gemma3" else ENGINE_FORMAT


def cached_weights(gguf_path: str | os.PathLike, sha256: str | None = None) -> Path:
    """The engine file for ``gguf_path``, converted on first use."""
    sha = sha256 or file_sha256(gguf_path)
    path = cache_dir() / f"{sha}-{ENGINE_FORMAT}.bin"
    if not path.exists():
        alt = cache_dir() / f"{sha}-{GEMMA3_FORMAT}.bin"
        if alt.exists() or weights_format(gguf_path) == GEMMA3_FORMAT:
            path = alt
    if not path.exists() or not vocab_path(path).exists():
        convert(gguf_path, path)
    return path
