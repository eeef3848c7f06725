"""The portable engine beside llama.cpp: cross-entropy, speed, memory.

    PYTHONPATH=. python benchmarks/engine.py [--ce] [--speed] [--group] [--threads 2]
        [--tokens 400] [--file alice29.txt] [--model smollm2-135m|gemma3-270m]

--ce      bare cross-entropy (bits per byte) of the whole file, one stream, window 2048
--speed   tokens/s of one stream, one token per call, the first --tokens tokens
--group   tokens/s of a lockstep group of 8 once the window is full
--rss     peak RSS of one stream over --tokens tokens, each backend in a subprocess
--profile the engine's time per phase of the forward pass (products, attention, norms, the
          logits, ...; Engine.profile) for one stream and lockstep groups (--widths, default
          1,8) at depth 64 and 2048: ms per step and tokens/s (an engine built before
          Engine.profile existed gives the rates alone)
--build DIR  use the lmzip of another checkout (extensions built in place), to compare
          builds in one run: e.g. --profile --build ../before, then --profile
--backends  comma-separated: portable, llama.cpp, or portable@ISA for one kernel set of the
          engine (scalar, sse2, avx2, avx512; neon on aarch64), e.g.
          --speed --backends portable@scalar,portable@sse2,portable@avx2
Also prints the conversion and load times.  Timing on a shared machine is noisy: both
backends are measured in the same run, one after the other.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# --build DIR: time another checkout's lmzip (its extensions built in place), e.g. the
# commit before a change, with this script
_build = next((sys.argv[i + 1] for i, x in enumerate(sys.argv[:-1]) if x == "--build"), None)
sys.path.insert(0, str(Path(_build).resolve() if _build else ROOT))


#: the registry model measured (--model)
MODEL = "smollm2-135m"


def gguf_path() -> Path:
    from lmzip.predictors.registry import KNOWN_MODELS

    return KNOWN_MODELS[MODEL].locate()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def models(threads: int, which=("portable", "llama.cpp")):
    from lmzip.predictors.portable_weights import file_sha256

    g = gguf_path()
    sha = file_sha256(g)
    out = {}
    for backend in which:
        if backend.split("@")[0] != "portable":
            continue
        from lmzip.predictors.portable import PortableModel

        isa = backend.partition("@")[2] or None
        t0 = time.perf_counter()
        out[backend] = m = PortableModel(g, name=MODEL, sha256=sha, context=2048, threads=threads, isa=isa)
        print(f"{backend}: model ready in {time.perf_counter() - t0:.2f} s (isa {m.isa})")
    if "llama.cpp" in which:
        try:
            from lmzip.predictors.llamacpp import LlamaCppModel

            out["llama.cpp"] = LlamaCppModel(g, name=MODEL, sha256=sha, context=2048, threads=threads)
        except Exception as exc:  # pragma: no cover
            print(f"llama.cpp unavailable: {exc}")
    return out


def cross_entropy(model, toks) -> float:
    bits = 0.0
    with model.open_stream() as s:
        for t in toks:
            sc = s.scores().astype(np.float64)
            mx = sc[np.isfinite(sc)].max()
            bits -= (sc[t] - mx - np.log(np.exp(sc - mx).sum())) / np.log(2)
            s.push(t)
    return bits


def speed(model, toks) -> float:
    with model.open_stream() as s:
        s.scores()
        t0 = time.perf_counter()
        for t in toks:
            s.push(t)
            s.scores()
        return len(toks) / (time.perf_counter() - t0)


def group_speed(model, toks, width=8, depth=2048, measure=64) -> float:
    """Lockstep group of `width` streams at the window's depth: tokens/s of `measure` steps."""
    n = len(toks)
    texts = [[toks[(i + 997 * w) % n] for i in range(depth + measure + 1)] for w in range(width)]
    g = model.open_group([len(t) + 1 for t in texts], width)
    eng = getattr(model, "_engine", None)
    if eng is not None:
        # fill the caches to the window's depth in big calls (the results do not depend on the calls)
        eng.eval([s.handle for s in g.streams], [t[:depth] for t in texts],
                 np.empty((width, eng.n_vocab), np.float32))
    else:  # llama.cpp: the lockstep schedule itself, one batch of `width` tokens per step
        for i in range(depth):
            for s, t in zip(g.streams, texts):
                s.push(t[i])
            g.advance()
    t0 = time.perf_counter()
    for i in range(depth, depth + measure):
        for s, t in zip(g.streams, texts):
            s.push(t[i])
        g.advance()
    dt = time.perf_counter() - t0
    g.close()
    return width * measure / dt


