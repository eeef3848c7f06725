"""The command line's self-rewriting status line on stderr, and the progress line of
compress, decompress and test."""

from __future__ import annotations

import sys
import time

import click

from ..codec import Stats

__all__ = ["StatusLine", "ProgressLine"]


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


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


class ProgressLine(StatusLine):
    """The status line of compress/decompress/test: bytes done, speed, bpb so far."""

    def __init__(self, label: str, total: int | None, enabled: bool):
        super().__init__(enabled, quiet=False)
        self.label = label
        self.total = total
        self.start = time.monotonic()

    def __call__(self, st: Stats) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.25:
            return  # before the text is built: this runs every few tokens
        speed = st.raw_bytes / max(now - self.start, 1e-9)
        parts = [self.label]
        if self.total:
            parts.append(f"{100 * st.raw_bytes / self.total:5.1f}%")
        parts.append(_human(st.raw_bytes) + (f"/{_human(self.total)}" if self.total else ""))
        parts.append(f"{_human(speed)}/s")
        if st.tokens:
            parts.append(f"{st.tokens / max(now - self.start, 1e-9):.0f} tok/s")
        if st.coded_bits:
            parts.append(f"{st.coded_bits / st.raw_bytes:.3f} bpb" if st.raw_bytes else "")
        if self.total and speed > 0:
            left = (self.total - st.raw_bytes) / speed
            parts.append(f"ETA {int(left // 60)}m{int(left % 60):02d}s")
        self.show("  ".join(p for p in parts if p), force=True)

    def done(self) -> None:
        self.clear()
