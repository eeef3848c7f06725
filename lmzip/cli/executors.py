"""``--workers`` and ``--ray``: which executor codes each model's lockstep groups.

One executor per model, made when a stream first needs it and closed at the end of the
command; ``--workers auto`` starts worker processes only for an input of several groups
(:func:`lmzip.parallel.auto_workers`).
"""

from __future__ import annotations

from typing import IO

from .. import format as fmt
from ..core import scan_streams
from ..errors import LMZipError
from ..parallel import auto_workers, executor_for


def _lockstep_groups(fin: IO[bytes]) -> int | None:
    """How many lockstep groups of a seekable ``.lmz`` file need the model, from its
    chunk tables (None if they cannot be read: decompression then says what is wrong)."""
    origin = fin.tell()
    try:
        streams = scan_streams(fin)
    except (LMZipError, OSError):
        return None
    finally:
        fin.seek(origin)
    return sum(c.scheduled and c.opens_group(s.header.version) for s in streams for c in s.end.chunks)


def _file_executors(executors: _Executors, fin: IO[bytes], size: int | None):
    """For decompressing one input: the ``executor=`` callable that gives each stream's
    model its executor (``--workers auto`` counts the file's groups first, if it is a
    regular file), and the list of executors it handed out."""
    groups = _lockstep_groups(fin) if executors.auto and size is not None else None
    used: list = []

    def executor(lm):
        used.append(executors(lm, groups))
        return used[-1]

    return executor, used


def _on_workers(used: list) -> str:
    """For -v: where the groups were coded (the executors used), if not in this process."""
    ex = next((e for e in used if e is not None), None)
    return "" if ex is None else f", {ex.workers} worker{'s' * (ex.workers != 1)}"


class _Executors:
    """One executor per model, made when a stream needs it (decompression: the model
    comes from each file's header), closed at the end of the command.

    ``workers=None`` is ``--workers auto``: worker processes only for an input of
    several lockstep groups (:func:`lmzip.parallel.auto_workers`), none otherwise."""

    def __init__(self, workers: int | None, ray_address: str | None, threads: int | None = None):
        self.workers = workers
        self.ray_address = ray_address
        self.threads = threads
        self._made: dict[bytes, object] = {}

    @property
    def auto(self) -> bool:
        return self.workers is None and self.ray_address is None

    def __call__(self, model, groups: int | None = None):
        """The executor for ``model`` (None: code in this process); ``groups``: how many
        lockstep groups the input holds, when known (only ``auto`` asks)."""
        n = auto_workers(model, groups, self.threads) if self.auto else self.workers
        if self.ray_address is None and (n or 1) <= 1:
            return None
        key = fmt.fingerprint(model.model_sha256, model.params())
        if key not in self._made:
            self._made[key] = executor_for(model, n, self.ray_address)
        return self._made[key]

    def close(self) -> None:
        for ex in self._made.values():
            if ex is not None:
                ex.close()
