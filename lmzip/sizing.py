"""How wide a lockstep group and how large its chunks, when the user does not say.

On the CPU: 8 streams of 1 MiB chunks (lmzip.core's defaults).  On a GPU, where one step
evaluates every stream of a group at about the cost of one, the group is as wide as the
GPU's free memory holds caches for, and an input of known size is cut so that it fills
the group: ``ceil(size / width)`` bytes a chunk, between 64 KiB and 1 MiB.  Smaller chunks
cost size (each starts without context): enwik6 as 8 chunks of 128 KiB is 2.0 % larger
than as one (BENCHMARKS.md, "Chunk size"), hence the 64 KiB floor.  Both choices are in
the header (``streams``, ``chunk_size``): decoding needs nothing new.
"""

from __future__ import annotations

from .format import MAX_STREAMS

__all__ = ["CACHE_SHARE", "MIN_GPU_CHUNK", "chunk_size_for", "width_for_memory"]

#: the share of a GPU's free memory the streams may take (the rest: the step's activations,
#: CUDA graphs, and room for other processes' growth)
CACHE_SHARE = 0.8
#: the smallest chunk a GPU cuts an input into
MIN_GPU_CHUNK = 64 << 10
#: chunk sizes are rounded up to this (whole pages: no size is finer than that)
CHUNK_STEP = 4 << 10


def width_for_memory(free_bytes: int, stream_bytes: int, share: float = CACHE_SHARE) -> int:
    """How many streams of ``stream_bytes`` each fit in ``share`` of ``free_bytes``:
    1 .. MAX_STREAMS."""
    if stream_bytes <= 0:
        raise ValueError("a stream takes some memory")
    return max(1, min(MAX_STREAMS, int(free_bytes * share) // stream_bytes))


def chunk_size_for(size: int | None, width: int, largest: int) -> int:
    """The chunk size that fills a group of ``width`` from an input of ``size`` bytes:
    ``ceil(size / width)`` rounded up to CHUNK_STEP, at least MIN_GPU_CHUNK, at most
    ``largest`` (the default chunk size); ``largest`` when the size is unknown."""
    if size is None:
        return largest
    per = -(-size // max(1, width))
    per = -(-per // CHUNK_STEP) * CHUNK_STEP
    return max(min(MIN_GPU_CHUNK, largest), min(largest, per))
