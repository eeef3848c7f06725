"""Lockstep groups: chunks coded together, one batched model evaluation per step.

The decoder must replay the compressor's schedule exactly.  ``BatchSensitive`` is a
model whose scores depend on how many streams each evaluation holds (as llama.cpp's
logits do), so any deviation in the replayed batches breaks the round trip here.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import lmzip
from lmzip import core
from lmzip import format as fmt
from lmzip.errors import ChecksumError, CorruptError, FormatError
from lmzip.predictors.base import Model, Stream, StreamGroup
from lmzip.predictors.order1 import Order1Model

from .conftest import corpus_slice


class _SensitiveStream(Stream):
    def __init__(self, base: Stream):
        self.base = base
        self.batch = 1
        self.pending: int | None = None

    def scores(self) -> np.ndarray:
        # a tilt toward 'e' that grows with the size of the batch that evaluated this
        # stream: a wrong batch size changes the distribution
        s = self.base.scores().copy()
        s[101] += np.float32(0.5 * self.batch)
        return s

    def push(self, token: int) -> None:
        self.pending = token


class _SensitiveGroup(StreamGroup):
    def __init__(self, streams, log):
        super().__init__(streams)
        self.log = log
        log.append(len(streams))  # the start: all streams in the first batch
        for s in streams:
            s.batch = len(streams)

    def advance(self) -> None:
        todo = [s for s in self.streams if s.pending is not None]
        if not todo:
            return
        self.log.append(len(todo))
        for s in todo:
            s.base.push(s.pending)
            s.pending = None
            s.batch = len(todo)


class BatchSensitive(Model):
    """order-1 counts, evaluated in 'batches' whose size changes the scores."""

    batches = True

    def __init__(self):
        self.inner = Order1Model()
        self.name = "order1"
        self.tokenizer = self.inner.tokenizer
        self.log: list[int] = []

    def params(self):
        return self.inner.params()

    def open_stream(self):
        return _SensitiveStream(self.inner.open_stream())

    def open_group(self, lengths, width=1):
        assert 1 <= len(lengths) <= width
        return _SensitiveGroup([self.open_stream() for _ in lengths], self.log)


def _texts(n: int, size: int) -> list[bytes]:
    return [corpus_slice("alice29.txt", 5000 + i * 3000, size) for i in range(n)]


def _chunks(packed: bytes) -> list[fmt.ChunkInfo]:
    import io

    from lmzip.core import scan_streams

    return list(scan_streams(io.BytesIO(packed))[0].end.chunks)


@pytest.mark.parametrize("streams", [1, 2, 3, 8])
def test_groups_round_trip_and_record_their_layout(streams):
    data = b"".join(_texts(5, 700))
    model = BatchSensitive()
    packed = lmzip.compress(data, model=model, chunk_size=700, streams=streams, method="model")
    header = fmt.parse_header(packed)
    # a whole input shorter than one group is coded at its own width
    assert header.params.get("streams", 1) == min(streams, 5)
    assert header.params["chunk_size"] == 700
    chunks = _chunks(packed)
    assert len(chunks) == 5
    starts = [i for i, c in enumerate(chunks) if c.starts_group]
    assert starts == list(range(0, 5, streams))
    assert lmzip.decompress(packed, model=BatchSensitive()) == data
    # the batches shrink as chunks end: never wider than the stream's width
    assert max(model.log) <= streams


def test_each_group_is_one_batch_per_step():
    data = b"".join(_texts(3, 600))
    model = BatchSensitive()
    lmzip.compress(data, model=model, chunk_size=600, streams=3, method="model")
    assert model.log[0] == 3  # the start tokens, together
    assert 3 in model.log and model.log == sorted(model.log, reverse=True)


def test_a_wrong_width_does_not_decode_silently():
    data = b"".join(_texts(4, 600))
    packed = bytearray(lmzip.compress(data, model=BatchSensitive(), chunk_size=600, streams=4, method="model",
                                      format_version=3))  # (version 4: the header CRC covers the width too)
    header_len = fmt.header_size(bytes(packed[:8]))
    params = fmt.parse_header(bytes(packed)).params
    forged = fmt.pack_header(bytes(32), {**params, "streams": 2}, 3)
    with pytest.raises(CorruptError):
        lmzip.decompress(forged + bytes(packed[header_len:]), model=BatchSensitive())


def test_a_chunk_stored_after_the_model_ran_is_replayed(monkeypatch):
    # a text chunk LZMA codes far better (random letters repeating every 500 bytes) between
    # two ordinary ones: it is stored as LZMA but keeps its tokens, so the decoder feeds
    # them to the model and the other chunks see the batches they were coded with
    rng = random.Random(5)
    block = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz ") for _ in range(500))
    parts = _texts(1, 2000) + [block * 4] + _texts(2, 2000)[1:]
    data = b"".join(parts)
    model = BatchSensitive()
    classic = core.compress_classic  # order-1 loses to LZMA on short texts: only the block may win
    monkeypatch.setattr(core, "compress_classic",
                        lambda d, v: classic(d, v) if d == block * 4 else (fmt.METHOD_STORED, d))
    packed = lmzip.compress(data, model=model, chunk_size=2000, streams=4)
    chunks = _chunks(packed)
    replayed = [c for c in chunks if c.method != fmt.METHOD_MODEL]
    assert len(replayed) == 1 and replayed[0].scheduled and not replayed[0].starts_group
    assert chunks[0].starts_group and chunks[0].method == fmt.METHOD_MODEL
    assert lmzip.decompress(packed, model=BatchSensitive()) == data


def test_interleaved_binary_chunks_stay_in_order():
    rng = random.Random(9)
    noise = bytes(rng.randrange(256) for _ in range(5000))
    texts = _texts(3, 3000)
    data = texts[0] + noise + texts[1] + noise[:4096] + texts[2]
    packed = lmzip.compress(data, model=BatchSensitive(), chunk_size=3000, streams=4)
    chunks = _chunks(packed)
    assert [c.method for c in chunks].count(fmt.METHOD_LZMA) >= 2
    assert sum(c.starts_group for c in chunks) == 1
    assert lmzip.decompress(packed, model=BatchSensitive()) == data


def test_incremental_compressor_and_decompressor_agree_with_one_shot():
    data = b"".join(_texts(7, 500))
    one_shot = lmzip.compress(data, model=BatchSensitive(), chunk_size=500, streams=3, method="model")
    comp = lmzip.LMZipCompressor(BatchSensitive(), chunk_size=500, streams=3, method="model")
    pieces = [comp.compress(data[i : i + 333]) for i in range(0, len(data), 333)]
    assert b"".join(pieces) + comp.flush() == one_shot
    assert any(pieces)  # full groups leave before flush()
    d = lmzip.LMZipDecompressor(BatchSensitive())
    out = b"".join(d.decompress(one_shot[i : i + 100]) for i in range(0, len(one_shot), 100))
    assert out == data and d.eof


def _records(packed: bytes):
    """(offset, info) of every chunk record."""
    pos = fmt.header_size(packed[:8])
    out = []
    while True:
        info = fmt.parse_chunk_record(packed, pos, 3)
        if info is None:
            return out
        out.append((pos, info))
        pos += fmt.CHUNK_RECORD_SIZE + info.payload_len


def _rewrite(packed: bytes, offset: int, info: fmt.ChunkInfo) -> bytes:
    head = fmt.pack_chunk_record(info, bytes(info.payload_len), 3)[: fmt.CHUNK_RECORD_SIZE]
    return packed[:offset] + head + packed[offset + fmt.CHUNK_RECORD_SIZE:]


def test_damaged_group_marks_are_refused():
    data = b"".join(_texts(4, 600))
    packed = lmzip.compress(data, model=BatchSensitive(), chunk_size=600, streams=2, method="model",
                            format_version=3)
    (o0, c0), (o1, c1) = _records(packed)[:2]
    # the group's first chunk loses its mark: its chunks continue a group never started
    lost = _rewrite(packed, o0, fmt.ChunkInfo(c0.raw_len, c0.n_tokens, c0.payload_len, c0.data_crc))
    with pytest.raises(CorruptError, match="never started"):
        lmzip.decompress(lost, model=BatchSensitive())
    # a mark in the middle of a group splits it: other batches, caught by the chunk CRCs
    # (or by the index, which still has the true layout)
    split = _rewrite(packed, o1, fmt.ChunkInfo(c1.raw_len, c1.n_tokens, c1.payload_len, c1.data_crc,
                                               starts_group=True))
    with pytest.raises((ChecksumError, CorruptError)):
        lmzip.decompress(split, model=BatchSensitive())


@pytest.mark.parametrize("width", [0, core.MAX_STREAMS + 1, "8", 2.5, None])
def test_header_widths_out_of_range_are_refused(width):
    # version 3 (JSON): the version 4 container field holds only widths 1 to 1024
    packed = lmzip.compress(b"hello world " * 30, model=BatchSensitive(), chunk_size=100, streams=2,
                            method="model", format_version=3)
    header_len = fmt.header_size(packed[:8])
    params = {**fmt.parse_header(packed).params, "streams": width}
    with pytest.raises(FormatError, match="lockstep streams"):
        lmzip.decompress(fmt.pack_header(bytes(32), params, 3) + packed[header_len:], model=BatchSensitive())


def test_streams_argument_is_checked():
    with pytest.raises(ValueError, match="streams"):
        lmzip.LMZipCompressor(BatchSensitive(), streams=0)
    with pytest.raises(ValueError, match="streams"):
        lmzip.LMZipCompressor(BatchSensitive(), streams=core.MAX_STREAMS + 1)


def test_default_width_follows_the_backend(order1):
    assert lmzip.LMZipCompressor(order1).streams == 1  # no batching: chunk by chunk
    assert lmzip.LMZipCompressor(BatchSensitive()).streams == core.DEFAULT_STREAMS


def test_an_input_shorter_than_a_group_is_coded_at_its_own_width():
    model = BatchSensitive()
    one = lmzip.compress(_texts(1, 700)[0], model=model, method="model")
    assert "streams" not in fmt.parse_header(one).params  # one chunk: the single-stream schedule
    assert max(model.log) == 1
    data = b"".join(_texts(10, 700))
    packed = lmzip.compress(data, model=BatchSensitive(), chunk_size=700, streams=4, method="model")
    assert fmt.parse_header(packed).params["streams"] == 4  # several groups: the width asked for
    assert [i for i, c in enumerate(_chunks(packed)) if c.starts_group] == [0, 4, 8]
    for p, d in ((one, _texts(1, 700)[0]), (packed, data)):
        assert lmzip.decompress(p, model=BatchSensitive()) == d


def _three_chunks() -> bytes:
    return b"".join(corpus_slice("alice29.txt", 20000 + i * 9000, 900) for i in range(3))


def test_llama_groups_round_trip(llama_llm):
    """The real model: 3 chunks in one llama.cpp context, each its own sequence, sliding
    its 128-token window; decoded by the same schedule, bit for bit."""
    llm = llama_llm
    data = _three_chunks()
    packed = lmzip.compress(data, model=llm, chunk_size=900, streams=3)
    assert fmt.parse_header(packed).params["streams"] == 3
    chunks = _chunks(packed)
    assert [c.starts_group for c in chunks] == [True, False, False]
    assert all(c.n_tokens > 128 for c in chunks)  # every window slides
    assert lmzip.decompress(packed, model=llm) == data
    # the batched schedule is not the serial one: a width-1 file differs
    serial = lmzip.compress(data, model=llm, chunk_size=900, streams=1)
    assert serial != packed and lmzip.decompress(serial, model=llm) == data


def test_portable_groups_code_each_chunk_as_it_would_be_coded_alone(llm):
    """The default engine: a chunk's logits do not depend on the streams beside it, so a
    group of 3 codes every chunk to the same size as the serial schedule, and decodes."""
    data = _three_chunks()
    packed = lmzip.compress(data, model=llm, chunk_size=900, streams=3)
    chunks = _chunks(packed)
    assert [c.starts_group for c in chunks] == [True, False, False]
    assert all(c.n_tokens > 128 for c in chunks)  # every window slides
    assert lmzip.decompress(packed) == data
    serial = lmzip.compress(data, model=llm, chunk_size=900, streams=1)
    assert [(c.payload_len, c.data_crc) for c in _chunks(serial)] == [(c.payload_len, c.data_crc) for c in chunks]
    assert lmzip.decompress(serial) == data


def test_a_group_wider_than_the_machine_holds_is_coded_in_slices(llm, monkeypatch):
    """The engine's streams are independent: a group wider than this machine holds at once
    (a wide file from a GPU, decoded on a CPU) is coded and decoded in slices, and the
    file is byte for byte the one coded all at once."""
    from lmzip import codec
    from lmzip.predictors import portable

    data = b"".join(corpus_slice("alice29.txt", 20000 + i * 5000, 400) for i in range(5))
    whole = lmzip.compress(data, model=llm, chunk_size=400, streams=5)
    assert len(_chunks(whole)) == 5
    opened = []
    real_open = portable.PortableModel.open_group
    monkeypatch.setattr(portable.PortableModel, "open_group",
                        lambda self, lengths, width=1: opened.append(len(lengths)) or real_open(self, lengths, width))
    monkeypatch.setattr(portable.PortableModel, "resident_width", lambda self: 2)
    assert codec._slices(llm, 5) == [range(0, 2), range(2, 4), range(4, 5)]
    sliced = lmzip.compress(data, model=llm, chunk_size=400, streams=5)
    assert opened == [2, 2, 1] and sliced == whole
    opened.clear()
    assert lmzip.decompress(whole, model=llm) == data and opened == [2, 2, 1]


def test_a_batch_sensitive_model_is_never_sliced():
    model = BatchSensitive()
    model.resident_width = lambda: 2
    from lmzip import codec

    assert codec._slices(model, 5) == [range(5)]


def _without_lookahead(monkeypatch):
    from lmzip.predictors import portable

    monkeypatch.setattr(portable._PortableGroup, "lookahead", StreamGroup.lookahead)


@pytest.mark.parametrize("streams", [1, 3])
def test_the_compressors_lookahead_writes_the_same_bytes(llm, monkeypatch, streams):
    """Compression tells the engine's group every chunk's tokens: it evaluates several tokens
    of a stream per call (the weights read once for them).  The scores are the same
    numbers, so the file is byte for byte the one coded a token at a time, and decodes.
    The text holds escapes (tokens the model is never shown) and the window slides."""
    data = b"".join(corpus_slice("alice29.txt", 30000 + i * 7000, 700) for i in range(3))
    data += bytes(range(200, 256)) + "ünïcödé ✓".encode() * 8
    ahead = lmzip.compress(data, model=llm, chunk_size=800, streams=streams)
    _without_lookahead(monkeypatch)
    one_by_one = lmzip.compress(data, model=llm, chunk_size=800, streams=streams)
    assert ahead == one_by_one
    assert lmzip.decompress(ahead) == data


def test_the_lookahead_refuses_tokens_it_was_not_told(llm):
    """The engine has already seen the announced tokens: a stream pushed anything else must
    stop, not code with the wrong context."""
    with llm.open_group([6], 1) as g:
        g.lookahead([[10, 11, 12, 13, 14, 15]])
        s = g.streams[0]
        s.push(10)
        g.advance()
        s.push(99)
        with pytest.raises(lmzip.LMZipError, match="lookahead"):
            g.advance()


@pytest.mark.parametrize("version", [4, 3])
def test_groups_wider_than_64_round_trip(version):
    """A width of 100 (version 4: the WIDE header) through the one-shot functions, the
    incremental decompressor and the record walk; the decoder replays batches of 100."""
    import io

    data = corpus_slice("alice29.txt", 0, 250 * 40)
    model = BatchSensitive()
    packed = lmzip.compress(data, model=model, chunk_size=40, streams=100, method="model",
                            format_version=version)
    assert max(model.log) == 100
    header = fmt.parse_header(packed)
    assert header.params["streams"] == 100 and header.params["chunk_size"] == 40
    assert version == 3 or header.raw[5] & fmt.WIDE
    assert [i for i, c in enumerate(_chunks(packed)) if c.starts_group] == [0, 100, 200]
    model.log.clear()
    assert lmzip.decompress(packed, model=model) == data
    assert max(model.log) == 100
    d = lmzip.LMZipDecompressor(model=BatchSensitive())
    assert b"".join(d.decompress(packed[i : i + 777]) for i in range(0, len(packed), 777)) == data and d.eof
    [info] = core.scan_streams(io.BytesIO(packed))
    assert info.end.original_len == len(data) and len(info.end.chunks) == 250


def test_the_widest_group_round_trips(order1):
    data = corpus_slice("alice29.txt", 0, 8 * core.MAX_STREAMS + 1)  # one group of the widest width, and one more
    packed = lmzip.compress(data, model=order1, chunk_size=8, streams=core.MAX_STREAMS, method="model")
    assert fmt.parse_header(packed).params["streams"] == core.MAX_STREAMS
    assert lmzip.decompress(packed) == data


def test_a_backend_narrower_than_the_format_refuses_a_wider_group():
    class Narrow(BatchSensitive):
        max_width = 64

    lmzip.LMZipCompressor(Narrow(), streams=64)
    with pytest.raises(ValueError, match="between 1 and 64 with order1's backend"):
        lmzip.LMZipCompressor(Narrow(), streams=65)


def test_cli_writes_and_reads_wide_groups(tmp_path, capsys):
    from .test_cli import run, run_here

    src = tmp_path / "in.txt"
    src.write_bytes(corpus_slice("alice29.txt", 0, 130 * 50))
    opts = ["-m", "ngram", "--method", "model", "--chunk-size", "50", "--workers", "1"]
    assert run_here("compress", *opts, "--streams", "65", str(src)) == 0
    packed = (tmp_path / "in.txt.lmz").read_bytes()
    assert fmt.parse_header(packed).params["streams"] == 65 and packed[5] & fmt.WIDE
    assert run_here("info", str(tmp_path / "in.txt.lmz")) == 0
    assert "65 stream(s) in lockstep" in capsys.readouterr().out
    assert run_here("decompress", "-o", str(tmp_path / "out"), str(tmp_path / "in.txt.lmz")) == 0
    assert (tmp_path / "out").read_bytes() == src.read_bytes()
    r = run("compress", *opts, "--streams", str(core.MAX_STREAMS + 1), "-c", str(src), check=2)
    assert b"1<=x<=1024" in r.stderr


class _LaterEngine:
    """The C engine behind a GPU's interface (``rows_job``): each call's rows are computed
    at once but taken later, and the group's launches and takes are logged."""

    def __init__(self, engine, ahead_rows: int):
        self._engine = engine
        self.ahead_rows = ahead_rows
        self.log: list[tuple[str, int]] = []
        self.widths: list[int] = []  # streams per call
        self.jobs = 0

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def rows_job(self, handles, lists, width, every=True):
        n = self._engine.n_vocab
        got = np.empty((sum(map(len, lists)) if every else len(lists), n), np.float32)
        (self._engine.eval_rows if every else self._engine.eval)(handles, lists, got)
        rows = np.full((len(got), width), -np.inf, np.float32)
        rows[:, :n] = got
        job = self.jobs
        self.jobs += 1
        self.log.append(("launch", job))
        self.widths.append(len(handles))
        log = self.log

        class Job:
            def rows(self):
                log.append(("take", job))
                return rows

        return Job()


