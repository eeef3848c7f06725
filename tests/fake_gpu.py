"""A stand-in for the portable engine on GPUs, for machines without one: the ngram model
(so it codes exactly as ``-m ngram``) that reports a fake free-memory figure and a fake
list of GPUs, and notes the device each copy of it was built on (worker processes rebuild
it from its recipe, which lmzip.parallel tells the worker's GPU)."""

from __future__ import annotations

import functools
import os

from lmzip.predictors.mixing import NGramModel
from lmzip.sizing import width_for_memory

#: a SmolLM2 stream's cache at depth 2048 (lmzip.gpu.forward.GPUEngine.stream_bytes_each)
STREAM_BYTES = 48 << 20


class FakeGPUModel(NGramModel):
    def __init__(self, device: str = "cuda", gpus: tuple[str, ...] = ("cuda:0", "cuda:1"),
                 free_bytes: int = 80 << 30, log: str | None = None):
        super().__init__()
        self.device = device
        self._gpus = list(gpus)
        self.free_bytes = free_bytes
        if log is not None:  # where this copy was built: the process and its device
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {device} {os.environ.get('LMZIP_DEVICE')} "
                        f"{os.environ.get('CUDA_VISIBLE_DEVICES')}\n")
        self.recipe = functools.partial(FakeGPUModel, device=device, gpus=gpus, free_bytes=free_bytes, log=log)

    def gpu_width(self) -> int:
        return width_for_memory(self.free_bytes, STREAM_BYTES)

    def gpus(self) -> list[str]:
        return list(self._gpus)
