"""Executors: worker processes and Ray give the same files as coding alone."""

from __future__ import annotations

import os
import re

import pytest

import lmzip
from lmzip.errors import ChecksumError, CorruptError, LMZipError
from lmzip.parallel import (
    Device,
    InlineExecutor,
    ProcessExecutor,
    RayExecutor,
    auto_workers,
    executor_for,
    plan_devices,
    recipe_of,
)
from lmzip.predictors.registry import load_model

from .conftest import ROOT, corpus_slice
from .fake_gpu import FakeGPUModel
from .test_groups import BatchSensitive

DATA = corpus_slice("alice29.txt", 30000, 9000) + bytes(range(256)) * 12 + corpus_slice("xargs.1", 0, 3000)
SETTINGS = dict(chunk_size=1500, streams=2, method="auto")


@pytest.fixture(scope="module")
def ngram():
    return load_model("ngram")


@pytest.fixture(scope="module")
def alone(ngram) -> bytes:
    return lmzip.compress(DATA, model=ngram, **SETTINGS)


@pytest.mark.parametrize("workers, devices, cores, expected", [
    (None, [], 8, [Device("cpu", 0, 8)]),
    (2, [], 8, [Device("cpu", 0, 4), Device("cpu", 1, 4)]),
    (3, [], 2, [Device("cpu", i, 1) for i in range(3)]),
    (None, ["cuda:0", "cuda:1"], 8, [Device("cuda", 0, 4), Device("cuda", 1, 4)]),  # the cores: the host side
    (1, ["cuda:0", "cuda:3"], 8, [Device("cuda", 0, 8)]),
    (None, ["cuda:0", "cuda:1", "cuda:2"], 2, [Device("cuda", i, 1) for i in range(3)]),
])
def test_plan_devices(workers, devices, cores, expected):
    assert plan_devices(workers, devices, cores) == expected


def test_plan_devices_refuses_nonsense():
    with pytest.raises(ValueError, match="unknown device"):
        plan_devices(None, ["tpu:0"])
    with pytest.raises(ValueError, match="workers"):
        plan_devices(0, [])


@pytest.mark.parametrize("groups, threads, cores, expected", [
    (None, None, 2, 1),  # size unknown (a pipe)
    (0, None, 2, 1),
    (1, None, 8, 1),  # one group cannot be split
    (2, None, 2, 2),  # one single-thread worker per core
    (2, None, 8, 2),  # at most one per group
    (5, None, 4, 4),
    (5, 2, 8, 4),  # --threads 2: a worker per two cores
    (5, 2, 2, 1),
    (9, 3, 1, 1),
])
def test_auto_workers(ngram, groups, threads, cores, expected):
    assert auto_workers(ngram, groups, threads, cores) == expected


def test_auto_workers_only_for_models_a_worker_can_rebuild(ngram):
    assert auto_workers(BatchSensitive(), 4, None, 2) == 1  # no recipe

    class TorchLike:
        recipe = staticmethod(lambda: None)

        def params(self):
            return {"backend": "torch", "dtype": "float32"}

    assert auto_workers(TorchLike(), 4, None, 2) == 1  # not measured: stays in one process


def test_inline_executor_is_the_same_as_none(ngram, alone):
    assert lmzip.compress(DATA, model=ngram, executor=InlineExecutor(ngram), **SETTINGS) == alone
    assert lmzip.decompress(alone, model=ngram, executor=InlineExecutor(ngram)) == DATA


def test_models_without_a_recipe_are_refused():
    with pytest.raises(LMZipError, match="factory"):
        recipe_of(BatchSensitive())