@pytest.mark.parametrize("settings", ["default", "skip"])
def test_evaluating_the_next_block_while_the_host_works_writes_the_same_bytes(llm, monkeypatch, settings):
    """An engine whose calls return before their work is done (a GPU's ``rows_job``) is
    given each stream's next block of tokens as soon as the stream starts on its last, so
    the GPU evaluates one block while the host mixes and codes the other.  The file is
    byte for byte the C engine's, with escapes, skipped tokens, chunks of different
    lengths and blocks of a few tokens; the decompressor (one token a call) decodes it."""
    from lmzip.predictors.mixing import MixedModel, MixSettings

    model = llm if settings == "default" else MixedModel(llm.base, MixSettings(match=4, skip=4))
    data = b"".join(corpus_slice("alice29.txt", 40000 + i * 3000, n) for i, n in enumerate((900, 500, 700)))
    data += bytes(range(200, 256)) + "ünïcödé ✓".encode() * 6 + corpus_slice("alice29.txt", 1000, 300)
    plain = lmzip.compress(data, model=model, chunk_size=900, streams=3)
    later = _LaterEngine(llm.base._engine, ahead_rows=12)  # 4 tokens per stream and block
    monkeypatch.setattr(llm.base, "_engine", later)
    assert lmzip.compress(data, model=model, chunk_size=900, streams=3) == plain
    launches = [k for what, k in later.log if what == "launch"]
    assert len(launches) > 50
    # each block (after the start tokens') was launched while the host still coded with the
    # rows of the one before it: the GPU's work and the host's overlap
    last_take = {k: i for i, (what, k) in enumerate(later.log) if what == "take"}
    for k in launches[1:-1]:
        assert later.log.index(("launch", k + 1)) < last_take[k]
    assert lmzip.decompress(plain, model=model) == data
    later.overlap = False  # LMZIP_GPU_OVERLAP=0: a block when the last is used up
    later.log.clear()
    assert lmzip.compress(data, model=model, chunk_size=900, streams=3) == plain
    assert all(later.log[i + 1] == ("take", k) for i, (what, k) in enumerate(later.log) if what == "launch")


