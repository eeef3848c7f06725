"""The GPU kernels (lmzip.gpu) against the C engine, bit for bit.

Without a GPU they run under Triton's CPU interpreter (TRITON_INTERPRET=1, set here
before the kernels are imported).  The reference is the engine's own code:
native/engine/probe.c includes engine.c and exports its static kernels, built here with
the engine's flags and called through ctypes, so these tests follow every change of the
engine.  The interpreter computes each basic operation exactly as IEEE says, like a GPU
with fusion off; tests/test_gpu_ptx.py checks that the GPU build has no fused or
approximate instruction, which the interpreter cannot see.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from .conftest import ROOT, gpu_torch

torch = gpu_torch()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from lmzip.gpu import kernels as K  # noqa: E402
from lmzip.gpu import rope, weights  # noqa: E402
from lmzip.gpu.constants import C_LITERALS  # noqa: E402
from lmzip.gpu.forward import launch  # noqa: E402
from lmzip.gpu.tiles import head_split  # noqa: E402

from .test_engine import GOLD_16, _hash_logits, _tokens  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ENGINE = ROOT / "native" / "engine"
F = ctypes.POINTER(ctypes.c_float)
D = ctypes.POINTER(ctypes.c_double)


def _p(a: np.ndarray, ctype=ctypes.c_float):
    return a.ctypes.data_as(ctypes.POINTER(ctype))


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    so = tmp_path_factory.mktemp("probe") / "probe.so"
    subprocess.run(["gcc", "-O2", "-ffp-contract=off", "-fno-math-errno", "-std=c11", "-pthread", "-shared", "-fPIC",
                    "-o", str(so), str(ENGINE / "probe.c"), "-lm"], check=True, capture_output=True)
    lib = ctypes.CDLL(str(so))
    lib.probe_exp_d.restype = lib.probe_log_d.restype = ctypes.c_double
    lib.probe_exp_d.argtypes = lib.probe_log_d.argtypes = [ctypes.c_double]
    lib.probe_rmsnorm.argtypes = [F, F, F, ctypes.c_int, ctypes.c_float]
    lib.probe_attn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, F, F, F, ctypes.POINTER(ctypes.c_uint16),
                               ctypes.POINTER(ctypes.c_uint16), ctypes.c_int, ctypes.c_int64, ctypes.c_int, F]
    lib.probe_inv_freq_dim.argtypes = [ctypes.c_double, ctypes.c_int, D]
    return lib


def _dev(a):
    return torch.from_numpy(np.array(a, copy=True, order="C")).to(DEV)  # never the caller's memory


def _host(t):
    return t.cpu().numpy()


def _same(a, b) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def _floats(rng, n, scale=1.0):
    """Values of many magnitudes, signs and a few zeros and subnormals (float32)."""
    x = (rng.standard_normal(n) * scale * np.exp2(rng.integers(-12, 6, n))).astype(np.float32)
    x[rng.random(n) < 0.02] = 0.0
    x[rng.random(n) < 0.01] = np.float32(1e-41)
    return x


# ---------------------------------------------------------------------------- constants


def test_constants_are_the_c_literals(tmp_path):
    """Each float32 constant of the kernels is an exact binary32 value (so Triton rounds
    nothing) with the bits the C compiler gives the engine's literal, which engine.c holds."""
    names = list(C_LITERALS)
    src = tmp_path / "lit.c"
    body = "".join(f'    {{ float v = {C_LITERALS[n][1]}; unsigned u; memcpy(&u, &v, 4); printf("%u\\n", u); }}\n'
                   for n in names)
    src.write_text("#include <stdio.h>\n#include <string.h>\nint main(void) {\n" + body + "    return 0;\n}\n")
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    exe = tmp_path / "lit"
    subprocess.run(["gcc", "-O0", "-o", str(exe), str(src)], check=True)
    bits = [int(v) for v in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    engine_c = (ENGINE / "engine.c").read_text()
    for name, want in zip(names, bits):
        value, literal = C_LITERALS[name]
        f32 = np.float32(value)
        assert float(f32) == value, f"{name}: {value!r} is not a binary32 value"
        assert int(f32.view(np.uint32)) == want, f"{name}: {value!r} is not the C's {literal}"
        assert literal.lstrip("-") in engine_c, f"{name}: engine.c no longer writes {literal}"


# ---------------------------------------------------------------------------- elementwise rules


@triton.jit
def _exp_kernel(x_ptr, y_ptr, n, B: tl.constexpr):
    i = tl.program_id(0) * B + tl.arange(0, B)
    tl.store(y_ptr + i, K.exp_f(tl.load(x_ptr + i, mask=i < n, other=0.0)), mask=i < n)


@triton.jit
def _f2h_kernel(x_ptr, y_ptr, n, B: tl.constexpr):
    i = tl.program_id(0) * B + tl.arange(0, B)
    tl.store(y_ptr + i, K.f2h_bits(tl.load(x_ptr + i, mask=i < n, other=0.0)), mask=i < n)


def test_exp_f(probe):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(-100, 100, 20000), rng.uniform(-1, 1, 4000), [-87.5, -87, -0.0, 0.0, 88, 88.5,
                        1e-30, -1e-41, 87.99, -86.99]]).astype(np.float32)
    want = np.empty_like(x)
    probe.probe_exp_f(_p(x), _p(want), len(x))
    got = torch.empty(len(x), dtype=torch.float32, device=DEV)
    launch(_exp_kernel, (triton.cdiv(len(x), 8192),), _dev(x), got, len(x), B=8192)
    assert _same(_host(got), want)


