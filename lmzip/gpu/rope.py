"""The RoPE tables of the engine (docs/engine.md, "Per layer" step 2), computed on the host.

The engine computes ``inv_freq_i = exp_d(-(2i/64) log_d(base))`` once and, per token,
``c = f32(cos(p inv_freq_i))``, ``s = f32(sin(...))`` with its own double functions
built from basic operations (``exp_d``, ``log_d``, ``sincos_d`` in native/engine/engine.c).
Python floats and numpy float64 arrays are IEEE binary64 with correctly rounded basic
operations and no fused multiply-add, so the same operations in the same order give the
C's bits (tests/test_gpu_kernels.py compares them with the engine's own functions).
The GPU reads the tables; positions grow, so :class:`RopeTable` extends them on demand.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from .constants import double_bits

__all__ = ["exp_d", "log_d", "sincos_d", "inv_freq", "cos_sin", "RopeTable"]

_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_ROUND = 6755399441055744.0  # 1.5 * 2^52
_ROUND_BITS = double_bits(_ROUND)
# exp_d's Taylor coefficients, 1/12! .. 1, 1 (the C folds 1.0 / n! correctly rounded, as Python does)
_EXP_C = [1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0,
          1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0]
# sincos_d: pi/2 in three parts (Cody-Waite), 2/pi, and the Taylor coefficients
_P1, _P2, _P3 = 1.57079632673412561417e+00, 6.07710050650619224932e-11, 2.02226624879595063154e-21
_TWO_OVER_PI = 6.36619772367581382433e-01
_SIN_C = [1.0, -1.0 / 6.0, 1.0 / 120.0, -1.0 / 5040.0, 1.0 / 362880.0, -1.0 / 39916800.0, 1.0 / 6227020800.0,
          -1.0 / 1307674368000.0, 1.0 / 355687428096000.0]
_COS_C = [1.0, -0.5, 1.0 / 24.0, -1.0 / 720.0, 1.0 / 40320.0, -1.0 / 3628800.0, 1.0 / 479001600.0,
          -1.0 / 87178291200.0, 1.0 / 20922789888000.0, -1.0 / 6402373705728000.0]


def _from_bits(b: int) -> float:
    return struct.unpack("<d", struct.pack("<q", b))[0]


def exp_d(x: float) -> float:
    """The engine's ``exp_d`` (|x| < 700)."""
    t = x * 1.4426950408889634 + _ROUND
    k = t - _ROUND
    ki = double_bits(t) - _ROUND_BITS
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = 1.0 / 6227020800.0  # 1/13!
    for c in _EXP_C:
        p = p * r + c
    return p * _from_bits((ki + 1023) << 52)


def log_d(x: float) -> float:
    """The engine's ``log_d`` (x > 0, normal)."""
    b = double_bits(x)
    e = ((b >> 52) & 0x7FF) - 1023
    m = _from_bits((b & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)  # [1, 2)
    if m > 1.4142135623730951:
        m = m * 0.5
        e += 1
    f = (m - 1.0) / (m + 1.0)
    s = f * f
    p = 1.0 / 25.0
    for k in range(23, 0, -2):
        p = p * s + 1.0 / float(k)
    lnm = 2.0 * f * p
    return float(e) * _LN2_HI + (float(e) * _LN2_LO + lnm)


def sincos_d(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The engine's ``sincos_d`` on an array of angles >= 0: (sin, cos), float64."""
    a = np.asarray(a, dtype=np.float64)
    t = a * _TWO_OVER_PI + _ROUND
    k = t - _ROUND
    q = t.view(np.int64) - _ROUND_BITS
    r = ((a - k * _P1) - k * _P2) - k * _P3
    r2 = r * r
    ps = np.full_like(r, _SIN_C[8])
    for c in reversed(_SIN_C[:8]):
        ps = ps * r2 + c
    ps = ps * r
    pc = np.full_like(r, _COS_C[9])
    for c in reversed(_COS_C[:9]):
        pc = pc * r2 + c
    quad = q & 3
    s = np.select([quad == 0, quad == 1, quad == 2], [ps, pc, -ps], -pc)
    c = np.select([quad == 0, quad == 1, quad == 2], [pc, -ps, -pc], ps)
    return s, c


def inv_freq(base: float, rope_dim: int = 64) -> np.ndarray:
    """``inv_freq_i = exp_d(-(2i/rope_dim) log_d(base))``, i < rope_dim/2, as the engine loads them."""
    lb = log_d(float(base))
    return np.array([exp_d(-(float(2 * i) / float(rope_dim)) * lb) for i in range(rope_dim // 2)])


def cos_sin(positions: np.ndarray, freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 (cos, sin) tables [len(positions), len(freqs)] for integer positions."""
    theta = np.asarray(positions, dtype=np.int64).astype(np.float64)[:, None] * freqs[None, :]
    s, c = sincos_d(theta)
    return c.astype(np.float32), s.astype(np.float32)


class RopeTable:
    """cos and sin of every position below ``size`` on the device, grown on demand (positions
    only grow, and the tables cost 256 bytes a position for SmolLM2).  ``cos``/``sin``:
    float32 [capacity, n_freq] device tensors."""

    def __init__(self, torch, device, base: float, rope_dim: int = 64, initial: int = 4096):
        self._torch = torch
        self._device = device
        self.freqs = inv_freq(base, rope_dim)
        self.size = 0
        self.cos = self.sin = None
        self.ensure(initial)

    def ensure(self, size: int) -> None:
        if size <= self.size:
            return
        new = max(size, 2 * self.size, 4096)
        new = 1 << math.ceil(math.log2(new))
        c, s = cos_sin(np.arange(self.size, new), self.freqs)
        t = self._torch
        c_dev = t.from_numpy(c).to(self._device)
        s_dev = t.from_numpy(s).to(self._device)
        if self.cos is not None:
            c_dev = t.cat([self.cos, c_dev])
            s_dev = t.cat([self.sin, s_dev])
        self.cos, self.sin, self.size = c_dev.contiguous(), s_dev.contiguous(), new
