"""The ``lmzip`` command line, in the manner of gzip, xz and zstd: the click group and its commands."""

from __future__ import annotations

import dataclasses
import io
import os
import sys
import time
from pathlib import Path

import click

from .. import __version__, cdf
from .. import format as fmt
from ..core import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_STREAMS,
    MAX_STREAMS,
    METHODS,
    LMZipCompressor,
    scan_streams,
)
from ..errors import LMZipError
from ..predictors.registry import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_CONTEXT,
    DEFAULT_MODEL,
    MAX_CONTEXT,
    MIN_CONTEXT,
    known_models,
    load_model,
)
from ..ranges import decompress_range, parse_range
from ..sizing import MIN_GPU_CHUNK
from .device import device_argument, device_option
from .executors import _Executors, _file_executors, _on_workers
from .files import (
    SUFFIX,
    Failure,
    Job,
    StdoutClosed,
    _check_output_option,
    _compress_file,
    _decompress_file,
    _files_or_stdin,
    _open_input,
    _run,
    _verify,
    atomic_output,
)
from .status import ProgressLine, _human

EXIT_CODES = """\b
Exit status:
  0    success
  1    an error with some file (missing, unreadable, damaged, output exists, ...);
       the other files are still processed
  2    usage error (bad option or argument)
  130  interrupted (Ctrl-C); no partial output is left behind
  141  standard output closed by its reader (as | head does), quietly, as gzip
       ended by SIGPIPE"""

MODEL_ENV = "LMZIP_MODEL"  # the model compress uses without -m (decompression reads it from the file)


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
                 help="CPU threads for the model and the mixer; on a GPU, the mixer's (default there: "
                      "every core). Does not change the output."),
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


VERSION_MESSAGE = f"%(prog)s %(version)s (CDF backend: {cdf.backend})"


class LMZipGroup(click.Group):
    """The group, which is also a gzip-style command: ``lmzip [OPTIONS] [FILE]...``.

    The first argument names a subcommand only if it is exactly one of their names;
    any other argument list (none at all, an option first, a file first) goes to the
    gzip-style command, ``gzip_style`` below.
    """

    def main(self, args=None, prog_name=None, **extra):
        args = list(sys.argv[1:] if args is None else args)
        prog_name = prog_name or "lmzip"
        complete_var = f"_{prog_name}_COMPLETE".replace("-", "_").replace(".", "_").upper()
        if os.environ.get(complete_var):
            sys.exit(self._complete(prog_name, complete_var, os.environ[complete_var]))
        if args and args[0] in self.commands:
            return super().main(args, prog_name, **extra)
        return gzip_style.main(args, prog_name=prog_name, **extra)

    def _complete(self, prog_name: str, complete_var: str, instruction: str) -> int:
        """Shell completion (``_LMZIP_COMPLETE=bash_source lmzip``, docs/cli.md), routed as
        ``main`` routes a command line: after a command's name, that command completes;
        the first word completes to command names (or, when none matches, file names);
        anything else is the gzip-style form."""
        from click.shell_completion import CompletionItem, get_completion_class

        shell, _, mode = instruction.partition("_")
        complete = get_completion_class(shell)
        if complete is None:
            return 1
        comp = complete(self, {}, prog_name, complete_var)
        if mode == "source":
            click.echo(comp.source())
            return 0
        if mode != "complete":
            return 1
        args, incomplete = comp.get_completion_args()
        if args and args[0] in self.commands:
            items = comp.get_completions(args, incomplete)
        elif not args and not incomplete.startswith("-"):
            items = [CompletionItem(incomplete, type="file"),
                     *(CompletionItem(name) for name in self.commands if name.startswith(incomplete))]
        else:
            comp.cli = gzip_style
            items = comp.get_completions(args, incomplete)
        click.echo("\n".join(comp.format_completion(item) for item in items))
        return 0

    def format_usage(self, ctx, formatter) -> None:
        formatter.write_usage(ctx.command_path, "[OPTIONS] [FILE]...")
        formatter.write_usage(ctx.command_path, "COMMAND [ARGS]...", prefix="       ")

    def format_options(self, ctx, formatter) -> None:
        with click.Context(gzip_style, info_name=ctx.info_name) as own:
            gzip_style.format_options(own, formatter)  # -d, -t, -l and the compress options
        self.format_commands(ctx, formatter)


