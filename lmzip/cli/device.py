"""``--device auto|cpu|cuda|cuda:N``: where the portable engine runs (lmzip.gpu.device).

A run-time choice like ``--threads``, never part of the format.  The option sets
``$LMZIP_DEVICE`` for this process and the workers it starts, so every command that
loads models (compress, decompress, test, bench, entropy) follows it.
"""

from __future__ import annotations

import os
import re

import click

DEVICE_HELP = ("Where the portable engine runs: auto (a CUDA GPU when one is present and the gpu extra is "
               "installed, else the CPU), cpu, cuda or cuda:N. The same output on every device. "
               "For --backend torch: its device (stored in the file).")


def _set_device(ctx, param, value):
    if value is None:
        return value
    value = value.strip().lower()
    if not re.match(r"^(auto|cpu|cuda|cuda:\d+)$", value):
        raise click.BadParameter(f"{value!r}: expected auto, cpu, cuda or cuda:N")
    os.environ["LMZIP_DEVICE"] = value
    return value


def device_option(f, *, expose: bool = False):
    """The ``--device`` option; ``expose`` passes its value to the command as ``device``."""
    return click.option("--device", default=None, metavar="auto|cpu|cuda|cuda:N", callback=_set_device,
                        expose_value=expose, help=DEVICE_HELP)(f)


def device_argument(f):
    """``--device``, passed on as ``device`` (compress: the torch backend takes it too)."""
    return device_option(f, expose=True)
