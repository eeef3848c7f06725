"""``--device`` on the command line (issue 28): a run-time choice, never in the file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import ROOT, gpu_check_module


def _lmzip(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    # without TRITON_INTERPRET (tests/test_gpu_kernels.py sets it in this process): a real run
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "lmzip", *args], input=stdin, capture_output=True,
                          env={**env, "PYTHONPATH": str(ROOT)}, timeout=600)


@pytest.mark.parametrize("command", ["compress", "decompress", "test", "bench", "entropy"])
def test_every_command_takes_device(command):
    r = _lmzip(command, "--help")
    assert r.returncode == 0 and b"--device" in r.stdout


def test_a_bad_device_is_a_usage_error():
    r = _lmzip("compress", "--device", "tpu", "-c", "-", stdin=b"x")
    assert r.returncode == 2 and b"auto, cpu, cuda or cuda:N" in r.stderr


def _needs_model():
    from lmzip.predictors.registry import _smollm2_path

    if _smollm2_path() is None:
        pytest.skip("the SmolLM2 model is not installed")


def test_cuda_without_a_gpu_is_a_one_line_error():
    _needs_model()
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = _lmzip("compress", "--device", "cuda", "-c", "-", stdin=b"hello world, hello world")
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "no CUDA GPU" in lines[0], r.stderr


_NO_EXTRA = textwrap.dedent("""
    import sys
    sys.modules["triton"] = None  # the gpu extra is not installed
    from lmzip.cli import run
    sys.argv = ["lmzip", "compress", "--device", "cuda", "-c", "-"]
    run()
""")


def test_cuda_without_the_extra_says_how_to_install_it():
    _needs_model()
    r = subprocess.run([sys.executable, "-c", _NO_EXTRA], input=b"hello world", capture_output=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "lmzip[gpu]" in lines[0], r.stderr


def test_cpu_and_auto_give_the_same_file():
    _needs_model()
    data = b"The device is never part of the format. " * 3
    a = _lmzip("compress", "--device", "cpu", "--method", "model", "-c", "-", stdin=data)
    b = _lmzip("compress", "--device", "auto", "--method", "model", "-c", "-", stdin=data)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout
    d = _lmzip("decompress", "--device", "cpu", "-c", "-", stdin=a.stdout)
    assert d.returncode == 0 and d.stdout == data


def test_the_gpu_checks_round_trips_say_what_differs(monkeypatch, capsys):
    """--check's cross-device round trips: PASS when both devices write the same file and
    decode each other's; FAIL lines (and False, so the check falls back to host mixing)
    when the GPU's file differs or a command fails.  lmzip itself is a stand-in here."""
    gpu = gpu_check_module()
    data = b"alice" * 10

    def fake(gpu_file):
        def run(command, *args, device, stdin=None, env=None):
            if command == "compress":
                return (gpu_file if device == "cuda" else b"file"), 0.1, ""
            if stdin not in (b"file", b"bad"):
                raise RuntimeError("lmzip decompress: damaged")
            return data, 0.1, ""
        return run

    monkeypatch.setattr(gpu, "_lmzip", fake(b"file"))
    assert gpu._round_trips(ROOT, data) is True
    assert capsys.readouterr().out.count("PASS") == 3
    monkeypatch.setattr(gpu, "_lmzip", fake(b"bad"))
    assert gpu._round_trips(ROOT, data, " (LMZIP_GPU_MIX=0)") is False
    out = capsys.readouterr().out
    assert "FAIL alice29 50 bytes (LMZIP_GPU_MIX=0): GPU file == CPU file" in out
    monkeypatch.setattr(gpu, "_lmzip", fake(b"garbage"))
    assert gpu._round_trips(ROOT, data) is False
    assert "FAIL cross-device round trips: lmzip decompress: damaged" in capsys.readouterr().out