@click.group(cls=LMZipGroup, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="lmzip", message=VERSION_MESSAGE)
def main() -> None:
    """Lossless compression of text with the probabilities of a language model.

    \b
    As gzip, xz and zstd:
      lmzip FILE...              FILE -> FILE.lmz (the input is kept)
      lmzip -d FILE.lmz...       FILE.lmz -> FILE
      lmzip -t FILE.lmz...       decompress and verify, write nothing
      lmzip -l FILE.lmz...       one line per file: sizes, bits per byte, model
      lmzip < in > out.lmz       no FILE, or -: standard input to standard output,
      lmzip -d < out.lmz > in    so tar -I lmzip and other tools' compressors work
      lmzcat FILE.lmz...         lmzip -dc FILE.lmz...

    \b
    The first argument is a command only if it is exactly a command's name:
    lmzip -- compress, lmzip ./compress and lmzip -v compress all compress the
    file "compress"; -- ends the options, every later word is a file. A first
    argument that is neither a command, an option nor an existing file is a usage
    error (a mistyped command). Without -m, compression uses $LMZIP_MODEL if set.

    \b
    Commands (the same, with more options for each):
      lmzip compress FILE        FILE -> FILE.lmz (the input is kept)
      lmzip decompress FILE.lmz  FILE.lmz -> FILE
      lmzip test FILE.lmz        decompress and verify, write nothing
      lmzip info FILE.lmz        header, sizes, bits per byte, model
      lmzip models               known models and whether they are installed
      lmzip bench                lmzip beside gzip, bzip2, xz, zstd, brotli on a corpus
      lmzip entropy FILE         the model's cross-entropy of FILE: a quick size estimate
      lmzip capacity             information capacity (Yuan et al., 2025) of the installed models

    With no FILE, or with -, read standard input and write standard output.
    """


@main.command(epilog=EXIT_CODES)
@click.argument("files", nargs=-1, type=click.Path(dir_okay=True, allow_dash=True))
@common_options
@click.option("--context", type=click.IntRange(MIN_CONTEXT, MAX_CONTEXT), default=DEFAULT_CONTEXT, show_default=True,
              help="Context window in tokens.")
@click.option("--chunk-size", type=click.IntRange(1, fmt.MAX_CHUNK_SIZE), default=None,
              help=f"Bytes per independently coded chunk [default: {DEFAULT_CHUNK_SIZE}; on a GPU, a file's "
                   f"size over --streams, {MIN_GPU_CHUNK} to {DEFAULT_CHUNK_SIZE}, so that it fills the "
                   f"group].")
@click.option("--streams", type=click.IntRange(1, MAX_STREAMS), default=None,
              help=f"Chunks coded together, one batched model evaluation per step [default: on a GPU, as "
                   f"many as its free memory holds (at most {MAX_STREAMS}); else {DEFAULT_STREAMS} for a model "
                   f"that batches (the LLMs), else 1].")
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
@click.option("--adapt/--no-adapt", "adapt", default=False, show_default=True,
              help="Also learn the model's output layer online from its hidden state as the text is "
                   "coded (mixing preset a1; portable backend only). Stored in the file.")
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True,
              help="auto: text to the model, binary data to LZMA (or stored), whichever codes a chunk "
                   "smaller; model: every chunk through the model; classic: no model.")
@click.option("--backend", type=click.Choice(BACKENDS), default=DEFAULT_BACKEND, show_default=True,
              help="What runs the model: portable (lmzip's own engine: the same logits on every CPU, so "
                   "the file decodes on any machine), llama.cpp (pip install 'lmzip[llamacpp]'; decodes only "
                   "where llama.cpp is built for the same CPU kernels), or torch (transformers; "
                   "pip install 'lmzip[torch]'; also takes a Hugging Face model folder as --model). "
                   "Stored in the file.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
              show_default=True, help="Precision of the torch backend (stored in the file).")
@device_argument
@worker_options
def compress(files, output, to_stdout, keep, rm, force, quiet, verbose, progress, model, threads,
             context, chunk_size, streams, use_mix, orders, match_len, mix_rate, llm_rate, bias_rate,
             skip, adapt, method, backend, dtype, device, workers, ray_address) -> None:
    """Compress FILES to FILE.lmz with a language model.

    Without -m, the model is $LMZIP_MODEL if that is set, else the default model."""
    model = model or os.environ.get(MODEL_ENV) or None
    job = Job(output=output, stdout=to_stdout, keep=keep, rm=rm, force=force, quiet=quiet,
              verbose=verbose, progress=progress)
    names = _files_or_stdin(files)
    _check_output_option(job, names)
    mix = _mix_settings(model, use_mix, orders, match_len, mix_rate, llm_rate, bias_rate, skip, adapt)
    try:
        lm = load_model(model or DEFAULT_MODEL, context=context, threads=threads, mix=mix, backend=backend,
                        dtype=dtype, device=device or "auto")
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
        comp = LMZipCompressor(lm, chunk_size=chunk_size, progress=line, method=method, streams=streams,
                               input_size=size)
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


