"""The ``lmzip`` command line, in the manner of gzip, xz and zstd."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import click

from . import __version__, cdf
from . import format as fmt
from .codec import Stats
from .core import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_STREAMS,
    MAX_STREAMS,
    METHODS,
    LMZipCompressor,
    iter_decompress,
    scan_streams,
)
from .errors import LMZipError
from .parallel import auto_workers, executor_for
from .predictors.registry import (
    BACKENDS,
    DEFAULT_CONTEXT,
    DEFAULT_MODEL,
    MAX_CONTEXT,
    MIN_CONTEXT,
    known_models,
    load_model,
)
from .ranges import decompress_range, parse_range
from .status import StatusLine

SUFFIX = ".lmz"
READ_SIZE = 1 << 16

EXIT_CODES = """\b
Exit status:
  0    success
  1    an error with some file (missing, unreadable, damaged, output exists, ...);
       the other files are still processed
  2    usage error (bad option or argument)
  130  interrupted (Ctrl-C); no partial output is left behind"""


class Failure(Exception):
    """A per-file error: reported on one line, exit status 1."""


# ---------------------------------------------------------------------------- progress


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


# ---------------------------------------------------------------------------- commands

_common = [
    click.option("-o", "--output", metavar="FILE", help="Write to FILE (single input only)."),
    click.option("-c", "--stdout", "to_stdout", is_flag=True, help="Write to standard output."),
    click.option("-k", "--keep", is_flag=True, default=True,
                 help="Keep the input files (the default; accepted for gzip compatibility)."),
    click.option("--rm", is_flag=True, help="Delete each input once its output is complete and verified."),
    click.option("-f", "--force", is_flag=True,
                 help="Overwrite existing outputs; write compressed data to a terminal."),
    click.option("-q", "--quiet", is_flag=True, help="Print only errors."),
    click.option("-v", "--verbose", is_flag=True, help="Print sizes, bits per byte and speed per file."),
    click.option("--progress/--no-progress", default=None,
                 help="Show a progress line on stderr (default: when stderr is a terminal)."),
    click.option("-m", "--model", metavar="NAME|PATH", default=None, help="Model name or GGUF file."),
    click.option("--threads", type=click.IntRange(1, 256), default=None,
                 help="CPU threads for the model (does not change the output)."),
]


def common_options(f):
    for option in reversed(_common):
        f = option(f)
    return f


class WorkerCount(click.ParamType):
    """``--workers``: a number of worker processes, or ``auto`` (None)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of workers nor 'auto'", param, ctx)
        if not 1 <= n <= 256:
            self.fail(f"{n} workers: expected 1 to 256, or 'auto'", param, ctx)
        return n


def worker_options(f):
    f = click.option("--ray", "ray_address", metavar="ADDRESS", default=None,
                     help="Code groups on Ray workers: 'local' starts a local Ray instance, or a cluster "
                          "address such as 'auto' or 'ray://host:10001' (needs: pip install ray).")(f)
    return click.option("--workers", type=WorkerCount(), default="auto", show_default=True,
                        help="Worker processes, each with its own model (same output as one). auto: one "
                             "single-thread worker per core when the input holds two or more lockstep "
                             "groups and its size is known (a file, not a pipe); else code in this "
                             "process.")(f)


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


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="lmzip",
                      message=f"%(prog)s %(version)s (CDF backend: {cdf.backend})")
def main() -> None:
    """Lossless compression of text with the probabilities of a language model.

    \b
      lmzip compress FILE        FILE -> FILE.lmz (the input is kept)
      lmzip decompress FILE.lmz  FILE.lmz -> FILE
      lmzip test FILE.lmz        decompress and verify, write nothing
      lmzip info FILE.lmz        header, sizes, bits per byte, model
      lmzip models               known models and whether they are installed
      lmzip bench                lmzip beside gzip, bzip2, xz, zstd, brotli on a corpus
      lmzip entropy FILE         the model's cross-entropy of FILE: a quick size estimate
      lmzip capacity             information capacity of the installed models

    With no FILE, or with -, read standard input and write standard output.
    """


