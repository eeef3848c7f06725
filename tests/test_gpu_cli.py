"""``--device`` on the command line (issue 28): a run-time choice, never in the file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import ROOT


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


def _gpu_check_module():
    """benchmarks/gpu.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu  # its dataclasses look their module up
    try:
        spec.loader.exec_module(gpu)
    finally:
        del sys.modules["gpu_check"]
    return gpu


def test_the_gpu_checks_round_trips_say_what_differs(monkeypatch, capsys):
    """--check's cross-device round trips: PASS when both devices write the same file and
    decode each other's; FAIL lines (and False, so the check falls back to host mixing)
    when the GPU's file differs or a command fails.  lmzip itself is a stand-in here."""
    gpu = _gpu_check_module()
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
    gpu = _gpu_check_module()
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

    gpu = _gpu_check_module()
    data = corpus_slice("alice29.txt", 5000, 1200)
    out, secs, tokens = gpu._compress(_smollm2_path(), data, 300, 4, "--method", "model", device="cpu")
    tokenizer = load_model("smollm2-135m").tokenizer
    assert secs > 0 and tokens == sum(len(tokenizer.encode(data[i:i + 300])) for i in range(0, 1200, 300))
    d = _lmzip("decompress", "--device", "cpu", "--model", str(_smollm2_path()), "-c", "-", stdin=out)
    assert d.returncode == 0 and d.stdout == data, d.stderr
    # after the GPU's mixer failed the round trips, every later command mixes on the host
    gpu._EXTRA_ENV["LMZIP_GPU_MIX"] = "0"
    assert gpu._child_env()["LMZIP_GPU_MIX"] == "0" and gpu._child_env(LMZIP_GPU_MIX="1")["LMZIP_GPU_MIX"] == "1"
