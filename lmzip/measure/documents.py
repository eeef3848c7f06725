"""The documents information capacity is measured on, and the paper's constant b for them.

The paper's datasets are JSON lines, one document per line in a ``text`` field; each
document gives one sample (its first 1,024 tokens).  :func:`read_dataset` reads that
format and plain text (a plain-text file is one document).  Without ``--dataset``,
:func:`default_dataset` takes Wikipedia articles from enwik6 (the first 10^6 bytes of
enwik8, in the benchmark corpora): documents of web-encyclopedia text, as in the
paper's data, each long enough to fill a whole 1,024-token sample with any tokenizer.

The reference code (``calc_ic.py``) picks b from the dataset's path: −24 for
``mixed_text.jsonl``, −18.7 for ``Ch-FineWeb-Edu.jsonl``, −27 for any other data
(:func:`paper_bias`).

>>> paper_bias("datasets/mixed_text.jsonl"), paper_bias("Ch-FineWeb-Edu.jsonl"), paper_bias("notes.txt")
(-24.0, -18.7, -27.0)
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import unescape

from ..errors import LMZipError
from .corpora import corpus_file

__all__ = [
    "Dataset",
    "DatasetError",
    "read_dataset",
    "default_dataset",
    "paper_bias",
    "DEFAULT_ARTICLES",
    "MIN_ARTICLE_BYTES",
    "PAPER_BIASES",
]

#: the reference's b by dataset file name (a substring of the path, as calc_ic.py tests it)
PAPER_BIASES = (("mixed_text.jsonl", -24.0), ("Ch-FineWeb-Edu.jsonl", -18.7))
#: b for any other dataset
OTHER_BIAS = -27.0
#: the default sample set: this many enwik6 articles ...
DEFAULT_ARTICLES = 16
#: ... of at least this many bytes of wikitext (about 1,500 tokens: a full sample for every tokenizer here)
MIN_ARTICLE_BYTES = 6000


class DatasetError(LMZipError):
    """A dataset file is missing, unreadable or not in a format capacity reads."""


@dataclass(frozen=True)
class Dataset:
    """Documents to cut samples from; ``name`` is what the paper's b is chosen by."""

    name: str
    documents: tuple[str, ...]
    #: what tables call it
    label: str
    #: documents left out because they hold no text (empty ``text`` fields)
    empty: int = 0


def paper_bias(name: str | os.PathLike) -> float:
    """The reference's b for a dataset path: −24, −18.7 or −27."""
    text = os.fspath(name)
    for needle, bias in PAPER_BIASES:
        if needle in text:
            return bias
    return OTHER_BIAS


def _looks_like_jsonl(path: Path, head: bytes) -> bool:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return True
    first = head.lstrip()[:1]
    return first == b"{" and path.suffix.lower() not in (".txt", ".md")


def _jsonl_documents(path: Path, data: bytes) -> tuple[list[str], int]:
    docs: list[str] = []
    empty = 0
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue  # blank lines (a trailing newline) are not documents
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: line {number} is not JSON ({exc})") from None
        if not isinstance(record, dict) or "text" not in record:
            raise DatasetError(f"{path}: line {number} has no \"text\" field (one JSON object per line, "
                               f"{{\"text\": \"...\"}})")
        text = record["text"]
        if not isinstance(text, str):
            raise DatasetError(f"{path}: line {number}: \"text\" is {type(text).__name__}, not a string")
        if text:
            docs.append(text)
        else:
            empty += 1  # the reference's text-size pass skips these too
    return docs, empty


def read_dataset(path: str | os.PathLike) -> Dataset:
    """JSON lines with a ``text`` field (``.jsonl``, or a file whose first character is
    ``{``): one document per line; any other file is plain UTF-8 text, one document."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{p}: no such dataset file") from None
    except IsADirectoryError:
        raise DatasetError(f"{p}: is a directory, not a dataset file") from None
    except OSError as exc:
        raise DatasetError(f"{p}: {exc.strerror or exc}") from None
    if _looks_like_jsonl(p, data[:4096]):
        docs, empty = _jsonl_documents(p, data)
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{p}: not UTF-8 text (byte {exc.start}); capacity reads text or JSON lines") from None
        docs, empty = ([text], 0) if text else ([], 1)
    if not docs:
        raise DatasetError(f"{p}: no document with text in it")
    return Dataset(name=os.fspath(path), documents=tuple(docs), label=p.name, empty=empty)


_PAGE = re.compile(rb"<page>.*?</page>", re.S)
_TEXT = re.compile(rb"<text[^>]*>(.*?)</text>", re.S)


_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_TEMPLATE = re.compile(r"\{\{\{[^{}]*\}\}\}|\{\{[^{}]*\}\}")  # parameters {{{x}}} first
_TABLE = re.compile(r"\{\|[^{}]*?\|\}", re.S)
_MEDIA = re.compile(r"\[\[(?:File|Image|Category|[a-z][a-z-]*):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]")
_LINK = re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]")
_URL = re.compile(r"\[(?:https?|ftp)://[^\s\]]+ ?([^\]]*)\]")
_EMPHASIS = re.compile(r"'{2,}")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.M)
_LIST = re.compile(r"^[*#:;]+\s*", re.M)
_BLANKS = re.compile(r"\n{3,}")


def wikitext_prose(text: str) -> str:
    """An article's running text from its wikitext: templates, tables, references, tags,
    media and category links dropped, links and emphasis reduced to their words, headings
    and list items kept as lines, character references decoded.  A plain regular-expression
    pass, not a wiki parser."""
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    previous = None
    while previous != text:  # innermost first: nested templates and tables
        previous = text
        text = _TABLE.sub("", _TEMPLATE.sub("", text))
    text = _MEDIA.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _URL.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = _EMPHASIS.sub("", text)
    text = _HEADING.sub(r"\2", text)
    text = _LIST.sub("", text)
    return html.unescape(_BLANKS.sub("\n\n", text).strip()) + "\n"  # character references, as rendered


def enwik_articles(data: bytes, min_bytes: int = MIN_ARTICLE_BYTES) -> list[str]:
    """The running text (:func:`wikitext_prose`) of every complete ``<page>`` of an enwik
    file that has at least ``min_bytes`` bytes of it."""
    out = []
    for page in _PAGE.finditer(data):
        m = _TEXT.search(page.group())
        if not m or m.group(1).startswith(b"#REDIRECT"):
            continue
        prose = wikitext_prose(unescape(m.group(1).decode("utf-8"), {"&quot;": '"', "&apos;": "'"}))
        if len(prose.encode("utf-8")) >= min_bytes:
            out.append(prose)
    return out


def default_dataset(corpora: str | os.PathLike | None = None) -> Dataset:
    """The first :data:`DEFAULT_ARTICLES` articles of enwik6 with at least
    :data:`MIN_ARTICLE_BYTES` bytes of text (the corpus file is checked against the manifest)."""
    f = corpus_file("enwik6", corpora)
    articles = enwik_articles(f.path.read_bytes())[:DEFAULT_ARTICLES]
    if len(articles) < DEFAULT_ARTICLES:
        raise DatasetError(f"{f.path} holds only {len(articles)} articles of {MIN_ARTICLE_BYTES:,} bytes")
    return Dataset(name="enwik6", documents=tuple(articles),
                   label=f"enwik6 articles ({DEFAULT_ARTICLES})")