@main.command(epilog=EXIT_CODES)
@click.argument("files", nargs=-1, type=click.Path(dir_okay=True, allow_dash=True))
@common_options
@click.option("--context", type=click.IntRange(MIN_CONTEXT, MAX_CONTEXT), default=DEFAULT_CONTEXT, show_default=True,
              help="Context window in tokens.")
@click.option("--chunk-size", type=click.IntRange(1, fmt.MAX_CHUNK_SIZE), default=DEFAULT_CHUNK_SIZE,
              show_default=True, help="Bytes per independently coded chunk.")
@click.option("--streams", type=click.IntRange(1, MAX_STREAMS), default=None,
              help=f"Chunks coded together, one batched model evaluation per step "
                   f"[default: {DEFAULT_STREAMS} with llama.cpp, else 1].")
@click.option("--mix/--no-mix", "use_mix", default=True, show_default=True,
              help="Blend the model with the text's own n-gram and match statistics.")
@click.option("--orders", metavar="LIST", default=None,
              help="n-gram orders in tokens, e.g. 1,2,3,4 ('none': off).")
@click.option("--match", "match_len", type=click.IntRange(0, 64), default=None,
              help="Shortest repeat in tokens the match model follows (0: off).")
@click.option("--mix-rate", type=click.FloatRange(0, 1), default=None, help="Learning rate of the mixing weights.")
@click.option("--llm-rate", type=click.FloatRange(0, 1), default=None,
              help="Learning rate of the model's weight (0: fixed).")
@click.option("--bias-rate", type=click.FloatRange(0, 1), default=None,
              help="Learning rate of the per-token bias (0: off).")
@click.option("--skip", "skip", type=click.IntRange(0, 4096), default=None, metavar="N",
              help="Speed option: code a token without the model when the n-gram and match statistics "
                   "are sure of it and that kind of guess was right at least N-1 times in N, e.g. 32 "
                   "(0: never, the default). Costs a little size; see BENCHMARKS.md.")
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True,
              help="auto: text to the model, binary data to LZMA (or stored), whichever codes a chunk "
                   "smaller; model: every chunk through the model; classic: no model.")
@click.option("--backend", type=click.Choice(BACKENDS), default="llama.cpp", show_default=True,
              help="What runs the model: llama.cpp, or torch (transformers; pip install 'lmzip[torch]'; "
                   "also takes a Hugging Face model folder as --model). Stored in the file.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
              show_default=True, help="Precision of the torch backend (stored in the file).")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda|cuda:N",
              help="Device of the torch backend (the device kind is stored in the file).")
