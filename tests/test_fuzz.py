"""Fuzzing damaged ``.lmz`` input: every case must end in the original bytes or an
``LMZipError`` with a message; never another exception, a hang, different output, or an
allocation sized by a damaged field.

The mutation fuzzer runs in a child process whose address space is limited
(``MEMORY_LIMIT``): an allocation driven by a forged length (an index of 2**32 entries,
a 1 GiB dictionary, a 64 GiB read) raises ``MemoryError`` there and fails the test.
Each case is checked three ways: one-shot ``decompress``, ``scan_streams`` (what
``lmzip info`` does) and the incremental decompressor fed 7 bytes at a time.

Environment:
  LMZIP_FUZZ_CASES       mutation cases in the default run (default 3000)
  LMZIP_FUZZ_SEED        first RNG seed (default 0); a failure report names its seed
  LMZIP_FUZZ_LONG_CASES  cases of the long run (slow marker, default 200000)

The long run, as docs/reliability.md records it:
  LMZIP_SLOW_TESTS=1 nice -n 10 python -m pytest -q tests/test_fuzz.py -k long
or directly, any count and seed:
  python tests/test_fuzz.py CASES SEED
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lmzip
from lmzip import format as fmt
from lmzip.core import LMZipDecompressor, scan_streams
from lmzip.errors import LMZipError

#: the fast predictor every fuzz case decodes with: switch to "ngram" once it lands (issue 4)
FUZZ_MODEL = "ngram"

FUZZ_CASES = int(os.environ.get("LMZIP_FUZZ_CASES", "3000"))
FUZZ_SEED = int(os.environ.get("LMZIP_FUZZ_SEED", "0"))
LONG_CASES = int(os.environ.get("LMZIP_FUZZ_LONG_CASES", "200000"))
MEMORY_LIMIT = 1 << 30  # address space of the fuzzing process
CASE_SECONDS = 20  # one case taking longer is a hang

TEXT = (b"Alice was beginning to get very tired of sitting by her sister on the bank, "
        b"and of having nothing to do.\n") * 2
BINARY = bytes(random.Random(8).randrange(256) for _ in range(96)) + bytes(160) + b"\x01\x02" * 40


@dataclass(frozen=True)
class Seed:
    name: str
    original: bytes
    packed: bytes
    #: offsets where a stream ends: a cut there is a shorter valid file, not damage
    stream_ends: tuple[int, ...]


def make_seeds(model) -> list[Seed]:
    """Small files covering every record kind and coding method."""

    def one(name, data, **kw):
        packed = lmzip.compress(data, model=model, **kw)
        return Seed(name, data, packed, (len(packed),))

    seeds = []
    for v in (4, 3):  # the format written today, and the one before
        seeds += [
            one(f"v{v} model, 3 chunks", TEXT, chunk_size=64, method="model", format_version=v),
            one(f"v{v} lzma and stored", BINARY, chunk_size=160, method="classic", format_version=v),
            one(f"v{v} auto, mixed", TEXT + BINARY + TEXT[:50], chunk_size=200, format_version=v),
            one(f"v{v} empty", b"", format_version=v),
            one(f"v{v} model, 1 chunk", TEXT[:90], method="model", format_version=v),
        ]
    a, b = seeds[0], seeds[6]
    seeds.append(Seed("two streams, v4 and v3", a.original + b.original, a.packed + b.packed,
                      (len(a.packed), len(a.packed) + len(b.packed))))
    assert {c.method for s in seeds for c in _chunks(s.packed)} == {0, 1, 2}, "seeds must use every method"
    return seeds


def _chunks(packed: bytes) -> list[fmt.ChunkInfo]:
    return [c for s in scan_streams(io.BytesIO(packed)) for c in s.end.chunks]


def _sealed(body: bytes) -> bytes:
    return body + struct.pack("<I", fmt._crc(body))


def _header_end(packed: bytes) -> int:
    size = fmt.header_size(packed[: 1 << 17])
    assert size is not None
    return size


# version 4: the first record's CRC covers the header, so damage behind the CRCs is made by
# taking the first stream apart and putting it together again with every CRC recomputed

def _v4_parts(packed: bytes) -> tuple[bytes, list[bytes], list[bytes], bytes, bytes]:
    """(header, chunk heads without their CRC, payloads, end record, what follows)."""
    s = scan_streams(io.BytesIO(packed))[0]
    heads, payloads = [], []
    pos = s.header_size
    for (at, size), c in zip(s.records, s.end.chunks):
        heads.append(packed[at : at + size - 4])
        payloads.append(packed[at + size : at + size + c.payload_len])
        pos = at + size + c.payload_len
    return packed[: s.header_size], heads, payloads, packed[pos : s.compressed_size], packed[s.compressed_size :]


def _v4_join(header: bytes, heads: list[bytes], payloads: list[bytes], end: bytes, rest: bytes) -> bytes:
    out, prefix = [header], header
    for head, payload in zip(heads, payloads):
        out.append(head + struct.pack("<I", fmt._crc(prefix + head)) + payload)
        prefix = b""
    if end[:2] == b"\0\0" and len(end) == 6:  # an empty stream's end record covers the header
        end = end[:2] + struct.pack("<I", fmt._crc(prefix + end[:2]))
    return b"".join(out) + end + rest


def _v4_forged_header(rng: random.Random, packed: bytes, blob: bytes, sha: bytes) -> bytes:
    _, heads, payloads, end, rest = _v4_parts(packed)
    code = rng.choice([0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 200, 255])
    container = fmt.pack_varint(rng.choice([0, 1, 7, 63, 64, 100, 64 * (1 << 30), 64 * ((1 << 30) + 1), 2**62]))
    version = 4 if rng.random() < 0.9 else rng.randrange(256)
    header = fmt.MAGIC + bytes([version, code])
    if code != 1:
        header += container
        header += sha + fmt.pack_varint(len(blob)) + blob if code == 0 else rng.randbytes(4)
    return _v4_join(header, heads, payloads, end, rest)


def _v4_forged_chunk(rng: random.Random, packed: bytes) -> bytes:
    header, heads, payloads, end, rest = _v4_parts(packed)
    fields = [rng.choice(_SIZES) if rng.random() < 0.7 else rng.randrange(2**34) for _ in range(3)]
    fields[0] = fields[0] << 3 | rng.randrange(8)
    head = b"".join(fmt.pack_varint(f) for f in fields) + rng.randbytes(4)
    return _v4_join(header, [head] + heads, [rng.randbytes(rng.randrange(0, 48))] + payloads, end, rest)


def _v4_forged_end(rng: random.Random, packed: bytes) -> bytes:
    header, heads, payloads, _, rest = _v4_parts(packed)
    n_chunks = rng.choice([0, 1, 2, 3, 1000, 2**32 - 1])
    body = b"\0" + fmt.pack_varint(n_chunks)
    if n_chunks >= 2 or rng.random() < 0.3:
        blob = rng.randbytes(rng.choice([0, 6, 9, 12, rng.randrange(60)]))
        body += fmt.pack_varint(rng.choice([len(blob), 3 * n_chunks, rng.randrange(100)])) + blob
        body = _sealed(body)
        body += struct.pack("<I", rng.choice([len(body) + 4, rng.randrange(2**32)]))
    elif n_chunks == 0:
        body = _sealed(body)
    return _v4_join(header, heads, payloads, body, rest)


def _v4_resealed(rng: random.Random, packed: bytes) -> bytes:
    header, heads, payloads, end, rest = _v4_parts(packed)
    if not heads:
        return packed
    head = bytearray(heads[0])
    pos = rng.randrange(len(head))
    head[pos] = rng.randrange(256) if rng.random() < 0.5 else head[pos] ^ (1 << rng.randrange(8))
    return _v4_join(header, [bytes(head)] + heads[1:], payloads, end, rest)


# ---------------------------------------------------------------------------- mutations


def _forged_header(rng: random.Random, packed: bytes) -> bytes:
    params = rng.choice([
        {"backend": "order1", "model": "order1"},
        {"backend": "order1", "model": "order1", "context": 10**12},
        {"backend": "order1", "model": "/etc/hostname"},
        {"backend": "order1", "model": "x" * 5000},
        {"backend": "llama.cpp 0.3.36", "context": -5, "model": "smollm2-135m"},
        {"backend": "llama.cpp 0.3.36", "context": 10**9, "model": "smollm2-135m"},
        {"backend": "llama.cpp 0.3.36", "context": True, "model": "smollm2-135m"},
        {"backend": "llama.cpp 0.3.36", "context": 2.5, "model": "smollm2-135m"},
        {"model": 5}, {"model": ["order1"]}, {},
    ])
    blob = fmt.canonical_json(params) if rng.random() < 0.8 else rng.choice(
        [b"[" * 60000, b"{" * 3000, b"null", b"\xff\xfe", b'{"a":1e99999}', b"9" * 5000, b""])
    sha = bytes(32) if rng.random() < 0.7 else rng.randbytes(32)
    if packed[4] == 4:
        return _v4_forged_header(rng, packed, blob, sha)
    version = 3 if rng.random() < 0.9 else rng.randrange(256)
    flags = 0 if rng.random() < 0.9 else rng.randrange(256)
    head = _sealed(struct.pack("<4sBBH32s", fmt.MAGIC, version, flags, len(blob), sha) + blob)
    return head + packed[_header_end(packed):]


_SIZES = [0, 1, 2, 3, 4, 5, 8, 16, 64, 100, 1 << 20, 1 << 30, (1 << 30) + 1, 2**32 - 1]


def _forged_chunk(rng: random.Random, packed: bytes) -> bytes:
    """A chunk record with any fields and a valid record CRC, at the start of the stream."""
    if packed[4] == 4:
        return _v4_forged_chunk(rng, packed)
    fields = [rng.choice(_SIZES) if rng.random() < 0.7 else rng.randrange(2**32) for _ in range(4)]
    method = rng.choice([0, 0, 1, 2, 2, 3, 255])
    payload = rng.randbytes(rng.randrange(0, 48))
    if method == 2 and payload and rng.random() < 0.5:
        payload = bytes([rng.randrange(8), rng.randrange(256)]) + payload  # plausible LZMA settings
    record = _sealed(struct.pack("<IIIIB", *fields, method)) + payload
    at = _header_end(packed)
    return packed[:at] + record + packed[at:]


def _forged_end(rng: random.Random, packed: bytes) -> bytes:
    """The first stream's end record replaced by one with a valid CRC and any counts."""
    if packed[4] == 4:
        return _v4_forged_end(rng, packed)
    end_size = int.from_bytes(packed[-8:-4], "little")
    n_chunks = rng.choice([0, 1, 2, 3, 1000, 2**32 - 1])
    body = struct.pack("<IIQ", 0, n_chunks, rng.choice([0, 1, 300, 2**64 - 1]))
    body += rng.randbytes(rng.choice([0, 17, 34, 51, rng.randrange(60)]))
    tail = struct.pack("<I4s", rng.choice([len(body) + 12, rng.randrange(2**32)]), fmt.END_MAGIC)
    return packed[: len(packed) - end_size] + _sealed(body) + tail


