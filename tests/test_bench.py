"""lmzip bench: real round trips on small slices, the results cache, the reports, the CLI."""

from __future__ import annotations

import csv
import doctest
import gzip
import importlib
import io
import json
import subprocess
import sys

import pytest

from lmzip.measure import bench, corpora, report
from lmzip.measure.baselines import CLASSIC, Classic
from lmzip.measure.plots import have_matplotlib


@pytest.fixture(scope="module")
def two_files():
    return [corpora.corpus_file("grammar.lsp"), corpora.corpus_file("sum")]


def test_every_file_through_every_compressor(tmp_path, two_files):
    results = bench.run(two_files, models=["order1"], limit=1500, cache_dir=tmp_path)
    names = [n for n in ["gzip -9", "bzip2 -9", "xz -9e", "zstd -19", "brotli -q 11"] if n in CLASSIC]
    assert [r.compressor for r in results] == (names + ["lmzip order1"]) * 2
    for r in results:
        assert r.verified and not r.cached and r.original == 1500 and r.limit == 1500
        assert r.bpb == 8 * r.compressed / 1500
        assert r.peak_rss_mb and r.peak_rss_mb > 1
    data = two_files[0].path.read_bytes()[:1500]
    assert results[0].compressed == len(gzip.compress(data, 9, mtime=0))
    lm = results[len(names)]
    assert lm.kind == "lmzip" and lm.tokens == 1500 and lm.model == "order1"
    # the payload costs at most a hair more than the model's cross-entropy (less when the
    # safety net stored the chunk with LZMA instead), the container a bit more on top
    assert 8 * lm.payload / 1500 < lm.model_bpb * 1.01
    assert lm.coder_overhead_pct < lm.overhead_pct


def test_results_are_cached_and_a_run_resumes(tmp_path, two_files):
    class StopAtThird:
        def start(self, index, total, job, size):
            if index == 3:
                raise KeyboardInterrupt

        def phase(self, *a):
            pass

        def finish(self, *a):
            pass

    with pytest.raises(KeyboardInterrupt):
        bench.run(two_files, models=["order1"], limit=700, cache_dir=tmp_path, reporter=StopAtThird())
    again = bench.run(two_files, models=["order1"], limit=700, cache_dir=tmp_path)
    assert [r.cached for r in again][:3] == [True, True, False] and not any(r.cached for r in again[3:])
    third = bench.run(two_files, models=["order1"], limit=700, cache_dir=tmp_path)
    assert all(r.cached for r in third)
    assert [r.compressed for r in third] == [r.compressed for r in again]
    other = bench.run(two_files[:1], models=["order1"], limit=701, cache_dir=tmp_path)  # other bytes: no hit
    assert not any(r.cached for r in other)


def test_a_failed_round_trip_is_reported_and_not_cached(tmp_path, two_files, monkeypatch):
    broken = Classic("broken", lambda d: d, lambda d: d[:-1], "test")
    monkeypatch.setattr(bench, "available", lambda: ([broken], []))
    for _ in range(2):
        (r,) = bench.run(two_files[:1], limit=100, cache_dir=tmp_path)
        assert not r.verified and not r.cached


def test_totals_are_total_bits_over_total_bytes(tmp_path):
    texts = [corpora.corpus_file("grammar.lsp"), corpora.corpus_file("xargs.1")]
    results = bench.run(texts, models=["order1"], classic=False, limit=900, cache_dir=None)
    assert all(r.tokens for r in results)
    (t,) = bench.totals(results)
    assert t.original == 1800 and t.compressed == sum(r.compressed for r in results)
    assert t.bpb == pytest.approx(8 * t.compressed / 1800)
    assert t.model_bpb == pytest.approx(sum(r.model_bpb for r in results) / 2)