@worker_options
def compress(files, output, to_stdout, keep, rm, force, quiet, verbose, progress, model, threads,
             context, chunk_size, streams, use_mix, orders, match_len, mix_rate, llm_rate, bias_rate,
             skip, method, backend, dtype, device, workers, ray_address) -> None:
    """Compress FILES to FILE.lmz with a language model."""
    job = Job(output=output, stdout=to_stdout, keep=keep, rm=rm, force=force, quiet=quiet,
              verbose=verbose, progress=progress)
    names = _files_or_stdin(files)
    _check_output_option(job, names)
    mix = _mix_settings(model, use_mix, orders, match_len, mix_rate, llm_rate, bias_rate, skip)
    try:
        lm = load_model(model or DEFAULT_MODEL, context=context, threads=threads, mix=mix, backend=backend,
                        dtype=dtype, device=device)
    except (LMZipError, ValueError) as exc:
        click.echo(f"lmzip: {exc}", err=True)
        sys.exit(1)

    def work(name: str) -> None:
        if name != "-" and name.endswith(SUFFIX) and not (job.output or job.stdout):
            raise Failure(f"{name}: already has the {SUFFIX} suffix; unchanged")
        target = job.target(name, lambda n: n + SUFFIX)
        if target is None and sys.stdout.isatty() and not job.force:
            raise Failure("refusing to write compressed data to a terminal (use -o, redirect, or -f)")
        fin, src, size = _open_input(name)
        line = ProgressLine(Path(name).name if src else "stdin", size, job.progress)
        comp = LMZipCompressor(lm, chunk_size=chunk_size, progress=line, method=method, streams=streams)
        # the lockstep groups the input will fill, at the width the compressor settled on
        # (text and binary alike: an estimate, which only decides how many workers
        # --workers auto starts)
        groups = None if size is None else -(-size // (comp.chunk_size * comp.streams))
        executor = comp.executor = executors(lm, 0 if method == "classic" else groups)
        started = time.monotonic()
        try:
            if target is None:
                _compress_file(fin, sys.stdout.buffer, comp)
                sys.stdout.buffer.flush()
            else:
                verify = (lambda packed: _verify(src, packed, lm, executor)) if job.rm and src is not None else None
                with atomic_output(target, job.force, like=src, verify=verify) as fout:
                    _compress_file(fin, fout, comp)
                if verify is not None:
                    src.unlink()  # only now: the output is in place and decompresses to the input
        finally:
            line.done()
            if src is not None:
                fin.close()
        st = comp.stats
        out_size = st.payload_bytes  # approximate until below
        if target is not None:
            out_size = target.stat().st_size
        seconds = time.monotonic() - started
        if job.verbose:
            bpb = 8 * out_size / st.raw_bytes if st.raw_bytes else 0.0
            job.note(f"{name}: {st.raw_bytes} -> {out_size} bytes, {bpb:.3f} bpb "
                     f"(model {st.model_bpb:.3f}), {st.tokens} tokens, "
                     f"{_human(st.raw_bytes / max(seconds, 1e-9))}/s" + _on_workers([executor])
                     + (f" -> {target}" if target else ""))

    executors = _Executors(workers, ray_address, threads)
    try:
        _run(job, names, work)
    finally:
        executors.close()


def _mix_settings(model, use_mix, orders, match_len, mix_rate, llm_rate, bias_rate, skip=None):
    """The --mix options as MixSettings (None: the model's default)."""
    from .mixing import BYTE_MIX, DEFAULT_MIX, NO_MIX

    changes = {}
    if orders is not None:
        try:
            changes["orders"] = () if orders.strip().lower() in ("", "none", "0") else tuple(
                int(k) for k in orders.split(","))
        except ValueError:
            raise click.BadParameter(f"{orders!r} is not a comma-separated list of orders",
                                     param_hint="--orders") from None
    for key, value in (("match", match_len), ("rate", mix_rate), ("llm_rate", llm_rate), ("bias_rate", bias_rate),
                       ("skip", skip)):
        if value is not None:
            changes[key] = value
    is_ngram = (model or "").lower() == "ngram"
    if not use_mix:
        if changes:
            raise click.UsageError("--no-mix cannot be combined with other mixing options")
        if is_ngram:
            raise click.UsageError("--no-mix: the ngram model is nothing but mixing (use --orders/--match)")
        return NO_MIX
    if not changes:
        return None
    base = BYTE_MIX if is_ngram else DEFAULT_MIX
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _describe_mix(raw) -> str:
    from .mixing import MixSettings

    try:
        m = MixSettings.from_params(raw)
    except LMZipError as exc:
        return f"unreadable ({exc})"
    name = f"preset {raw}: " if isinstance(raw, str) else ""
    return (f"{name}n-gram orders {','.join(map(str, m.orders)) or 'none'}, match {m.match or 'off'}, "
            f"rates {m.rate}/{m.llm_rate}/{m.bias_rate} (weights/model/bias)"
            + (f", skip at {m.skip - 1}/{m.skip}" if m.skip else ""))


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


def _decompress_range(job: Job, names: list[str], text: str, model: str | None, threads: int | None) -> None:
    """``decompress --range``: a slice of one file's original, to stdout or -o."""
    try:
        start, end = parse_range(text)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if len(names) != 1:
        raise click.UsageError("--range takes exactly one file")
    if job.rm:
        raise click.UsageError("--range never removes its input (no --rm)")

    def work(name: str) -> None:
        fin, src, _ = _open_input(name)
        try:
            if src is None or not fin.seekable():
                fin = io.BytesIO(fin.read())  # random access needs to seek
            line = ProgressLine(Path(name).name if src else "stdin", None, job.progress)
            try:
                data = decompress_range(fin, start, end, model=model, threads=threads, progress=line)
            finally:
                line.done()
        finally:
            if src is not None:
                fin.close()
        if job.output and not job.stdout:
            with atomic_output(Path(job.output), job.force) as fout:
                fout.write(data)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        if job.verbose:
            job.note(f"{name}: bytes {start}:{start + len(data)}, {len(data)} bytes")

    _run(job, names, work)


@main.command(epilog=EXIT_CODES)
@click.argument("files", nargs=-1, type=click.Path(dir_okay=True, allow_dash=True))
@common_options
@click.option("--range", "byte_range", metavar="START:END", default=None,
              help="Only bytes START to END (exclusive) of the original, decoding just the chunks that "
                   "cover them; written to standard output unless -o is given.")
@worker_options
def decompress(files, output, to_stdout, keep, rm, force, quiet, verbose, progress, model, threads,
               byte_range, workers, ray_address) -> None:
    """Decompress FILE.lmz to FILE (the model is the one named in the file)."""
    job = Job(output=output, stdout=to_stdout, keep=keep, rm=rm, force=force, quiet=quiet,
              verbose=verbose, progress=progress)
    names = _files_or_stdin(files)
    _check_output_option(job, names)
    if byte_range is not None:
        _decompress_range(job, names, byte_range, model, threads)
        return

    def work(name: str) -> None:
        if name != "-" and not name.endswith(SUFFIX) and not (job.output or job.stdout):
            raise Failure(f"{name}: unknown suffix (expected {SUFFIX}); use -o or -c")
        if name == "-" and sys.stdin.isatty() and not job.force:
            raise Failure("refusing to read compressed data from a terminal")
        target = job.target(name, lambda n: n[: -len(SUFFIX)])
        fin, src, size = _open_input(name)
        line = ProgressLine(Path(name).name if src else "stdin", None, job.progress)
        executor, used = _file_executors(executors, fin, size)
        started = time.monotonic()
        try:
            if target is None:
                st = _decompress_file(fin, sys.stdout.buffer, model, threads, line, executor)
                sys.stdout.buffer.flush()
            else:
                with atomic_output(target, job.force, like=src) as fout:
                    st = _decompress_file(fin, fout, model, threads, line, executor)
                if job.rm and src is not None:
                    src.unlink()  # the output passed every CRC and length check
        finally:
            line.done()
            if src is not None:
                fin.close()
        if job.verbose:
            seconds = time.monotonic() - started
            job.note(f"{name}: {'' if size is None else f'{size} -> '}{st.raw_bytes} bytes, "
                     f"{_human(st.raw_bytes / max(seconds, 1e-9))}/s"
                     + _on_workers(used)
                     + (f" -> {target}" if target else ""))

    executors = _Executors(workers, ray_address, threads)
    try:
        _run(job, names, work)
    finally:
        executors.close()


@main.command(epilog=EXIT_CODES)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True, allow_dash=True))
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
@click.option("--progress/--no-progress", default=None, help="Show a progress line on stderr.")
@click.option("-m", "--model", metavar="NAME|PATH", default=None, help="Model name or GGUF file.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="CPU threads for the model.")
@worker_options
def test(files, quiet, progress, model, threads, workers, ray_address) -> None:
    """Decompress FILES and check every checksum; write nothing."""
    job = Job(output=None, stdout=False, keep=True, rm=False, force=False, quiet=quiet, verbose=False,
              progress=progress)

    class Discard:
        def write(self, b: bytes) -> int:
            return len(b)

    def work(name: str) -> None:
        fin, src, size = _open_input(name)
        line = ProgressLine(Path(name).name if src else "stdin", None, job.progress)
        executor, used = _file_executors(executors, fin, size)
        try:
            st = _decompress_file(fin, Discard(), model, threads, line, executor)  # type: ignore[arg-type]
        finally:
            line.done()
            if src is not None:
                fin.close()
        job.note(f"{name}: OK ({st.raw_bytes} bytes{_on_workers(used)})")

    executors = _Executors(workers, ray_address, threads)
    try:
        _run(job, list(files), work)
    finally:
        executors.close()


@main.command(epilog=EXIT_CODES)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True, allow_dash=True))
def info(files) -> None:
    """Show the header, sizes, bits per byte and model of FILES (no decoding)."""
    job = Job(output=None, stdout=False, keep=True, rm=False, force=False, quiet=False, verbose=False,
              progress=False)

    def work(name: str) -> None:
        fin, src, _ = _open_input(name)
        try:
            if src is None or not fin.seekable():
                fin = io.BytesIO(fin.read())
            streams = scan_streams(fin)
        finally:
            if src is not None:
                fin.close()
        click.echo(f"{name}:")
        for number, s in enumerate(streams, 1):
            if len(streams) > 1:
                click.echo(f"  stream {number}")
            p = s.header.params
            bpb = 8 * s.compressed_size / s.end.original_len if s.end.original_len else 0.0
            tokens = sum(c.n_tokens for c in s.end.chunks)
            code = f" (model code {s.header.code})" if s.header.code is not None else ""
            click.echo(f"  format        lmzip version {s.header.version}{code}")
            if s.header.names_no_model:
                click.echo("  model         none (no chunk is coded by a model)")
            else:
                click.echo(f"  model         {p.get('model')} ({p.get('backend')})")
            if any(s.header.model_sha256):
                click.echo(f"  model sha256  {s.header.model_sha256.hex()}")
            if "context" in p:
                click.echo(f"  context       {p['context']} tokens")
            if "dtype" in p:  # the torch backend
                threads = f", {p['threads']} thread{'s' if p['threads'] != 1 else ''}" if "threads" in p else ""
                click.echo(f"  precision     {p['dtype']} on {p.get('device')}{threads}")
            if "mix" in p:
                click.echo(f"  mixing        {_describe_mix(p['mix'])}")
            if "chunk_size" in p:
                groups = sum(c.starts_group for c in s.end.chunks) if s.header.version > 2 else None
                width = p.get("streams", 1)
                click.echo(f"  chunking      {p['chunk_size']}-byte chunks, {width} stream(s) in lockstep"
                           + (f", {groups} group(s)" if groups is not None else ""))
            click.echo(f"  fingerprint   {s.header.fingerprint.hex()}")
            click.echo(f"  original      {s.end.original_len} bytes, {tokens} tokens, {len(s.end.chunks)} chunk(s)")
            by_method: dict[str, list[int]] = {}
            for c in s.end.chunks:
                counts = by_method.setdefault(c.method_name, [0, 0, 0])
                counts[0] += 1
                counts[1] += c.raw_len
                counts[2] += c.payload_len
            for name, (n, raw, packed) in by_method.items():
                click.echo(f"  {name + ' chunks':<13} {n}: {raw} -> {packed} bytes")
            click.echo(f"  compressed    {s.compressed_size} bytes, {bpb:.3f} bits per byte")
            raw = s.end.original_len
            for what, size in (("payload", s.payload_size), ("container", s.container_size)):
                click.echo(f"  {what:<13} {size} bytes, {8 * size / raw if raw else 0.0:.4f} bits per byte")

    _run(job, list(files), work)


@main.command()
def models() -> None:
    """List the known models and whether they are installed."""
    for spec in known_models():
        mark = "installed" if spec.installed() else "not installed"
        default = " (default)" if spec.name == DEFAULT_MODEL else ""
        click.echo(f"{spec.name:<14} {mark:<14} {spec.description}{default}")
        if not spec.installed():
            click.echo(f"{'':<14} install: {spec.install}")
    click.echo("Any GGUF file also works: --model PATH.gguf")


from .cli_measure import COMMANDS as _MEASURING  # noqa: E402  (bench, entropy, capacity)

for _command in _MEASURING:
    main.add_command(_command)


def run(argv: list[str] | None = None) -> None:
    """Console entry point: click's handling, but Ctrl-C exits 130 without a traceback."""
    try:
        main.main(args=argv, prog_name="lmzip", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("\nlmzip: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    run()