def _resealed(rng: random.Random, packed: bytes) -> bytes:
    """A field of the first chunk record changed and its record CRC fixed: reaches the checks
    behind the CRC (sizes, methods, payload decoding, the index)."""
    if packed[4] == 4:
        return _v4_resealed(rng, packed)
    at = _header_end(packed)
    if int.from_bytes(packed[at : at + 4], "little") == 0:
        return packed
    head = bytearray(packed[at : at + 17])
    pos = rng.randrange(17)
    head[pos] = rng.randrange(256) if rng.random() < 0.5 else head[pos] ^ (1 << rng.randrange(8))
    return packed[:at] + _sealed(bytes(head)) + packed[at + 21 :]


def mutate(rng: random.Random, packed: bytes) -> tuple[str, bytes]:
    """One random kind of damage: (its name, the damaged file)."""
    op = rng.choice(["flip", "flips", "set", "insert", "delete", "truncate", "duplicate", "splice",
                     "forged header", "forged chunk", "forged end", "resealed chunk"])
    b = bytearray(packed)
    if op == "flip":
        pos = rng.randrange(len(b))
        b[pos] ^= 1 << rng.randrange(8)
    elif op == "flips":
        for _ in range(rng.randrange(2, 9)):
            pos = rng.randrange(len(b))
            b[pos] ^= 1 << rng.randrange(8)
    elif op == "set":
        b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == "insert":
        pos = rng.randrange(len(b) + 1)
        b[pos:pos] = rng.randbytes(rng.randrange(1, 17))
    elif op == "delete":
        pos = rng.randrange(len(b))
        del b[pos : pos + rng.randrange(1, 17)]
    elif op == "truncate":
        del b[rng.randrange(len(b)) :]
    elif op == "duplicate":
        pos = rng.randrange(len(b))
        end = min(len(b), pos + rng.randrange(1, 64))
        b[end:end] = b[pos:end]
    elif op == "splice":  # a piece of the file moved elsewhere
        pos = rng.randrange(len(b))
        piece = b[pos : pos + rng.randrange(1, 32)]
        del b[pos : pos + len(piece)]
        dest = rng.randrange(len(b) + 1)
        b[dest:dest] = piece
    elif op == "forged header":
        b = bytearray(_forged_header(rng, packed))
    elif op == "forged chunk":
        b = bytearray(_forged_chunk(rng, packed))
    elif op == "forged end":
        b = bytearray(_forged_end(rng, packed))
    else:
        b = bytearray(_resealed(rng, packed))
    return op, bytes(b)


