"""The GPU engine and model (lmzip.gpu.forward, lmzip.gpu.model) against the C engine on
tiny random models small enough for Triton's CPU interpreter: a llama one (2 layers, 3
query heads per KV head, 272 tokens: groups of streams, calls of many tokens, a sliding
window, codec round trips across devices, the run-time check and --device) and a Gemma 3
one (weights format 2: two local layers and a global one, K16 and Q8_0 matrices mixed in
one product, query and key norms, post-norms, GELU, a local window longer than the
context's)."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from .conftest import corpus_slice, gpu_torch

torch = gpu_torch()
_engine = pytest.importorskip("lmzip._engine")

from lmzip.codec import compress_group, decompress_group  # noqa: E402
from lmzip.gpu import device as gdev  # noqa: E402
from lmzip.gpu import trust  # noqa: E402
from lmzip.gpu.forward import GPUEngine  # noqa: E402
from lmzip.gpu.model import GPUModel, portable_model  # noqa: E402
from lmzip.predictors import portable_weights as pw  # noqa: E402
from lmzip.predictors.portable import PortableModel  # noqa: E402

DEV = "cuda:0" if torch.cuda.is_available() else "cpu"
N_LAYER, N_EMBD, N_FF, N_HEAD, N_KV, N_VOCAB, BOS = 2, 192, 128, 3, 1, 272, 256


def _q4_1(rng, rows, cols, scale):
    raw = np.zeros((rows, cols // 32, 20), np.uint8)
    raw[:, :, 0:2] = (rng.standard_normal((rows, cols // 32, 1)) * scale).astype(np.float16).view(np.uint8)
    raw[:, :, 2:4] = (-rng.random((rows, cols // 32, 1)) * 8 * scale).astype(np.float16).view(np.uint8)
    raw[:, :, 4:] = rng.integers(0, 256, (rows, cols // 32, 16), dtype=np.uint8)
    return pw._pack_q4_1(raw.reshape(-1), rows, cols)


def _q8_0(rng, rows, cols, scale):
    raw = np.zeros((rows, cols // 32, 34), np.uint8)
    raw[:, :, 0:2] = (rng.random((rows, cols // 32, 1)) * scale).astype(np.float16).view(np.uint8)
    raw[:, :, 2:] = rng.integers(0, 256, (rows, cols // 32, 32), dtype=np.uint8)
    return pw._pack_q8_0(raw.reshape(-1), rows, cols)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple:
    """(weights file, a stand-in model file): random weights in the engine's format 1."""
    return _tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_escapes(tmp_path_factory) -> tuple:
    """The tiny llama model with no token for the bytes 250 to 255 (pieces of two bytes
    instead): its tokenizer codes them as escape symbols, past the model's vocabulary."""
    pieces = [bytes([i]) for i in range(250)] + [b"e%d" % i for i in range(6)] + [b""] * (N_VOCAB - 256)
    return _tiny_llama(tmp_path_factory.mktemp("tiny_escapes"), pieces)


def _tiny_llama(folder, pieces=None) -> tuple:
    rng = np.random.default_rng(28)
    E, F, KVD = N_EMBD, N_FF, N_KV * 64

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32).tobytes()

    blobs = [(2, N_VOCAB, E, _q8_0(rng, N_VOCAB, E, 0.02)),  # types: 0 F32, 1 Q4_1, 2 Q8_0
             (0, 1, E, norm(E))]
    for _ in range(N_LAYER):
        blobs += [(0, 1, E, norm(E)), (1, E, E, _q4_1(rng, E, E, 0.01)), (1, KVD, E, _q4_1(rng, KVD, E, 0.01)),
                  (1, KVD, E, _q4_1(rng, KVD, E, 0.01)), (1, E, E, _q4_1(rng, E, E, 0.01)), (0, 1, E, norm(E)),
                  (1, F, E, _q4_1(rng, F, E, 0.01)), (1, F, E, _q4_1(rng, F, E, 0.01)),
                  (1, E, F, _q4_1(rng, E, F, 0.01))]
    header = pw.MAGIC + struct.pack("<IIIIIIIIIIdfI", 1, N_LAYER, E, F, N_HEAD, N_KV, 64, N_VOCAB, 64, BOS,
                                    10000.0, 1e-5, len(blobs))
    return _write_tiny(folder, "tiny-1.bin", header, blobs, pieces)


#: the tiny Gemma 3: layers 0 and 1 local (sliding window 24), layer 2 global; head dimension
#: 128 (n_embd 128 != 3 heads x 128)
G_LAYER, G_EMBD, G_FF, G_HEAD, G_KV, G_DIM, G_SWA, G_PATTERN = 3, 128, 384, 3, 1, 128, 24, 3


