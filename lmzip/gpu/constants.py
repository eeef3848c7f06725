"""The float constants of the engine's numerics, for the GPU kernels (docs/engine.md).

Each float32 constant is written here as the exact value of the C literal's binary32
(a Python float holds it exactly), so Triton's conversion of a Python float to float32
rounds nothing: writing the C literal's decimal text instead would round it twice
(decimal -> float64 -> float32), which can differ from C's one rounding.
``tests/test_gpu_kernels.py`` compiles every ``C_LITERALS`` entry with the C compiler
and checks that it gives these bits, and that the engine's source still contains it.
"""

from __future__ import annotations

import struct

__all__ = ["F32", "C_LITERALS", "ROUND_F32", "LOG2E_F32", "double_bits"]

#: name -> (value: an exact binary32 value, the C literal as the engine writes it)
C_LITERALS: dict[str, tuple[float, str]] = {
    # exp_f: clamp, k = rne(y log2 e), r = (y - k LN2_HI) - k LN2_LO, degree-7 Taylor polynomial
    "EXP_LO": (-87.0, "-87.0f"),
    "EXP_HI": (88.0, "88.0f"),
    "LOG2E": (1.4426950216293335, "1.44269502162933349609375f"),
    "ROUND23": (12582912.0, "12582912.0f"),  # 1.5 * 2^23: (v + R) - R rounds half even
    "LN2_HI": (0.693145751953125, "0.693145751953125f"),
    "LN2_LO": (1.428606765330187e-06, "1.428606765330187045e-06f"),
    "P7": (0.00019841270113829523, "1.98412698e-4f"),
    "P6": (0.0013888889225199819, "1.38888889e-3f"),
    "P5": (0.008333333767950535, "8.33333377e-3f"),
    "P4": (0.0416666679084301, "4.16666679e-2f"),
    "P3": (0.1666666716337204, "1.66666672e-1f"),
    # activation quantization
    "Q_MAX": (127.0, "127.0f"),
    # 1/sqrt(64), the query scale
    "Q_SCALE": (0.125, "0.125f"),
    # GELU (Gemma): sqrt(2 / pi) and the cubic term's coefficient
    "GELU_A": (0.7978845834732056, "0.797884560802865f"),
    "GELU_B": (0.044714998453855515, "0.044715f"),
    # f2h: a subnormal f16 in units of 2^-24, rounded half even with 2^23
    "TWO24": (16777216.0, "16777216.0f"),
    "TWO23": (8388608.0, "8388608.0f"),
}

F32 = {name: value for name, (value, _) in C_LITERALS.items()}
ROUND_F32 = F32["ROUND23"]
LOG2E_F32 = F32["LOG2E"]


def double_bits(x: float) -> int:
    """The bits of a double as a signed 64-bit integer (how a kernel is given a double
    exactly, and how the host-side float64 rules take one apart)."""
    return struct.unpack("<q", struct.pack("<d", x))[0]