# ---------------------------------------------------------------------------- the oracle


def _stream_decompress(data: bytes, model) -> bytes:
    """The incremental decompressor, 7 bytes in and at most 5 out at a time, all streams."""
    out = bytearray()
    rest = data
    while True:
        d = LMZipDecompressor(model=model)
        pos = 0
        while not d.eof:
            if d.needs_input:
                if pos >= len(rest):
                    raise lmzip.TruncatedError("input ended inside a stream")
                out += d.decompress(rest[pos : pos + 7], max_length=5)
                pos += 7
            else:
                out += d.decompress(b"", max_length=5)
        rest = d.unused_data + rest[pos:]
        if not rest:
            return bytes(out)
        if not rest.startswith(fmt.MAGIC[: len(rest)]):
            raise lmzip.FormatError("trailing data")


def check(seed: Seed, data: bytes, model) -> str | None:
    """None if ``data`` decodes to the seed's original (or a whole-stream prefix of it) or
    fails with an LMZipError with a message in every reader; else what went wrong."""
    valid = {seed.original}
    if data == seed.packed[: len(data)] and len(data) in seed.stream_ends:  # a shorter valid file
        valid.add(lmzip.decompress(data, model=model))
    readers = {
        "decompress": lambda: lmzip.decompress(data, model=model),
        # buffered like a real file: read(n) reserves n bytes, as lmzip info's reads do
        "scan_streams": lambda: scan_streams(io.BufferedReader(io.BytesIO(data))),
        "incremental": lambda: _stream_decompress(data, model),
    }
    for name, read in readers.items():
        started = time.monotonic()
        try:
            result = read()
        except LMZipError as exc:
            result = exc
        except BaseException as exc:  # MemoryError, RecursionError, a hang's alarm, anything
            return f"{name}: {type(exc).__name__}: {str(exc)[:200]}"
        seconds = time.monotonic() - started
        if seconds > CASE_SECONDS:
            return f"{name}: took {seconds:.0f} s"
        if isinstance(result, LMZipError):
            if not str(result):
                return f"{name}: {type(result).__name__} without a message"
        elif name != "scan_streams" and result not in valid:
            return f"{name}: returned {len(result)} bytes that differ from the original, without an error"
    return None


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"case still running after {CASE_SECONDS} s")


