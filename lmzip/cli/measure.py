"""The measuring commands of the ``lmzip`` CLI: ``bench``, ``entropy``, ``capacity``.

Their logic lives in :mod:`lmzip.measure.bench`, :mod:`lmzip.measure.entropy` and
:mod:`lmzip.measure.capacity`; this module parses options and prints.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from ..errors import LMZipError
from ..predictors.registry import BACKENDS, DEFAULT_BACKEND, DEFAULT_CONTEXT, DEFAULT_MODEL
from .device import device_option
from .status import StatusLine

__all__ = ["bench", "entropy", "capacity", "COMMANDS"]

EXIT_CODES = """\b
Exit status:
  0    success
  1    an error (missing corpus or model, a file that fails its SHA-256 check,
       a round trip that does not give back the input)
  2    usage error (bad option or argument)
  130  interrupted (Ctrl-C); finished benchmark jobs stay cached"""


def _backend_option(f):
    return click.option("--backend", type=click.Choice(BACKENDS), default=DEFAULT_BACKEND, show_default=True,
                        help="What runs the language model (see lmzip compress --help).")(f)


_THREADS_HELP = ("CPU threads for the model (results do not change; on a machine busy with other work, "
                 "--threads 1 can be several times faster).")


def _fail(message: str) -> None:
    click.echo(f"lmzip: {message}", err=True)
    sys.exit(1)


def _fail_run(line, exc: LMZipError | OSError) -> None:
    """End a long run on an lmzip or file error: clear the status line, one-line message."""
    line.clear()
    _fail(str(exc) if isinstance(exc, LMZipError) else f"{exc.filename or ''}: {exc.strerror or exc}")


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text if text.endswith("\n") else text + "\n")
    except OSError as exc:
        _fail(f"{path}: {exc.strerror or exc}")


def _eta(done: int, size: int, started: float) -> str:
    elapsed = time.monotonic() - started
    if not done or elapsed <= 0:
        return ""
    left = (size - done) * elapsed / done
    return f"ETA {int(left // 60)}m{int(left % 60):02d}s"


class _BenchReporter:
    def __init__(self, line: StatusLine):
        self.line = line
        self.label = ""
        self.started = time.monotonic()

    def start(self, index, total, job, size) -> None:
        self.label = f"[{index}/{total}] {job.file.label} · {job.compressor}"
        self.started = time.monotonic()
        self.line.show(self.label, force=True)

    def phase(self, phase, done, size) -> None:
        pct = 100 * done / size if size else 100.0
        if phase == "compress" and done == 0:
            self.started = time.monotonic()
        speed = done / max(time.monotonic() - self.started, 1e-9)
        self.line.show(f"{self.label} · {phase} {pct:5.1f}% {speed:,.0f} B/s {_eta(done, size, self.started)}")

    def finish(self, index, total, r) -> None:
        how = "cached" if r.cached else f"{r.compress_seconds + r.decompress_seconds:.1f} s"
        check = "verified" if r.verified else "ROUND TRIP FAILED"
        self.line.note(f"[{index}/{total}] {r.file} · {r.compressor}: {r.original:,} -> {r.compressed:,} bytes, "
                       f"{r.bpb:.3f} bpb, {check} ({how})")


@click.command(epilog=EXIT_CODES)
@click.argument("paths", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--corpus", "corpora_names", multiple=True, metavar="NAME",
              help="canterbury (all 11 files), enwik8 (the whole file if present, else its longest "
                   "genuine prefix), or a manifest file name; repeatable. Default: canterbury, unless PATHS are given.")
@click.option("--corpora", metavar="DIR", default=None,
              help="Folder holding canterbury/ and enwik/ (default: $LMZIP_CORPORA, else ../shared/corpora).")
@click.option("-m", "--model", "models", multiple=True, metavar="NAME|PATH",
              help=f"lmzip model, repeatable (default: {DEFAULT_MODEL}); 'none' for the classic compressors only.")
@click.option("--classic/--no-classic", default=True, show_default=True,
              help="Also run gzip -9, bzip2 -9, xz -9e, zstd -19, brotli -q 11.")
@click.option("--limit-bytes", type=click.IntRange(0), default=None, metavar="N",
              help="Use the first N bytes of each file; 0 for whole files. [default: 4096; the whole "
                   "Canterbury corpus through SmolLM2 takes about 3 hours here]")
@click.option("--context", type=click.IntRange(16, 1 << 20), default=DEFAULT_CONTEXT, show_default=True,
              help="Context window in tokens.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help=_THREADS_HELP)
@device_option
@click.option("--cache-dir", metavar="DIR", default=None, help="Results cache (default: ~/.cache/lmzip/bench).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write cached results.")
@click.option("--json", "json_path", metavar="FILE", help="Write the results as JSON.")
@click.option("--csv", "csv_path", metavar="FILE", help="Write the results as CSV.")
@click.option("--markdown", "md_path", metavar="FILE", help="Write Markdown tables.")
@click.option("--plot", "plot_path", metavar="FILE.png", help="Plot bits per byte per file per compressor "
                                                                "(needs matplotlib).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the table and errors.")
@click.option("--progress/--no-progress", default=None,
              help="Show a status line on stderr (default: when stderr is a terminal).")
@_backend_option
def bench(paths, corpora_names, corpora, models, classic, limit_bytes, context, threads, cache_dir, no_cache,
          json_path, csv_path, md_path, plot_path, quiet, progress, backend) -> None:
    """Compress files with lmzip and the classic compressors; tabulate, verify, plot.

    Every file goes through each compressor, is decompressed and compared with the
    input. Reports sizes, bits per byte, the model's cross-entropy beside the coded
    size (the coding overhead), speeds and peak memory. Results are cached per
    (file bytes, compressor, model and settings): an interrupted run, started
    again, continues where it stopped.

    \b
      lmzip bench --corpus canterbury                  # first 4 kB of each of the 11 files
      lmzip bench --corpus canterbury --limit-bytes 0  # whole files (hours)
      lmzip bench notes.txt -m smollm2-135m -m gemma3-270m --markdown bench.md --plot bench.png
    """
    from ..measure import bench as bench_mod
    from ..measure import corpora as corpora_mod
    from ..measure import report

    if plot_path:
        from ..measure.plots import have_matplotlib

        if not have_matplotlib():
            _fail('--plot needs matplotlib: pip install matplotlib (or "lmzip[bench]")')
    models = [m for m in (models or (DEFAULT_MODEL,)) if m.lower() != "none"]
    limit = bench_mod.DEFAULT_LIMIT if limit_bytes is None else limit_bytes
    line = StatusLine(enabled=(sys.stderr.isatty() if progress is None else progress) and not quiet, quiet=quiet)
    try:
        files = [corpora_mod.path_file(p) for p in paths]
        for name in corpora_names or (() if paths else ("canterbury",)):
            files += corpora_mod.resolve(name, corpora)
        if not files:
            raise click.UsageError("no files: give PATHS or --corpus")
        if not models and not classic:
            raise click.UsageError("nothing to run: --no-classic and no model")
        from ..measure.baselines import available

        missing = available()[1] if classic else []
        if missing:
            line.note(f"lmzip: skipping {', '.join(missing)} (library not installed; pip install \"lmzip[bench]\")")
        results = bench_mod.run(files, models=models, classic=classic, limit=limit, context=context,
                                threads=threads, cache_dir=False if no_cache else (cache_dir or True),
                                reporter=_BenchReporter(line), backend=backend)
    except (LMZipError, OSError) as exc:
        _fail_run(line, exc)
    line.clear()
    settings = {"limit_bytes": limit or None, "context": context, "models": models, "classic": classic,
                "command": "lmzip bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else ""}
    click.echo(report.terminal_table(results))
    if json_path:
        _write(json_path, report.to_json(results, settings))
    if csv_path:
        _write(csv_path, report.to_csv(results))
    if md_path:
        caption = ("Bits per byte (compressed size × 8 / original size; lower is better)"
                   + (f", first {limit:,} bytes of each file" if limit else ", whole files") + ".")
        _write(md_path, "\n\n".join(x for x in [caption, report.markdown_pivot(results),
                                                report.markdown_compressors(results),
                                                report.markdown_lmzip(results)] if x))
    if plot_path:
        from ..measure.plots import plot_bench

        what = f"first {limit:,} bytes of each file" if limit else "whole files"
        plot_bench(results, plot_path, title=f"Bits per byte ({what}; lower is better)")
    if not all(r.verified for r in results):
        _fail("some round trips failed (see the table)")


@click.command(epilog=EXIT_CODES)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-m", "--model", metavar="NAME|PATH", default=None, help="Model name or GGUF file.")
@click.option("--context", type=click.IntRange(16, 1 << 20), default=DEFAULT_CONTEXT, show_default=True,
              help="Context window in tokens (the window slides as when compressing).")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help=_THREADS_HELP)
@device_option
@click.option("--limit-bytes", type=click.IntRange(0), default=0, metavar="N",
              help="Only the first N bytes of each file (0: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout.")
@click.option("--progress/--no-progress", default=None, help="Show a status line on stderr.")
@click.option("--mix/--no-mix", "use_mix", default=False, show_default=True,
              help="Include lmzip's default mixing (exact, but one token per model call: as slow as "
                   "compressing).")
@_backend_option
def entropy(files, model, context, threads, limit_bytes, as_json, progress, use_mix, backend) -> None:
    """Estimate how small FILES would get: the model's cross-entropy, no coding.

    By default this is the language model alone (lmzip compresses with the model
    mixed with the text's own statistics, a few percent smaller; --mix includes it).
    It uses the compressor's tokens, chunks and sliding window. It is an
    estimate: the compressed file is slightly larger (quantization and the coder,
    about 0.1 %, plus 20-30 bytes of container). The default backend computes
    exactly the compressor's logits, one token per call; --backend llama.cpp
    evaluates many tokens per call (about 3x faster than compressing), which rounds
    differently from the compressor's one token per call (about 0.1 %).
    """
    from ..measure.entropy import cross_entropy
    from ..predictors.mixing import NO_MIX
    from ..predictors.registry import load_model

    try:
        lm = load_model(model or DEFAULT_MODEL, context=context, threads=threads, mix=None if use_mix else NO_MIX,
                        backend=backend)
    except LMZipError as exc:
        _fail(str(exc))
    line = StatusLine(enabled=sys.stderr.isatty() if progress is None else progress, quiet=False)
    failed = False
    for name in files:
        try:
            if name == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(name, "rb") as f:
                    data = f.read(limit_bytes) if limit_bytes else f.read()
            if limit_bytes:
                data = data[:limit_bytes]
            started = time.monotonic()

            def show(done: int, tokens: int, _bits: float, size: int = len(data), label: str = name,
                     started: float = started) -> None:
                line.show(f"{label}: {100 * done / max(size, 1):5.1f}% {tokens:,} tokens "
                          f"{_eta(done, size, started)}")

            r = cross_entropy(lm, data, progress=show)
        except FileNotFoundError:
            line.note(f"lmzip: {name}: no such file")
            failed = True
            continue
        except OSError as exc:
            line.note(f"lmzip: {name}: {exc.strerror or exc}")
            failed = True
            continue
        except LMZipError as exc:
            line.note(f"lmzip: {name}: {exc}")
            failed = True
            continue
        line.clear()
        if as_json:
            click.echo(json.dumps({"file": name, "model": lm.name, "context": context, "bytes": r.raw_bytes,
                                   "tokens": r.tokens, "bits": r.bits, "bpb": r.bpb,
                                   "bits_per_token": r.bits_per_token, "estimated_payload_bytes":
                                   r.estimated_payload, "seconds": r.seconds}))
        else:
            speed = r.tokens / r.seconds if r.seconds else 0.0
            click.echo(f"{name}: {r.raw_bytes:,} bytes, {r.tokens:,} tokens, {r.bpb:.4f} bits/byte "
                       f"({r.bits_per_token:.3f} bits/token), ~{r.estimated_payload:,} bytes coded "
                       f"[{lm.name}, estimate; {speed:,.0f} tokens/s]")
    if failed:
        sys.exit(1)


@click.command(epilog=EXIT_CODES)
@click.option("-m", "--model", "models", multiple=True, metavar="NAME|PATH",
              help="Model, repeatable: a registry name, a GGUF file, or a Hugging Face model folder "
                   "(torch backend). Default: every installed LLM.")
@click.option("--dataset", "datasets", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Documents to measure on, repeatable (a row per model and dataset): JSON lines with a "
                   "\"text\" field, one document per line (the paper's format), or a plain UTF-8 text "
                   "file, one document. Default: the first 16 Wikipedia articles of enwik6 with at least "
                   "6,000 bytes of running text (markup stripped), from the benchmark corpora.")
@click.option("--corpora", metavar="DIR", default=None, help="Corpus folder holding enwik/enwik6 (default set).")
@click.option("--samples", type=click.IntRange(1), default=None, metavar="N",
              help="Only the first N documents of each dataset. [default: all, as the reference]")
@click.option("--sample-tokens", type=click.IntRange(2, 1 << 16), default=1024, show_default=True,
              help="Tokens per sample, special tokens included (and the decode FLOPs are averaged over).")
@click.option("--b", "--bias", "bias", type=float, default=None,
              help="The constant b. [default: by the dataset's name, as the reference: -24 for "
                   "mixed_text.jsonl, -18.7 for Ch-FineWeb-Edu.jsonl, -27 for any other data]")
@click.option("--flops", "flops_convention", type=click.Choice(["reference", "physical"]), default="reference",
              show_default=True,
              help="FLOPs per token: the paper's reference code's convention, or lmzip's physical count "
                   "(head_dim, sliding windows, experts used).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help=f"What runs the model. [default: {DEFAULT_BACKEND} for GGUF models, torch for a model folder]")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help=_THREADS_HELP)
@click.option("--json", "json_path", metavar="FILE", help="Write the results as JSON, one object per row.")
@click.option("--markdown", "md_path", metavar="FILE", help="Write a Markdown table.")
@click.option("--plot", "plot_path", metavar="FILE.png", help="Plot capacity, bpb and FLOPs/token per model.")
@click.option("--progress/--no-progress", default=None, help="Show a status line on stderr.")
def capacity(models, datasets, corpora, samples, sample_tokens, bias, flops_convention, backend, threads,
             json_path, md_path, plot_path, progress) -> None:
    """Information capacity of language models, as Yuan et al. (2025) define it.

    \b
    IC = (text size - NLL + b) / log2(FLOPs per token), per token, computed as the
    paper's reference code computes it (GitHub TeleAI-AI-Flow/InformationCapacity):
    \b
    - one sample per document: its first 1,024 tokens with the model's tokenizer,
      special tokens included (Gemma's BOS); the first token is context only;
    - text size: 8 x UTF-8 bytes of each sample's decoded text (tokens 1..n-1) per
      token, averaged over samples, rounded to 2 decimals;
    - NLL: the model's -log2 p of those tokens, averaged over all of them;
    - FLOPs per token: the reference's count from the model's configuration
      (projections with d_k = d/heads, gated MLP, attention over a 1,024-token
      decode, LM head; nothing for sliding windows, norms or embeddings);
    - b: -24 (mixed_text.jsonl), -18.7 (Ch-FineWeb-Edu.jsonl), -27 otherwise.

    The default data (16 Wikipedia articles as plain text) is not one of the paper's
    datasets: its b is -27. With the paper's own files (--dataset mixed_text.jsonl)
    the figures are comparable with its leaderboard, up to quantization: the paper ran
    unquantized weights, lmzip's registry models are 4-bit GGUF (see BENCHMARKS.md).

    \b
      lmzip capacity                                   # installed models, default data
      lmzip capacity -m smollm2-135m --json out.json
      lmzip capacity -m ./SmolLM2-135M --dataset datasets/mixed_text.jsonl   # HF folder, torch
    """
    from ..measure import capacity as cap
    from ..measure.documents import default_dataset, read_dataset

    if plot_path:
        from ..measure.plots import have_matplotlib

        if not have_matplotlib():
            _fail('--plot needs matplotlib: pip install matplotlib (or "lmzip[bench]")')
    line = StatusLine(enabled=sys.stderr.isatty() if progress is None else progress, quiet=False)
    rows = []
    try:
        sets = [read_dataset(d) for d in datasets] or [default_dataset(corpora)]
        names = list(models) or cap.installed_llms()
        if not names:
            raise LMZipError("no LLM is installed (lmzip models)")
        for name in names:
            for ds in sets:
                started = time.monotonic()
                line.show(f"{name} · {ds.label}: loading", force=True)

                def show(done: int, total: int, label: str = f"{name} · {ds.label}", started: float = started) -> None:
                    line.show(f"{label}: {done:,}/{total:,} tokens {_eta(done, total, started)}")

                rows.append(cap.measure(name, ds, samples=samples, sample_tokens=sample_tokens, bias=bias,
                                        flops=flops_convention, threads=threads, backend=backend, progress=show))
                line.clear()
    except (LMZipError, OSError) as exc:
        _fail_run(line, exc)
    click.echo(cap.terminal_table(rows))
    click.echo(cap.describe(rows))
    if json_path:
        _write(json_path, json.dumps({"command": "lmzip capacity " + " ".join(sys.argv[2:]),
                                      "rows": [r.to_dict() for r in rows]}, indent=1))
    if md_path:
        _write(md_path, cap.markdown_table(rows))
    if plot_path:
        from ..measure.plots import plot_capacity

        plot_capacity(rows, plot_path)


COMMANDS = [bench, entropy, capacity]
