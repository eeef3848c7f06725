"""Bounded memory: compressing and decompressing a large input through the command line
(streams in, streams out) takes the same peak memory whatever the input's size.

Each run is a child process whose peak resident size (VmHWM) is compared between a
small and a large input: anything that holds the whole input or
output (a buffer, a list of chunks, a read() of everything) shows up as a difference of
tens of MB.  The data is mostly incompressible (stored chunks, so the test is fast) with
text and binary regions between, so the model and LZMA run too.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from .conftest import corpus_slice

MODEL = ["-m", "order1"]  # the fastest predictor: this test is about streaming, not prediction (ngram codes ~4 kB/s)
SMALL = 4 << 20
LARGE = 32 << 20
#: the most the peak may grow from SMALL to LARGE input: well under one LARGE - SMALL copy
ALLOWED_GROWTH = 12 << 20


def _make_input(path, size: int, mixed: bool = True) -> None:
    """4 MiB pieces: random bytes (stored chunks) and 12 kB of text (coded by the model,
    then by LZMA, which beats the order-1 model on it), 8 kB of a spreadsheet."""
    rng = random.Random(size)
    text = corpus_slice("alice29.txt", 0, 12_000) if mixed else b""
    binary = corpus_slice("kennedy.xls", 0, 8 << 10) if mixed else b""
    with open(path, "wb") as f:
        written = 0
        while written < size:
            piece = rng.randbytes((4 << 20) - len(text) - len(binary)) + text + binary
            f.write(piece)
            written += len(piece)


# Runs the CLI and records its own peak resident size (VmHWM) at exit.  Not ru_maxrss from
# wait4: Linux carries the parent's high-water mark across fork and exec, so the test
# process's own size (hundreds of MB once the LLM is loaded) would hide the child's.
_MEASURED = (
    "import atexit, sys\n"
    "out = sys.argv.pop(1)\n"
    "def record():\n"
    "    status = open('/proc/self/status').read()\n"
    "    open(out, 'w').write(status.split('VmHWM:')[1].split()[0])\n"
    "atexit.register(record)\n"
    "from lmzip.cli import run\n"
    "run(sys.argv[1:])\n"
)


def _peak_rss(args: list[str], stdin_path, stdout_path) -> int:
    """Run the CLI with files as stdin and stdout; its peak resident size in bytes."""
    record = f"{stdout_path}.hwm"
    with open(stdin_path, "rb") as fin, open(stdout_path, "wb") as fout:
        proc = subprocess.run([sys.executable, "-c", _MEASURED, record, *args], stdin=fin, stdout=fout,
                              stderr=subprocess.PIPE, timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()
    with open(record) as f:
        return int(f.read()) * 1024  # kB


@pytest.fixture(scope="module")
def peaks(tmp_path_factory):
    base = tmp_path_factory.mktemp("memory")
    result = {}
    for size in (SMALL, LARGE):
        raw, packed, back = base / f"{size}.bin", base / f"{size}.lmz", base / f"{size}.out"
        _make_input(raw, size)
        result[size, "compress"] = _peak_rss(["compress", *MODEL, "--chunk-size", str(1 << 20)], raw, packed)
        result[size, "decompress"] = _peak_rss(["decompress"], packed, back)
        with open(raw, "rb") as a, open(back, "rb") as b:  # the round trip, compared in pieces
            while block := a.read(1 << 20):
                assert b.read(1 << 20) == block
            assert b.read(1) == b""
        assert os.path.getsize(packed) < os.path.getsize(raw)
    return result


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_peak_memory_does_not_grow_with_the_input(peaks, command):
    small, large = peaks[SMALL, command], peaks[LARGE, command]
    print(f"{command}: peak RSS {small / 2**20:.1f} MiB for {SMALL >> 20} MiB, "
          f"{large / 2**20:.1f} MiB for {LARGE >> 20} MiB")
    assert large - small < ALLOWED_GROWTH, (small, large)


def test_the_measure_can_fail(peaks, tmp_path):
    """A compressor that holds the whole input (one chunk as large as the input) is caught."""
    raw = tmp_path / "large.bin"
    _make_input(raw, LARGE, mixed=False)
    whole = _peak_rss(["compress", *MODEL, "--chunk-size", str(64 << 20)], raw, tmp_path / "large.lmz")
    assert whole - peaks[SMALL, "compress"] > ALLOWED_GROWTH, whole
