"""The files of one command: inputs opened, outputs written safely, per-file errors.

An output goes to a temporary file beside its target and is moved into place only when
complete (and, for ``--rm``, verified by decompressing it); an error with one file is
reported on one line and the other files are still processed.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import click

from ..codec import Stats
from ..core import LMZipCompressor, iter_decompress
from ..errors import LMZipError

SUFFIX = ".lmz"
READ_SIZE = 1 << 16


class Failure(Exception):
    """A per-file error: reported on one line, exit status 1."""


class StdoutClosed(Exception):
    """Standard output's reader has gone (``lmzcat big.lmz | head``): stop all files at once."""


def stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (poll reports an error
    on the write end), as opposed to a broken pipe to a worker process."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):  # no poll (Windows), no real stdout
        return False


# ---------------------------------------------------------------------------- safe output


@contextlib.contextmanager
def atomic_output(path: Path, force: bool, like: Path | None = None,
                  verify: Callable[[Path], None] | None = None) -> Iterator[IO[bytes]]:
    """Write to a temporary file beside ``path``; move it into place only on success.

    Without ``force`` an existing ``path`` is never replaced, even one that appears
    while we work.  ``verify`` is called with the complete temporary file before it is
    moved; if it raises, nothing is moved.  On any error or Ctrl-C the temporary file
    is removed.
    """
    if path.exists() and not force:
        raise Failure(f"{path}: already exists; use -f to overwrite")
    if path.is_dir():
        raise Failure(f"{path}: is a directory")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        if like is not None:  # keep the input's permissions and times, as gzip does
            st = like.stat()
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        else:  # mkstemp made it 0600: give it the mode a plain open() would
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path appeared meanwhile: never clobber
            except FileExistsError:
                raise Failure(f"{path}: already exists; use -f to overwrite") from None
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _open_input(name: str) -> tuple[IO[bytes], Path | None, int | None]:
    if name == "-":
        return sys.stdin.buffer, None, None
    path = Path(name)
    if path.is_dir():
        raise Failure(f"{name}: is a directory")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise Failure(f"{name}: no such file") from None
    except PermissionError:
        raise Failure(f"{name}: permission denied") from None
    except OSError as exc:
        raise Failure(f"{name}: {exc.strerror or exc}") from None
    size = os.fstat(f.fileno()).st_size if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None
    return f, path, size


# ---------------------------------------------------------------------------- the work


def _compress_file(fin: IO[bytes], fout: IO[bytes], comp: LMZipCompressor) -> None:
    while block := fin.read(max(comp.chunk_size, READ_SIZE)):
        fout.write(comp.compress(block))
    fout.write(comp.flush())


def _decompress_file(fin: IO[bytes], fout: IO[bytes], model: str | None, threads: int | None,
                     progress: Callable[[Stats], None] | None, executors=None) -> Stats:
    total = Stats()

    def count(st: Stats) -> None:
        total.raw_bytes = st.raw_bytes
        if progress is not None:
            progress(st)

    for block in iter_decompress(fin, model=model, threads=threads, progress=count, executor=executors):
        fout.write(block)
    return total


def _verify(src: Path, packed: Path, model, executor=None) -> None:
    """--rm: decompress the complete (not yet renamed) output with the model that made it
    and compare it with the input (the header's name alone cannot find a --model PATH.gguf).
    On failure the output is never put in place and the input is kept."""
    def failed(why: str) -> Failure:
        return Failure(f"{src}: verification failed ({why}); no output written, input kept")

    try:
        with open(packed, "rb") as fp, open(src, "rb") as original:
            for block in iter_decompress(fp, model=model, executor=executor):  # the compressor's workers
                if original.read(len(block)) != block:
                    raise failed("decompressed data differs from the input")
            if original.read(1):
                raise failed("decompressed data is shorter than the input")
    except LMZipError as exc:
        raise failed(str(exc)) from None


class Job:
    """Settings shared by every file of one command."""

    def __init__(self, *, output: str | None, stdout: bool, keep: bool, rm: bool, force: bool,
                 quiet: bool, verbose: bool, progress: bool | None):
        self.output = output
        self.stdout = stdout
        self.keep = keep and not rm
        self.rm = rm
        self.force = force
        self.quiet = quiet
        self.verbose = verbose and not quiet
        self.progress = (sys.stderr.isatty() if progress is None else progress) and not quiet
        self.failed = 0

    def note(self, message: str) -> None:
        if not self.quiet:
            click.echo(message, err=True)

    def fail(self, message: str) -> None:
        self.failed += 1
        click.echo(f"lmzip: {message}", err=True)

    def target(self, name: str, derive: Callable[[str], str]) -> Path | None:
        """Where the output for input ``name`` goes (None: stdout)."""
        if self.stdout or (name == "-" and not self.output):
            return None
        return Path(self.output) if self.output else Path(derive(name))


def _run(job: Job, names: list[str], work: Callable[[str], None]) -> None:
    for name in names:
        try:
            work(name)
        except Failure as exc:
            job.fail(str(exc))
        except LMZipError as exc:
            job.fail(f"{name}: {exc}")
        except BrokenPipeError as exc:
            if stdout_gone():
                raise StdoutClosed from None  # no reader: the other files would be decoded for nothing
            job.fail(f"{name}: {exc.strerror or exc}")
        except OSError as exc:
            job.fail(f"{name}: {exc.strerror or exc}")
    if job.failed:
        sys.exit(1)


def _files_or_stdin(files: tuple[str, ...]) -> list[str]:
    return list(files) or ["-"]


def _check_output_option(job: Job, names: list[str]) -> None:
    if job.output and len(names) > 1:
        raise click.UsageError("-o/--output takes a single input file")
    if job.output and job.stdout:
        raise click.UsageError("-o/--output and -c/--stdout exclude each other")
