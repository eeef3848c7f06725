"""Benchmark results as a terminal table, Markdown, CSV and JSON.

>>> from lmzip.measure.bench import Result
>>> r = Result(file="a.txt", original=1000, compressor="gzip -9", compressed=400, bpb=3.2,
...            compress_seconds=0.001, decompress_seconds=0.0005, peak_rss_mb=30.0, verified=True)
>>> print(markdown_pivot([r]).splitlines()[2])
| a.txt | 1,000 | **3.200** |
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from collections.abc import Sequence

from .. import __version__
from .bench import Result, totals

__all__ = ["machine", "terminal_table", "markdown_pivot", "markdown_lmzip", "markdown_compressors", "to_csv",
           "to_json"]


def machine() -> dict[str, str | int | None]:
    """The machine and software versions a result was measured with."""
    cpu = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    from ..predictors.llamacpp import backend_version

    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1) if mem_gib else None,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "lmzip": __version__,
        "llama_cpp_python": backend_version(),
    }


def _num(x: float | None, fmt: str = "{:.3f}") -> str:
    return "—" if x is None else fmt.format(x)


def _columns(r: Result) -> list[str]:
    return [
        r.file, r.compressor, f"{r.original:,}", f"{r.compressed:,}", f"{r.bpb:.3f}", _num(r.model_bpb),
        _num(r.overhead_pct, "{:+.2f}%"), f"{r.compress_kbps:,.2f}", f"{r.decompress_kbps:,.2f}",
        _num(r.peak_rss_mb, "{:,.0f}"), ("yes" if r.verified else "NO") + (" (cached)" if r.cached else ""),
    ]


_HEADERS = ["file", "compressor", "bytes", "compressed", "bpb", "model bpb", "overhead", "comp kB/s",
            "decomp kB/s", "peak MB", "verified"]
_RIGHT = {2, 3, 4, 5, 6, 7, 8, 9}


def terminal_table(results: Sequence[Result]) -> str:
    """Aligned plain-text table: one line per job, then the totals per compressor."""
    rows = [_columns(r) for r in results]
    total_rows = [_columns(t)[:10] + ["yes" if t.verified else "NO"] for t in totals(results)]
    every = [_HEADERS, *rows, *total_rows]
    widths = [max(len(row[i]) for row in every) for i in range(len(_HEADERS))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in _RIGHT else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    out = [line(_HEADERS), rule, *map(line, rows)]
    if len({r.file for r in results}) > 1:
        out += [rule, *map(line, total_rows)]
    return "\n".join(out)


def _compressors(results: Sequence[Result]) -> list[str]:
    seen: list[str] = []
    for r in results:
        if r.compressor not in seen:
            seen.append(r.compressor)
    return seen


def markdown_pivot(results: Sequence[Result]) -> str:
    """Bits per byte, one row per file and one column per compressor; the best in bold."""
    names = _compressors(results)
    files: dict[str, dict[str, Result]] = {}
    for r in results:
        files.setdefault(r.file, {})[r.compressor] = r
    rows = list(files.items())
    if len(files) > 1:
        rows.append(("**all files**", {t.compressor: t for t in totals(results)}))
    out = ["| file | bytes | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for name, by in rows:
        best = min(r.bpb for r in by.values())
        cells = []
        for c in names:
            r = by.get(c)
            cells.append("" if r is None else (f"**{r.bpb:.3f}**" if r.bpb == best else f"{r.bpb:.3f}"))
        size = next(iter(by.values())).original
        out.append(f"| {name} | {size:,} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def markdown_lmzip(results: Sequence[Result]) -> str:
    """The lmzip rows in detail: tokens, coded and cross-entropy bpb, speeds, memory."""
    rows = [r for r in results if r.kind == "lmzip"]
    if not rows:
        return ""
    all_rows = rows + ([t for t in totals(rows)] if len({r.file for r in rows}) > 1 else [])
    out = ["| file | model | bytes | tokens | compressed | bpb | cross-entropy bpb | over it: payload | "
           "whole file | compress | decompress | peak RSS | round trip |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in all_rows:
        out.append(f"| {r.file} | {r.model} | {r.original:,} | {r.tokens or 0:,} | {r.compressed:,} | {r.bpb:.3f} | "
                   f"{_num(r.model_bpb)} | {_num(r.coder_overhead_pct, '{:+.2f}%')} | "
                   f"{_num(r.overhead_pct, '{:+.2f}%')} | {1000 * r.compress_kbps:,.0f} B/s | "
                   f"{1000 * r.decompress_kbps:,.0f} B/s | {_num(r.peak_rss_mb, '{:,.0f} MB')} | "
                   f"{'verified' if r.verified else 'FAILED'} |")
    return "\n".join(out)


def markdown_compressors(results: Sequence[Result]) -> str:
    """One row per compressor over all files: size, bits per byte, speeds, peak memory, round trips."""
    out = ["| compressor | bytes | compressed | bpb | compress | decompress | peak RSS | round trips |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    for t in totals(results):
        n = sum(1 for r in results if r.compressor == t.compressor)
        ok = sum(1 for r in results if r.compressor == t.compressor and r.verified)
        out.append(f"| {t.compressor} | {t.original:,} | {t.compressed:,} | {t.bpb:.3f} | "
                   f"{_speed(t.compress_kbps)} | {_speed(t.decompress_kbps)} | {_num(t.peak_rss_mb, '{:,.0f} MB')} | "
                   f"{ok}/{n} verified |")
    return "\n".join(out)


def _speed(kbps: float) -> str:
    return f"{kbps:,.0f} kB/s" if kbps >= 10 else f"{1000 * kbps:,.0f} B/s"


_CSV_FIELDS = ["file", "original", "compressor", "compressed", "bpb", "model_bpb", "overhead_pct", "payload",
               "coder_overhead_pct", "tokens",
               "compress_seconds", "decompress_seconds", "compress_kbps", "decompress_kbps", "peak_rss_mb",
               "verified", "cached", "kind", "model", "context", "limit", "file_sha256", "data_sha256", "version"]


def to_csv(results: Sequence[Result]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in results:
        d = r.to_dict()
        d.update(compress_kbps=round(r.compress_kbps, 3), decompress_kbps=round(r.decompress_kbps, 3),
                 cached=r.cached)
        w.writerow({k: d.get(k) for k in _CSV_FIELDS})
    return buf.getvalue()


def to_json(results: Sequence[Result], settings: dict | None = None) -> str:
    doc = {
        "machine": machine(),
        "settings": settings or {},
        "results": [dict(r.to_dict(), cached=r.cached) for r in results],
        "totals": [t.to_dict() for t in totals(results)],
    }
    return json.dumps(doc, indent=1)