def _mix_settings(model, use_mix, orders, match_len, mix_rate, llm_rate, bias_rate, skip=None, adapt=False):
    """The --mix options as MixSettings (None: the model's default)."""
    from ..predictors.mixing import ADAPT_MIX, BYTE_MIX, DEFAULT_MIX, NO_MIX

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
    if adapt:
        changes.update(adapt=ADAPT_MIX.adapt, adapt_rate=ADAPT_MIX.adapt_rate, adapt_center=ADAPT_MIX.adapt_center)
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
    from ..predictors.mixing import MixSettings

    try:
        m = MixSettings.from_params(raw)
    except LMZipError as exc:
        return f"unreadable ({exc})"
    name = f"preset {raw}: " if isinstance(raw, str) else ""
    return (f"{name}n-gram orders {','.join(map(str, m.orders)) or 'none'}, match {m.match or 'off'}, "
            f"rates {m.rate}/{m.llm_rate}/{m.bias_rate} (weights/model/bias)"
            + (f", skip at {m.skip - 1}/{m.skip}" if m.skip else "")
            + (f", output-row adaptation (best {m.adapt}, rate {m.adapt_rate}, centering {m.adapt_center})"
               if m.adapt else ""))


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
@device_option
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
@device_option
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


def _scan_file(name: str):
    """The streams of one .lmz file (or of stdin, read whole), checked but not decoded."""
    fin, src, _ = _open_input(name)
    try:
        if src is None or not fin.seekable():
            fin = io.BytesIO(fin.read())
        return scan_streams(fin)
    finally:
        if src is not None:
            fin.close()


@main.command(epilog=EXIT_CODES)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True, allow_dash=True))
def info(files) -> None:
    """Show the header, sizes, bits per byte and model of FILES (no decoding)."""
    job = Job(output=None, stdout=False, keep=True, rm=False, force=False, quiet=False, verbose=False,
              progress=False)

    def work(name: str) -> None:
        streams = _scan_file(name)
        click.echo(f"{name}:")
        for number, s in enumerate(streams, 1):
            if len(streams) > 1:
                click.echo(f"  stream {number}")
            p = s.header.params
            bpb = 8 * s.compressed_size / s.end.original_len if s.end.original_len else 0.0
            tokens = sum(c.n_tokens for c in s.end.chunks)
            code = "" if s.header.code is None else f" (model code {s.header.code})"
            if s.header.chunk is not None:
                code = f" (code {s.header.code}: one {s.header.chunk.method_name} chunk, no model)"
            elif s.header.one_chunk:
                code = f" (model code {s.header.code & ~fmt.ONE_CHUNK}, one chunk: no end record)"
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


from .measure import COMMANDS as _MEASURING  # noqa: E402  (bench, entropy, capacity)

for _command in _MEASURING:
    main.add_command(_command)


#: what a crash of native code (the model engine) prints instead of a bare "Segmentation fault"
CRASH_MESSAGE = (b"the model engine crashed in native code on this CPU, and the command did not finish; "
                 b"if it is llama.cpp, rebuild it for this machine (empty ~/.cache/lmzip/wheels, then "
                 b"LMZIP_EXTRAS=llamacpp bash scripts/install.sh) and report the CPU")


def _report_native_crashes() -> None:
    try:
        from .. import _crashguard
    except ImportError:  # not built: Python's own report, a traceback, is better than nothing
        import faulthandler

        faulthandler.enable()
        return
    _crashguard.install(CRASH_MESSAGE)


# ---------------------------------------------------------------------------- gzip style

class GzipStyle(click.Command):
    def format_usage(self, ctx, formatter) -> None:
        formatter.write_usage(ctx.command_path, "[OPTIONS] [FILE]...")

    def get_help(self, ctx) -> str:
        """-h/--help: the group's help, which lists both ways of calling lmzip."""
        with click.Context(main, info_name=ctx.info_name) as group:
            return main.get_help(group)

    def parse_args(self, ctx, args):
        first = args[0] if args else None
        if (first is not None and not first.startswith("-") and not os.path.lexists(first)
                and not ctx.resilient_parsing):  # shell completion parses partial command lines
            raise click.UsageError(f"{first!r} is neither a command nor a file "
                                   f"(commands: {', '.join(main.list_commands(ctx))}; "
                                   f"for a file of that name: lmzip -- {first})", ctx)
        return super().parse_args(ctx, args)