def run_fuzz(cases: int, first_seed: int) -> dict:
    """Run ``cases`` mutation cases (case i uses RNG seed first_seed + i)."""
    from lmzip.predictors.registry import load_model

    model = load_model(FUZZ_MODEL)
    seeds = make_seeds(model)
    signal.signal(signal.SIGALRM, _alarm)
    failures, by_op = [], {}
    started = time.monotonic()
    for i in range(cases):
        rng = random.Random(first_seed + i)
        seed = rng.choice(seeds)
        op, data = mutate(rng, seed.packed)
        by_op[op] = by_op.get(op, 0) + 1
        signal.alarm(CASE_SECONDS * 4)
        try:
            problem = check(seed, data, model)
        except _Hang as exc:
            problem = str(exc)
        finally:
            signal.alarm(0)
        if problem:
            failures.append({"rng_seed": first_seed + i, "seed": seed.name, "op": op, "problem": problem,
                             "data": data.hex() if len(data) < 4096 else data[:4096].hex() + "..."})
    return {"cases": cases, "first_seed": first_seed, "failures": failures, "by_op": by_op,
            "seconds": round(time.monotonic() - started, 1)}


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_in_limited_process(cases: int, first_seed: int, timeout: float) -> dict:
    """run_fuzz in a child process with at most MEMORY_LIMIT of address space."""

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}  # BLAS thread stacks are address space too
    env.pop("LMZIP_FUZZ_BREAK", None)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(cases), str(first_seed)],
                          capture_output=True, preexec_fn=_limit_memory, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return json.loads(proc.stdout.decode().splitlines()[-1])


