"""Locating the corpora and checking every file against the manifest."""

from __future__ import annotations

import doctest
import hashlib
import importlib
import shutil

import pytest

from lmzip.measure import corpora
from lmzip.measure.corpora import CorpusError


def test_canterbury_is_all_eleven_files_verified():
    files = corpora.resolve("canterbury")
    assert len(files) == 11
    assert [f.label for f in files][:2] == ["alice29.txt", "asyoulik.txt"]
    for f in files:
        assert f.path.stat().st_size == f.size == f.entry.size


def test_enwik8_falls_back_to_its_prefix_and_says_so():
    (f,) = corpora.resolve("enwik8")
    assert f.entry.name == "enwik8_prefix_4154399"
    assert f.label == "enwik8 prefix (4,154,399 bytes)"


def _fake_tree(tmp_path, files: dict[str, bytes]):
    """A corpus folder and a manifest of our own files (group 'enwik')."""
    lines = ["group\tname\tbytes\tsha256\tsource"]
    for name, data in files.items():
        (tmp_path / "c" / "enwik").mkdir(parents=True, exist_ok=True)
        (tmp_path / "c" / "enwik" / name).write_bytes(data)
        lines.append(f"enwik\t{name}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}\ttest")
    (tmp_path / "manifest.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path / "c", tmp_path / "manifest.tsv"


def test_whole_enwik8_is_preferred_when_present(tmp_path, monkeypatch):
    folder, manifest = _fake_tree(tmp_path, {"enwik8": b"whole" * 10, "enwik8_prefix_5": b"whole"})
    monkeypatch.setenv("LMZIP_MANIFEST", str(manifest))
    (f,) = corpora.resolve("enwik8", folder)
    assert (f.label, f.size) == ("enwik8", 50)
    (folder / "enwik" / "enwik8").unlink()
    (f,) = corpora.resolve("enwik8", folder)
    assert f.label == "enwik8 prefix (5 bytes)"


def test_a_damaged_file_is_refused(tmp_path, monkeypatch):
    folder, manifest = _fake_tree(tmp_path, {"enwik8": b"genuine bytes"})
    monkeypatch.setenv("LMZIP_MANIFEST", str(manifest))
    (folder / "enwik" / "enwik8").write_bytes(b"genuine byteZ")  # same size, other content
    with pytest.raises(CorpusError, match="SHA-256"):
        corpora.resolve("enwik8", folder)
    (folder / "enwik" / "enwik8").write_bytes(b"short")
    with pytest.raises(CorpusError, match="5 bytes"):
        corpora.resolve("enwik8", folder)


def test_folder_from_argument_or_environment(tmp_path, monkeypatch):
    shutil.copytree(corpora.corpora_dir() / "canterbury", tmp_path / "canterbury",
                    ignore=lambda d, names: [n for n in names if n != "xargs.1"])
    monkeypatch.setenv("LMZIP_CORPORA", str(tmp_path))
    assert corpora.corpora_dir() == tmp_path
    assert corpora.resolve("xargs.1")[0].path == tmp_path / "canterbury" / "xargs.1"
    with pytest.raises(CorpusError, match="missing"):
        corpora.resolve("alice29.txt")
    with pytest.raises(CorpusError, match="does not exist"):
        corpora.corpora_dir(tmp_path / "nowhere")


def test_unknown_names_are_clear_errors():
    with pytest.raises(CorpusError, match="unknown corpus 'calgary'"):
        corpora.resolve("calgary")
    with pytest.raises(CorpusError, match="no such file"):
        corpora.path_file("/nonexistent/file.txt")


@pytest.mark.parametrize("module", ["corpora"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"lmzip.measure.{module}"))
    assert result.attempted and not result.failed
