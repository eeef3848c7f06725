"""The portable engine's model on a GPU: :class:`GPUModel`, a
:class:`~lmzip.predictors.portable.PortableModel` whose logits come from
:class:`lmzip.gpu.forward.GPUEngine`.  Its ``params()`` are the CPU engine's
(``"portable 1"``), so a file written on a GPU is byte-identical to the CPU's and either
decodes the other's.
"""

from __future__ import annotations

import os
import sys

from ..predictors.portable import PortableModel
from ..sizing import width_for_memory
from .device import free_memory, resolve, spread

__all__ = ["GPUModel", "portable_model"]

#: the numerics version the kernels implement (native/engine/engine.h LMZ_ENGINE_NUMERICS)
NUMERICS = 1


class GPUModel(PortableModel):
    """A portable engine model (SmolLM2 and other llama models, Gemma 3) on ``device`` (a
    torch device name).  ``threads``: CPU threads for the work beside the GPU's, the
    mixer's (default: every core)."""

    def __init__(self, path, *, name: str, sha256: str, context: int = 2048, device: str = "cuda:0",
                 tokenize_text=None, weights=None, threads: int | None = None, gpus: list[str] | None = None):
        self.device = device
        #: the GPUs its groups may be spread over (--device cuda: all of them)
        self._gpus = [device] if gpus is None and device.startswith("cuda") else list(gpus or [])
        super().__init__(path, name=name, sha256=sha256, context=context, threads=threads or os.cpu_count() or 1,
                         tokenize_text=tokenize_text, weights=weights)
        if self.numerics != NUMERICS:
            raise ValueError(f"the GPU kernels implement numerics {NUMERICS}, the engine {self.numerics}")

    def _make_engine(self, E, isa):
        from .forward import GPUEngine

        return GPUEngine(self.weights, device=self.device, context=self.context)

    def gpu_width(self) -> int | None:
        """As many streams as the GPU's free memory holds (lmzip.sizing); None under
        Triton's interpreter, which runs on the CPU."""
        if not self.device.startswith("cuda"):
            return None
        eng = self._engine
        # a stream's cache, its row of logits on the device and pinned on the host, and the
        # mixer's (lmzip.gpu.mixer: the bias, the scores and the distribution in float64, the
        # row gathered)
        per_stream = eng.stream_bytes_each + 2 * 4 * eng.n_vocab + (3 * 8 + 4) * eng.n_vocab
        return width_for_memory(free_memory(self.device), per_stream)

    def gpus(self) -> list[str]:
        return list(self._gpus)

    def open_mixed_group(self, lengths: list[int], width: int, vocab: int, settings):
        """A group whose mixer (lmzip.predictors.mixing) runs on this GPU
        (lmzip.gpu.mixer), or None where it mixes on the host: settings that skip or
        adapt, ``$LMZIP_GPU_MIX=0``, or a GPU whose mixer check failed (lmzip.gpu.trust)."""
        if settings.skip or settings.adapt or os.environ.get("LMZIP_GPU_MIX", "1") == "0":
            return None
        from .trust import check_mixer

        why = check_mixer(self.device)
        if why is not None:
            _warn_once(f"lmzip: warning: mixing on the CPU, not the GPU ({self.device}): {why}")
            return None
        import torch

        from ..predictors.mixing import host_threads
        from .mixer import DeviceMixedGroup

        return DeviceMixedGroup(self.open_group(lengths, width, device_rows=True), vocab, settings, torch,
                                self._engine.device, host_threads(self))

    @property
    def isa(self) -> str:
        import torch

        if self.device.startswith("cuda"):
            return f"gpu {torch.cuda.get_device_name(self.device)}"
        return "gpu code in Triton's interpreter"


_warned: set[str] = set()


def _warn_once(line: str) -> None:
    if line not in _warned:
        _warned.add(line)
        print(line, file=sys.stderr)


def portable_model(path, *, name: str, sha256: str, context: int, threads: int | None, device: str | None):
    """The portable engine's model on the device ``--device`` asks for: a GPUModel when that is
    a GPU that passes lmzip.gpu.trust's check, else (with a one-line warning when a GPU was
    there but failed) the CPU engine's PortableModel."""
    target = resolve(device)
    weights = None
    if target is not None:
        from ..predictors.portable_weights import cached_weights
        from .trust import check

        weights = cached_weights(path, sha256)
        why = check(sha256, weights, target)
        if why is None:
            return GPUModel(path, name=name, sha256=sha256, context=context, device=target, weights=weights,
                            threads=threads, gpus=spread(device, target))
        print(f"lmzip: warning: not using the GPU ({target}): {why}; running on the CPU", file=sys.stderr)
    return PortableModel(path, name=name, sha256=sha256, context=context, threads=threads, weights=weights)