def profile(model, toks, widths=(1, 8), depths=(64, 2048), steps=None) -> None:
    """Markdown table: milliseconds per step in each phase of the engine's forward pass,
    for groups of each width at each depth (the caches filled first in big calls)."""
    eng = model._engine
    n = len(toks)
    rows = []
    for depth in depths:
        for width in widths:
            measure = steps or max(8, 128 // width)
            texts = [[toks[(i + 997 * w) % n] for i in range(depth + measure)] for w in range(width)]
            hs = [eng.new_stream(2048) for _ in range(width)]
            out = np.empty((width, eng.n_vocab), np.float32)
            timed = hasattr(eng, "profile")
            try:
                eng.eval(hs, [[eng.bos] + t[:depth - 1] for t in texts], out)
                if timed:
                    eng.profile(True)
                t0 = time.perf_counter()
                for i in range(depth, depth + measure):
                    eng.eval(hs, [[t[i]] for t in texts], out)
                dt = time.perf_counter() - t0
                phases = eng.profile(False) if timed else {}
            finally:
                for h in hs:
                    eng.free_stream(h)
            rows.append((width, depth, width * measure / dt, 1e3 * dt / measure,
                         {k: 1e3 * v / measure for k, v in phases.items()}))
    names = list(rows[0][4])
    print(f"lmzip from {Path(sys.modules['lmzip'].__file__).parent.parent}")
    print("| width | depth | tokens/s | ms/step | " + " | ".join(names) + " |")
    print("|---:|---:|---:|---:|" + "---:|" * len(names))
    for width, depth, rate, ms, ph in rows:
        print(f"| {width} | {depth} | {rate:.1f} | {ms:.2f} | " + " | ".join(f"{ph[k]:.2f}" for k in names) + " |")


def rss_child(backend: str, threads: int, ntok: int) -> None:
    ms = models(threads, (backend,))
    m = ms[backend]
    from lmzip.measure import corpora

    data = corpora.corpus_file("alice29.txt").path.read_bytes()[: 8 * ntok]
    toks = m.tokenizer.encode(data)[:ntok]
    print(f"RSS-before {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")
    with m.open_stream() as s:
        for t in toks:
            s.scores()
            s.push(t)
        print(f"RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ce", action="store_true")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--group", action="store_true")
    ap.add_argument("--rss", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--widths", default="1,8", help="--profile: lockstep widths")
    ap.add_argument("--build", default=None, help="another checkout's lmzip (read before argparse)")
    ap.add_argument("--convert", action="store_true", help="time a fresh conversion into a temporary cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--file", default="alice29.txt")
    ap.add_argument("--backends", default="portable,llama.cpp")
    ap.add_argument("--rss-child", default=None)
    ap.add_argument("--model", default="smollm2-135m", help="registry name: smollm2-135m or gemma3-270m")
    a = ap.parse_args()
    global MODEL
    MODEL = a.model
    if a.rss_child:
        rss_child(a.rss_child, a.threads, a.tokens)
        return
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {cpu_name()}  {os.cpu_count()} cpus  threads {a.threads}")
    if a.convert:
        from lmzip.predictors.portable_weights import convert

        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            convert(gguf_path(), Path(d) / "w.bin")
            print(f"conversion: {time.perf_counter() - t0:.2f} s, {(Path(d) / 'w.bin').stat().st_size / 1e6:.1f} MB")
            import lmzip._engine as E

            t0 = time.perf_counter()
            E.Engine(str(Path(d) / "w.bin"), a.threads)
            print(f"engine load (mmap): {time.perf_counter() - t0:.3f} s")
    if a.rss:
        for b in ("portable", "llama.cpp"):
            r = subprocess.run([sys.executable, __file__, "--rss-child", b,
                                "--model", a.model, "--threads", str(a.threads), "--tokens",
                                str(a.tokens)], capture_output=True, text=True, env=dict(os.environ,
                                                                                        PYTHONPATH=str(ROOT)))
            got = dict(x.split() for x in r.stdout.splitlines() if x.startswith("RSS"))
            if "RSS" not in got:
                print(f"{b}: failed: {r.stderr[-300:]}")
                continue
            print(f"{b}: peak RSS after {a.tokens} tokens, one stream: {got['RSS']} MB "
                  f"(model loaded, before the stream: {got['RSS-before']} MB)")
    if not (a.ce or a.speed or a.group or a.profile):
        return
    from lmzip.measure import corpora

    data = corpora.corpus_file(a.file).path.read_bytes()
    ms = models(a.threads, tuple(a.backends.split(",")))
    toks = next(iter(ms.values())).tokenizer.encode(data)
    if a.profile:
        for name, m in ms.items():
            if getattr(m, "_engine", None) is None:
                print(f"{name}: --profile times the portable engine only")
                continue
            print(f"{name}: time per phase (ms per step; isa {m.isa}, {a.threads} threads)")
            profile(m, toks, tuple(int(w) for w in a.widths.split(",")))
    if a.speed:
        for name, m in ms.items():
            rate = speed(m, toks[: a.tokens])
            print(f"{name}: one stream, one token per call, {a.tokens} tokens: {rate:.1f} tokens/s")
    if a.group:
        for name, m in ms.items():
            print(f"{name}: lockstep group of 8 at depth 2048: {group_speed(m, toks):.1f} tokens/s")
    if a.ce:
        for name, m in ms.items():
            t0 = time.perf_counter()
            bits = cross_entropy(m, toks)
            print(f"{name}: cross-entropy of {a.file} ({len(data)} bytes, {len(toks)} tokens, window 2048): "
                  f"{bits / len(data):.4f} bpb ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