def test_a_binary_file_has_no_cross_entropy(tmp_path):
    """kennedy.xls goes to the classic coder whole: no model cross-entropy (not 0.0), and a
    total over it and a text file has none either (it would compare all bytes' size with
    the text's bits); results cached with 0.0 before this rule read back as None."""
    files = [corpora.corpus_file("kennedy.xls"), corpora.corpus_file("grammar.lsp")]
    binary, text = bench.run(files, models=["order1"], classic=False, limit=4096, cache_dir=tmp_path)
    assert binary.tokens == 0 and binary.model_bpb is None and binary.overhead_pct is None
    assert text.tokens and text.model_bpb > 0
    (t,) = bench.totals([binary, text])
    assert t.model_bpb is None and t.overhead_pct is None
    assert "| kennedy.xls | order1 | 4,096 | 0 |" in report.markdown_lmzip([binary])
    for path in tmp_path.glob("*.json"):  # as an older lmzip wrote them
        d = json.loads(path.read_text())
        if d["tokens"] == 0:
            d["model_bpb"] = 0.0
            path.write_text(json.dumps(d))
    again = bench.run(files[:1], models=["order1"], classic=False, limit=4096, cache_dir=tmp_path)
    assert again[0].cached and again[0].model_bpb is None


def test_reports(two_files):
    results = bench.run(two_files, models=["order1"], limit=600, cache_dir=None)
    md = report.markdown_pivot(results)
    assert md.splitlines()[0].startswith("| file | bytes | gzip -9")
    assert "**all files**" in md and md.count("**") >= 6  # the best of each row in bold
    assert "| grammar.lsp | order1 | 600 | 600 |" in report.markdown_lmzip(results)
    rows = list(csv.DictReader(io.StringIO(report.to_csv(results))))
    assert len(rows) == len(results) and rows[0]["file"] == "grammar.lsp"
    doc = json.loads(report.to_json(results, {"limit_bytes": 600}))
    assert doc["settings"] == {"limit_bytes": 600} and len(doc["results"]) == len(results)
    assert doc["machine"]["cores"] and doc["totals"][0]["file"] == "(all files)"
    per_compressor = report.markdown_compressors(results)
    assert "| lmzip order1 | 1,200 |" in per_compressor and "2/2 verified" in per_compressor
    table = report.terminal_table(results)
    assert "lmzip order1" in table and "(all files)" in table


def _lmzip(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lmzip", *args], capture_output=True, text=True, **kw)


def test_cli_bench_writes_every_format(tmp_path):
    out = tmp_path / "r"
    p = _lmzip("bench", "--corpus", "xargs.1", "-m", "order1", "--limit-bytes", "1200", "--cache-dir",
               str(tmp_path / "cache"), "--json", f"{out}.json", "--csv", f"{out}.csv", "--markdown", f"{out}.md")
    assert p.returncode == 0, p.stderr
    assert "lmzip order1" in p.stdout and "verified" in p.stderr
    assert json.loads((tmp_path / "r.json").read_text())["results"][-1]["compressor"] == "lmzip order1"
    assert "first 1,200 bytes of each file" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.csv").read_text().startswith("file,original,compressor")
    again = _lmzip("bench", "--corpus", "xargs.1", "-m", "order1", "--limit-bytes", "1200", "--cache-dir",
                   str(tmp_path / "cache"))
    assert again.returncode == 0 and again.stdout.count("(cached)") == len(CLASSIC) + 1


@pytest.mark.skipif(not have_matplotlib(), reason="matplotlib is not installed")
def test_cli_bench_plot(tmp_path):
    p = _lmzip("bench", str(corpora.corpus_file("grammar.lsp").path), "-m", "none", "--limit-bytes", "800",
               "--no-cache", "--plot", str(tmp_path / "b.png"), "-q")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--corpus", "calgary"], "unknown corpus 'calgary'"),
    (["--corpora", "/nonexistent"], "corpus folder /nonexistent does not exist"),
    (["/nonexistent/file.txt"], "no such file"),
    (["--corpus", "xargs.1", "-m", "no-such-model"], "unknown model 'no-such-model'"),
])
def test_cli_bench_errors_are_one_line(args, message):
    p = _lmzip("bench", "--no-cache", "--limit-bytes", "100", *args)
    assert p.returncode == 1
    assert message in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("module", ["bench", "report", "baselines"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"lmzip.measure.{module}"))
    assert result.attempted and not result.failed