def test_the_gpu_checks_files_come_back_through_out(monkeypatch, tmp_path):
    """--check's enwik8 file goes to $OUT (what the device tool brings back, so that it can be
    decoded on a CPU here), else to a temporary file; never over anything."""
    gpu = gpu_check_module()
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu._keep(b"lmz", "enwik.lmz") == str(tmp_path / "enwik.lmz")
    assert (tmp_path / "enwik.lmz").read_bytes() == b"lmz"
    monkeypatch.delenv("OUT")
    kept = Path(gpu._keep(b"other", "enwik.lmz"))
    try:
        assert kept.read_bytes() == b"other" and kept.name.endswith("-enwik.lmz") and kept.parent != tmp_path
    finally:
        kept.unlink()


def test_the_gpu_checks_compress_helper_counts_tokens():
    """benchmarks/gpu.py --check times lmzip compress end to end and reads the tokens from
    -v: its helper, run on the CPU here (on a GPU only the device differs)."""
    _needs_model()
    from lmzip.predictors.registry import _smollm2_path, load_model

    from .conftest import corpus_slice

    gpu = gpu_check_module()
    data = corpus_slice("alice29.txt", 5000, 1200)
    out, secs, tokens = gpu._compress(_smollm2_path(), data, 300, 4, "--method", "model", device="cpu")
    tokenizer = load_model("smollm2-135m").tokenizer
    assert secs > 0 and tokens == sum(len(tokenizer.encode(data[i:i + 300])) for i in range(0, 1200, 300))
    d = _lmzip("decompress", "--device", "cpu", "--model", str(_smollm2_path()), "-c", "-", stdin=out)
    assert d.returncode == 0 and d.stdout == data, d.stderr
    # after the GPU's mixer failed the round trips, every later command mixes on the host
    gpu._EXTRA_ENV["LMZIP_GPU_MIX"] = "0"
    assert gpu._child_env()["LMZIP_GPU_MIX"] == "0" and gpu._child_env(LMZIP_GPU_MIX="1")["LMZIP_GPU_MIX"] == "1"


