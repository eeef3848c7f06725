"""The benchmark corpora: where they are, and that they are the genuine files.

``corpora/manifest.tsv`` (in the source tree) lists every file benchmarks and
tests read, with its size and SHA-256; the files themselves live outside the
repository, in a folder holding ``canterbury/`` and ``enwik/``.  That folder is,
in order: the ``corpora_dir`` argument (``--corpora DIR``), ``$LMZIP_CORPORA``,
or the first ``shared/corpora`` found beside the source tree or the current
directory or one of its parents (``../shared/corpora`` from a checkout).

>>> m = manifest()
>>> m["alice29.txt"].size, m["alice29.txt"].group
(152089, 'canterbury')
>>> [e.name for e in group_entries("canterbury")][:3]
['alice29.txt', 'asyoulik.txt', 'cp.html']
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import LMZipError

__all__ = [
    "CorpusError",
    "CorpusFile",
    "ManifestEntry",
    "manifest",
    "manifest_path",
    "group_entries",
    "corpora_dir",
    "resolve",
    "corpus_file",
    "enwik8",
    "path_file",
    "sha256_file",
]

ROOT = Path(__file__).resolve().parents[2]  # the checkout: lmzip/measure/corpora.py
ENV_VAR = "LMZIP_CORPORA"


class CorpusError(LMZipError):
    """A corpus folder or file is missing, or a file is not the one the manifest names."""


@dataclass(frozen=True)
class ManifestEntry:
    group: str
    name: str
    size: int
    sha256: str
    source: str


@dataclass(frozen=True)
class CorpusFile:
    """A verified file to benchmark; ``label`` is what tables call it."""

    path: Path
    label: str
    size: int
    sha256: str
    #: None for a file given by path, not from the manifest
    entry: ManifestEntry | None = None


def manifest_path() -> Path:
    return Path(os.environ.get("LMZIP_MANIFEST") or ROOT / "corpora" / "manifest.tsv")


@cache
def _read_manifest(path: Path) -> dict[str, ManifestEntry]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CorpusError(f"cannot read the corpus manifest {path}: {exc.strerror or exc}") from None
    rows: dict[str, ManifestEntry] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or line.startswith("group\t"):
            continue
        group, name, size, sha, source = line.split("\t")
        rows[name] = ManifestEntry(group, name, int(size), sha, source)
    return rows


def manifest() -> dict[str, ManifestEntry]:
    """The manifest's rows by file name."""
    return _read_manifest(manifest_path())


def group_entries(group: str) -> list[ManifestEntry]:
    """The manifest's files of one group (``canterbury``, ``enwik``) in manifest order."""
    return [e for e in manifest().values() if e.group == group]


def _candidates() -> list[Path]:
    found = [ROOT.parent / "shared" / "corpora"]
    here = Path.cwd().resolve()
    for folder in [here, *here.parents]:
        found.append(folder / "shared" / "corpora")
    return found


def corpora_dir(corpora: str | os.PathLike | None = None) -> Path:
    """The folder holding ``canterbury/`` and ``enwik/`` (see the module docstring)."""
    given = corpora or os.environ.get(ENV_VAR)
    if given:
        path = Path(given)
        if not path.is_dir():
            raise CorpusError(f"corpus folder {path} does not exist")
        return path
    groups = {e.group for e in manifest().values()}
    for path in _candidates():
        if any((path / g).is_dir() for g in groups):
            return path
    raise CorpusError(f"no corpus folder found: give --corpora DIR or set ${ENV_VAR} "
                      f"(a folder with canterbury/ and enwik/, e.g. ../shared/corpora)")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_verified: dict[tuple[str, int, int], str] = {}


def _verify(path: Path, entry: ManifestEntry) -> None:
    """Size and SHA-256 against the manifest, once per (path, size, mtime) per process."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CorpusError(f"corpus file {path} is missing") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _verified.get(key) == entry.sha256:
        return
    if st.st_size != entry.size:
        raise CorpusError(f"{path} has {st.st_size} bytes, the manifest says {entry.size}: not the genuine file")
    if sha256_file(path) != entry.sha256:
        raise CorpusError(f"{path} does not match its SHA-256 in the manifest: not the genuine file")
    _verified[key] = entry.sha256


def corpus_file(name: str, corpora: str | os.PathLike | None = None) -> CorpusFile:
    """A manifest file by name, its size and SHA-256 checked."""
    entry = manifest().get(name)
    if entry is None:
        raise CorpusError(f"'{name}' is not in the corpus manifest {manifest_path()}")
    path = corpora_dir(corpora) / entry.group / entry.name
    _verify(path, entry)
    return CorpusFile(path=path, label=entry.name, size=entry.size, sha256=entry.sha256, entry=entry)


def enwik8(corpora: str | os.PathLike | None = None) -> CorpusFile:
    """enwik8 itself when the whole file is present (verified), else the longest
    genuine prefix the manifest lists and the folder holds, labelled as a prefix."""
    folder = corpora_dir(corpora)
    full = manifest().get("enwik8")
    if full is not None and (folder / full.group / full.name).is_file():
        return corpus_file("enwik8", folder)
    prefixes = sorted((e for e in group_entries("enwik") if e.name.startswith("enwik8_prefix_")),
                      key=lambda e: -e.size)
    for entry in prefixes:
        if (folder / entry.group / entry.name).is_file():
            f = corpus_file(entry.name, folder)
            return CorpusFile(path=f.path, label=f"enwik8 prefix ({entry.size:,} bytes)", size=f.size,
                              sha256=f.sha256, entry=entry)
    raise CorpusError(f"neither enwik8 nor a prefix of it is in {folder / 'enwik'}")


def resolve(corpus: str, corpora: str | os.PathLike | None = None) -> list[CorpusFile]:
    """The files of ``corpus``: ``canterbury`` (all 11), ``enwik8`` (or its prefix), or
    any manifest file name.

    >>> [f.label for f in resolve("canterbury")][-1]
    'xargs.1'
    """
    if corpus == "enwik8":
        return [enwik8(corpora)]
    entries = group_entries(corpus)
    if entries:
        return [corpus_file(e.name, corpora) for e in entries]
    if corpus in manifest():
        return [corpus_file(corpus, corpora)]
    groups = sorted({e.group for e in manifest().values()})
    raise CorpusError(f"unknown corpus '{corpus}': use {', '.join(groups)}, enwik8 or a manifest file name")


def path_file(path: str | os.PathLike) -> CorpusFile:
    """Any file given by path (no manifest check; its SHA-256 is computed)."""
    p = Path(path)
    if p.is_dir():
        raise CorpusError(f"{p}: is a directory")
    if not p.is_file():
        raise CorpusError(f"{p}: no such file")
    return CorpusFile(path=p, label=p.name, size=p.stat().st_size, sha256=sha256_file(p))
