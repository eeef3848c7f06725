"""Triton kernels for the engine's numerics "portable 1" (docs/engine.md), SmolLM2 (llama).

Every kernel reproduces the C engine's scalar definition bit for bit:

- only IEEE basic operations, each written as the C writes it (``a * b + c`` stays two
  roundings: every launch passes ``enable_fp_fusion=False``, and lmzip.gpu.ptx checks
  the compiled PTX for fused or approximate instructions);
- float32 division is ``tl.div_rn`` (``/`` would be the approximate ``div.full``),
  float64 division and square root are correctly rounded as Triton compiles them;
- the engine's own exp; no ``tl.exp`` or libdevice;
- every sum in the C's order: lanes run across independent outputs (tokens, matrix rows,
  cache slots, head dimensions), and a sequential sum is a loop.  Where a value must be
  taken out of a register tile, ``tl.split`` does it, or ``tl.sum(tl.where(index == j,
  tile, 0))``, exactly: every other term is +0 (and no value taken out this way is -0
  where the sign could matter: exponentials and sums that start from +0).

Layouts (the host side, lmzip.gpu.forward, prepares them): activations [tokens, width]
float32; quantized activations int8 [tokens, K] with float32 scales [tokens, K/32];
matrices as int8 [rows, K] (Q4_1: 0..15, Q8_0: -128..127) with float32 d (and m)
[rows, K/32]; the key cache [stream, layer, kv head, 64, C] and the value cache
[stream, layer, kv head, C, 64] as f16 bits (int16); the start token's key and value
[stream, layer, kv head, 64] float32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .constants import F32

__all__ = [
    "embed_kernel",
    "norm_quant_kernel",
    "matmul_kernel",
    "silu_quant_kernel",
    "rope_cache_kernel",
    "sink_rope_kernel",
    "attn_scores_kernel",
    "attn_values_kernel",
    "exp_f",
    "f2h_bits",
    "quantize_block",
]

# constexpr globals (the only globals a Triton kernel may read)
EXP_LO = tl.constexpr(F32["EXP_LO"])
EXP_HI = tl.constexpr(F32["EXP_HI"])
LOG2E = tl.constexpr(F32["LOG2E"])
ROUND23 = tl.constexpr(F32["ROUND23"])
LN2_HI = tl.constexpr(F32["LN2_HI"])
LN2_LO = tl.constexpr(F32["LN2_LO"])
P7 = tl.constexpr(F32["P7"])
P6 = tl.constexpr(F32["P6"])
P5 = tl.constexpr(F32["P5"])
P4 = tl.constexpr(F32["P4"])
P3 = tl.constexpr(F32["P3"])
Q_MAX = tl.constexpr(F32["Q_MAX"])
Q_SCALE = tl.constexpr(F32["Q_SCALE"])
TWO24 = tl.constexpr(F32["TWO24"])
TWO23 = tl.constexpr(F32["TWO23"])


# ---------------------------------------------------------------------------- elementwise rules


@triton.jit
def exp_f(y):
    """The engine's exp_f (float32): clamp to [-87, 88], y = k ln2 + r, degree-7 Taylor, times 2^k."""
    y = tl.where(y < EXP_LO, EXP_LO, y)
    y = tl.where(y > EXP_HI, EXP_HI, y)
    t = y * LOG2E + ROUND23
    k = t - ROUND23
    r = (y - k * LN2_HI) - k * LN2_LO
    p = P7 * r + P6
    p = p * r + P5
    p = p * r + P4
    p = p * r + P3
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    ki = k.to(tl.int32)
    return p * ((ki + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def f2h_bits(f):
    """float32 -> f16 bits (int32), round half even, saturating at +-65504 (the engine's f2h)."""
    x = f.to(tl.int32, bitcast=True)
    sign = (x >> 16) & 0x8000
    x = x & 0x7FFFFFFF
    a = x.to(tl.float32, bitcast=True) * TWO24  # exact: a subnormal f16 in units of 2^-24
    sub = ((a + TWO23) - TWO23).to(tl.int32)
    norm = (x - 0x38000000 + 0xFFF + ((x >> 13) & 1)) >> 13
    h = tl.where(x >= 0x477FF000, 0x7BFF, tl.where(x < 0x38800000, sub, norm))
    return sign | h


@triton.jit
def quantize_block(y, ok):
    """Activation quantization (docs/engine.md) of blocks of 32 values y [R, NBLK, 32]:
    (q int8, s, sa) with s and sa [R, NBLK].  ``ok`` [R] masks rows that do not exist."""
    amax = tl.max(tl.abs(y), axis=2)
    nz = (amax != 0.0) & ok[:, None]
    inv = tl.div_rn(tl.full(amax.shape, Q_MAX, tl.float32), tl.where(nz, amax, 1.0))
    v = y * inv[:, :, None]
    r = (v + ROUND23) - ROUND23  # round half even
    qi = r.to(tl.int32)
    qi = tl.minimum(tl.maximum(qi, -127), 127)
    qi = tl.where(nz[:, :, None], qi, 0)
    s = tl.where(nz, tl.div_rn(amax, tl.full(amax.shape, Q_MAX, tl.float32)), 0.0)
    sa = s * tl.sum(qi, axis=2).to(tl.float32)
    return qi.to(tl.int8), s, sa


# ---------------------------------------------------------------------------- kernels


@triton.jit
def embed_kernel(tok_ptr, wq_ptr, wd_ptr, x_ptr, T, E: tl.constexpr, BT: tl.constexpr):
    """x[t] = d * f32(q) of the token's row of the Q8_0 embedding (exact).  Grid: (cdiv(T, BT),)."""
    NB: tl.constexpr = E // 32
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    ok = t < T
    tok = tl.load(tok_ptr + t, mask=ok, other=0).to(tl.int64)
    t64 = t.to(tl.int64)
    b = tl.arange(0, 32)
    for blk in range(NB):
        q = tl.load(wq_ptr + tok[:, None] * E + blk * 32 + b[None, :], mask=ok[:, None], other=0).to(tl.float32)
        d = tl.load(wd_ptr + tok * NB + blk, mask=ok, other=0.0)
        tl.store(x_ptr + t64[:, None] * E + blk * 32 + b[None, :], d[:, None] * q, mask=ok[:, None])


@triton.jit
def norm_quant_kernel(x_ptr, w_ptr, rows_ptr, y_ptr, q_ptr, s_ptr, sa_ptr, T, eps,
                      E: tl.constexpr, NORM: tl.constexpr, GATHER: tl.constexpr, STORE_Y: tl.constexpr,
                      BT: tl.constexpr, NBLK: tl.constexpr):
    """Quantize BT rows of x (rows_ptr[i] when GATHER), after RMSNorm with weights w if NORM:
    ss = sum x_i^2 in double, sequential in index order; r = 1 / sqrt(ss / E + eps) in
    double; y = f32(x * r) * w.  Writes q [T, E], s and sa [T, E/32] (output row i for
    input row rows[i]), and y [T, E] when STORE_Y; NBLK blocks of 32 at a time.
    Grid: (cdiv(T, BT),)."""
    NB: tl.constexpr = E // 32
    i = tl.program_id(0) * BT + tl.arange(0, BT)
    ok = i < T
    i64 = i.to(tl.int64)
    if GATHER:
        row = tl.load(rows_ptr + i, mask=ok, other=0).to(tl.int64)
    else:
        row = i64
    if NORM:
        # lanes across rows, the sum over the row sequential: 4 columns a step, taken apart
        # with split (no arithmetic), added in index order
        xrow = x_ptr + row[:, None] * E + tl.arange(0, 4)[None, :]
        ss = tl.zeros([BT], tl.float64)
        for k in tl.range(0, E, 4, loop_unroll_factor=4):
            v = tl.load(xrow + k, mask=ok[:, None], other=0.0).to(tl.float64)
            even, odd = tl.split(tl.reshape(v * v, [BT, 2, 2]))
            c0, c2 = tl.split(even)
            c1, c3 = tl.split(odd)
            ss = ((ss + c0) + c1) + c2
            ss = ss + c3
        r = (1.0 / tl.sqrt(ss / E + eps))[:, None, None]  # eps: the float32 widened
    col = tl.arange(0, NBLK)[None, :, None] * 32 + tl.arange(0, 32)[None, None, :]  # [1, NBLK, 32]
    blk = tl.arange(0, NBLK)[None, :]
    m3 = ok[:, None, None]
    m2 = ok[:, None]
    for b0 in range(0, NB, NBLK):
        xb = tl.load(x_ptr + row[:, None, None] * E + b0 * 32 + col, mask=m3, other=0.0)
        if NORM:
            w = tl.load(w_ptr + b0 * 32 + col)
            y = (xb.to(tl.float64) * r).to(tl.float32) * w
        else:
            y = xb
        if STORE_Y:
            tl.store(y_ptr + i64[:, None, None] * E + b0 * 32 + col, y, mask=m3)
        q, s, sa = quantize_block(y, ok)
        tl.store(q_ptr + i64[:, None, None] * E + b0 * 32 + col, q, mask=m3)
        tl.store(s_ptr + i64[:, None] * NB + b0 + blk, s, mask=m2)
        tl.store(sa_ptr + i64[:, None] * NB + b0 + blk, sa, mask=m2)


@triton.jit
def matmul_kernel(aq_ptr, as_ptr, asa_ptr, wq_ptr, wd_ptr, wm_ptr, out_ptr, T, R, ldo,
                  K: tl.constexpr, Q4: tl.constexpr, RESIDUAL: tl.constexpr, BT: tl.constexpr, BR: tl.constexpr,
                  DOT_F32: tl.constexpr):
    """out[t, r] (+)= sum over the 32-column blocks b in order of
    Q4_1: acc + ((d * s) * f32(isum) + m * sa);  Q8_0: acc + (d * s) * f32(isum),
    isum the exact integer dot product of the block: int8 x int8 -> int32, or, DOT_F32
    (the interpreter, where numpy's integer products are slow), in float32, exact too:
    every product and partial sum is an integer below 32 * 128 * 128 < 2^24.
    RESIDUAL: out = out + acc.  Grid: (cdiv(R, BR), cdiv(T, BT))."""
    NB: tl.constexpr = K // 32
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    rok = r < R
    tok = t < T
    r64 = r.to(tl.int64)
    t64 = t.to(tl.int64)
    k = tl.arange(0, 32)
    ap = aq_ptr + t64[:, None] * K + k[None, :]  # [BT, 32]
    wp = wq_ptr + r64[None, :] * K + k[:, None]  # [32, BR]
    amask = tok[:, None]
    wmask = rok[None, :]
    acc = tl.zeros([BT, BR], tl.float32)
    for b in range(NB):
        a = tl.load(ap + b * 32, mask=amask, other=0)
        w = tl.load(wp + b * 32, mask=wmask, other=0)
        if DOT_F32:
            isum = tl.dot(a.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        else:
            isum = tl.dot(a, w).to(tl.float32)  # int8 x int8 -> int32: exact in any order
        s = tl.load(as_ptr + t64 * NB + b, mask=tok, other=0.0)
        d = tl.load(wd_ptr + r64 * NB + b, mask=rok, other=0.0)
        if Q4:
            sa = tl.load(asa_ptr + t64 * NB + b, mask=tok, other=0.0)
            m = tl.load(wm_ptr + r64 * NB + b, mask=rok, other=0.0)
            acc = acc + ((d[None, :] * s[:, None]) * isum + m[None, :] * sa[:, None])
        else:
            acc = acc + (d[None, :] * s[:, None]) * isum
    ptrs = out_ptr + t64[:, None] * ldo + r64[None, :]
    mask = tok[:, None] & rok[None, :]
    if RESIDUAL:
        acc = tl.load(ptrs, mask=mask, other=0.0) + acc
    tl.store(ptrs, acc, mask=mask)


@triton.jit
def silu_quant_kernel(gu_ptr, q_ptr, s_ptr, sa_ptr, T, F: tl.constexpr, BT: tl.constexpr, NBLK: tl.constexpr):
    """a = (g / (1 + exp(-g))) * u (gu [T, 2F]: g then u), quantized, NBLK blocks of 32 at a
    time.  Grid: (cdiv(T, BT),)."""
    NB: tl.constexpr = F // 32
    i = tl.program_id(0) * BT + tl.arange(0, BT)
    ok = i < T
    i64 = i.to(tl.int64)
    col = tl.arange(0, NBLK)[None, :, None] * 32 + tl.arange(0, 32)[None, None, :]
    blk = tl.arange(0, NBLK)[None, :]
    m3 = ok[:, None, None]
    m2 = ok[:, None]
    for b0 in range(0, NB, NBLK):
        g = tl.load(gu_ptr + i64[:, None, None] * (2 * F) + b0 * 32 + col, mask=m3, other=0.0)
        u = tl.load(gu_ptr + i64[:, None, None] * (2 * F) + F + b0 * 32 + col, mask=m3, other=0.0)
        a = tl.div_rn(g, 1.0 + exp_f(-g)) * u
        q, s, sa = quantize_block(a, ok)
        tl.store(q_ptr + i64[:, None, None] * F + b0 * 32 + col, q, mask=m3)
        tl.store(s_ptr + i64[:, None] * NB + b0 + blk, s, mask=m2)
        tl.store(sa_ptr + i64[:, None] * NB + b0 + blk, sa, mask=m2)


@triton.jit
def rope_cache_kernel(qkv_ptr, stream_ptr, pos_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, sk_ptr, sv_ptr, T, layer,
                      C, NL, NH: tl.constexpr, NKV: tl.constexpr, HP: tl.constexpr, KP: tl.constexpr,
                      BT: tl.constexpr):
    """Per token (BT tokens a program, grid (cdiv(T, BT),)): RoPE on adjacent pairs of every
    query head at the token's position, then q * 0.125 (in place in qkv [T, (NH + 2 NKV) 64]);
    the start token (position 0) keeps its key (unrotated) and value as float32; a later
    token's key, rotated, and value go to ring slot (p - 1) mod C as f16 (saturating)."""
    QD: tl.constexpr = NH * 64
    W: tl.constexpr = (NH + 2 * NKV) * 64
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    tok = t < T
    t3 = t.to(tl.int64)[:, None, None]
    sl = tl.load(stream_ptr + t, mask=tok, other=0).to(tl.int64)
    p = tl.load(pos_ptr + t, mask=tok, other=0)
    i = tl.arange(0, 32)
    tm2 = tok[:, None]
    cs = tl.load(cos_ptr + p[:, None] * 32 + i[None, :], mask=tm2, other=0.0)[:, None, :]  # [BT, 1, 32]
    sn = tl.load(sin_ptr + p[:, None] * 32 + i[None, :], mask=tm2, other=0.0)[:, None, :]
    i3 = 2 * i[None, None, :]
    h = tl.arange(0, HP)[None, :, None]
    hm = tok[:, None, None] & (h < NH)
    qp = qkv_ptr + t3 * W + h * 64 + i3
    x0 = tl.load(qp, mask=hm, other=0.0)
    x1 = tl.load(qp + 1, mask=hm, other=0.0)
    tl.store(qp, (x0 * cs - x1 * sn) * Q_SCALE, mask=hm)
    tl.store(qp + 1, (x0 * sn + x1 * cs) * Q_SCALE, mask=hm)
    kv = tl.arange(0, KP)[None, :, None]
    km = tok[:, None, None] & (kv < NKV)
    kp = qkv_ptr + t3 * W + QD + kv * 64 + i3
    vp = kp + NKV * 64
    k0 = tl.load(kp, mask=km, other=0.0)
    k1 = tl.load(kp + 1, mask=km, other=0.0)
    v0 = tl.load(vp, mask=km, other=0.0)
    v1 = tl.load(vp + 1, mask=km, other=0.0)
    head = (sl[:, None, None] * NL + layer) * NKV + kv  # [BT, KP, 1]
    p3 = p[:, None, None]
    sink = km & (p3 == 0)
    spos = head * 64 + i3
    tl.store(sk_ptr + spos, k0, mask=sink)
    tl.store(sk_ptr + spos + 1, k1, mask=sink)
    tl.store(sv_ptr + spos, v0, mask=sink)
    tl.store(sv_ptr + spos + 1, v1, mask=sink)
    ring = km & (p3 >= 1)
    slot = tl.where(p3 >= 1, p3 - 1, 0) % C
    r0 = k0 * cs - k1 * sn
    r1 = k0 * sn + k1 * cs
    kpos = (head * 64 + i3) * C + slot
    tl.store(kc_ptr + kpos, f2h_bits(r0).to(tl.int16), mask=ring)
    tl.store(kc_ptr + kpos + C, f2h_bits(r1).to(tl.int16), mask=ring)
    vpos = (head * C + slot) * 64 + i3
    tl.store(vc_ptr + vpos, f2h_bits(v0).to(tl.int16), mask=ring)
    tl.store(vc_ptr + vpos + 1, f2h_bits(v1).to(tl.int16), mask=ring)


@triton.jit
def sink_rope_kernel(stream_ptr, pos_ptr, cos_ptr, sin_ptr, sk_ptr, rk_ptr, T, layer, NL, WIN,
                     NKV: tl.constexpr, KP: tl.constexpr, BT: tl.constexpr):
    """The start token's key of each KV head rotated at the token's virtual position
    lo - 1 (lo the window's first ring position), into rk [T, NKV, 64].  Grid: (cdiv(T, BT),)."""
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    tok = t < T
    sl = tl.load(stream_ptr + t, mask=tok, other=0).to(tl.int64)
    p = tl.load(pos_ptr + t, mask=tok, other=0)
    lo = tl.maximum(p - WIN + 2, 1)
    i = tl.arange(0, 32)[None, None, :]
    kv = tl.arange(0, KP)[None, :, None]
    km = tok[:, None, None] & (kv < NKV)
    row = (lo - 1)[:, None, None] * 32 + i
    cs = tl.load(cos_ptr + row, mask=tok[:, None, None], other=0.0)
    sn = tl.load(sin_ptr + row, mask=tok[:, None, None], other=0.0)
    src = sk_ptr + ((sl[:, None, None] * NL + layer) * NKV + kv) * 64 + 2 * i
    k0 = tl.load(src, mask=km, other=0.0)
    k1 = tl.load(src + 1, mask=km, other=0.0)
    dst = rk_ptr + (t.to(tl.int64)[:, None, None] * NKV + kv) * 64 + 2 * i
    tl.store(dst, k0 * cs - k1 * sn, mask=km)
    tl.store(dst + 1, k0 * sn + k1 * cs, mask=km)


@triton.jit
def attn_scores_kernel(qkv_ptr, stream_ptr, pos_ptr, kc_ptr, rk_ptr, sc_ptr, T, layer, C, NL, WIN, NS,
                       NH: tl.constexpr, NKV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr,
                       BT: tl.constexpr, BS: tl.constexpr):
    """Scores of the G query heads of one KV head (padded to GP), BT tokens and BS time
    indices a program: e_0 = sum_d q_d k_sink,d (rk: the start token's key rotated at
    lo - 1), e_{1+i} over ring position lo + i; each sum sequential over d = 0..63 from 0.
    The key cache is read once for the G heads.  Scores go to sc [T, NKV, GP, NS].
    Grid: (cdiv(T, BT), NKV, cdiv(NS, BS))."""
    W: tl.constexpr = (NH + 2 * NKV) * 64
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    kvh = tl.program_id(1)
    tau = (tl.program_id(2) * BS + tl.arange(0, BS))[None, :]  # [1, BS]
    tok = t < T
    t64 = t.to(tl.int64)
    sl = tl.load(stream_ptr + t, mask=tok, other=0).to(tl.int64)
    p = tl.load(pos_ptr + t, mask=tok, other=0)
    lo = tl.maximum(p - WIN + 2, 1)
    n = tl.where(p >= 1, p - lo + 1, 0) + 1  # scores: the sink and the ring positions lo .. p
    valid = tok[:, None] & (tau < n[:, None])  # [BT, BS]
    ring = valid & (tau >= 1)
    slot = tl.where(ring, (lo[:, None] - 2 + tau) % C, 0)
    g = tl.arange(0, GP)[None, :]
    qm = tok[:, None] & (g < G)  # [BT, GP]
    qbase = qkv_ptr + t64[:, None] * W + (kvh * G + g) * 64
    head = (sl * NL + layer) * NKV + kvh  # [BT]
    kbase = kc_ptr + head[:, None] * 64 * C + slot
    rbase = rk_ptr + (t64 * NKV + kvh) * 64
    first = tau == 0
    acc = tl.zeros([BT, GP, BS], tl.float32)
    for d in tl.range(0, 64, loop_unroll_factor=8):  # unrolled: the loads overlap, the sums stay in order
        qd = tl.load(qbase + d, mask=qm, other=0.0)
        kd = tl.load(kbase + d * C, mask=ring, other=0).to(tl.float16, bitcast=True).to(tl.float32)
        kd = tl.where(first, tl.load(rbase + d, mask=tok, other=0.0)[:, None], kd)
        acc = acc + qd[:, :, None] * kd[:, None, :]
    out = sc_ptr + ((t64[:, None] * NKV + kvh) * GP + g)[:, :, None] * NS + tau[:, None, :]
    tl.store(out, acc, mask=qm[:, :, None] & valid[:, None, :])


@triton.jit
def attn_values_kernel(stream_ptr, pos_ptr, vc_ptr, sv_ptr, sc_ptr, ao_ptr, T, layer, C, NL, WIN, NS,
                       NH: tl.constexpr, NKV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, BT: tl.constexpr,
                       BD: tl.constexpr, STAGES: tl.constexpr = 1):
    """Softmax and weighted values of the G query heads of one KV head, BT tokens and BD of
    the 64 dimensions a program (grid (cdiv(T, BT), NKV, 64 / BD)): mx = max e;
    e_i = exp(e_i - mx); the sum in 16 lanes (lane i mod 16, increasing i) and the fixed
    tree; values in 4 position lanes A_j (time index i mod 4, increasing i, from 0),
    o = (A_0 + A_1) + (A_2 + A_3); out o / sum.  The loops run to NS, the step's longest
    score row (a plain argument: a CUDA graph replays with other positions); what a token
    does not see is masked, adding exact zeros."""
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    kvh = tl.program_id(1)
    d0 = tl.program_id(2) * BD
    tok = t < T
    t64 = t.to(tl.int64)
    sl = tl.load(stream_ptr + t, mask=tok, other=0).to(tl.int64)
    p = tl.load(pos_ptr + t, mask=tok, other=0)
    lo = tl.maximum(p - WIN + 2, 1)
    n = tl.where(p >= 1, p - lo + 1, 0) + 1
    g = tl.arange(0, GP)[None, :]
    qm = tok[:, None] & (g < G)  # [BT, GP]
    srow = sc_ptr + ((t64[:, None] * NKV + kvh) * GP + g) * NS  # [BT, GP]
    # the maximum (order does not matter)
    c16 = tl.arange(0, 16)[None, None, :]
    mx = tl.full([BT, GP], float("-inf"), tl.float32)
    for c0 in range(0, NS, 16):
        m = qm[:, :, None] & (c0 + c16 < n[:, None, None])
        mx = tl.maximum(mx, tl.max(tl.load(srow[:, :, None] + c0 + c16, mask=m, other=float("-inf")), axis=2))
    mx = tl.where(qm, mx, 0.0)
    # time index i = c0 + 4u + j: lane i mod 16 = 4u + j, position lane i mod 4 = j
    u4 = tl.arange(0, 4)[None, None, :, None]
    j4 = tl.arange(0, 4)[None, None, None, :]
    jv = tl.arange(0, 4)[None, :]  # [1, 4]
    dd = (d0 + tl.arange(0, BD))[None, None, :]  # [1, 1, BD]
    head = (sl * NL + layer) * NKV + kvh  # [BT]
    vbase = vc_ptr + head[:, None, None] * C * 64
    sink_v = tl.load(sv_ptr + head[:, None, None] * 64 + dd, mask=tok[:, None, None], other=0.0)  # [BT, 1, BD]
    lanes = tl.zeros([BT, GP, 4, 4], tl.float32)
    A = tl.zeros([BT, GP, 4, BD], tl.float32)
    # STAGES > 1: the loads of later chunks are issued early (software pipelining); the sums
    # keep their order
    for c0 in tl.range(0, NS, 16, num_stages=STAGES):
        tau4 = c0 + 4 * u4 + j4  # [1, 1, 4, 4]
        ok4 = qm[:, :, None, None] & (tau4 < n[:, None, None, None])
        sc = tl.load(srow[:, :, None, None] + tau4, mask=ok4, other=0.0)
        e4 = tl.where(ok4, exp_f(sc - mx[:, :, None, None]), 0.0)
        lanes = lanes + e4
        for u in tl.static_range(4):
            eu = tl.sum(tl.where(u4 == u, e4, 0.0), axis=2)  # [BT, GP, 4 (j)]
            tau = c0 + 4 * u + jv  # [1, 4]
            ring = tok[:, None] & (tau >= 1) & (tau < n[:, None])  # [BT, 4]
            slot = tl.where(ring, (lo[:, None] - 2 + tau) % C, 0)
            v = tl.load(vbase + slot[:, :, None] * 64 + dd, mask=ring[:, :, None], other=0)
            v = v.to(tl.float16, bitcast=True).to(tl.float32)  # [BT, 4, BD]
            v = tl.where((tau == 0)[:, :, None], sink_v, v)
            A = A + eu[:, :, :, None] * v[:, None, :, :]
    # sum = (((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)))+(((l8+l9)+(l10+l11))+((l12+l13)+(l14+l15)))
    lj0 = tl.sum(tl.where(j4 == 0, lanes, 0.0), axis=3)  # [BT, GP, 4 (u)]
    lj1 = tl.sum(tl.where(j4 == 1, lanes, 0.0), axis=3)
    lj2 = tl.sum(tl.where(j4 == 2, lanes, 0.0), axis=3)
    lj3 = tl.sum(tl.where(j4 == 3, lanes, 0.0), axis=3)
    quad = (lj0 + lj1) + (lj2 + lj3)
    u3 = tl.arange(0, 4)[None, None, :]
    q0 = tl.sum(tl.where(u3 == 0, quad, 0.0), axis=2)  # [BT, GP]
    q1 = tl.sum(tl.where(u3 == 1, quad, 0.0), axis=2)
    q2 = tl.sum(tl.where(u3 == 2, quad, 0.0), axis=2)
    q3 = tl.sum(tl.where(u3 == 3, quad, 0.0), axis=2)
    total = tl.where(qm, (q0 + q1) + (q2 + q3), 1.0)
    jd = tl.arange(0, 4)[None, None, :, None]
    a0 = tl.sum(tl.where(jd == 0, A, 0.0), axis=2)  # [BT, GP, BD]
    a1 = tl.sum(tl.where(jd == 1, A, 0.0), axis=2)
    a2 = tl.sum(tl.where(jd == 2, A, 0.0), axis=2)
    a3 = tl.sum(tl.where(jd == 3, A, 0.0), axis=2)
    o = (a0 + a1) + (a2 + a3)
    out = tl.div_rn(o, tl.broadcast_to(total[:, :, None], o.shape))
    ptr = ao_ptr + t64[:, None, None] * (NH * 64) + (kvh * G + g)[:, :, None] * 64 + dd
    tl.store(ptr, out, mask=qm[:, :, None])
