"""The ``lmzip`` command line (``lmzip = "lmzip.cli:run"``, also ``python -m lmzip``;
``lmzcat = "lmzip.cli:lmzcat"``).

- ``commands``: the click group and the coding commands: compress, decompress, test,
  info, models; the gzip-style form without a command (``lmzip [-d|-t|-l] FILE...``,
  which the group is routed to unless the first argument is exactly a command's name);
  ``run`` is the console entry point, ``lmzcat`` that of ``lmzcat`` (``lmzip -dc``).
- ``files``: the files of a command: inputs opened, outputs written to a temporary file
  and moved into place only when complete (and verified, for ``--rm``), per-file errors.
- ``executors``: ``--workers`` and ``--ray``: which executor codes each model's groups.
- ``measure``: the measuring commands, bench, entropy and capacity
  (their logic is in :mod:`lmzip.measure`).
- ``status``: the self-rewriting status line on stderr, and the progress line of
  compress/decompress/test.

The command line sits on top: nothing else in lmzip imports it.
"""

from .commands import lmzcat, main, run

__all__ = ["lmzcat", "main", "run"]