def test_worker_processes_write_the_same_file(ngram, alone):
    with ProcessExecutor(recipe_of(ngram), plan_devices(2, [], 2)) as ex:
        comp = lmzip.LMZipCompressor(ngram, executor=ex, **SETTINGS)
        out = b"".join(comp.compress(DATA[i : i + 4000]) for i in range(0, len(DATA), 4000)) + comp.flush()
        assert out == alone
        assert comp.stats.raw_bytes == len(DATA) and comp.stats.tokens > 0
        assert lmzip.decompress(alone, model=ngram, executor=ex) == DATA
        # damage found in a worker reaches the caller as the same error
        hurt = bytearray(alone)
        hurt[len(hurt) // 3] ^= 0x08
        with pytest.raises((ChecksumError, CorruptError)):
            lmzip.decompress(bytes(hurt), model=ngram, executor=ex)


def test_ray_workers_write_the_same_file(ngram, alone):
    pytest.importorskip("ray")
    ray = __import__("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with RayExecutor(recipe_of(ngram), workers=2) as ex:
            assert lmzip.compress(DATA, model=ngram, executor=ex, **SETTINGS) == alone
            assert lmzip.decompress(alone, model=ngram, executor=ex) == DATA
    finally:
        ray.shutdown()


def test_cli_workers_write_the_same_file(tmp_path):
    from .test_cli import run

    src = tmp_path / "in.bin"
    src.write_bytes(DATA)
    opts = ["-m", "ngram", "--chunk-size", "1500", "--streams", "2"]
    run("compress", *opts, "-o", str(tmp_path / "one.lmz"), str(src), check=0)
    run("compress", *opts, "--workers", "2", "-o", str(tmp_path / "two.lmz"), str(src), check=0)
    assert (tmp_path / "one.lmz").read_bytes() == (tmp_path / "two.lmz").read_bytes()
    run("decompress", "--workers", "2", "-o", str(tmp_path / "out"), str(tmp_path / "two.lmz"), check=0)
    assert (tmp_path / "out").read_bytes() == DATA


def test_a_bad_ray_address_is_one_clear_error(tmp_path, ngram):
    pytest.importorskip("ray")
    from .test_cli import assert_one_line_error, run

    with pytest.raises(LMZipError, match="could not start or join Ray at 'bogus-address'"):
        RayExecutor(recipe_of(ngram), workers=1, address="bogus-address")
    src = tmp_path / "in.txt"
    src.write_bytes(b"hello world\n")
    assert_one_line_error(run("compress", "-m", "ngram", "--ray", "bogus-address", str(src)))
    assert src.read_bytes() == b"hello world\n" and not (tmp_path / "in.txt.lmz").exists()


ON_WORKERS = re.compile(r", \d+ workers? -> ")  # what -v says after coding on workers


def test_cli_workers_auto_starts_workers_only_for_several_groups(tmp_path, monkeypatch, capsys):
    from lmzip import parallel

    from .test_cli import run_here

    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 2)
    src = tmp_path / "in.txt"
    src.write_bytes(DATA[:9000])  # text: 6 chunks of 1,500 bytes, 3 groups of 2
    opts = ["-v", "-m", "ngram", "--method", "model", "--chunk-size", "1500", "--streams", "2"]
    assert run_here("compress", *opts, "--workers", "1", "-o", str(tmp_path / "one.lmz"), str(src)) == 0
    assert not ON_WORKERS.search(capsys.readouterr().err)
    assert run_here("compress", *opts, "-o", str(tmp_path / "auto.lmz"), str(src)) == 0
    assert ", 2 workers -> " in capsys.readouterr().err
    assert (tmp_path / "auto.lmz").read_bytes() == (tmp_path / "one.lmz").read_bytes()
    assert run_here("decompress", "-v", "-o", str(tmp_path / "out"), str(tmp_path / "auto.lmz")) == 0
    assert ", 2 workers -> " in capsys.readouterr().err  # the group count comes from the file's index
    assert (tmp_path / "out").read_bytes() == DATA[:9000]
    assert run_here("test", str(tmp_path / "auto.lmz")) == 0
    assert "auto.lmz: OK (9000 bytes, 2 workers)" in capsys.readouterr().err
    # --rm checks the output on the same workers before it removes the input
    gone = tmp_path / "gone.txt"
    gone.write_bytes(DATA[:9000])
    assert run_here("compress", *opts, "--rm", str(gone)) == 0
    assert ", 2 workers -> " in capsys.readouterr().err and not gone.exists()
    assert (tmp_path / "gone.txt.lmz").read_bytes() == (tmp_path / "one.lmz").read_bytes()
    # the group count uses the compressor's own default width (1 for a model that does not batch)
    assert run_here("compress", *opts[:-2], "-o", str(tmp_path / "narrow.lmz"), str(src)) == 0
    assert ", 2 workers -> " in capsys.readouterr().err
    # one group (the input is under two chunks): coded here, with all the threads
    src.write_bytes(DATA[:2000])
    assert run_here("compress", *opts, "-f", "-o", str(tmp_path / "small.lmz"), str(src)) == 0
    assert not ON_WORKERS.search(capsys.readouterr().err)
    assert run_here("decompress", "-v", "-o", str(tmp_path / "small"), str(tmp_path / "small.lmz")) == 0
    assert not ON_WORKERS.search(capsys.readouterr().err)
    assert (tmp_path / "small").read_bytes() == DATA[:2000]


def _built(log) -> list[list[str]]:
    """(pid, device, $LMZIP_DEVICE, $CUDA_VISIBLE_DEVICES) of each stand-in GPU model built
    outside this process: the workers'."""
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return [line for line in lines if int(line[0]) != os.getpid()]


def test_one_worker_per_gpu_for_the_portable_engine_on_gpus(tmp_path, alone):
    """--device cuda on two GPUs: two workers, each building its model on its own GPU, and
    the file is the one a single process writes; cuda:N (one GPU) codes in this process."""
    log = tmp_path / "built"
    gpu = FakeGPUModel(device="cuda", gpus=("cuda:0", "cuda:1"), log=str(log))
    assert [auto_workers(gpu, n) for n in (None, 1, 2, 5)] == [1, 1, 2, 2]
    assert auto_workers(FakeGPUModel(device="cuda:1", gpus=("cuda:1",)), 5) == 1
    with executor_for(gpu, 2) as ex:
        cores = os.cpu_count() or 1
        assert ex.devices == [Device("cuda", 0, max(1, cores // 2)), Device("cuda", 1, max(1, cores // 2))]
        assert lmzip.compress(DATA, model=gpu, executor=ex, **SETTINGS) == alone
        assert lmzip.decompress(alone, model=gpu, executor=ex) == DATA
    built = _built(log)
    assert sorted(b[1:3] for b in built) == [["cuda:0", "cuda:0"], ["cuda:1", "cuda:1"]]


def test_ray_actors_ask_for_one_gpu_each(tmp_path, alone):
    pytest.importorskip("ray")
    ray = __import__("ray")
    # Ray counts the two GPUs declared here and gives each actor one (CUDA_VISIBLE_DEVICES)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        log = tmp_path / "built"
        gpu = FakeGPUModel(device="cuda", gpus=("cuda:0", "cuda:1"), log=str(log))
        with executor_for(gpu, None, ray_address="local") as ex:
            assert ex.workers == 2
            assert lmzip.compress(DATA, model=gpu, executor=ex, **SETTINGS) == alone
        built = _built(log)
        assert len(built) == 2 and all(b[1:3] == ["cuda:0", "cuda:0"] for b in built)  # each sees one GPU
        assert sorted(b[3] for b in built) == ["0", "1"]
    finally:
        ray.shutdown()
