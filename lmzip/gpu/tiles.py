"""Tile sizes of the GPU kernels (lmzip.gpu.kernels): how work is cut into programs.

Tiles never change a number: every output is computed whole by one lane, in the engine's
order.  The GPU's defaults are unmeasured guesses (``$LMZIP_GPU_BLOCKS`` and
``benchmarks/gpu.py --sweep`` are for tuning them); Triton's CPU interpreter pays per
operation rather than per element and takes few big tiles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Blocks", "head_split", "interpreting", "product_tokens", "rope_tokens", "triton_cdiv"]


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclass(frozen=True)
class Blocks:
    """Tile sizes (never change results: every output is computed whole by one lane)."""

    rows: int = 32  # matrix rows per program of a product
    tokens: int = 16  # most tokens per program of a product (16 .. this, by the step's tokens)
    norm_tokens: int = 16  # tokens per program of the norms, quantizations, RoPE and embedding
    attn_tokens: int = 1  # tokens per program of the attention
    slots: int = 256  # attention time indices per program of the scores
    score_warps: int = 1  # warps per program of the scores (Triton's num_warps)
    soft_rows: int = 4  # rows of 16 time indices per tile of the softmax's loops (a tile a trip)
    soft_warps: int = 2  # warps per program of the softmax
    soft_stages: int = 6  # pipelining of the softmax's loops: tiles in flight, plus one
    dims: int = 32  # value dimensions per program of the attention (divides 64; 32, 64: it quantizes them too)
    quant_blocks: int = 2  # 32-column blocks a norm or quantization program takes at a time (<= 16)
    stages: int = 1  # software pipelining of the attention values' loop (tl.range num_stages)
    product_stages: int = 4  # pipelining of the block products' loop: blocks in flight, plus one
    norm_stages: int = 6  # pipelining of the norms' sums of squares: 16-column trips in flight, plus one
    unroll: int = 1  # Triton's unrolling of the attention values' loop (loop_unroll_factor)
    value_warps: int = 4  # warps per program of the attention values
    quant_loop: bool = False  # a norm's blocks in one program's loop (the interpreter's), not side by side
    dot_f32: bool = False  # block products in float32 (exact, see matmul_kernel): the interpreter's
    least_tokens: int = 16  # tl.dot's smallest tile on a GPU; the interpreter takes any

    @property
    def values_quantize(self) -> bool:
        """Whether attn_values_kernel quantizes its own output (QUANT: its programs hold whole
        blocks of 32), so that the output projection's quantization takes no launch."""
        return self.dims % 32 == 0

    @classmethod
    def from_env(cls) -> Blocks:
        """The tiles for this process: the interpreter's, or the GPU's with any fields that
        ``$LMZIP_GPU_BLOCKS`` sets (e.g. ``dims=8,slots=128``: tuning, never other numbers)."""
        if interpreting():
            return cls.for_interpreter()
        return cls.parse(os.environ.get("LMZIP_GPU_BLOCKS", ""), "LMZIP_GPU_BLOCKS")

    @classmethod
    def parse(cls, spec: str, where: str) -> Blocks:
        """The GPU's tiles with the fields ``spec`` sets (``dims=8,slots=128``; empty: the
        defaults); an unknown tile is a ValueError naming ``where`` it came from."""
        fields = {}
        for item in filter(None, spec.strip().split(",")):
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in cls.__dataclass_fields__ or key in ("dot_f32", "least_tokens", "quant_loop"):
                raise ValueError(f"{where}: unknown tile {key!r}")
            fields[key] = int(value)
        return cls(**fields)

    @classmethod
    def for_interpreter(cls) -> Blocks:
        # the interpreter pays per operation, not per element: few big tiles
        return cls(rows=2048, tokens=32, norm_tokens=32, attn_tokens=32, slots=128, dims=64, quant_blocks=16,
                   dot_f32=True, least_tokens=1, quant_loop=True)



def head_split(group: int) -> int:
    """attn_scores_kernel's GA for the query heads of a KV head: the first tile's heads when
    the group is two powers of two (3 = 2 + 1), so that no padded head costs arithmetic;
    0 (one tile padded to a power of two) otherwise."""
    first = 1 << (group.bit_length() - 1)
    rest = group - first
    return first if rest and rest & (rest - 1) == 0 else 0


def product_tokens(T: int, most: int, least: int = 16) -> int:
    """Tokens per program of a block product: a power of two from ``least`` (tl.dot's smallest
    tile on a GPU) up to ``most``, enough for T."""
    return max(least, min(most, _pow2(T)))


def rope_tokens(blocks: Blocks, head_dim: int) -> int:
    """Tokens per program of the RoPE and cache kernels: ``norm_tokens`` for heads of 64
    dimensions, fewer for longer heads (Gemma's 256: a quarter), so a program's tiles keep
    their size."""
    return max(1, blocks.norm_tokens * 64 // max(64, head_dim))


def _blocks(width: int, most: int) -> int:
    """32-column blocks a norm or quantization program takes at a time: the largest power of
    two up to ``most`` that divides the row's blocks."""
    nb = width // 32
    return min(most, nb & -nb)


def triton_cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))