def _report(result: dict) -> str:
    lines = [f"{len(result['failures'])} failures in {result['cases']} cases (seeds {result['first_seed']}..)"]
    lines += [f"  seed {f['rng_seed']} [{f['seed']}; {f['op']}]: {f['problem']}" for f in result["failures"][:20]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def model():
    from lmzip.predictors.registry import load_model

    return load_model(FUZZ_MODEL)


@pytest.fixture(scope="module")
def seeds(model):
    return make_seeds(model)


def test_mutation_fuzz(tmp_path):
    result = run_in_limited_process(FUZZ_CASES, FUZZ_SEED, timeout=900)
    print(f"fuzz: {result['cases']} cases in {result['seconds']} s, by kind {result['by_op']}")
    assert result["cases"] == FUZZ_CASES
    assert len(result["by_op"]) == 12  # every kind of damage was tried
    assert not result["failures"], _report(result)


@pytest.mark.slow
def test_long_mutation_fuzz():
    result = run_in_limited_process(LONG_CASES, FUZZ_SEED + 10**6, timeout=6 * 3600)
    print(f"long fuzz: {result['cases']} cases in {result['seconds']} s, by kind {result['by_op']}")
    assert not result["failures"], _report(result)


def test_the_fuzzer_can_fail(model, seeds, monkeypatch):
    """The oracle is not vacuous: wrong output and foreign exceptions are reported."""
    seed = seeds[0]
    assert check(seed, seed.packed, model) is None
    wrong = Seed(seed.name, b"something else", seed.packed, ())
    assert "differ from the original" in check(wrong, seed.packed, model)
    monkeypatch.setattr(lmzip, "decompress", lambda data, model: [][1])
    assert "IndexError" in check(wrong, seed.packed, model)


def test_the_memory_limit_catches_allocations_by_forged_lengths():
    """With the index-size check removed (as before this suite), forged end records make
    the child allocate by their chunk count: the memory limit turns that into failures."""
    env = {**os.environ, "LMZIP_FUZZ_BREAK": "index"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "300", "0"], capture_output=True,
                          preexec_fn=_limit_memory, timeout=300, env={**env, "OPENBLAS_NUM_THREADS": "1"})
    result = json.loads(proc.stdout.decode().splitlines()[-1])
    assert any("MemoryError" in f["problem"] for f in result["failures"]), _report(result)