def _params(command: click.Command, values: dict) -> dict:
    """The values of ``command``'s parameters, from those of the gzip-style command.

    Options that act through a callback and pass no value (``--device``) are left out.
    """
    return {p.name: values[p.name] for p in command.params if p.expose_value and p.name in values}


def _list(files: tuple[str, ...], quiet: bool) -> None:
    """-l: one line per file from its header and index (no decoding), as gzip -l."""
    job = Job(output=None, stdout=False, keep=True, rm=False, force=False, quiet=quiet, verbose=False,
              progress=False)
    if not quiet:
        click.echo(f"{'compressed':>12} {'original':>12} {'bpb':>6}  {'model':<16} name")

    def work(name: str) -> None:
        streams = _scan_file(name)
        packed = sum(s.compressed_size for s in streams)
        original = sum(s.end.original_len for s in streams)
        models = dict.fromkeys("none" if s.header.names_no_model else str(s.header.params.get("model"))
                               for s in streams)
        bpb = 8 * packed / original if original else 0.0
        click.echo(f"{packed:>12} {original:>12} {bpb:>6.3f}  {','.join(models):<16} {name}")

    _run(job, _files_or_stdin(files), work)


@click.command(cls=GzipStyle, name="lmzip", epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]},
               params=[click.Option(["-d", "--decompress", "decompress_"], is_flag=True,
                                    help="Decompress (as the decompress command)."),
                       click.Option(["-t", "--test", "test_"], is_flag=True,
                                    help="Decompress and check every checksum; write nothing."),
                       click.Option(["-l", "--list", "list_"], is_flag=True,
                                    help="One line per file: compressed and original size, bits per byte, "
                                         "model (no decoding)."),
                       *compress.params,
                       *(p for p in decompress.params if p.name == "byte_range")])
@click.version_option(__version__, "-V", "--version", prog_name="lmzip", message=VERSION_MESSAGE)
@click.pass_context
def gzip_style(ctx, decompress_, test_, list_, byte_range, **values) -> None:
    """lmzip without a command: compress FILES, or -d, -t, -l them; no FILE: stdin to stdout.

    The options of the other modes than compression (e.g. --context with -d, as tar -I
    'lmzip --context 512' passes it) are ignored, as gzip ignores -9 with -d.
    """
    modes = [flag for flag, on in (("-d", decompress_), ("-t", test_), ("-l", list_)) if on]
    if len(modes) > 1:
        raise click.UsageError(f"{' and '.join(modes)} exclude each other")
    if byte_range is not None and not decompress_:
        raise click.UsageError("--range needs -d")
    files = values["files"]
    if test_:
        ctx.invoke(test, **_params(test, {**values, "files": tuple(_files_or_stdin(files))}))
    elif list_:
        _list(files, values["quiet"])
    elif decompress_:
        ctx.invoke(decompress, byte_range=byte_range, **_params(decompress, values))
    else:
        to_stdout = values["to_stdout"] or (not files or files == ("-",)) and not values["output"]
        if not values["force"]:
            if to_stdout and sys.stdout.isatty():
                raise click.UsageError("compressed data not written to a terminal "
                                       "(redirect standard output, use -o, or -f to force)")
            if "-" in _files_or_stdin(files) and sys.stdin.isatty():
                raise click.UsageError("not reading data to compress from a terminal "
                                       "(name a FILE, redirect standard input, or -f to force)")
        ctx.invoke(compress, **_params(compress, values))


def lmzcat(argv: list[str] | None = None) -> None:
    """Console entry point ``lmzcat FILE...``: decompress to standard output, as xzcat and zstdcat."""
    run(["-d", "-c", *(sys.argv[1:] if argv is None else argv)])


def run(argv: list[str] | None = None) -> None:
    """Console entry point: click's handling, but Ctrl-C exits 130 without a traceback."""
    _report_native_crashes()
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
    except StdoutClosed:  # (a broken pipe elsewhere: click's own quiet exit 1)
        _stdout_closed()
    sys.exit(0)


def _stdout_closed() -> None:
    """Exit quietly with 141 (128 + SIGPIPE, what a shell reports for gzip | head) once
    standard output's reader has gone; stdout points at /dev/null so that Python's own
    flush at exit does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    sys.exit(141)

