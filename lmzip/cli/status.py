"""The command line's self-rewriting status line on stderr."""

from __future__ import annotations

import sys
import time

import click

__all__ = ["StatusLine"]


class StatusLine:
    """One self-rewriting line on stderr (only when enabled), and plain lines."""

    def __init__(self, enabled: bool, quiet: bool):
        self.enabled = enabled
        self.quiet = quiet
        self._last = 0.0
        self._shown = False

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.25):
            return
        self._last = now
        sys.stderr.write("\r" + text + "\x1b[K")
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._shown = False

    def note(self, text: str) -> None:
        self.clear()
        if not self.quiet:
            click.echo(text, err=True)
