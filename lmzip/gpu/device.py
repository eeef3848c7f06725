"""Which device runs the portable engine: ``--device auto|cpu|cuda|cuda:N``.

The device is a run-time choice like ``--threads``, never part of the format: the GPU
computes the CPU engine's logits bit for bit.  ``auto`` takes a GPU when one is present
and the ``gpu`` extra (torch, triton) is installed, else the CPU.  ``$LMZIP_DEVICE`` is
the default of processes that are given none (the command line sets it for its workers).
Under ``TRITON_INTERPRET=1`` without a GPU, ``cuda`` runs the GPU code in Triton's CPU
interpreter (for tests; ``auto`` never does).
"""

from __future__ import annotations

import os
import re

from ..errors import LMZipError

__all__ = ["DeviceError", "DEVICE_ENV", "resolve", "extra_installed", "nvidia_present", "spread", "free_memory"]

DEVICE_ENV = "LMZIP_DEVICE"
_FORM = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class DeviceError(LMZipError):
    """The device asked for is not usable here (no GPU, or the gpu extra is missing)."""


def extra_installed() -> bool:
    from importlib.util import find_spec

    try:
        return find_spec("torch") is not None and find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def nvidia_present() -> bool:
    """Whether this machine shows an NVIDIA driver at all (Linux device nodes or /proc): a
    cheap test, so that ``auto`` does not import torch where no GPU can be."""
    import glob

    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.isdir("/proc/driver/nvidia") or os.name != "posix"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve(device: str | None = None) -> str | None:
    """The torch device the portable engine runs on, or None for the CPU engine.
    Raises ValueError for a malformed name, DeviceError for a GPU that is not there."""
    device = (device or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if not _FORM.match(device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
    if device == "cpu" or (device == "auto" and not nvidia_present()):
        return None
    if not extra_installed():
        if device == "auto":
            return None
        raise DeviceError(f"--device {device} needs the gpu extra (torch and triton): pip install 'lmzip[gpu]'")
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        if device == "auto":
            return None
        if _interpreting():
            return "cpu"  # Triton's interpreter: the GPU code on the CPU (tests)
        raise DeviceError(f"--device {device}: no CUDA GPU is available (use --device cpu)")
    if device in ("auto", "cuda"):
        return "cuda:0"
    index = int(device[5:])
    if index >= n:
        raise DeviceError(f"--device {device}: there is no CUDA GPU {index} (found {n})")
    return device


def spread(device: str | None, target: str) -> list[str]:
    """The GPUs lockstep groups may be spread over, one worker each (lmzip.parallel), for
    ``--device`` ``device`` resolved to ``target``: every visible GPU for cuda and auto,
    the one named for cuda:N, none under Triton's interpreter."""
    if not target.startswith("cuda"):
        return []
    device = (device or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if device not in ("auto", "cuda"):
        return [target]
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def free_memory(device: str) -> int:
    """Bytes free on the CUDA device ``device``: what the driver counts free, plus what
    torch keeps cached but unused (the caches of a group just closed), which it hands out
    again before asking the driver."""
    import torch

    dev = torch.device(device)
    free, _total = torch.cuda.mem_get_info(dev)
    return int(free) + int(torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