def test_truncation_at_every_position(model, seeds):
    for seed in seeds:
        boundaries = {b + d for start, end in _record_spans(seed.packed) for b in (start, end) for d in (-1, 0, 1)}
        for cut in range(len(seed.packed)):
            if cut in boundaries:  # every reader at record boundaries
                assert check(seed, seed.packed[:cut], model) is None, (seed.name, cut)
            elif cut not in seed.stream_ends:
                with pytest.raises((lmzip.TruncatedError, lmzip.FormatError)):
                    lmzip.decompress(seed.packed[:cut], model=model)


def _record_spans(packed: bytes) -> list[tuple[int, int]]:
    """Byte ranges of headers, chunk records (without payload) and end records."""
    spans, pos = [], 0
    if packed[4:5] == b"\x04":  # (the seeds with two streams start with a version 4 one)
        for s in scan_streams(io.BytesIO(packed)):
            spans.append((pos, pos + s.header_size))
            end = pos + s.header_size
            for at, size in s.records:
                spans.append((pos + at, pos + at + size))
                end = pos + at + size
            for c in s.end.chunks[len(s.records) - 1 :] if s.records else []:
                end += c.payload_len
            spans.append((end, pos + s.compressed_size))
            pos += s.compressed_size
        return spans
    while pos < len(packed):
        end = pos + fmt.header_size(packed[pos : pos + 8])
        spans.append((pos, end))
        pos = end
        while True:
            info = fmt.parse_chunk_record(packed, pos, 3)
            if info is None:
                size = fmt.end_record_size(packed, pos, version=3)
                spans.append((pos, pos + size))
                pos += size
                break
            spans.append((pos, pos + fmt.CHUNK_RECORD_SIZE))
            pos += fmt.CHUNK_RECORD_SIZE + info.payload_len
    return spans


def test_every_bit_flip_in_a_record_is_an_error(model, seeds):
    """Headers, chunk records and end records are all covered by CRCs: any single bit flip
    there is an error, never a silent success."""
    for seed in seeds:
        for start, end in _record_spans(seed.packed):
            for pos in range(start, end):
                bad = bytearray(seed.packed)
                bad[pos] ^= 1 << (pos % 8)  # every byte, the bit number cycling
                with pytest.raises(LMZipError):
                    lmzip.decompress(bytes(bad), model=model)


@given(data=st.binary(max_size=600), method=st.sampled_from(["auto", "model", "classic"]),
       chunk_size=st.integers(1, 300))
def test_any_bytes_round_trip(model, data, method, chunk_size):
    packed = lmzip.compress(data, model=model, method=method, chunk_size=chunk_size)
    assert lmzip.decompress(packed, model=model) == data


@given(choice=st.integers(0, 10), edits=st.lists(
    st.tuples(st.sampled_from(["set", "insert", "delete"]), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    min_size=1, max_size=4))
def test_hypothesis_mutations(model, seeds, choice, edits):
    seed = seeds[choice]
    b = bytearray(seed.packed)
    for op, where, blob in edits:
        pos = where % (len(b) + 1)
        if op == "set":
            b[pos : pos + len(blob)] = blob
        elif op == "insert":
            b[pos:pos] = blob
        else:
            del b[pos : pos + len(blob)]
    assert check(seed, bytes(b), model) is None


@given(tail=st.binary(max_size=200))
def test_anything_after_a_valid_header(model, seeds, tail):
    seed = seeds[0]
    data = seed.packed[: _header_end(seed.packed)] + tail
    assert check(seed, data, model) is None


def _break_index_check() -> None:
    """For the self-test: size the index by its declared count again, unchecked."""
    original = fmt.end_record_size
    fmt.end_record_size = lambda prefix, offset=0, chunks_read=None, version=fmt.VERSION: original(
        prefix, offset, version=version)


if __name__ == "__main__":  # the child process of run_in_limited_process
    if os.environ.get("LMZIP_FUZZ_BREAK") == "index":
        _break_index_check()
    print(json.dumps(run_fuzz(int(sys.argv[1]), int(sys.argv[2]))))