def _rehearse_check(monkeypatch, tmp_path, gpu, *, mixer_ok: bool, budget: float, enwik_bytes: int = 600_000,
                    gpu_decodes_in: float = 1.0, gpu_decodes_wrong: bool = False):
    """benchmarks/gpu.py --check from start to end with stand-ins for everything that needs
    a GPU (the goldens, the trust checks, the logits' rates, lmzip itself: files of a token a
    4 bytes at 20,000 bytes/s), so that a slip in its own logic (the budget's arithmetic,
    the fallbacks, the tables) shows here and not in a session's 15 minutes of device time.
    Returns (its exit status, what it printed)."""
    import types

    torch = pytest.importorskip("torch", reason="the gpu extra (torch, triton) is not installed")
    corpora = tmp_path / "corpora"
    (corpora / "canterbury").mkdir(parents=True)
    (corpora / "enwik").mkdir()
    (corpora / "canterbury" / "alice29.txt").write_bytes(b"Alice was beginning to get very tired. " * 1000)
    (corpora / "enwik" / "enwik8_prefix_4154399").write_bytes(b"<page>enwik</page>\n" * (enwik_bytes // 19 + 1))
    gguf = tmp_path / "smol.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("OUT", str(out))
    monkeypatch.setattr(gpu, "SHARED", corpora)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Stand-in GPU")
    monkeypatch.setattr(gpu, "golden", lambda g, context, per_call: gpu.MODEL.gold[context][1])
    monkeypatch.setattr(gpu, "_weights", lambda g: g)
    from lmzip.gpu import trust

    monkeypatch.setattr(trust, "check", lambda *a: None)
    monkeypatch.setattr(trust, "check_mixer", lambda *a: None)
    host = types.ModuleType("host")
    host.rates = lambda streams, tokens, cores, data, model, through: (tokens * streams, 1e5, 9e4)
    monkeypatch.setitem(sys.modules, "host", host)
    rates_asked = []

    def logits_rate(g, streams, depth, steps, blocks=None, profile=None):
        rates_asked.append((streams, blocks))
        if streams == 512 and blocks is None:
            raise MemoryError("CUDA out of memory (stand-in)")
        if profile is not None:  # the profiler's table of the 64-stream step, as _kernel_times makes it
            profile.extend(gpu.kernel_table([("attn_values_kernel", 900.0, 90), ("matmul_kernel", 600.0, 378),
                                             ("attn_values_kernel", 300.0, 0)], 3))
        return 1000.0 * streams, 900.0 * streams

    monkeypatch.setattr(gpu, "_logits_rate", logits_rate)

    class Filled:  # the tiles' engine: filled once, its blocks set for each try
        blocks = None

        def _drop_graphs(self):
            pass

    monkeypatch.setattr(gpu, "_filled", lambda g, streams, depth, blocks=None: (Filled(), [0] * streams))
    monkeypatch.setattr(gpu, "_step_rates", lambda eng, hs, steps: logits_rate(None, len(hs), 2048, steps, eng.blocks))
    monkeypatch.setattr(gpu, "_release", lambda eng, hs: None)
    files = {}

    def lmzip(command, *args, device, stdin=None, env=None, timeout=None):
        mixes_on_host = (env or {}).get("LMZIP_GPU_MIX") == "0" or gpu._EXTRA_ENV.get("LMZIP_GPU_MIX") == "0"
        if command == "compress":
            made = b"lmz" + bytes(len(stdin) // 4)
            if device == "cuda" and not (mixer_ok or mixes_on_host):
                made = b"lmz" + bytes(len(stdin) // 4 + 1)  # another file: the GPU's mixer is off
            files[made] = stdin
            return made, len(stdin) / 20000, f"{len(stdin) // 4} tokens\n"
        if stdin not in files:
            raise RuntimeError("lmzip decompress: chunk payload is damaged")
        if device == "cuda" and timeout is not None and gpu_decodes_in > timeout:
            raise subprocess.TimeoutExpired("lmzip", timeout)
        if timeout is None:
            return files[stdin], 0.1, ""
        return files[stdin][:-1] if gpu_decodes_wrong else files[stdin], gpu_decodes_in, ""

    monkeypatch.setattr(gpu, "_lmzip", lmzip)
    status = gpu.check(gguf, enwik_bytes, budget)
    return status, rates_asked, out


def test_the_gpu_check_runs_through_with_stand_ins(monkeypatch, tmp_path, capsys):
    gpu = gpu_check_module()
    status, rates_asked, out = _rehearse_check(monkeypatch, tmp_path, gpu, mixer_ok=True, budget=540)
    said = capsys.readouterr().out
    assert status == 0 and said.rstrip().endswith("ALL PASS"), said
    assert said.count("PASS golden") == 3 and "FAIL" not in said
    assert "host side alone (the engine's group, rows in place), 64 streams" in said
    # the table: each width, the 512 streams' logits failing without stopping the check
    for streams in (1, 8, 64):
        assert f"| {streams} | 2048 | {1000 * streams} | {900 * streams} | 5000 ({2048 * streams} tokens, " in said
    assert "logits at 512 streams: MemoryError" in said
    # the 64-stream step's kernels, the longest first, after the table
    assert ("| attn_values_kernel | 400 | 67 % | 30 |\n| matmul_kernel | 200 | 33 % | 126 |\n"
            "| all 2 kernels | 600 |") in said
    assert "| 512 | 2048 | nan | nan | 5000 (131072 tokens, 524288 bytes, 1024 a stream" in said
    assert "64 streams with LMZIP_GPU_OVERLAP=0: 5000 tok/s" in said
    assert "64 streams with LMZIP_GPU_MIX=0 (mixing on the host)" in said
    # the whole prefix in 64 chunks, its file where the device tool brings it back
    assert "enwik8 prefix, 600000 bytes in 64 chunks of 9375" in said
    assert (out / "enwik8_prefix_600000.smol.gpu.lmz").stat().st_size == 3 + 600000 // 4
    assert "PASS the 64-stream file decoded on the GPU: 131072 tok/s (131072 tokens in 1.0 s)" in said
    tried = [b for s, b in rates_asked if s == 64 and b is not None]
    assert len(tried) == len(gpu.CHECK_TILES) and "| {'soft_stages': 3} | 64000 | 57600 |" in said


def test_the_gpu_check_falls_back_to_host_mixing(monkeypatch, tmp_path, capsys):
    gpu = gpu_check_module()
    status, _, out = _rehearse_check(monkeypatch, tmp_path, gpu, mixer_ok=False, budget=540, gpu_decodes_wrong=True)
    said = capsys.readouterr().out
    assert status == 1 and said.rstrip().endswith("SOME FAILED"), said
    assert "FAIL alice29 20,000 bytes: GPU file == CPU file" in said
    assert "PASS alice29 20,000 bytes (LMZIP_GPU_MIX=0): GPU file == CPU file" in said
    assert "the rest of the check mixes on the host" in said and gpu._EXTRA_ENV == {"LMZIP_GPU_MIX": "0"}
    # the rest runs (mixing on the host), without comparing host mixing with itself
    assert "64 streams with LMZIP_GPU_OVERLAP=0" in said and "LMZIP_GPU_MIX=0 (mixing on the host)" not in said
    assert "enwik8 prefix, 600000 bytes in 64 chunks" in said and (out / "enwik8_prefix_600000.smol.gpu.lmz").is_file()
    assert "FAIL the 64-stream file decoded on the GPU" in said


def test_the_gpu_check_keeps_to_its_budget(monkeypatch, tmp_path, capsys):
    gpu = gpu_check_module()
    status, _, out = _rehearse_check(monkeypatch, tmp_path, gpu, mixer_ok=True, budget=70, enwik_bytes=3_000_000)
    said = capsys.readouterr().out
    assert status == 0 and said.rstrip().endswith("ALL PASS"), said
    # at 20,000 bytes/s: 512 streams and the host-mixing comparison do not fit, the prefix is cut
    assert "| 512 | 2048 | nan | nan | skipped (the time left goes to the enwik8 prefix) |" in said
    assert "LMZIP_GPU_MIX=0 (mixing on the host)" not in said
    cut = re.search(r"the first (\d+) bytes of the enwik8 prefix only", said)
    assert cut and int(cut.group(1)) < 3_000_000 and int(cut.group(1)) % 64 == 0
    assert (out / f"enwik8_prefix_{cut.group(1)}.smol.gpu.lmz").is_file()
    assert "the 64-stream file decoded on the GPU: skipped (the time left goes to the enwik8 prefix)" in said


def test_the_gpu_checks_decoding_on_the_gpu_is_cut_short(monkeypatch, tmp_path, capsys):
    gpu = gpu_check_module()
    status, _, _ = _rehearse_check(monkeypatch, tmp_path, gpu, mixer_ok=True, budget=540, gpu_decodes_in=1e6)
    said = capsys.readouterr().out
    assert status == 0 and "the 64-stream file decoded on the GPU: not done in 120 s" in said, said
    assert said.index("not done in 120 s") < said.index("enwik8 prefix, 600000 bytes")


def test_the_gpu_check_runs_through_for_gemma(monkeypatch, tmp_path, capsys):
    """--check --model gemma3-270m: its goldens (16 tokens at 2048, 24 at 16), shorter round
    trips (3,000 bytes) and 2,048 bytes a stream end to end."""
    gpu = gpu_check_module()
    monkeypatch.setattr(gpu, "MODEL", gpu.MODELS["gemma3-270m"])
    status, _, out = _rehearse_check(monkeypatch, tmp_path, gpu, mixer_ok=True, budget=540)
    said = capsys.readouterr().out
    assert status == 0 and said.rstrip().endswith("ALL PASS"), said
    assert "PASS golden 16 tokens, context 2048" in said and "PASS golden 24 tokens, context 16" in said
    assert "PASS alice29 3,000 bytes: GPU file == CPU file" in said
    assert "| 64 | 2048 | 64000 | 57600 | 5000 (32768 tokens, 131072 bytes, 2048 a stream" in said