@pytest.mark.parametrize("overlap", [True, False])
def test_streams_that_fall_behind_stay_in_the_groups_calls(llm, monkeypatch, overlap):
    """An escape codes a symbol the model is not shown, so its stream uses its rows one
    step later than the others.  With escapes at different places in each chunk, every
    engine call still takes the whole group (one call per block of 4 tokens, as without
    escapes; a stream further behind skips a call), not a call per stream that fell out
    of step; the file is the C engine's."""
    esc = bytes([0xFF])  # SmolLM2 has no token for it: an escape symbol
    chunks = []
    for i in range(4):
        text = corpus_slice("alice29.txt", 20000 + 700 * i, 600)
        every = 37 + 11 * i
        chunks.append(b"".join(text[k:k + every] + esc for k in range(0, 600, every))[:600])
    data = b"".join(chunks)
    plain = lmzip.compress(data, model=llm, chunk_size=600, streams=4, method="model")
    later = _LaterEngine(llm.base._engine, ahead_rows=16)  # 4 tokens per stream and block
    later.overlap = overlap
    monkeypatch.setattr(llm.base, "_engine", later)
    assert lmzip.compress(data, model=llm, chunk_size=600, streams=4, method="model") == plain
    widths = list(later.widths)
    assert lmzip.decompress(plain, model=llm) == data
    tokens = [len(llm.tokenizer.encode(c)) for c in chunks]
    assert all(sum(t >= llm.tokenizer.n_model_tokens for t in llm.tokenizer.encode(c)) >= 8 for c in chunks)
    blocks = -(-max(tokens) // 4)
    assert len(widths) <= blocks + 8, (widths, blocks)
    assert sum(w == 4 for w in widths) >= 0.7 * len(widths), widths
