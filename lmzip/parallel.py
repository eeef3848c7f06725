"""Coding lockstep groups in parallel: worker processes (one per device), or Ray.

A lockstep group (:func:`lmzip.codec.compress_group`) is the unit of work: its chunks
share batches, different groups share nothing.  An executor runs groups on workers that
each hold their own model instance and hands the results back *in order*, so the
``.lmz`` file is byte for byte the one :class:`lmzip.LMZipCompressor` writes alone with
the same settings (llama.cpp gives the same logits in any process for the same calls,
and thread counts do not change them).

- :class:`InlineExecutor`: this process, one group at a time (what no executor does).
- :class:`ProcessExecutor`: worker processes on this machine, one per planned device
  (:func:`plan_devices`): one per GPU for a model on GPUs (the portable engine with
  ``--device cuda``: every GPU; ``cuda:N``: that one), each building its model on its
  own GPU, else CPU workers that split the cores between them.
- :class:`RayExecutor`: Ray actors, local or on a cluster (``address``), each asking Ray
  for one GPU on a GPU device: Ray ships the groups and the results; lmzip has no
  cluster code of its own.

Workers rebuild the model from a *recipe*: a picklable callable that returns it.
Models from :func:`lmzip.predictors.registry.load_model` carry one; for any other
model, pass ``factory=``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from .codec import Stats, compress_group, decompress_group
from .errors import LMZipError
from .format import VERSION, ChunkInfo
from .gpu.device import DEVICE_ENV
from .predictors.base import Model

__all__ = ["Device", "Executor", "InlineExecutor", "ProcessExecutor", "RayExecutor", "auto_workers", "executor_for",
           "plan_devices", "recipe_of"]

ModelFactory = Callable[[], Model]


# ---------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Device:
    """Where one worker runs: ``kind`` "cpu" or "cuda", the device ``index``, CPU ``threads``."""

    kind: str = "cpu"
    index: int = 0
    threads: int = 1

    def __str__(self) -> str:
        return f"{self.kind}:{self.index} ({self.threads} thread{'s' * (self.threads != 1)})"


def detect_gpus() -> list[str]:
    """CUDA devices torch can see (``["cuda:0", ...]``), none without torch.

    The llama.cpp backend keeps every layer on the CPU (a GPU computes other logits), so
    GPUs serve the torch backend only."""
    try:
        import torch  # noqa: PLC0415 - optional
    except ImportError:
        return []
    try:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    except Exception:  # pragma: no cover - broken CUDA installs
        return []


def plan_devices(workers: int | None = None, devices: list[str] | None = None,
                 cores: int | None = None) -> list[Device]:
    """One :class:`Device` per worker.

    Args:
        workers: how many workers (default: one per GPU, else 1).
        devices: GPUs to use, e.g. ``["cuda:0", "cuda:1"]`` (default: :func:`detect_gpus`);
            ``[]`` for the CPU only.
        cores: CPU cores to share (default: this machine's).

    With GPUs there is one worker per GPU (``workers`` may ask for fewer; more would
    share a device, which does not pay), and the workers split the cores: a GPU's worker
    mixes and codes its group's streams on the CPU (lmzip._mix's threads).  Without
    them, ``workers`` CPU workers split the cores evenly (at least one thread each).
    """
    gpus = detect_gpus() if devices is None else list(devices)
    cores = cores or os.cpu_count() or 1
    if workers is not None and workers < 1:
        raise ValueError("workers must be at least 1")
    if gpus:
        parsed = []
        for name in gpus:
            kind, _, index = name.partition(":")
            if kind != "cuda" or not index.isdigit():
                raise ValueError(f"unknown device {name!r} (expected cuda:N)")
            parsed.append(int(index))
        chosen = parsed[: workers or len(parsed)]
        return [Device("cuda", index, max(1, cores // len(chosen))) for index in chosen]
    n = workers or 1
    return [Device("cpu", i, max(1, cores // n)) for i in range(n)]


# ---------------------------------------------------------------------------- recipes


def recipe_of(model: Model) -> ModelFactory:
    """A picklable callable that rebuilds ``model`` in another process."""
    recipe = getattr(model, "recipe", None)
    if recipe is None:
        raise LMZipError(f"model {model.name} cannot be rebuilt in a worker process; pass factory=")
    return recipe


def _build(factory: ModelFactory, device: Device) -> Model:
    """The worker's model, on its GPU for a cuda ``device``: a recipe of
    :func:`~lmzip.predictors.registry.load_model` is told the device; any other factory
    finds it in ``$LMZIP_DEVICE``, as do the models a stream header names later."""
    if device.kind == "cuda":
        name = f"cuda:{device.index}"
        os.environ[DEVICE_ENV] = name
        if isinstance(factory, functools.partial) and "device" in factory.keywords:
            factory = functools.partial(factory, device=name)
    model = factory()
    if hasattr(model, "threads") and "threads" not in model.params():
        model.threads = device.threads  # never changes these logits, only the speed
    return model


# ---------------------------------------------------------------------------- the jobs


@dataclass
class GroupResult:
    """What a worker sends back for one group."""

    out: list[Any]  # (info, payload) pairs, or decoded chunks
    stats: Stats


def _compress(model: Model, texts: list[bytes], width: int, version: int = VERSION) -> GroupResult:
    stats = Stats()
    return GroupResult(compress_group(model, texts, stats, None, width, version), stats)


def _decompress(model: Model, records: list[tuple[ChunkInfo, bytes]], width: int,
                replay: dict[int, bytes], version: int = VERSION) -> GroupResult:
    stats = Stats()
    return GroupResult(decompress_group(model, records, stats, None, width, replay, version), stats)


class Executor:
    """Runs group jobs and returns their results in submission order."""

    #: how many groups it works on at once (the compressor keeps this many in flight)
    workers: int = 1
    #: (model_sha256, params) of the model its workers hold, when known: a decompressor
    #: hands a stream's groups over only if its model is this one
    key: tuple | None = None

    def submit_compress(self, texts: list[bytes], width: int, version: int = VERSION) -> Future:
        raise NotImplementedError

    def submit_decompress(self, records: list[tuple[ChunkInfo, bytes]], width: int,
                          replay: dict[int, bytes], version: int = VERSION) -> Future:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _done(fn: Callable[[], GroupResult]) -> Future:
    f: Future = Future()
    try:
        f.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
        f.set_exception(exc)
    return f


class InlineExecutor(Executor):
    """This process, this model: each job runs when it is submitted."""

    def __init__(self, model: Model):
        self.model = model

    def submit_compress(self, texts, width, version=VERSION):
        return _done(lambda: _compress(self.model, texts, width, version))

    def submit_decompress(self, records, width, replay, version=VERSION):
        return _done(lambda: _decompress(self.model, records, width, replay, version))


# one model per worker process, built by the pool's initializer
_worker_model: Model | None = None


def _init_worker(factory: ModelFactory, devices: list[Device], counter) -> None:
    global _worker_model
    with counter.get_lock():
        slot = counter.value
        counter.value += 1
    _worker_model = _build(factory, devices[slot % len(devices)])


def _worker_compress(texts, width, version=VERSION):
    assert _worker_model is not None
    return _compress(_worker_model, texts, width, version)


def _worker_decompress(records, width, replay, version=VERSION):
    assert _worker_model is not None
    return _decompress(_worker_model, records, width, replay, version)


class ProcessExecutor(Executor):
    """Worker processes on this machine, one per :class:`Device` (see :func:`plan_devices`).

    Processes are started with ``spawn`` (a fresh interpreter: llama.cpp's threads do
    not survive ``fork``) and each builds its model once from ``factory``.
    """

    def __init__(self, factory: ModelFactory, devices: list[Device] | None = None):
        import multiprocessing

        self.devices = devices or plan_devices()
        self.workers = len(self.devices)
        ctx = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_init_worker,
                                         initargs=(factory, self.devices, ctx.Value("i", 0)))

    def submit_compress(self, texts, width, version=VERSION):
        return self._pool.submit(_worker_compress, texts, width, version)

    def submit_decompress(self, records, width, replay, version=VERSION):
        return self._pool.submit(_worker_decompress, records, width, replay, version)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor(Executor):
    """Ray actors, each holding a model (``pip install ray``).

    Args:
        factory: rebuilds the model on the worker (must be importable there: lmzip and
            the model installed on every node).
        workers: actors to start (default: one per planned device of this machine).
        address: an existing Ray cluster (``"auto"``, ``"ray://host:10001"``); default
            starts (or joins) a local instance.
        devices: as for :func:`plan_devices`; a ``cuda`` device asks Ray for one GPU.
    """

    def __init__(self, factory: ModelFactory, workers: int | None = None, address: str | None = None,
                 devices: list[Device] | None = None):
        try:
            import ray
        except ImportError:
            raise LMZipError("the Ray executor needs Ray: pip install ray") from None
        self._ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except Exception as exc:  # Ray raises ValueError, ConnectionError, RuntimeError, ...
                where = f"Ray at {address!r}" if address else "a local Ray instance"
                raise LMZipError(f"could not start or join {where}: {str(exc)[:200]}") from None
        self.devices = devices or plan_devices(workers)
        self.workers = len(self.devices)
        actor = ray.remote(_RayWorker)
        self._actors = [actor.options(num_cpus=d.threads if d.kind == "cpu" else 1,
                                      num_gpus=1 if d.kind == "cuda" else 0).remote(factory, d)
                        for d in self.devices]
        self._next = 0

    def _actor(self):
        a = self._actors[self._next % len(self._actors)]
        self._next += 1
        return a

    def _wrap(self, ref) -> Future:
        return _RayFuture(self._ray, ref)

    def submit_compress(self, texts, width, version=VERSION):
        return self._wrap(self._actor().compress.remote(texts, width, version))

    def submit_decompress(self, records, width, replay, version=VERSION):
        return self._wrap(self._actor().decompress.remote(records, width, replay, version))

    def close(self) -> None:
        for a in self._actors:
            self._ray.kill(a)
        self._actors = []


class _RayWorker:
    def __init__(self, factory: ModelFactory, device: Device):
        if device.kind == "cuda":  # Ray shows an actor only the GPU it gave it (CUDA_VISIBLE_DEVICES)
            device = dataclasses.replace(device, index=0)
        self.model = _build(factory, device)

    def compress(self, texts, width, version=VERSION):
        return _compress(self.model, texts, width, version)

    def decompress(self, records, width, replay, version=VERSION):
        return _decompress(self.model, records, width, replay, version)


class _RayFuture(Future):
    """A Future whose result() waits on a Ray object reference."""

    def __init__(self, ray, ref):
        super().__init__()
        self._ray_mod = ray
        self._ref = ref

    def done(self) -> bool:
        if super().done():
            return True
        ready, _ = self._ray_mod.wait([self._ref], timeout=0)
        return bool(ready)

    def result(self, timeout=None):
        if not super().done():  # (self.done() may be True before the result is fetched)
            try:
                self.set_result(self._ray_mod.get(self._ref, timeout=timeout))
            except self._ray_mod.exceptions.RayTaskError as exc:
                self.set_exception(exc.as_instanceof_cause())
        return super().result(timeout)



def _runs_on_torch(model: Model) -> bool:
    return str(model.params().get("backend", "")).startswith("torch")


def _model_gpus(model: Model) -> list[str]:
    """The GPUs the model may spread its groups over (the portable engine on GPUs), else []."""
    gpus = getattr(model, "gpus", None)
    return list(gpus()) if gpus is not None else []


def _gpus_for(model: Model) -> list[str] | None:
    """GPUs to plan over: found ones for a torch model, the portable engine's own on GPUs
    (``--device cuda``: every GPU; ``cuda:N``: that one), none for the CPU engines."""
    return None if _runs_on_torch(model) else _model_gpus(model)


def auto_workers(model: Model, groups: int | None, threads: int | None = None, cores: int | None = None) -> int:
    """How many local workers pay for coding ``groups`` lockstep groups with ``model``.

    On GPUs (the portable engine): one worker per GPU, at most one per group; with one GPU,
    this process drives it (a group is already hundreds of streams wide).  On the CPU: one
    worker per ``threads`` cores (default: a single-thread worker per core), at most one
    per group, for any model a worker can rebuild except the torch backend (not
    measured).  On this project's 2-core machine, two single-thread workers code 38 %
    more tokens per second than one process with two threads at the window's depth
    (BENCHMARKS.md, "Throughput"): llama.cpp's threads share one small batch badly.
    One group cannot be split, so fewer than two groups (or an unknown count, e.g. a
    pipe) give 1: code in this process, with all its threads.
    """
    if groups is None or groups < 2 or getattr(model, "recipe", None) is None or _runs_on_torch(model):
        return 1
    gpus = _model_gpus(model)
    if gpus:
        return min(groups, len(gpus))
    cores = cores or os.cpu_count() or 1
    return max(1, min(groups, cores // max(1, threads or 1)))


def executor_for(model: Model, workers: int | None = 1, ray_address: str | None = None) -> Executor | None:
    """The executor the command line asks for: ``None`` (code here) for one local worker,
    :class:`ProcessExecutor` for several, :class:`RayExecutor` with a Ray address
    (``"local"`` starts a local instance; ``workers=None``: one per planned device)."""
    if ray_address is None and (workers or 1) <= 1:
        return None
    factory = recipe_of(model)
    if ray_address is not None:
        n = workers if workers and workers > 1 else None
        ex: Executor = RayExecutor(factory, workers=n, address=None if ray_address == "local" else ray_address,
                                   devices=plan_devices(n, _gpus_for(model)))
    else:
        ex = ProcessExecutor(factory, plan_devices(workers, _gpus_for(model)))
    ex.key = (model.model_sha256, model.params())
    return ex