def _k16(rng, rows, cols, q6):
    nj = cols // 16
    if q6:  # Q6_K's values: q in -32..31, no min
        q, mn = rng.integers(-32, 32, (rows, cols)), np.zeros((rows, nj), np.float32)
    else:  # Q4_K's: q in 0..15, a negative min per 32 columns
        q = rng.integers(0, 16, (rows, cols))
        mn = np.repeat(-(rng.random((rows, nj // 2)) * 0.08).astype(np.float32), 2, axis=1)
    return pw._k16(q, (rng.random((rows, nj)) * 0.01).astype(np.float32), mn)


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory) -> tuple:
    """(weights file, a stand-in model file): random weights in the engine's format 2."""
    rng = np.random.default_rng(270)
    E, F, D, QD, KVD = G_EMBD, G_FF, G_DIM, G_HEAD * G_DIM, G_KV * G_DIM

    def norm(n, scale=0.1):
        return (1.0 + scale * rng.standard_normal(n)).astype(np.float32).tobytes()

    blobs = [(2, N_VOCAB, E, _q8_0(rng, N_VOCAB, E, 0.02)), (0, 1, E, norm(E))]  # types: 0 F32, 2 Q8_0, 3 K16
    for _ in range(G_LAYER):
        blobs += [(0, 1, E, norm(E)), (2, QD, E, _q8_0(rng, QD, E, 0.01)), (3, KVD, E, _k16(rng, KVD, E, True)),
                  (2, KVD, E, _q8_0(rng, KVD, E, 0.01)), (0, 1, D, norm(D)), (0, 1, D, norm(D)),
                  (3, E, QD, _k16(rng, E, QD, False)), (0, 1, E, norm(E, 0.3)), (0, 1, E, norm(E)),
                  (2, F, E, _q8_0(rng, F, E, 0.01)), (3, F, E, _k16(rng, F, E, False)),
                  (3, E, F, _k16(rng, E, F, True)), (0, 1, E, norm(E, 0.3))]
    header = pw.MAGIC + struct.pack("<IIIIIIIIIIdfIdII", 2, G_LAYER, E, F, G_HEAD, G_KV, D, N_VOCAB, D, BOS,
                                    1000000.0, 1e-6, len(blobs), 10000.0, G_SWA, G_PATTERN)
    return _write_tiny(tmp_path_factory.mktemp("tiny_gemma"), "tiny-2.bin", header, blobs)


def _write_tiny(folder, name: str, header: bytes, blobs, pieces=None) -> tuple:
    """A tiny model's engine weights file (byte pieces unless ``pieces``) and the stand-in
    GGUF beside it."""
    weights = folder / name
    pieces = pieces or [bytes([i]) for i in range(256)] + [b""] * (N_VOCAB - 256)
    pw._write(weights, header, blobs, pieces, BOS)
    stand_in = folder / "tiny.gguf"
    stand_in.write_bytes(b"not read: the weights and vocabulary are given")
    return weights, stand_in


def _cpu_logits(weights, seqs, calls, context):
    eng = _engine.Engine(str(weights), 1, "")
    hs = [eng.new_stream(context) for _ in seqs]
    return _run(eng, hs, seqs, calls)


def _run(eng, hs, seqs, calls):
    out = np.empty((len(seqs), eng.n_vocab), np.float32)
    rows, done = [], 0
    for k in calls:
        idx = [i for i, s in enumerate(seqs) if done < len(s)]
        eng.eval([hs[i] for i in idx], [seqs[i][done:done + k] for i in idx], out[: len(idx)])
        rows.append((tuple(idx), out[: len(idx)].copy()))
        done += k
    return rows


def test_the_step_is_the_c_engines():
    """The ring's size and the lookahead's calls follow the engine's step: one number."""
    from lmzip.gpu import forward

    assert forward.MAX_STEP == _engine.MAX_STEP == 32


@pytest.mark.parametrize("context", [16, 2048])
def test_group_logits_equal_the_c_engines(tiny, context):
    """Three streams of different lengths in lockstep, calls of 1, 3 and 40 tokens (over the
    32-token step, and over the window of 16): every logit the C engine's."""
    weights, _ = tiny
    rng = np.random.default_rng(context)
    seqs = [[BOS] + rng.integers(0, 256, n).tolist() for n in (60, 23, 9)]
    calls = [1, 3, 1, 40, 1, 20]
    want = _cpu_logits(weights, seqs, calls, context)
    eng = GPUEngine(weights, device=DEV, context=context)
    got = _run(eng, [eng.new_stream() for _ in seqs], seqs, calls)
    for (wi, w), (gi, g) in zip(want, got):
        assert wi == gi and w.tobytes() == g.tobytes()


def _model_kw(weights, context: int) -> dict:
    return dict(name="tiny", sha256="00" * 32, context=context, weights=weights, tokenize_text=lambda b: list(b))


def _models(tiny, context=16):
    weights, stand_in = tiny
    kw = _model_kw(weights, context)
    return PortableModel(stand_in, threads=1, **kw), GPUModel(stand_in, device=DEV, **kw)


def test_the_gpu_models_cpu_threads_serve_the_mixer(tiny, monkeypatch):
    """On a GPU the CPU's work is the mixer's: its threads are every core by default, or
    what --threads says, and the mixed model's groups use them."""

    from lmzip.predictors.mixing import MixedModel, host_threads

    weights, stand_in = tiny
    kw = _model_kw(weights, 16)
    monkeypatch.delenv("LMZIP_HOST_THREADS", raising=False)
    monkeypatch.setenv("LMZIP_GPU_MIX", "0")  # the mixer on the host
    assert GPUModel(stand_in, device=DEV, **kw).threads == (os.cpu_count() or 1)
    gpu = GPUModel(stand_in, device=DEV, threads=3, **kw)
    assert host_threads(gpu) == 3
    group = MixedModel(gpu).open_group([4, 4], 2)
    try:
        assert group._threads == 3
    finally:
        group.close()


def test_files_are_the_same_on_both_devices(tiny):
    """The codec's records from the GPU model are the CPU model's, byte for byte, and each
    model decodes the other's."""
    cpu, gpu = _models(tiny)
    assert gpu.params() == cpu.params() == {"backend": "portable 1", "context": 16, "model": "tiny"}
    texts = [b"abracadabra abra", b"hello", b"window slides"]
    rec_cpu = compress_group(cpu, texts, width=3)
    rec_gpu = compress_group(gpu, texts, width=3)
    assert rec_gpu == rec_cpu
    assert decompress_group(cpu, rec_gpu, width=3) == texts
    assert decompress_group(gpu, rec_cpu, width=3) == texts


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's inf - inf in the mixer's kernels
@pytest.mark.parametrize("gpu_mix", ["1", "0"])
def test_mixed_files_are_the_same_on_both_devices(tiny, monkeypatch, gpu_mix):
    """With the default mixing, the GPU model mixes on the GPU (lmzip.gpu.mixer; or on the
    host with LMZIP_GPU_MIX=0): the same records as the CPU's, and each decodes the other's."""
    from lmzip.gpu.mixer import DeviceMixedGroup
    from lmzip.predictors.mixing import MixedModel

    monkeypatch.setenv("LMZIP_GPU_MIX", gpu_mix)
    cpu, gpu = (MixedModel(m) for m in _models(tiny))
    with gpu.open_group([3, 3], 2) as group:
        assert isinstance(group, DeviceMixedGroup) == (gpu_mix == "1")
    # past the window of 16 (the interpreter's time goes with the longest input's steps)
    texts = [b"abracadabra abracadab", bytes(range(250, 256)) * 2 + b"cadabra", b"window slides, window"]
    rec_cpu = compress_group(cpu, texts, width=3)
    rec_gpu = compress_group(gpu, texts, width=3)
    assert rec_gpu == rec_cpu
    assert decompress_group(cpu, rec_gpu, width=3) == texts
    assert decompress_group(gpu, rec_cpu, width=3) == texts
    if gpu_mix == "1":  # damage decoded through the GPU's mixer is an lmzip error, never wrong output
        from lmzip.errors import LMZipError

        ((info, payload),) = compress_group(cpu, [b"abracadabra"], width=1)
        bad = bytes([payload[0] ^ 0x20]) + payload[1:]
        with pytest.raises(LMZipError):
            decompress_group(gpu, [(info, bad)], width=1)


def test_a_gpu_whose_mixer_fails_its_check_mixes_on_the_host(tiny, monkeypatch, capsys):
    """A failed mixer check: one warning line, and the host's mixer (the GPU's logits)."""
    from lmzip.gpu import model as gm
    from lmzip.predictors.mixing import DEFAULT_MIX, MixedModel

    monkeypatch.setattr(trust, "check_mixer", lambda device: "its mixed distributions differ from the host's")
    monkeypatch.setattr(gm, "_warned", set())
    gpu = MixedModel(_models(tiny)[1], DEFAULT_MIX)
    for _ in range(2):
        with gpu.open_group([3], 1) as group:
            assert type(group).__name__ == "MixedGroup"
    err = capsys.readouterr().err
    assert err.count("warning: mixing on the CPU, not the GPU") == 1 and "differ from the host's" in err


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's inf - inf in the mixer's kernels
def test_escapes_through_the_gpus_mixer(tiny_escapes):
    """Escape symbols (bytes the model has no token for: -inf logits, a symbol the model is
    not shown) through the GPU's mixer: the CPU's records, and each decodes the other's."""
    from lmzip.gpu.mixer import DeviceMixedGroup
    from lmzip.predictors.mixing import MixedModel

    cpu, gpu = (MixedModel(m) for m in _models(tiny_escapes))
    assert gpu.tokenizer.escapes == 6 and gpu.vocab_size == N_VOCAB + 6
    with gpu.open_group([2], 1) as group:
        assert isinstance(group, DeviceMixedGroup)
    texts = [bytes(range(244, 256)) * 2 + b"ab\xfbab\xfb", b"\xff\xfeabc\xff\xfeabc"]
    rec_cpu = compress_group(cpu, texts, width=2)
    assert compress_group(gpu, texts, width=2) == rec_cpu
    assert decompress_group(gpu, rec_cpu, width=2) == texts


def test_the_gpus_lookahead_takes_more_tokens_per_call(tiny):
    """Compressing, a GPU evaluates far more rows ahead per call than the CPU's 64 for the
    group (GPUEngine.ahead_rows): a stream's whole step of 32 tokens here, where the CPU
    takes 21 for each of 3 streams; the records are the CPU's."""
    cpu, gpu = _models(tiny, context=2048)
    assert gpu._engine.ahead_rows > 64
    texts = [corpus_slice("alice29.txt", 1000 * i, 80) for i in range(1, 4)]
    sizes = []
    real = gpu._engine.rows_job

    def spy(handles, lists, width, every=True):
        sizes.append(max(len(t) for t in lists))
        return real(handles, lists, width, every)

    gpu._engine.rows_job = spy
    assert compress_group(gpu, texts, width=3) == compress_group(cpu, texts, width=3)
    assert max(sizes) == 32


def test_groups_wider_than_64_on_both_devices(tiny):
    """A lockstep group of 65 chunks (the version 4 WIDE header's range): the GPU engine's
    records are the CPU engine's, and it decodes them."""
    cpu, gpu = _models(tiny)
    for model in (cpu, gpu):  # all 65 at once, as a GPU with the memory would (not in slices)
        model.resident_width = lambda: None
    texts = [bytes([97 + i % 26]) * (1 + i % 2) for i in range(65)]
    records = compress_group(cpu, texts, width=65)
    assert compress_group(gpu, texts, width=65) == records
    assert decompress_group(gpu, records, width=65) == texts
    gpu.resident_width = lambda: 16  # a GPU with room for 16: the same records in slices
    assert compress_group(gpu, texts, width=65) == records
    assert decompress_group(gpu, records, width=65) == texts


def test_the_width_follows_the_gpus_free_memory(tiny, monkeypatch):
    """On a GPU, the default width is what its free memory holds (lmzip.sizing); under the
    interpreter (the CPU) there is none: the CPU's defaults."""
    from lmzip.gpu import model as gm

    _, gpu = _models(tiny)
    if not DEV.startswith("cuda"):
        assert gpu.gpu_width() is None and gpu.gpus() == []
    per_stream = gpu._engine.stream_bytes_each + 8 * N_VOCAB + 28 * N_VOCAB  # the cache, logits, the mixer's
    monkeypatch.setattr(gpu, "device", "cuda:0")
    monkeypatch.setattr(gm, "free_memory", lambda device: 100 * per_stream)
    assert gpu.gpu_width() == 80
    monkeypatch.setattr(gm, "free_memory", lambda device: 1 << 50)
    assert gpu.gpu_width() == 1024


def test_the_gpus_a_device_spreads_over(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("LMZIP_DEVICE", raising=False)
    assert gdev.spread("cuda", "cuda:0") == gdev.spread(None, "cuda:0") == ["cuda:0", "cuda:1", "cuda:2"]
    assert gdev.spread("cuda:2", "cuda:2") == ["cuda:2"]
    assert gdev.spread("cuda", "cpu") == []  # Triton's interpreter


def test_hidden_state_is_the_c_engines(tiny):
    cpu, gpu = _models(tiny, context=2048)
    sc, sg = cpu.open_stream(), gpu.open_stream()
    for t in b"hidden":
        sc.push(t)
        sg.push(t)
    assert sc.scores().tobytes() == sg.scores().tobytes()
    assert sc.hidden().tobytes() == sg.hidden().tobytes()


def test_trust_check_passes_and_catches_a_wrong_logit(tiny, monkeypatch):
    weights, _ = tiny
    assert trust.check("11" * 32, weights, DEV) is None  # compared with the C engine (not SmolLM2)

    from lmzip.gpu import forward

    real = forward.GPUEngine._step

    def off_by_one_bit(self, *args):
        logits = real(self, *args)
        if logits is not None:
            logits.view(torch.int32)[-1, 7] += 1
        return logits

    monkeypatch.setattr(forward.GPUEngine, "_step", off_by_one_bit)
    why = trust.check("22" * 32, weights, DEV)
    assert why is not None and "differ" in why


def test_a_failed_check_falls_back_to_the_cpu_with_a_warning(tiny, monkeypatch, capsys):
    weights, stand_in = tiny
    monkeypatch.setattr(trust, "check", lambda *a: "its logits differ (test)")
    monkeypatch.setattr(gdev, "resolve", lambda device=None: DEV)
    import lmzip.gpu.model as gm

    monkeypatch.setattr(gm, "resolve", lambda device=None: DEV)
    monkeypatch.setattr(pw, "cached_weights", lambda *a: weights)
    made = []
    monkeypatch.setattr(gm, "PortableModel", lambda *a, **k: made.append(k) or "the CPU engine")
    m = portable_model(stand_in, name="tiny", sha256="33" * 32, context=16, threads=1, device="cuda")
    assert m == "the CPU engine" and made[0]["weights"] == weights
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not using the GPU" in err and "running on the CPU" in err


def test_device_names(monkeypatch):
    assert gdev.resolve("cpu") is None
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        gdev.resolve("gpu")
    monkeypatch.setenv("LMZIP_DEVICE", "cpu")
    assert gdev.resolve(None) is None and gdev.resolve("auto") is None
    monkeypatch.delenv("LMZIP_DEVICE")
    if not torch.cuda.is_available():
        assert gdev.resolve("auto") is None  # never the interpreter by itself
        assert gdev.resolve("cuda") == "cpu"  # TRITON_INTERPRET=1: the GPU code on the CPU
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(gdev.DeviceError, match="no CUDA GPU"):
            gdev.resolve("cuda:1")


def test_auto_imports_no_torch_without_an_nvidia_driver(monkeypatch):
    monkeypatch.setattr(gdev, "nvidia_present", lambda: False)
    monkeypatch.setattr(gdev, "extra_installed", lambda: pytest.fail("looked for the extra"))
    assert gdev.resolve("auto") is None


@pytest.fixture()
def fake_graphs(monkeypatch):
    """A stand-in for torch's CUDA graphs on the CPU: a capture records the call, a replay
    runs it again on the static tensors (what the graph path adds is those tensors: the
    steps' tokens, slots and positions copied in, the rows and last tokens read out)."""
    from lmzip.gpu import forward

    class Graph:
        fn = None

        def replay(self):
            self.fn()

    capturing = []

    class Capture:
        def __init__(self, graph):
            self.graph = graph

        def __enter__(self):
            capturing.append(self.graph)

        def __exit__(self, *exc):
            capturing.clear()

    real = forward.GPUEngine._run_static

    def run_static(self, g):
        if capturing:  # record instead of running (as a capture does)
            capturing[0].fn = lambda: real(self, g)
            return
        real(self, g)

    monkeypatch.setattr(forward.GPUEngine, "_run_static", run_static)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", Capture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    return forward


@pytest.mark.parametrize("kept", [4, 1])
def test_steps_through_the_graph_path(tiny, fake_graphs, monkeypatch, kept):
    """The CUDA-graph path of steps where every stream has the same number of tokens (one
    token a step, and the lookahead's blocks: static inputs, the window's score rows,
    replays with new tokens and positions, shapes that change; a ragged step runs eagerly):
    the C engine's logits, call by call.  With room for one graph, each shape replaces the
    last."""
    weights, _ = tiny
    monkeypatch.setattr(fake_graphs, "MAX_GRAPHS", kept)
    rng = np.random.default_rng(5)
    seqs = [[BOS] + rng.integers(0, 256, n).tolist() for n in (15, 13, 6)]
    calls = [1, 3, 3, 1, 4, 4]  # (3, 1), (3, 3) twice, (2, 1), (2, 4), then 4 and 2 tokens: eager
    cpu = _engine.Engine(str(weights), 1, "")
    eng = GPUEngine(weights, device=DEV, context=16)
    eng._graphs = {}  # on, as on a GPU
    hc, hg = [cpu.new_stream(16) for _ in seqs], [eng.new_stream() for _ in seqs]
    want, got = np.empty((3, N_VOCAB), np.float32), np.empty((3, N_VOCAB), np.float32)
    h_want, h_got = np.empty(eng.n_embd, np.float32), np.empty(eng.n_embd, np.float32)
    done = 0
    for k in calls:
        idx = [i for i, q in enumerate(seqs) if done < len(q)]
        lists = [seqs[i][done:done + k] for i in idx]
        cpu.eval([hc[i] for i in idx], lists, want[: len(idx)])
        eng.eval([hg[i] for i in idx], lists, got[: len(idx)])
        assert want[: len(idx)].tobytes() == got[: len(idx)].tobytes()
        for i in idx:  # the hidden state behind each stream's latest logits (the adaptation reads it)
            cpu.stream_hidden(hc[i], h_want)
            eng.stream_hidden(hg[i], h_got)
            assert h_want.tobytes() == h_got.tobytes()
        done += k
    # rows: the window's (16 positions in a row of 64, attn_values_kernel's trip)
    assert list(eng._graphs) == [(3, 1, 64), (3, 3, 64), (2, 1, 64), (2, 4, 64)][-kept:]


def test_graphs_loop_over_the_rows_their_streams_reach(tiny, fake_graphs, monkeypatch):
    """A graph's score rows are the next power of two (128 at least) that holds its step's
    longest, not the window's: as the streams go deeper, steps move to graphs of longer
    rows (128, 256, then the window's 320), each giving the C engine's logits."""
    weights, _ = tiny
    rng = np.random.default_rng(8)
    seqs = [[BOS] + rng.integers(0, 256, 299).tolist() for _ in range(2)]
    cpu = _engine.Engine(str(weights), 1, "")
    eng = GPUEngine(weights, device=DEV, context=320)
    eng._graphs = {}
    made = []
    real = fake_graphs.GPUEngine._static
    monkeypatch.setattr(fake_graphs.GPUEngine, "_static",
                        lambda self, S, c, NS: made.append((S, c, NS)) or real(self, S, c, NS))
    hc, hg = [cpu.new_stream(320) for _ in seqs], [eng.new_stream() for _ in seqs]
    want, got = np.empty((2 * 25, N_VOCAB), np.float32), np.empty((2 * 25, N_VOCAB), np.float32)
    for done in range(0, 300, 25):
        lists = [q[done:done + 25] for q in seqs]
        cpu.eval_rows(hc, lists, want)
        eng.eval_rows(hg, lists, got)
        assert want.tobytes() == got.tobytes(), done
    assert made == [(2, 25, 128), (2, 25, 256), (2, 25, 320)]


def test_the_lookaheads_blocks_through_the_graph_path(tiny, fake_graphs):
    """Compressing on a GPU, the lookahead's blocks (the same number of tokens for every
    stream) are graph steps: the records are the CPU's."""
    cpu, gpu = _models(tiny, context=2048)
    gpu._engine._graphs = {}
    texts = [corpus_slice("alice29.txt", 1000 * i, 120) for i in range(1, 4)]
    assert compress_group(gpu, texts, width=3) == compress_group(cpu, texts, width=3)
    assert any(c > 1 for _, c, _ in gpu._engine._graphs)


def test_the_gpu_checks_logits_timer_and_its_tiles(tiny, fake_graphs, monkeypatch, capsys):
    """benchmarks/gpu.py's logits timer (--check's table and tiles, --sweep) through the
    graph path on the tiny model, with each tile setting --check tries; every setting
    --sweep tries is a valid Blocks.  So a GPU session's timings cannot fail on a typo."""
    from dataclasses import replace

    from lmzip.gpu.tiles import Blocks

    from .conftest import gpu_check_module

    weights, _ = tiny
    gpu = gpu_check_module()
    monkeypatch.setattr(gpu, "_weights", lambda g: weights)
    monkeypatch.setattr(gpu, "_device", lambda: DEV)
    monkeypatch.setattr(GPUEngine, "__init__", _with_graphs(GPUEngine.__init__))
    for change in gpu.SWEEP:
        replace(Blocks(), **change)
    # the changes --check makes, over the interpreter's tiles (the GPU's are slow there), 20
    # tokens deep instead of 2,048
    from lmzip.gpu import tiles

    monkeypatch.setattr(tiles, "Blocks", Blocks.for_interpreter)
    timer, ran = gpu._step_rates, []
    monkeypatch.setattr(gpu, "_step_rates", lambda eng, hs, steps: ran.append((eng.blocks, eng.stream_pos(hs[0])))
                        or timer(eng, hs, steps))
    gpu.tile_rates(weights, 2, gpu.CHECK_TILES, depth=20, steps=1)
    table = capsys.readouterr().out
    rows = [line.split("|") for line in table.splitlines()[2:]]
    assert len(rows) == len(gpu.CHECK_TILES) and all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows), table
    # one engine, filled once: each setting a few tokens deeper (a warm step and one a time)
    assert ran == [(replace(Blocks.for_interpreter(), **change), 20 + 3 * i) for i, change in
                   enumerate(gpu.CHECK_TILES)]
    assert gpu._logits_rate(weights, 2, 20, 1)[0] > 0  # the throughput table's timer
    # the kernels' profile: eager steps (graphs set aside, then back), the streams a step deeper each
    eng, hs = gpu._filled(weights, 2, 20)
    graphs = eng._graphs
    rows = gpu._kernel_times(eng, hs, steps=1, activity=torch.profiler.ProfilerActivity.CPU)
    assert eng._graphs is graphs and eng.stream_pos(hs[0]) == 22
    assert rows == []  # the CPU's events take no device time (a GPU's table: test_gpu_cli)


def _with_graphs(init):
    def wrapped(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._graphs = {}  # on, as on a GPU (the fake_graphs fixture stands in for CUDA's)
    return wrapped


def test_a_kernel_compiled_with_fusion_stops_the_run():
    """launch() scans the PTX of each kernel it compiles: a fused multiply-add (or any
    forbidden instruction) is an error before the kernel's results are used."""
    from lmzip.errors import LMZipError
    from lmzip.gpu import forward

    class Compiled:
        hash = "test"
        asm = {"ptx": ".target sm_90\n    mul.rn.f32 %f1, %f2, %f3;\n    fma.rn.f32 %f4, %f1, %f2, %f3;\n"}

    class Kernel:
        __name__ = "fused_kernel"

        def __getitem__(self, grid):
            return lambda *args, **meta: Compiled()

    with pytest.raises(LMZipError, match="fused_kernel was compiled with fused multiply-add"):
        forward.launch(Kernel(), (1,), 1.0, BT=16)
    Compiled.asm = {"ptx": ".target sm_90\n    mul.rn.f32 %f1, %f2, %f3;\n"}
    forward.launch(Kernel(), (1,), 1.0, BT=32)  # a clean kernel runs


def test_tiles_from_the_environment(monkeypatch):
    from lmzip.gpu.tiles import Blocks

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("LMZIP_GPU_BLOCKS", "dims=8, slots=256, unroll=4")
    assert Blocks.from_env() == Blocks(dims=8, slots=256, unroll=4)
    monkeypatch.setenv("LMZIP_GPU_BLOCKS", "dot_f32=1")
    with pytest.raises(ValueError, match="unknown tile"):
        Blocks.from_env()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert Blocks.from_env() == Blocks.for_interpreter()


def test_rows_of_every_token_equal_the_c_engines(tiny):
    """eval_rows (compression's lookahead): the logits after every token, stream by stream,
    also for a stream of more tokens than a step, and one token per stream."""
    weights, _ = tiny
    rng = np.random.default_rng(11)
    lists = [[BOS] + rng.integers(0, 256, 40).tolist(), [BOS, 7, 9], [BOS]]
    cpu = _engine.Engine(str(weights), 1, "")
    eng = GPUEngine(weights, device=DEV, context=16)
    hc = [cpu.new_stream(16) for _ in lists]
    hg = [eng.new_stream() for _ in lists]
    for call in (lists, [[5], [6], [7]]):
        want = np.empty((sum(map(len, call)), N_VOCAB), np.float32)
        got = np.empty_like(want)
        cpu.eval_rows(hc, call, want)
        eng.eval_rows(hg, call, got)
        assert want.tobytes() == got.tobytes()


def test_a_rows_job_brings_the_rows_as_wide_as_the_vocabulary(tiny):
    """rows_job, what the codec's groups call: the C engine's logits, after every token
    (stream by stream, a stream over a step long) or after each stream's last, in rows as
    wide as the tokenizer's vocabulary, -inf for its escapes."""
    weights, _ = tiny
    rng = np.random.default_rng(13)
    cpu = _engine.Engine(str(weights), 1, "")
    eng = GPUEngine(weights, device=DEV, context=16)
    hc = [cpu.new_stream(16) for _ in range(3)]
    hg = [eng.new_stream() for _ in range(3)]
    for every, call in ((True, [[BOS] + rng.integers(0, 256, 40).tolist(), [BOS, 7, 9], [BOS]]),
                        (False, [[5, 6], rng.integers(0, 256, 35).tolist(), [7]]),
                        (False, [[1], [2], [3]])):
        want = np.empty((sum(map(len, call)) if every else len(call), N_VOCAB), np.float32)
        (cpu.eval_rows if every else cpu.eval)(hc, call, want)
        got = eng.rows_job(hg, call, N_VOCAB + 5, every).rows()
        assert got.shape == (len(want), N_VOCAB + 5) and got.dtype == np.float32
        assert got[:, :N_VOCAB].tobytes() == want.tobytes()
        assert (got[:, N_VOCAB:] == -np.inf).all()


def test_the_gpu_running_out_of_memory_is_an_lmzip_error(tiny, monkeypatch):
    """Out of GPU memory in a step or while the caches grow: an LMZipError that says what to
    do (fewer streams, or the CPU), which the command line reports in one line."""
    import lmzip

    _, gpu = _models(tiny)

    def full(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(gpu._engine, "_step", full)
    with pytest.raises(lmzip.LMZipError, match=r"ran out of memory with \d+ streams.*--streams.*--device cpu"):
        compress_group(gpu, [b"abracadabra", b"hello"], width=2)
    monkeypatch.setattr(gpu._engine, "_grow", full)
    monkeypatch.setattr(gpu._engine, "_free", [])
    with pytest.raises(lmzip.LMZipError, match="ran out of memory"):
        gpu._engine.new_stream()


# ---------------------------------------------------------------------------- Gemma 3


def test_gemma_group_logits_equal_the_c_engines(tiny_gemma):
    """Gemma 3's rules in a lockstep group at a window of 16 (its global layer slides) and
    a local window of 24 (past it the local layers drop the start token), calls of 1 to 40
    tokens (over the 32-token step): every logit the C engine's."""
    weights, _ = tiny_gemma
    rng = np.random.default_rng(3)
    seqs = [[BOS] + rng.integers(0, 256, n).tolist() for n in (45, 20)]
    calls = [1, 3, 40, 1]
    want = _cpu_logits(weights, seqs, calls, 16)
    eng = GPUEngine(weights, device=DEV, context=16)
    assert eng.ring == 64  # the local window's 24, not the context's 15, plus a step
    got = _run(eng, [eng.new_stream() for _ in seqs], seqs, calls)
    for (wi, w), (gi, g) in zip(want, got):
        assert wi == gi and w.tobytes() == g.tobytes()
    assert np.isfinite(got[-1][1]).all() and got[-1][1].std() > 0.1  # logits that mean something


def test_gemma_local_layers_loop_over_their_own_window(tiny_gemma, monkeypatch):
    """At a window longer than the local one, a local layer's attention runs to its 24
    positions (64, a multiple of 64), the global layer's to the step's longest row (128):
    the same logits as the C engine's, in steps of 1 and 9 tokens past the local window."""
    import lmzip.gpu.forward as fw

    weights, _ = tiny_gemma
    rng = np.random.default_rng(31)
    seqs = [[BOS] + rng.integers(0, 256, n).tolist() for n in (75, 40)]
    calls = [30, 9, 1, 30, 9]
    want = _cpu_logits(weights, seqs, calls, 128)
    bounds: list = []
    real = fw.launch

    layer = fw.K.attn_values_kernel.arg_names.index("layer")

    def spy(kernel, grid, *args, **meta):
        if kernel is fw.K.attn_values_kernel:
            bounds.append((args[layer], args[-1]))  # (layer, its score rows' length)
        return real(kernel, grid, *args, **meta)

    monkeypatch.setattr(fw, "launch", spy)
    eng = GPUEngine(weights, device=DEV, context=128)
    got = _run(eng, [eng.new_stream() for _ in seqs], seqs, calls)
    for (wi, w), (gi, g) in zip(want, got):
        assert wi == gi and w.tobytes() == g.tobytes()
    last = dict(bounds[-G_LAYER:])  # the last step, at positions 69..75
    assert last == {0: 64, 1: 64, 2: 128}


def test_gemma_rows_and_trust_check(tiny_gemma, monkeypatch, capsys):
    """eval_rows (the lookahead) at the default window, the run-time check against the C
    engine, and --device cuda taking the GPU for a Gemma model without a warning."""
    weights, stand_in = tiny_gemma
    rng = np.random.default_rng(12)
    lists = [[BOS] + rng.integers(0, 256, 30).tolist(), [BOS, 7]]
    cpu = _engine.Engine(str(weights), 1, "")
    eng = GPUEngine(weights, device=DEV, context=2048)
    want = np.empty((sum(map(len, lists)), N_VOCAB), np.float32)
    got = np.empty_like(want)
    cpu.eval_rows([cpu.new_stream(2048) for _ in lists], lists, want)
    eng.eval_rows([eng.new_stream() for _ in lists], lists, got)
    assert want.tobytes() == got.tobytes()

    assert trust.check("44" * 32, weights, DEV) is None
    import lmzip.gpu.model as gm

    monkeypatch.setattr(gm, "resolve", lambda device=None: DEV)
    monkeypatch.setattr(pw, "cached_weights", lambda *a: weights)
    made = []
    monkeypatch.setattr(gm, "GPUModel", lambda *a, **k: made.append(k) or "the GPU engine")
    m = portable_model(stand_in, name="tiny-gemma", sha256="44" * 32, context=2048, threads=1, device="cuda")
    assert m == "the GPU engine" and made[0]["weights"] == weights and made[0]["device"] == DEV
    assert capsys.readouterr().err == ""  # the check's verdict above, kept: no warning


def test_trust_goldens_are_the_engine_tests():
    """The run-time check's golden tokens and hashes are the C engine's tests' (one source of
    truth: tests/test_engine.py and tests/test_engine_gemma.py pin the engine to them)."""
    from . import test_engine, test_engine_gemma

    assert trust.GOLDEN[trust.SMOLLM2_SHA256] == (test_engine._tokens(16), test_engine.GOLD_16)
    assert trust.GOLDEN[trust.GEMMA3_SHA256] == (test_engine_gemma._tokens(16), test_engine_gemma.GOLD_G16)


def test_free_memory_counts_what_torch_keeps_cached(monkeypatch):
    """A group's caches, once closed, stay in torch's cache: the next group may use them."""
    import torch

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (10 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda dev: 30 << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev: 5 << 30)
    assert gdev.free_memory("cuda:0") == 35 << 30
