"""Group width and chunk size when the user gives neither (lmzip.sizing): from a GPU's
free memory and the input's size; on the CPU, what lmzip always wrote."""

from __future__ import annotations

import pytest

import lmzip
from lmzip import format as fmt
from lmzip.core import DEFAULT_CHUNK_SIZE, LMZipCompressor
from lmzip.predictors.registry import load_model
from lmzip.sizing import MIN_GPU_CHUNK, chunk_size_for, width_for_memory

from .conftest import corpus_slice
from .fake_gpu import STREAM_BYTES, FakeGPUModel

GiB = 1 << 30


@pytest.mark.parametrize("free, expected", [
    (139 * GiB, 1024),  # an H200: more than the format holds
    (10 * GiB, int(10 * GiB * 0.8) // STREAM_BYTES),  # 170
    (STREAM_BYTES, 1),  # not even one fits: one anyway (the GPU will say so)
    (0, 1),
])
def test_width_from_free_memory(free, expected):
    assert width_for_memory(free, STREAM_BYTES) == expected
    with pytest.raises(ValueError):
        width_for_memory(free, 0)


@pytest.mark.parametrize("size, width, expected", [
    (None, 1024, DEFAULT_CHUNK_SIZE),  # a pipe: the default
    (4 << 20, 64, 64 << 10),  # issue 28's 4 MB file: 64 chunks fill a group of 64
    (4 << 20, 8, 512 << 10),
    (5_000_000, 64, 81920),  # 78,125, rounded up to whole 4 KiB
    (100_000_000, 1024, 98304),  # 97,657 up to whole 4 KiB
    (1 << 40, 1024, DEFAULT_CHUNK_SIZE),  # never above the default
    (1000, 1024, MIN_GPU_CHUNK),  # never below 64 KiB
])
def test_chunk_size_from_the_input(size, width, expected):
    assert chunk_size_for(size, width, DEFAULT_CHUNK_SIZE) == expected


def test_on_the_cpu_nothing_changes():
    ngram = load_model("ngram")
    data = corpus_slice("alice29.txt", 0, 20000)
    comp = LMZipCompressor(ngram, input_size=len(data))
    assert (comp.streams, comp.chunk_size) == (1, DEFAULT_CHUNK_SIZE)
    assert lmzip.compress(data, model=ngram) == lmzip.compress(data, model=ngram, chunk_size=DEFAULT_CHUNK_SIZE)


def test_on_a_gpu_the_group_is_as_wide_as_memory_and_the_chunks_fill_it():
    gpu = FakeGPUModel(free_bytes=10 * GiB)  # 170 streams
    comp = LMZipCompressor(gpu, input_size=20 << 20)
    assert (comp.streams, comp.chunk_size) == (170, 124 << 10)  # 20 MiB / 170 = 120.5 KiB, up to 4 KiB
    assert LMZipCompressor(gpu).chunk_size == DEFAULT_CHUNK_SIZE  # size unknown
    assert LMZipCompressor(gpu, streams=8, input_size=4 << 20).chunk_size == 512 << 10
    assert LMZipCompressor(gpu, chunk_size=1000, input_size=4 << 20).chunk_size == 1000  # the user's
    # compress(): the size is known; both choices are in the header, so any lmzip decodes it
    data = corpus_slice("alice29.txt", 0, 70_000)
    packed = lmzip.compress(data, model=FakeGPUModel(free_bytes=STREAM_BYTES * 3))  # 2 streams
    params = fmt.parse_header(packed).params
    assert (params["streams"], params["chunk_size"]) == (2, MIN_GPU_CHUNK)  # 2 chunks, the floor's size
    assert packed == lmzip.compress(data, model=load_model("ngram"), streams=2, chunk_size=MIN_GPU_CHUNK)
    assert lmzip.decompress(packed) == data
