"""The documentation matches the code.

- docs/cli.md and the manual pages are what scripts/gen_docs.py makes from the click
  commands today (a new option fails this until they are regenerated);
- every environment variable the code reads is in its table;
- every `lmzip ...` command line written in README.md, BENCHMARKS.md and docs/*.md
  names a command that exists and options that command takes, and every option the
  user pages name on its own (`--skip 32`) is an option of some command;
- every relative link between the pages (and to images) resolves, #anchors included;
- shell completion, as docs/cli.md describes it, completes commands and options.

Each checker has a self-test that feeds it a mistake and sees it fail.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from lmzip.cli.commands import gzip_style, main

ROOT = Path(__file__).resolve().parent.parent


def _load_gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_docs = _load_gen_docs()

#: every Markdown page of the project
PAGES = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md"),
                *(ROOT / "native").glob("*.md")])
#: the user's pages: an option named there on its own (`--skip 32`) must be one of lmzip's
#: (BENCHMARKS.md and the design pages also name the options of benchmark scripts)
USER_PAGES = [ROOT / "README.md", *(ROOT / "docs" / name for name in
                                    ("cli.md", "backends.md", "models.md", "api.md", "how-it-works.md"))]
#: options of other programs the user pages name on their own
OTHER_OPTIONS = {"--no-deps"}  # pip's, for the model package


# ---------------------------------------------------------------------------- generated files


def test_generated_files_are_current():
    stale = gen_docs.stale()
    assert not stale, (f"out of date: {', '.join(stale)}; run `{gen_docs.REGENERATE}` and commit the result "
                       f"(they are made from the click commands)")


def test_the_manual_page_renders_without_warnings():
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    for name in ("lmzip.1", "lmzcat.1"):
        r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(ROOT / "docs" / "man" / name)],
                           capture_output=True, text=True)
        assert r.returncode == 0 and not r.stderr, r.stderr


def test_every_option_is_in_the_generated_reference():
    text = (ROOT / gen_docs.CLI_MD).read_text()
    for name, command, ctx in gen_docs.commands():
        section = text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        for synopsis, _ in gen_docs.options(command, ctx):
            assert f"- `{synopsis}`" in section, f"{name}: {synopsis} missing from {gen_docs.CLI_MD}"


# ---------------------------------------------------------------------------- environment variables

_PY_READ = re.compile(r"""environ\.get\(\s*["']([A-Z][A-Z0-9_]*)["']"""
                      r"""|environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\](?!\s*=[^=])"""
                      r"""|getenv\(\s*["']([A-Z][A-Z0-9_]*)["']""")
_LMZIP_NAME = re.compile(r"\bLMZIP_[A-Z0-9_]+\b")
_SH_READ = re.compile(r"\$\{?([A-Z][A-Z0-9_]*)")
_PREPROCESSOR = re.compile(r"^\s*#\s*(?:if|ifdef|ifndef|elif|define|undef)\b.*$", re.M)


def environment_reads() -> set[str]:
    """The environment variables lmzip/, native/ and scripts/ read."""
    found: set[str] = set()
    for path in (ROOT / "lmzip").rglob("*.py"):
        text = path.read_text()
        found.update(name for groups in _PY_READ.findall(text) for name in groups if name)
        found.update(_LMZIP_NAME.findall(text))  # names kept in constants (MODEL_ENV = "LMZIP_MODEL")
    for path in [*(ROOT / "native").rglob("*.c"), *(ROOT / "native").rglob("*.h"), *(ROOT / "native").rglob("*.inc")]:
        found.update(name for groups in _PY_READ.findall(path.read_text()) for name in groups if name)
    for path in (ROOT / "scripts").glob("*.sh"):
        text = path.read_text()
        found.update(n for n in _SH_READ.findall(text) if n.startswith("LMZIP_") or n == "PYTHON")
        found.update(_LMZIP_NAME.findall(text))
    # set, not read, by lmzip (the torch backend keeps transformers offline)
    return found - {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CUBLAS_WORKSPACE_CONFIG", "TOKENIZERS_PARALLELISM"}


def test_every_environment_variable_is_documented():
    documented = {name for name, _, _ in gen_docs.ENVIRONMENT}
    missing = environment_reads() - documented
    assert not missing, (f"read by the code but not in scripts/gen_docs.py's ENVIRONMENT: {sorted(missing)}; "
                         f"add them, then run `{gen_docs.REGENERATE}`")


def test_every_documented_variable_is_still_used():
    used = " ".join(p.read_text(errors="replace") for folder in ("lmzip", "native", "scripts", "tests")
                    for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".c", ".h", ".inc", ".sh"))
    gone = [name for name, _, _ in gen_docs.ENVIRONMENT if name not in used]
    assert not gone, f"documented but no longer used: {gone}"


def test_the_environment_scan_finds_a_new_variable(tmp_path):
    assert {"LMZIP_MODEL", "LMZIP_THREADS", "LMZIP_ENGINE_ISA", "LMZIP_CACHE", "XDG_CACHE_HOME",
            "LMZIP_EXTRAS"} <= environment_reads()
    assert _PY_READ.findall('os.environ.get("LMZIP_NEW")') and not _PY_READ.findall('os.environ["X"] = "1"')


# ---------------------------------------------------------------------------- code in the pages

_FENCE = re.compile(r"^(```+|~~~+)([^\n`]*)\n(.*?)^\1[ \t]*$", re.S | re.M)
_INLINE = re.compile(r"(`+)(.+?)\1", re.S)
SHELL_LANGS = {"", "sh", "bash", "shell", "console"}  # not "text": --help's own columns


def code_of(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every shell line of fenced blocks and every inline code span."""
    found = []
    prose = text
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start(3)) + 1
        if m.group(2).strip().lower() in SHELL_LANGS:
            for i, code in enumerate(m.group(3).splitlines()):
                found.append((line + i, re.sub(r"^\$ ", "", code)))
        prose = prose.replace(m.group(0), "\n" * m.group(0).count("\n"), 1)
    for m in _INLINE.finditer(prose):
        found.append((prose.count("\n", 0, m.start()) + 1, m.group(2).replace("\n", " ")))
    return found


_SEPARATOR = re.compile(r"\s(?:&&|\|\||\||;|#.*$)\s?|\s*\$\(|\)")
_CALL = re.compile(r"(?:^|(?<=[\s'\"=(]))(lmzip|lmzcat)(?=$|[\s'\"])")


def invocations(code: str) -> list[tuple[str, list[str]]]:
    """The lmzip and lmzcat command lines in a piece of shell: (program, arguments)."""
    calls = []
    for segment in _SEPARATOR.split(code):
        for m in _CALL.finditer(segment):
            before = segment[: m.start()]
            rest = segment[m.end():]
            quote = before[-1:] if before[-1:] in ("'", '"') else ""
            if quote:
                rest = rest.split(quote, 1)[0]
            elif re.search(r"(?:-I\s+|=)$", before) or re.search(r"\b(?:compresscmd|uncompresscmd)\s+$", before):
                rest = ""  # tar -I lmzip -cf ..., --use-compress-program=lmzip: the options are tar's
            try:
                words = shlex.split(rest)
            except ValueError:
                words = rest.split()
            words = [w for w in words if not re.match(r"^[<>]", w)]
            calls.append((m.group(1), words))
    return calls


def _option_names(command: click.Command) -> set[str]:
    with click.Context(command, info_name="lmzip", **command.context_settings) as ctx:
        return gen_docs.option_names(command, ctx)


def all_options() -> set[str]:
    names = _option_names(gzip_style)
    for command in main.commands.values():
        names |= _option_names(command)
    return names


def check_call(program: str, words: list[str]) -> list[str]:
    """What is wrong with one lmzip command line: unknown commands and options."""
    problems = []
    command = gzip_style
    if program == "lmzip" and words and words[0] in main.commands:
        command, words = main.commands[words[0]], words[1:]
    elif program == "lmzip" and words and re.fullmatch(r"[a-z][a-z0-9-]*", words[0]):
        problems.append(f"no command {words[0]!r}")  # a word, not a file name (FILE, notes.txt, src/)
    known = _option_names(command)
    for word in words:
        if word == "--":
            break
        if not word.startswith("-") or word == "-" or re.match(r"^-\d", word):
            continue
        name = word.split("=", 1)[0]
        if name in known:
            continue
        if re.fullmatch(r"-[A-Za-z]{2,}", name) and all(f"-{c}" in known for c in name[1:]):
            continue  # -dc, -kv
        problems.append(f"{command.name if command is not gzip_style else program} has no option {name}")
    return problems


def doc_problems(page: Path, text: str | None = None) -> list[str]:
    text = page.read_text() if text is None else text
    problems = []
    options = all_options()
    for line, code in code_of(text):
        for program, words in invocations(code):
            problems += [f"{page.name}:{line}: `{code.strip()}`: {p}" for p in check_call(program, words)]
        if page in USER_PAGES and re.match(r"^--?[A-Za-z]", code):
            for name in code.split()[0].split("=", 1)[0].rstrip(",.;:").split("/"):  # -c/--stdout
                if name not in options and name not in OTHER_OPTIONS and not (
                        re.fullmatch(r"-[A-Za-z]{2,}", name) and all(f"-{c}" in options for c in name[1:])):
                    problems.append(f"{page.name}:{line}: `{code.strip()}`: no lmzip command has {name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_and_options_named_in_the_docs_exist(page):
    problems = doc_problems(page)
    assert not problems, "\n".join(problems)


def test_the_pages_name_lmzip_commands_at_all():
    calls = [c for page in PAGES for _, code in code_of(page.read_text()) for c in invocations(code)]
    assert len(calls) > 100
    assert {words[0] for _, words in calls if words} >= {"compress", "decompress", "info", "bench", "capacity"}


@pytest.mark.parametrize("bad", [
    "`lmzip compress --no-such-option notes.txt`",
    "```sh\nlmzip decompress --context 512 notes.txt.lmz   # -d takes no --context\n```",
    "`lmzip compres notes.txt`",
    "`tar -I 'lmzip --bogus' -cf x.tar.lmz src/`",
    "`lmzip -dz notes.txt.lmz`",
    "`--no-such-option`",
])
def test_a_wrong_command_line_in_a_page_fails(bad):
    assert doc_problems(ROOT / "README.md", f"# page\n\n{bad}\n")


@pytest.mark.parametrize("good", [
    "`lmzip compress --backend torch --context 512 notes.txt`",
    "```sh\nlmzip -dc out.lmz | less\ntar -I lmzip -cf src.tar.lmz src/\nlmzcat a.lmz b.lmz\n```",
    "`bash scripts/install.sh && lmzip compress -f -o /tmp/x.lmz pyproject.toml && lmzip decompress -c /tmp/x.lmz`",
    "`lmzip -- compress`, `lmzip ./compress`, `LMZIP_MODEL=ngram tar -I lmzip -cf logs.tar.lmz logs/`",
    "`--skip 32`, `-f`, `-kv`, `-c/--stdout`",
])
def test_a_right_command_line_passes(good):
    assert doc_problems(ROOT / "README.md", f"# page\n\n{good}\n") == []


def test_every_module_is_in_the_layout():
    """docs/how-it-works.md, "The code", names every module of lmzip/."""
    layout = (ROOT / "docs" / "how-it-works.md").read_text().split("## The code", 1)[1]
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "lmzip").rglob("*.py"))
               if p.name not in ("__init__.py", "__main__.py") and f"`{p.name}`" not in layout]
    assert not missing, f"not in docs/how-it-works.md, \"The code\": {missing}"


# ---------------------------------------------------------------------------- links


_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def _without_code(text: str) -> str:
    text = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return _INLINE.sub(lambda m: " " * len(m.group(0)), text)


def anchors(page: Path, text: str | None = None) -> set[str]:
    """GitHub's anchors of a page's headings (duplicates numbered), and explicit ids."""
    text = _FENCE.sub("", page.read_text() if text is None else text)
    found: set[str] = set()
    seen: dict[str, int] = {}
    for m in _HEADING.finditer(text):
        title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2))  # a link's text only
        slug = gen_docs.anchor(title)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    found.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    return found


def link_problems(page: Path, text: str | None = None) -> list[str]:
    text = page.read_text() if text is None else text
    bare = _without_code(text)
    problems = []
    for target in [*_LINK.findall(bare), *_REFDEF.findall(bare)]:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{page.name}: link to {target}: {path} does not exist")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest, text if dest == page else None):
            problems.append(f"{page.name}: link to {target}: {dest.name} has no heading #{fragment}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_between_the_pages_resolve(page):
    problems = link_problems(page)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("bad", [
    "[format](docs/no-such-page.md)",
    "![plot](docs/img/no-such-plot.png)",
    "[the header](docs/format.md#no-such-heading)",
    "[here](#no-such-heading-here)",
])
def test_a_broken_link_fails(bad):
    assert link_problems(ROOT / "README.md", f"# Page\n\n{bad}\n")


def test_a_good_link_passes():
    text = ("# Page\n\n## Two words\n\n"
            "[a](docs/format.md#version-4) [b](#two-words) [c](https://x.org/y) `[d](nope.md)`\n")
    assert link_problems(ROOT / "README.md", text) == []


def test_anchors_follow_github():
    assert gen_docs.anchor("`lmzip bench`: the Canterbury corpus, first 4,096 bytes") == (
        "lmzip-bench-the-canterbury-corpus-first-4096-bytes")
    assert gen_docs.anchor("Speed of the engine at depth (issue 29)") == "speed-of-the-engine-at-depth-issue-29"


# ---------------------------------------------------------------------------- shell completion


def _complete(monkeypatch, capsys, line: str) -> list[str]:
    """What `lmzip` answers bash for the command line ``line`` (cursor at its end)."""
    words = line.split(" ")
    monkeypatch.setenv("_LMZIP_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", line)
    monkeypatch.setenv("COMP_CWORD", str(len(words) - 1))
    with pytest.raises(SystemExit) as stop:
        main.main(args=[], prog_name="lmzip")
    assert stop.value.code == 0
    return capsys.readouterr().out.split()


def test_completion_script(monkeypatch, capsys):
    monkeypatch.setenv("_LMZIP_COMPLETE", "bash_source")
    with pytest.raises(SystemExit):
        main.main(args=[], prog_name="lmzip")
    assert "_lmzip_completion" in capsys.readouterr().out


@pytest.mark.parametrize("line, expected", [
    ("lmzip comp", ["file,comp", "plain,compress"]),
    ("lmzip compress --ba", ["plain,--backend"]),
    ("lmzip compress --backend ", ["plain,portable", "plain,llama.cpp", "plain,torch"]),
    ("lmzip -d --thr", ["plain,--threads"]),
    ("lmzip --con", ["plain,--context"]),
    ("lmzip no-such-file --mo", ["plain,--model"]),
    ("lmzip bench --corp", ["plain,--corpus", "plain,--corpora"]),
])
def test_completion(monkeypatch, capsys, line, expected):
    assert _complete(monkeypatch, capsys, line) == expected