def test_f2h_saturates_and_rounds_half_even(probe):
    rng = np.random.default_rng(2)
    specials = [65504, 65519.99, 65520, 70000, 1e30, np.inf, -np.inf, np.nan, 6.1e-5, 6.0e-5, 2.98e-8, 2.99e-8,
                5.96e-8, 1e-9, 0.0, -0.0, 1.00048828125, 1.000732421875, -2049.0, 2051.0]
    x = np.concatenate([rng.standard_normal(20000) * np.exp2(rng.integers(-26, 18, 20000)),
                        specials, np.negative(specials)]).astype(np.float32)
    want = np.empty(len(x), dtype=np.uint16)
    probe.probe_f2h(_p(x), _p(want, ctypes.c_uint16), len(x))
    got = torch.empty(len(x), dtype=torch.int32, device=DEV)
    launch(_f2h_kernel, (triton.cdiv(len(x), 8192),), _dev(x), got, len(x), B=8192)
    assert _same(_host(got).astype(np.uint16), want)


# ---------------------------------------------------------------------------- quantization, norms


def _c_quantize(probe, x: np.ndarray):
    T, E = x.shape
    q = np.empty((T, E), np.int8)
    s = np.empty((T, E // 32), np.float32)
    sa = np.empty_like(s)
    sm = np.empty((T, E // 32), np.int32)
    for t in range(T):
        row = np.ascontiguousarray(x[t])
        probe.probe_quantize_row(_p(row), E, _p(q[t], ctypes.c_int8), _p(s[t]), _p(sa[t]), _p(sm[t], ctypes.c_int32))
    return q, s, sa


def _run_norm(x, w, *, norm, rows=None, nblk=2, bt=16, eps=1e-5):
    T = len(rows) if rows is not None else x.shape[0]
    E = x.shape[1]
    q = torch.empty((T, E), dtype=torch.int8, device=DEV)
    s = torch.empty((T, E // 32), dtype=torch.float32, device=DEV)
    sa = torch.empty_like(s)
    y = torch.empty((T, E), dtype=torch.float32, device=DEV)
    rows_d = _dev(np.asarray(rows if rows is not None else [0], np.int32))
    launch(K.norm_quant_kernel, (triton.cdiv(T, bt), E // 32 // nblk), _dev(x), _dev(w), rows_d, y, q, s, sa, T,
           float(np.float32(eps)), E=E, NORM=norm, GATHER=rows is not None, STORE_Y=True, BT=bt, NBLK=nblk)
    return _host(y), _host(q), _host(s), _host(sa)


def test_quantization(probe):
    rng = np.random.default_rng(3)
    x = _floats(rng, 20 * 192).reshape(20, 192)
    x[3] = 0.0  # a row of zero blocks
    x[5, 32:64] = 0.0
    x[6, :32] = np.float32(-1e-41)  # a block of subnormals
    x[7, :32] = np.float32(3e38)
    _, q, s, sa = _run_norm(x, np.ones(192, np.float32), norm=False, nblk=2)
    wq, ws, wsa = _c_quantize(probe, x)
    assert _same(q, wq) and _same(s, ws) and _same(sa, wsa)


@pytest.mark.parametrize("nblk", [2, 4])
def test_rmsnorm_then_quantization(probe, nblk):
    rng = np.random.default_rng(4)
    E = 256
    x = _floats(rng, 19 * E, 3.0).reshape(19, E)
    x[2] = 0.0
    w = _floats(rng, E)
    rows = [18, 0, 2, 7, 7, 11]  # gathered rows, in any order, repeated
    y, q, s, sa = _run_norm(x, w, norm=True, rows=rows, nblk=nblk, eps=1e-5)
    want = np.empty((len(rows), E), np.float32)
    for i, r in enumerate(rows):
        xr = np.ascontiguousarray(x[r])
        probe.probe_rmsnorm(_p(want[i]), _p(xr), _p(w), E, ctypes.c_float(1e-5))
    assert _same(y, want)
    wq, ws, wsa = _c_quantize(probe, want)
    assert _same(q, wq) and _same(s, ws) and _same(sa, wsa)


def test_post_norm_adds_to_the_residual(probe):
    """Gemma's post-norms: x = x + RMSNorm(y, w) (the kernel's RESIDUAL mode, no quantization)."""
    rng = np.random.default_rng(14)
    T, E = 11, 320
    y = _floats(rng, T * E, 30.0).reshape(T, E)
    x = _floats(rng, T * E, 3.0).reshape(T, E)
    w = _floats(rng, E)
    x_d = _dev(x)
    dummy = torch.empty(1, dtype=torch.float32, device=DEV)
    launch(K.norm_quant_kernel, (triton.cdiv(T, 8), E // 64), _dev(y), _dev(w), _dev(np.zeros(1, np.int32)), x_d,
           torch.empty(1, dtype=torch.int8, device=DEV), dummy, dummy, T, float(np.float32(1e-6)), E=E, NORM=True,
           GATHER=False, STORE_Y=False, BT=8, NBLK=2, RESIDUAL=True, QUANT=False)
    want = np.empty_like(y)
    for t in range(T):
        probe.probe_rmsnorm(_p(want[t]), _p(np.ascontiguousarray(y[t])), _p(w), E, ctypes.c_float(1e-6))
    assert _same(_host(x_d), x + want)  # numpy's float32 addition: IEEE, as the C's


@pytest.mark.parametrize("gelu", [False, True])
def test_gate_activation_then_quantization(probe, gelu):
    """SiLU (SmolLM2) or GELU (Gemma) of the gate times the up projection, quantized."""
    rng = np.random.default_rng(5)
    T, Fd = 17, 128
    g = _floats(rng, T * Fd, 8.0).reshape(T, Fd)
    g[0, :12] = [-200, -90, -88, 0, -0.0, 89, 100, 1e-40, -1e-40, 10.5, -10.5, 44.0]
    u = _floats(rng, T * Fd, 2.0).reshape(T, Fd)
    q = torch.empty((T, Fd), dtype=torch.int8, device=DEV)
    s = torch.empty((T, Fd // 32), dtype=torch.float32, device=DEV)
    sa = torch.empty_like(s)
    launch(K.gate_quant_kernel, (triton.cdiv(T, 16), Fd // 64), _dev(np.concatenate([g, u], axis=1)), q, s, sa, T, F=Fd,
           BT=16, NBLK=2, GELU=gelu)
    a = np.empty_like(g)
    (probe.probe_gelu_mul if gelu else probe.probe_silu_mul)(_p(np.ascontiguousarray(g)),
                                                              _p(np.ascontiguousarray(u)), _p(a), T * Fd)
    wq, ws, wsa = _c_quantize(probe, a)
    assert _same(_host(q), wq) and _same(_host(s), ws) and _same(_host(sa), wsa)


# ---------------------------------------------------------------------------- block products


def _random_packed(rng, kind: int, rows: int, cols: int) -> np.ndarray:
    gb = 320 if kind == weights.T_Q4_1 else 544
    nscale = 32 if kind == weights.T_Q4_1 else 16
    raw = rng.integers(0, 256, (rows // 16) * (cols // 32) * gb, dtype=np.uint8).reshape(-1, gb)
    scales = (rng.standard_normal((len(raw), nscale)) * 0.02).astype(np.float16)
    raw[:, gb - 2 * nscale:] = scales.view(np.uint8).reshape(len(raw), -1)
    return raw.reshape(-1)


@pytest.mark.parametrize("kind", [weights.T_Q4_1, weights.T_Q8_0])
@pytest.mark.parametrize("dot_f32", [False, True])
@pytest.mark.parametrize("Kc", [64, 128, 192])  # 2, 4 and 6 blocks: pipelined loops of a few trips
def test_block_products(probe, kind, dot_f32, Kc):
    rng = np.random.default_rng(6 + kind + Kc)
    R, T = 80, 19
    raw = _random_packed(rng, kind, R, Kc)
    m = weights._unpack_q4_1(raw, R, Kc) if kind == weights.T_Q4_1 else weights._unpack_q8_0(raw, R, Kc)
    x = _floats(rng, T * Kc, 4.0).reshape(T, Kc)
    aq, s, sa = _c_quantize(probe, x)
    sm = np.zeros((T, Kc // 32), np.int32)
    for t in range(T):
        sm[t] = aq[t].reshape(-1, 32).astype(np.int32).sum(axis=1)
    want = np.empty((T, R), np.float32)
    fn = probe.probe_mm_q4 if kind == weights.T_Q4_1 else probe.probe_mm_q8
    fn(_p(raw, ctypes.c_uint8), Kc, R // 16, _p(aq, ctypes.c_int8), _p(s), _p(sa), _p(sm, ctypes.c_int32), T,
       _p(want))
    residual = _floats(rng, T * R).reshape(T, R)
    for res in (False, True):
        out = _dev(residual.copy()) if res else torch.empty((T, R), dtype=torch.float32, device=DEV)
        dm = m.m if m.m is not None else m.d
        launch(K.matmul_kernel, (triton.cdiv(R, 32), triton.cdiv(T, 16)), _dev(aq), _dev(s), _dev(sa), _dev(m.q),
               _dev(m.d), _dev(dm), out, T, R, R, K=Kc, KIND=kind, RESIDUAL=res, BT=16, BR=32,
               DOT_F32=dot_f32)
        o, w = _host(out), (residual + want if res else want)
        assert _same(o, w), (res, int((o.view(np.int32) != w.view(np.int32)).sum()), float(np.abs(o - w).max()))


def _random_k16(rng, rows: int, cols: int, q6: bool) -> bytes:
    """K16 bytes as the converter writes them: Q6_K-like (q in -32..31, min 0) or Q4_K-like
    (q in 0..15, a negative min per 32 columns)."""
    nj = cols // 16
    if q6:
        q = rng.integers(-32, 32, (rows, cols))
        mn = np.zeros((rows, nj), np.float32)
    else:
        q = rng.integers(0, 16, (rows, cols))
        mn = np.repeat(-(rng.random((rows, nj // 2)) * 0.05).astype(np.float32), 2, axis=1)
    sc = (rng.random((rows, nj)) * 0.01).astype(np.float32)
    sc[0, :3] = 0.0
    from lmzip.predictors.portable_weights import _k16

    return _k16(q, sc, mn)


@pytest.mark.parametrize("q6", [False, True])
@pytest.mark.parametrize("dot_f32", [False, True])
def test_k16_products(probe, q6, dot_f32):
    """Gemma's K16 products (Q4_K and Q6_K values): per 16-column half, in order,
    acc + ((scale * s) * isum + min * (s * qsum)), against the engine's mm_k16_scalar."""
    rng = np.random.default_rng(20 + q6)
    R, Kc, T = 48, 256, 19
    raw = np.frombuffer(_random_k16(rng, R, Kc, q6), np.uint8).copy()
    m = weights._unpack_k16(raw, R, Kc)
    x = _floats(rng, T * Kc, 4.0).reshape(T, Kc)
    x[3, 16:32] = 0.0  # a half block of zeros
    aq, s, sa = _c_quantize(probe, x)
    sm = aq.reshape(T, -1, 32).astype(np.int32).sum(axis=2).astype(np.int32)
    want = np.empty((T, R), np.float32)
    probe.probe_mm_k16(_p(raw, ctypes.c_uint8), R, Kc, _p(aq, ctypes.c_int8), _p(s), _p(sa), _p(sm, ctypes.c_int32),
                       T, _p(want))
    out = torch.empty((T, R), dtype=torch.float32, device=DEV)
    launch(K.matmul_kernel, (triton.cdiv(R, 32), triton.cdiv(T, 16)), _dev(aq), _dev(s), _dev(sa), _dev(m.q),
           _dev(m.d), _dev(m.m), out, T, R, R, K=Kc, KIND=weights.T_K16, RESIDUAL=False, BT=16, BR=32,
           DOT_F32=dot_f32)
    o = _host(out)
    assert _same(o, want), (int((o.view(np.int32) != want.view(np.int32)).sum()), float(np.abs(o - want).max()))


# ---------------------------------------------------------------------------- RoPE, cache, attention


def test_rope_tables_are_the_engines(probe):
    rng = np.random.default_rng(7)
    for x in np.concatenate([rng.uniform(-700, 700, 3000), [-1e-300, 0.0, 1e-300, 699.9]]):
        assert rope.exp_d(float(x)) == probe.probe_exp_d(float(x))
    for x in np.exp(rng.uniform(-700, 700, 3000)):
        assert rope.log_d(float(x)) == probe.probe_log_d(float(x))
    a = np.concatenate([rng.uniform(0, 1e7, 50000), np.arange(0, 4096) * 0.3, [0.0, np.pi / 4, np.pi / 2]])
    s, c = np.empty_like(a), np.empty_like(a)
    probe.probe_sincos_d(_p(a, ctypes.c_double), _p(s, ctypes.c_double), _p(c, ctypes.c_double), len(a))
    s2, c2 = rope.sincos_d(a)
    assert _same(s, s2) and _same(c, c2)
    for base in (10000.0, 100000.0, 1e6):
        f = np.empty(32)
        probe.probe_inv_freq(ctypes.c_double(base), _p(f, ctypes.c_double))
        assert _same(f, rope.inv_freq(base))
        g = np.empty(128)  # Gemma: head dimension 256
        probe.probe_inv_freq_dim(ctypes.c_double(base), 256, _p(g, ctypes.c_double))
        assert _same(g, rope.inv_freq(base, 256))


def _window(p: int, span: int, sink_until: int = -1) -> tuple[int, int, int]:
    """(lo, the start token leads, ring positions) of a query at p (docs/engine.md)."""
    lo = max(1, p - span + 1)
    return lo, int(sink_until < 0 or p < sink_until), (p - lo + 1 if p >= 1 else 0)


#: (heads, KV heads, head dimension, NEOX pairs and query/key norms, query scale): SmolLM2's
#: layer, and Gemma's rules with its head dimension and two KV heads
HEADS = {"llama": (9, 3, 64, False, 0.125), "gemma": (4, 2, 256, True, 0.0625)}


@pytest.mark.parametrize("arch", list(HEADS))
def test_rope_and_cache_writes(probe, arch):
    """RoPE (Gemma: after the query and key norms, NEOX pairs) and the query scale in place;
    the start token's key and value kept; later keys rotated and both rounded to f16 into
    their ring slots, the values again past the ring's end (its tail repeats it)."""
    rng = np.random.default_rng(8)
    NH, KV, HD, gemma, qscale = HEADS[arch]
    C, half, eps = 64, HD // 2, np.float32(1e-6)
    W = (NH + 2 * KV) * HD
    pos = [0, 1, 17, 47, 48, 60, 200]
    T = len(pos)
    qkv = _floats(rng, T * W, 50.0).reshape(T, W)
    qkv[2, NH * HD:NH * HD + 8] = [7e4, -7e4, 65519, 65521, 1e-7, -3e-8, 0.0, -0.0]
    if gemma:
        qkv[3, (NH + 1) * HD:(NH + 2) * HD] = 0.0  # a zero key: its norm divides by sqrt(eps)
    qn, kn = _floats(rng, HD, 2.0), _floats(rng, HD, 2.0)
    cos, sin = rope.cos_sin(np.arange(256), rope.inv_freq(100000.0, HD))
    kc = torch.zeros((1, 2, KV, HD, C), dtype=torch.int16, device=DEV)
    vc = torch.zeros((1, 2, KV, C + K.RING_TAIL.value, HD), dtype=torch.int16, device=DEV)
    sk = torch.zeros((1, 2, KV, HD), dtype=torch.float32, device=DEV)
    sv = torch.zeros_like(sk)
    qkv_d = _dev(qkv)
    launch(K.rope_cache_kernel, (1,), qkv_d, _dev(np.zeros(T, np.int32)), _dev(np.array(pos, np.int64)), _dev(cos),
           _dev(sin), _dev(qn), _dev(kn), kc, vc, sk, sv, T, 1, C, 2, float(eps), qscale, NH=NH, NKV=KV, HP=16,
           KP=4, BT=8, HD=HD, NEOX=gemma, QK_NORM=gemma)
    got = _host(qkv_d)

    def norm(x, w):
        if not gemma:
            return x.copy()
        y = np.empty_like(x)
        probe.probe_rmsnorm(_p(y), _p(np.ascontiguousarray(x)), _p(w), HD, ctypes.c_float(eps))
        return y

    def rotate(x, p):  # in place, the engine's own RoPE
        cs, sn = np.ascontiguousarray(cos[p]), np.ascontiguousarray(sin[p])
        if gemma:
            probe.probe_rope_neox(_p(x), _p(cs), _p(sn), half)
        else:
            probe.probe_rope(_p(x), _p(cs), _p(sn))

    for t, p in enumerate(pos):
        q = qkv[t].copy()
        for h in range(NH):
            head = norm(q[h * HD:(h + 1) * HD], qn)
            rotate(head, p)
            q[h * HD:(h + 1) * HD] = head * np.float32(qscale)
        assert _same(got[t, :NH * HD], q[:NH * HD]), (arch, p)
        assert _same(got[t, NH * HD:], qkv[t, NH * HD:])  # k and v stay as they were
        for h in range(KV):
            k = norm(qkv[t, (NH + h) * HD:(NH + h + 1) * HD], kn)
            v = qkv[t, (NH + KV + h) * HD:(NH + KV + h + 1) * HD].copy()
            if p == 0:
                assert _same(_host(sk[0, 1, h]), k) and _same(_host(sv[0, 1, h]), v)
                continue
            rotate(k, p)
            kh, vh = np.empty(HD, np.uint16), np.empty(HD, np.uint16)
            probe.probe_f2h(_p(k), _p(kh, ctypes.c_uint16), HD)
            probe.probe_f2h(_p(v), _p(vh, ctypes.c_uint16), HD)
            slot = (p - 1) % C
            assert _same(_host(kc[0, 1, h, :, slot]).view(np.uint16), kh), (arch, p, h)
            assert _same(_host(vc[0, 1, h, slot]).view(np.uint16), vh), (arch, p, h)
    ring = _host(vc[0, 1])
    assert _same(ring[:, C:], ring[:, np.arange(C, C + K.RING_TAIL.value) % C]) and np.count_nonzero(ring[:, C:]) > 0


#: (query heads, KV heads, G, head dimension, NEOX, span, sink_until, ring slots): SmolLM2
#: with windows of 16 and 40 (span = window - 1); Gemma's global layer at a window of 40,
#: and its local layer (a sliding window of 24 at a window of 16: the ring holds the longer)
ATTN = {"llama-16": (9, 3, 3, 64, False, 15, -1, 48), "llama-40": (9, 3, 3, 64, False, 39, -1, 80),
        "llama-100": (9, 3, 3, 64, False, 99, -1, 144),  # rows of several trips of the softmax and values
        "gemma-global": (4, 1, 4, 256, True, 39, -1, 80), "gemma-local": (8, 2, 4, 128, True, 24, 24, 64)}


@pytest.mark.parametrize("case", list(ATTN))
def test_attention(probe, case):
    """Scores, softmax and values of every query head against the engine's attention, with
    a ring that has wrapped and the start token at its virtual position (or, on a local
    layer past its window, without the start token); the values' own quantization of them
    (blocks of 32) against the engine's."""
    NH, KV, G, HD, neox, span, until, C = ATTN[case]
    rng = np.random.default_rng(9 + span + HD)
    W = (NH + 2 * KV) * HD
    pos = [0, 1, 2, 5, span - 1, span, span + 1, span + 2, 3 * C + 5, 1000]
    T = len(pos)
    qkv = _floats(rng, T * W, 0.5 if HD == 64 else 0.25).reshape(T, W)
    cos, sin = rope.cos_sin(np.arange(1024), rope.inv_freq(100000.0, HD))
    kbits = (rng.standard_normal((1, 1, KV, HD, C)) * 2).astype(np.float16)
    vbits = (rng.standard_normal((1, 1, KV, C, HD)) * 2).astype(np.float16)
    vring = vbits[:, :, :, np.arange(C + K.RING_TAIL.value) % C]  # the cache's tail repeats the ring
    sink_k = _floats(rng, KV * HD, 2.0).reshape(1, 1, KV, HD)
    sink_v = _floats(rng, KV * HD, 2.0).reshape(1, 1, KV, HD)
    kc, vc = _dev(kbits.view(np.int16)), _dev(vring.view(np.int16))
    stream = _dev(np.zeros(T, np.int32))
    pos_d = _dev(np.array(pos, np.int64))
    rk = torch.empty((T, KV, HD), dtype=torch.float32, device=DEV)
    NS = (min(max(pos), span) + 1 + 63) // 64 * 64  # score rows: a multiple of 64
    sc = torch.full((T, KV, 4, NS), float("nan"), dtype=torch.float32, device=DEV)  # what nothing writes
    ao = torch.empty((T, NH * HD), dtype=torch.float32, device=DEV)
    launch(K.sink_rope_kernel, (1,), stream, pos_d, _dev(cos), _dev(sin), _dev(sink_k), rk, T, 0, 1, span, NKV=KV,
           KP=4, BT=16, HD=HD, NEOX=neox)
    split = 0 if case == "llama-40" else head_split(G)  # SmolLM2's 3 heads in one padded tile, or as 2 + 1
    launch(K.attn_scores_kernel, (triton.cdiv(T, 4), KV, triton.cdiv(NS, 16)), _dev(qkv), stream, pos_d, kc, rk, sc,
           T, 0, C, 1, span, until, NS, NH=NH, NKV=KV, G=G, GP=4, BT=4, BS=16, HD=HD, GA=split)
    sums = torch.empty((T, KV, 4), dtype=torch.float32, device=DEV)
    launch(K.attn_softmax_kernel, (triton.cdiv(T, 4), KV, G), pos_d, sc, sums, T, span, until, NS, NKV=KV, GP=4, BT=4,
           ROWS=2)
    aq = torch.empty((T, NH * HD), dtype=torch.int8, device=DEV)
    a_s, a_sa = (torch.empty((T, NH * HD // 32), dtype=torch.float32, device=DEV) for _ in range(2))
    BD = 64 if case in ("llama-100", "gemma-local") else 32  # 2 or 1 blocks of 32 a head a program
    launch(K.attn_values_kernel, (triton.cdiv(T, 4), KV, HD // BD), stream, pos_d, vc, _dev(sink_v), sc, sums, ao,
           aq, a_s, a_sa, T, 0, C, 1, span, until, NS, NH=NH, NKV=KV, G=G, GP=4, BT=4, BD=BD, HD=HD, QUANT=True)
    got = _host(ao)
    wq, ws, wsa = _c_quantize(probe, got)
    assert _same(_host(aq), wq) and _same(_host(a_s), ws) and _same(_host(a_sa), wsa)
    # the engine's layouts: keys [C/16][HD][16], values [HD/16][C][16]; the G heads of a KV head at once
    for t, p in enumerate(pos):
        lo, use_sink, n_ring = _window(p, span, until)
        for kvh in range(KV):
            ke = np.ascontiguousarray(kbits[0, 0, kvh].view(np.uint16).reshape(HD, C // 16, 16).transpose(1, 0, 2))
            ve = np.ascontiguousarray(vbits[0, 0, kvh].view(np.uint16).reshape(C, HD // 16, 16).transpose(1, 0, 2))
            sk = sink_k[0, 0, kvh].copy()  # rotated in place
            cs, sn = np.ascontiguousarray(cos[lo - 1]), np.ascontiguousarray(sin[lo - 1])
            if neox:
                probe.probe_rope_neox(_p(sk), _p(cs), _p(sn), HD // 2)
            else:
                probe.probe_rope(_p(sk), _p(cs), _p(sn))
            q = np.ascontiguousarray(qkv[t, kvh * G * HD:(kvh + 1) * G * HD])
            want = np.empty(G * HD, np.float32)
            probe.probe_attn(G, HD, use_sink, _p(q), _p(sk), _p(np.ascontiguousarray(sink_v[0, 0, kvh])),
                             _p(ke, ctypes.c_uint16), _p(ve, ctypes.c_uint16), C, lo, n_ring, _p(want))
            g_ = got[t, kvh * G * HD:(kvh + 1) * G * HD]
            assert _same(g_, want), (p, kvh, float(np.abs(g_ - want).max()), float(np.abs(want).max()))


# ---------------------------------------------------------------------------- the whole forward


def _weights_or_skip():
    from lmzip.predictors.portable_weights import cached_weights
    from lmzip.predictors.registry import _smollm2_path

    path = _smollm2_path()
    if path is None:
        pytest.skip("the SmolLM2 model is not installed")
    return cached_weights(path)


def test_forward_gives_the_engines_golden_16():
    """The start token and the first 16 tokens of alice29.txt in one step (the logits of
    every token): tests/test_engine.py's GOLD_16, the C engine's hash."""
    from lmzip.gpu.forward import GPUEngine

    eng = GPUEngine(_weights_or_skip(), device=DEV, context=2048)
    h = eng.new_stream()
    every: list = []
    eng.eval([h], [[eng.bos] + _tokens(16)], every=every)
    rows = [r for step in every for r in _host(step)]
    assert len(rows) == 17
    assert _hash_logits(rows) == GOLD_16


def _gemma_weights_or_skip():
    from lmzip.predictors.portable_weights import cached_weights
    from lmzip.predictors.registry import _gemma3_path

    path = _gemma3_path()
    if path is None:
        pytest.skip("the gemma3 model package is not installed")
    return cached_weights(path)


def test_gemma_forward_gives_the_c_engines_logits():
    """Gemma 3 270M: the start token and the first Gemma token of alice29.txt in one step,
    every logit the C engine's (its 18 layers, local and global, the K16 products and the
    262,144-row head); longer sequences: the slow golden tests below."""
    from lmzip import _engine
    from lmzip.gpu.forward import GPUEngine

    from .test_engine_gemma import _tokens as gemma_tokens

    weights = _gemma_weights_or_skip()
    eng = GPUEngine(weights, device=DEV, context=2048)
    seq = [eng.bos] + gemma_tokens(1)
    every: list = []
    eng.eval([eng.new_stream()], [seq], every=every)
    cpu = _engine.Engine(str(weights), 1, "")
    want = np.empty((len(seq), cpu.n_vocab), np.float32)
    cpu.eval_rows([cpu.new_stream(2048)], [seq], want)
    got = _host(every[0])
    assert _same(got, want), int((got.view(np.int32) != want.view(np.int32)).sum())


@pytest.mark.slow
def test_gemma_forward_golden_16():
    """The start token and 16 tokens: tests/test_engine_gemma.py's GOLD_G16."""
    from .test_engine_gemma import GOLD_G16

    _gemma_weights_or_skip()
    assert _golden_script("--model", "gemma3-270m") == GOLD_G16


@pytest.mark.slow
def test_gemma_forward_golden_24_window_16():
    """24 tokens at a window of 16: the global layers' window slides 9 times (GOLD_G24_W16)."""
    from .test_engine_gemma import GOLD_G24_W16

    _gemma_weights_or_skip()
    assert _golden_script("--model", "gemma3-270m", "--context", "16") == GOLD_G24_W16


def _golden_script(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--golden", *args], env=env,
                         capture_output=True, text=True, timeout=3000)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()[-1]


@pytest.mark.slow
@pytest.mark.llm
def test_forward_golden_64():
    from .test_engine import GOLD_64

    _weights_or_skip()
    assert _golden_script() == GOLD_64


@pytest.mark.slow
@pytest.mark.llm
def test_forward_golden_64_window_16():
    """The window of 16 slides 49 times: the ring, its wrap and the start token's virtual position."""
    from .test_engine import GOLD_64_W16

    _weights_or_skip()
    assert _golden_script("--context", "16") == GOLD_64_W16
