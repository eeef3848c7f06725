"""The engine's weights file (format 1: llama, format 2: Gemma 3; docs/engine.md) read for
the GPU.

The bytes are the engine's own (``lmzip.predictors.portable_weights.cached_weights``);
only their layout changes: the matrices' 16-row groups of packed 32-column blocks become
row-major int8 values (Q4_1: 0..15, Q8_0: -128..127) with the f16 scales as float32
[rows, K/32] (f16 -> f32 is exact; the converter refuses inf and NaN), the layout the
GPU's block products read (lmzip.gpu.kernels.matmul_kernel).  K16 matrices (Gemma's Q4_K
and Q6_K) are stored row-major already: their int8 values and float32 scales and mins
[rows, K/16] are taken as they are.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np

from ..errors import LMZipError

__all__ = ["Matrix", "ModelWeights", "read_weights", "T_F32", "T_Q4_1", "T_Q8_0", "T_K16"]

T_F32, T_Q4_1, T_Q8_0, T_K16 = 0, 1, 2, 3
_Q4_GB, _Q8_GB = 320, 544  # bytes per 16-row group and 32-column block
#: each layer's tensors, in the file's order, per weights format
_LAYER_NAMES = {1: ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "wg", "wu", "wd"),
                2: ("attn_norm", "wq", "wk", "wv", "q_norm", "k_norm", "wo", "post_attn_norm", "ffn_norm", "wg", "wu",
                    "wd", "post_ffn_norm")}


@dataclass
class Matrix:
    """One block-quantized matrix: q int8 [rows, K], d (and m for Q4_1) float32 [rows, K/32];
    K16: the scales d and mins m float32 [rows, K/16]."""

    kind: int
    q: np.ndarray
    d: np.ndarray
    m: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return self.q.shape[0]

    @property
    def cols(self) -> int:
        return self.q.shape[1]


@dataclass
class ModelWeights:
    format: int  # 1 llama, 2 Gemma 3
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_kv: int
    head_dim: int
    n_vocab: int
    bos: int
    rope_base: float  # Gemma: its global layers'
    eps: float
    embd: Matrix
    out_norm: np.ndarray
    layers: list[dict] = field(default_factory=list)
    # Gemma 3: the local (sliding-window) layers' RoPE base and window; layer l is global
    # iff l % swa_pattern == swa_pattern - 1
    rope_base_local: float = 0.0
    swa_window: int = 0
    swa_pattern: int = 1

    @property
    def gemma(self) -> bool:
        return self.format == 2

    def is_global(self, layer: int) -> bool:
        return not self.gemma or layer % self.swa_pattern == self.swa_pattern - 1


def _unpack_q4_1(raw: np.ndarray, rows: int, cols: int) -> Matrix:
    nb = cols // 32
    blk = raw.reshape(rows // 16, nb, _Q4_GB)
    packed = blk[:, :, :256].reshape(rows // 16, nb, 4, 16, 4)  # group, block, chunk c, lane l, byte j
    # chunk c, byte j: column 8c + j in the low nibble, 8c + 4 + j in the high one
    q = np.concatenate([packed & 15, packed >> 4], axis=4)  # [g, b, c, l, 8]
    q = q.transpose(0, 3, 1, 2, 4).reshape(rows, cols).astype(np.int8)
    d = blk[:, :, 256:288].copy().view(np.float16).transpose(0, 2, 1).reshape(rows, nb)
    m = blk[:, :, 288:320].copy().view(np.float16).transpose(0, 2, 1).reshape(rows, nb)
    return Matrix(T_Q4_1, q, d.astype(np.float32), m.astype(np.float32))


def _unpack_q8_0(raw: np.ndarray, rows: int, cols: int) -> Matrix:
    nb = cols // 32
    blk = raw.reshape(rows // 16, nb, _Q8_GB)
    packed = blk[:, :, :512].reshape(rows // 16, nb, 8, 16, 4)  # group, block, chunk c, lane l, byte j = col 4c+j
    q = (packed.astype(np.int16) - 128).astype(np.int8).transpose(0, 3, 1, 2, 4).reshape(rows, cols)
    d = blk[:, :, 512:544].copy().view(np.float16).transpose(0, 2, 1).reshape(rows, nb)
    return Matrix(T_Q8_0, q, d.astype(np.float32))


def _unpack_k16(raw: np.ndarray, rows: int, cols: int) -> Matrix:
    nj = cols // 16
    q = raw[: rows * cols].view(np.int8).reshape(rows, cols)
    sm = raw[rows * cols: rows * cols + 8 * rows * nj].view("<f4").reshape(2, rows, nj)
    return Matrix(T_K16, q.copy(), sm[0].astype(np.float32), sm[1].astype(np.float32))


def read_weights(path: str | os.PathLike) -> ModelWeights:
    """A weights file of format 1 (SmolLM2 and other llama models of head dimension 64) or
    2 (Gemma 3), with the shape checks of the engine's lmz_load."""
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    head = bytes(buf[:256])
    if head[:8] != b"LMZENG\x00\x01":
        raise LMZipError(f"{path}: not an engine weights file")
    fmt, n_layer, n_embd, n_ff, n_head, n_kv, head_dim, n_vocab, rope_dim, bos = struct.unpack_from("<10I", head, 8)
    rope_base, eps, n_t = struct.unpack_from("<dfI", head, 48)
    if fmt not in _LAYER_NAMES:
        raise LMZipError(f"{path}: weights format {fmt}: the GPU runs formats 1 (llama) and 2 (Gemma 3)")
    names = _LAYER_NAMES[fmt]
    extra = {}
    if fmt == 2:
        rope_local, window, pattern = struct.unpack_from("<dII", head, 64)
        extra = dict(rope_base_local=rope_local, swa_window=window, swa_pattern=pattern)
        # power-of-two tiles over a head's RoPE pairs (Gemma 3: 256)
        bad = (head_dim < 32 or head_dim & (head_dim - 1) or head_dim > 512 or rope_dim != head_dim or window < 1
               or pattern < 1)
    else:
        bad = head_dim != 64 or rope_dim != 64 or n_embd != 64 * n_head
    if bad or n_kv < 1 or n_head % n_kv or n_t != 2 + len(names) * n_layer:
        raise LMZipError(f"{path}: unsupported model shape")

    def tensor(i: int):
        ty, rows, cols, _, off, size = struct.unpack_from("<IIIIQQ", bytes(buf[256 + 32 * i: 288 + 32 * i]))
        raw = np.asarray(buf[off: off + size])
        if ty == T_F32:
            return raw.view(np.float32).copy()
        if ty == T_Q4_1:
            return _unpack_q4_1(raw, rows, cols)
        if ty == T_Q8_0:
            return _unpack_q8_0(raw, rows, cols)
        if ty == T_K16 and fmt == 2:
            return _unpack_k16(raw, rows, cols)
        raise LMZipError(f"{path}: tensor type {ty} is not a format {fmt} type")

    embd = tensor(0)
    if not isinstance(embd, Matrix) or embd.kind != T_Q8_0:
        raise LMZipError(f"{path}: the token embedding must be Q8_0")
    w = ModelWeights(fmt, n_layer, n_embd, n_ff, n_head, n_kv, head_dim, n_vocab, bos, rope_base, eps, embd,
                     tensor(1), **extra)
    for layer in range(n_layer):
        w.layers.append({name: tensor(2 + len(names) * layer + k) for k, name in enumerate(names)})
    return w
