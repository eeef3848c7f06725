"""``lmzip bench``: every file through lmzip and the classic compressors, verified.

One *job* is one file (or its first ``limit`` bytes) through one compressor.  A
job compresses, decompresses, checks the round trip, and records sizes, bits per
byte, the model's cross-entropy beside the coded size, speeds and peak memory.

Results are cached, one JSON file per job, under ``~/.cache/lmzip/bench`` (or
``cache_dir``), keyed by the SHA-256 of the bytes compressed, the compressor and
everything that changes its output: for lmzip the model fingerprint (the model
file's SHA-256 and its parameters: backend version, context), the chunk size and
the lmzip version; for a classic compressor its library's version.  An
interrupted run, started again, redoes only the jobs it had not finished.

>>> from lmzip.measure.corpora import resolve
>>> files = [f for f in resolve("canterbury") if f.label == "grammar.lsp"]
>>> rows = run(files, models=["order1"], limit=500, cache_dir=None)
>>> [(r.compressor, r.original, r.verified) for r in rows][-1]
('lmzip order1', 500, True)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from .. import __version__
from .. import format as fmt
from ..codec import Stats
from ..core import DEFAULT_CHUNK_SIZE, LMZipCompressor, decompress
from ..predictors.base import Model
from ..predictors.cache import cache_dir as lmzip_cache_dir
from ..predictors.registry import load_model
from .baselines import Classic, available
from .corpora import CorpusFile

__all__ = ["Result", "Job", "Reporter", "run", "plan", "totals", "default_cache_dir", "peak_memory", "DEFAULT_LIMIT",
           "CACHE_SCHEMA"]

#: bytes per file when no limit is given.  The whole Canterbury corpus is 0.33 million
#: SmolLM2 tokens of text (its binary files go to the classic coder): about 3 hours here
#: on one thread, compressing and decompressing.  The first 4 kB of each file are
#: 10,552 model-coded tokens, about 15 minutes.
DEFAULT_LIMIT = 4096
#: bump when the meaning of a cached result changes
CACHE_SCHEMA = 1
#: classic results: 2 since their peak memory is measured before any model is loaded
CLASSIC_SCHEMA = 2


def default_cache_dir() -> Path:
    return lmzip_cache_dir() / "bench"


@dataclass
class Result:
    """One file through one compressor."""

    file: str
    original: int
    compressor: str
    compressed: int
    #: compressed bits per original byte
    bpb: float
    compress_seconds: float
    decompress_seconds: float
    #: the process's peak resident memory during the job: the interpreter (~55 MB) and, for
    #: lmzip, the model are included
    peak_rss_mb: float | None
    verified: bool
    #: "classic" or "lmzip"
    kind: str = "classic"
    model: str | None = None
    context: int | None = None
    tokens: int | None = None
    #: the model's cross-entropy (unquantized softmax) in bits per byte, lmzip only; None
    #: when the model coded nothing (a binary file, all of it by the classic coder)
    model_bpb: float | None = None
    #: bytes of range-coded payload (the file without its container), lmzip only
    payload: int | None = None
    file_sha256: str = ""
    data_sha256: str = ""
    #: the first ``limit`` bytes of the file were used (None: the whole file)
    limit: int | None = None
    version: str = ""
    cached: bool = field(default=False, compare=False)

    @property
    def overhead_pct(self) -> float | None:
        """How much the coded size (whole file) is above the cross-entropy, in percent."""
        if self.model_bpb is None or not self.model_bpb:
            return None
        return 100 * (self.bpb / self.model_bpb - 1)

    @property
    def coder_overhead_pct(self) -> float | None:
        """How much the range-coded payload alone is above the cross-entropy, in percent."""
        if self.model_bpb is None or not self.model_bpb or self.payload is None:
            return None
        return 100 * (8 * self.payload / self.original / self.model_bpb - 1)

    @property
    def compress_kbps(self) -> float:
        return self.original / max(self.compress_seconds, 1e-9) / 1000

    @property
    def decompress_kbps(self) -> float:
        return self.original / max(self.decompress_seconds, 1e-9) / 1000

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("cached")
        d["overhead_pct"] = self.overhead_pct
        d["coder_overhead_pct"] = self.coder_overhead_pct
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Result:
        names = set(cls.__dataclass_fields__) - {"cached"}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Job:
    file: CorpusFile
    compressor: str
    #: a classic compressor, or the name of the model for lmzip
    classic: Classic | None = None
    model_name: str | None = None


class Reporter(Protocol):
    """What ``run`` tells about its progress (the CLI draws a status line)."""

    def start(self, index: int, total: int, job: Job, size: int) -> None: ...

    def phase(self, phase: str, done: int, size: int) -> None: ...

    def finish(self, index: int, total: int, result: Result) -> None: ...


class _Silent:
    def start(self, index: int, total: int, job: Job, size: int) -> None:
        pass

    def phase(self, phase: str, done: int, size: int) -> None:
        pass

    def finish(self, index: int, total: int, result: Result) -> None:
        pass


# ---------------------------------------------------------------------------- memory


def _hwm_kb() -> int | None:
    try:
        m = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) if m else None


@contextmanager
def peak_memory() -> Iterator[list[float | None]]:
    """Measure the peak resident memory (MB) of this process inside the block.

    Linux: the high-water mark is reset first (``/proc/self/clear_refs``), so the
    figure is this block's own peak.  Elsewhere: the process's lifetime peak.
    """
    box: list[float | None] = [None]
    reset = False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        pass
    try:
        yield box
    finally:
        kb = _hwm_kb() if reset else None
        if kb is None:
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
            if sys.platform == "darwin":
                kb //= 1024
        box[0] = round(kb / 1024, 1)


# ---------------------------------------------------------------------------- the jobs


def plan(files: Sequence[CorpusFile], models: Sequence[str] = (), classic: bool = True) -> list[Job]:
    """Every (file, compressor) job, compressor by compressor: the classic ones first, so
    that their peak memory is measured before any model is loaded, then each model's
    jobs together.  (With several models, a model's peak memory can include the pages of
    one loaded before it: the registry keeps the last two loaded.)"""
    compressors, _missing = available() if classic else ([], [])
    jobs = [Job(f, c.name, classic=c) for f in files for c in compressors]
    for m in models:
        jobs += [Job(f, f"lmzip {m}", model_name=m) for f in files]
    return jobs


def _read(f: CorpusFile, limit: int | None) -> bytes:
    with open(f.path, "rb") as fh:
        return fh.read(limit) if limit else fh.read()


def _cache_key(data_sha: str, job: Job, model: Model | None, chunk_size: int) -> str:
    if job.classic is not None:
        who = {"classic": job.classic.name, "library": job.classic.version, "classic_schema": CLASSIC_SCHEMA}
    else:
        assert model is not None
        # the container's version too: it changes the sizes (version 4 is ~180 bytes smaller a file)
        who = {"model_sha256": model.model_sha256.hex(), "params": model.params(), "chunk_size": chunk_size,
               "lmzip": __version__, "format": fmt.VERSION}
    blob = json.dumps({"schema": CACHE_SCHEMA, "data": data_sha, **who}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def _load_cached(path: Path | None) -> Result | None:
    if path is None:
        return None
    try:
        r = Result.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # missing or damaged: redo the job
    if r.kind == "lmzip" and not r.tokens:
        r.model_bpb = None  # results cached before binary files had no cross-entropy stored 0.0
    r.cached = True
    return r


def _store(path: Path | None, result: Result) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(result.to_dict(), indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a cache we cannot write only costs time


def _run_classic(c: Classic, data: bytes) -> tuple[int, float, float, bool]:
    t = time.perf_counter()
    packed = c.compress(data)
    tc = time.perf_counter() - t
    t = time.perf_counter()
    ok = c.decompress(packed) == data
    td = time.perf_counter() - t
    return len(packed), tc, td, ok


def _run_lmzip(model: Model, data: bytes, chunk_size: int, reporter: Reporter) -> tuple[int, float, float, bool, Stats]:
    size = len(data)
    comp = LMZipCompressor(model, chunk_size=chunk_size,
                           progress=lambda st: reporter.phase("compress", st.raw_bytes, size))
    t = time.perf_counter()
    packed = comp.compress(data) + comp.flush()
    tc = time.perf_counter() - t
    t = time.perf_counter()
    out = decompress(packed, model=model, progress=lambda st: reporter.phase("decompress", st.raw_bytes, size))
    td = time.perf_counter() - t
    return len(packed), tc, td, out == data, comp.stats


def run(files: Sequence[CorpusFile], *, models: Sequence[str] = (), classic: bool = True,
        limit: int | None = DEFAULT_LIMIT, context: int | None = None, threads: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE, cache_dir: str | os.PathLike | None | bool = True,
        reporter: Reporter | None = None, backend: str | None = None) -> list[Result]:
    """Run (or take from the cache) every job; results in job order.

    Args:
        files: the files (see :mod:`lmzip.measure.corpora`).
        models: lmzip models by name or GGUF path (none: classic compressors only).
        classic: include the classic compressors.
        limit: use the first ``limit`` bytes of each file (None or 0: whole files).
        cache_dir: results cache folder; True for the default, None or False for none.
        reporter: told about progress.
        backend: what runs the language models (default: the registry's default backend).
    """
    reporter = reporter or _Silent()
    limit = limit or None
    cache = default_cache_dir() if cache_dir is True else (Path(cache_dir) if cache_dir else None)
    jobs = plan(files, models, classic)
    loaded: dict[str, Model] = {}
    results: list[Result] = []
    for index, job in enumerate(jobs, 1):
        data = _read(job.file, limit)
        data_sha = hashlib.sha256(data).hexdigest()
        model = None
        if job.model_name is not None:
            model = loaded.get(job.model_name)
            if model is None:
                loaded.clear()  # done with the previous model (the registry may still keep it loaded)
                model = loaded[job.model_name] = load_model(job.model_name, context=context, threads=threads,
                                                                 backend=backend)
        path = cache / f"{_cache_key(data_sha, job, model, chunk_size)}.json" if cache else None
        reporter.start(index, len(jobs), job, len(data))
        result = _load_cached(path)
        if result is not None:
            result.file = job.file.label  # the label may have changed; the bytes did not
        else:
            stats = None
            with peak_memory() as peak:
                if job.classic is not None:
                    size, tc, td, ok = _run_classic(job.classic, data)
                else:
                    assert model is not None
                    size, tc, td, ok, stats = _run_lmzip(model, data, chunk_size, reporter)
            n = len(data)
            result = Result(
                file=job.file.label, original=n, compressor=job.compressor, compressed=size,
                bpb=8 * size / n if n else 0.0, compress_seconds=tc, decompress_seconds=td,
                peak_rss_mb=peak[0], verified=ok, file_sha256=job.file.sha256, data_sha256=data_sha,
                limit=limit if limit is not None and limit < job.file.size else None,
                version=job.classic.version if job.classic else f"lmzip {__version__}")
            if stats is not None and model is not None:
                result.kind = "lmzip"
                result.model = model.name
                result.context = model.params().get("context")
                result.tokens = stats.tokens
                result.model_bpb = stats.model_bpb if stats.tokens else None
                result.payload = stats.payload_bytes
            if ok:  # a failed round trip is reported, never cached
                _store(path, result)
        results.append(result)
        reporter.finish(index, len(jobs), result)
    # report file by file, each file's compressors in plan order
    files_order = {id(f): i for i, f in enumerate(files)}
    order = {j.compressor: i for i, j in enumerate(jobs)}
    keyed = sorted(zip(jobs, results), key=lambda jr: (files_order[id(jr[0].file)], order[jr[0].compressor]))
    return [r for _, r in keyed]


def totals(results: Sequence[Result]) -> list[Result]:
    """One row per compressor summing every file: total bpb is total bits over total bytes."""
    out: dict[str, Result] = {}
    for r in results:
        t = out.get(r.compressor)
        if t is None:
            t = out[r.compressor] = Result(file="(all files)", original=0, compressor=r.compressor, compressed=0,
                                           bpb=0.0, compress_seconds=0.0, decompress_seconds=0.0, peak_rss_mb=None,
                                           verified=True, kind=r.kind, model=r.model, context=r.context,
                                           tokens=0 if r.tokens is not None else None,
                                           model_bpb=0.0 if r.model_bpb is not None else None,
                                           payload=0 if r.payload is not None else None)
        t.original += r.original
        t.compressed += r.compressed
        t.compress_seconds += r.compress_seconds
        t.decompress_seconds += r.decompress_seconds
        t.verified = t.verified and r.verified
        if r.peak_rss_mb is not None:
            t.peak_rss_mb = max(t.peak_rss_mb or 0.0, r.peak_rss_mb)
        if t.payload is not None and r.payload is not None:
            t.payload += r.payload
        if t.tokens is not None and r.tokens is not None:
            t.tokens += r.tokens
        if t.model_bpb is not None:  # a total's cross-entropy only if every file has one
            t.model_bpb = None if r.model_bpb is None else t.model_bpb + r.model_bpb * r.original  # bits
    for t in out.values():
        t.bpb = 8 * t.compressed / t.original if t.original else 0.0
        if t.model_bpb is not None and t.original:
            t.model_bpb /= t.original
    return list(out.values())
