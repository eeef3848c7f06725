"""Triton kernels for the engine's numerics "portable 1" (docs/engine.md): SmolLM2 (llama)
and Gemma 3 (its K16 products, query and key norms, NEOX RoPE, GELU, post-norms and local
layers are constexpr variants and arguments of the same kernels).

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
matrices as int8 [rows, K] (Q4_1: 0..15, Q8_0: -128..127, K16: Q4_K's 0..15 or Q6_K's
-32..31) with float32 d (and m) [rows, K/32] (K16: scale and min [rows, K/16]); the key
cache [stream, layer, kv head, HD, C] and the value cache [stream, layer, kv head, C +
RING_TAIL, HD] (its tail repeats the ring) as f16 bits (int16); the start token's key and
value [stream, layer, kv head, HD] float32 (HD the head dimension: 64 for SmolLM2, 256
for Gemma 3).

The attention's window per layer is two numbers: ``span`` (the ring positions a query
sees are ``lo = max(1, p - span + 1) .. p``: the window minus one on SmolLM2's and Gemma's
global layers, the sliding window on Gemma's local ones) and ``sink_until`` (the start
token leads the scores while ``p < sink_until``; negative: always).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .constants import F32

__all__ = [
    "embed_kernel",
    "norm_quant_kernel",
    "matmul_kernel",
    "gate_quant_kernel",
    "rope_cache_kernel",
    "sink_rope_kernel",
    "attn_scores_kernel",
    "attn_softmax_kernel",
    "attn_values_kernel",
    "exp_f",
    "f2h_bits",
    "quantize_block",
    "sum_squares",
    "KIND_Q4_1",
    "KIND_Q8_0",
    "KIND_K16",
]

#: matrix kinds (matmul_kernel's KIND): the weights file's tensor types
KIND_Q4_1, KIND_Q8_0, KIND_K16 = 1, 2, 3

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
GELU_A = tl.constexpr(F32["GELU_A"])
GELU_B = tl.constexpr(F32["GELU_B"])
TWO24 = tl.constexpr(F32["TWO24"])
TWO23 = tl.constexpr(F32["TWO23"])
#: value cache slots past the ring that repeat it (slot C + i holds slot i mod C;
#: rope_cache_kernel writes both): a loop trip of attn_values_kernel reads 96 slots from
#: its first one, none past the tail's end
RING_TAIL = tl.constexpr(96)


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


@triton.jit
def _square_loads(ptr, m, k, N: tl.constexpr):
    """sum_squares' loads of the 16 columns from k: four [R0, R1, 4] tiles (none past N)."""
    a = tl.load(ptr + k, mask=m & (k < N), other=0.0)
    b = tl.load(ptr + k + 4, mask=m & (k + 4 < N), other=0.0)
    c = tl.load(ptr + k + 8, mask=m & (k + 8 < N), other=0.0)
    d = tl.load(ptr + k + 12, mask=m & (k + 12 < N), other=0.0)
    return a, b, c, d


@triton.jit
def _square_add(ss, v):
    """ss plus the squares of the 4 columns of v [R0, R1, 4], in double and in order (taken
    apart with split, no arithmetic)."""
    R0: tl.constexpr = v.shape[0]
    R1: tl.constexpr = v.shape[1]
    v = v.to(tl.float64)
    even, odd = tl.split(tl.reshape(v * v, [R0, R1, 2, 2]))
    c0, c2 = tl.split(even)
    c1, c3 = tl.split(odd)
    ss = ((ss + c0) + c1) + c2
    return ss + c3


@triton.jit
def sum_squares(row, ok, N: tl.constexpr, STAGES: tl.constexpr):
    """RMSNorm's sum: ss = sum of x_i * x_i in double over the N float32s at each pointer of
    the 2-D tile ``row``, sequential in index order (lanes across rows); ``ok`` masks rows
    that do not exist.  16 columns a loop trip; STAGES: Triton's pipelining of the loop (the
    next STAGES - 1 trips' loads in flight, copied to shared memory asynchronously: a chain
    of dependent adds would otherwise wait out each load); past N, exact zeros."""
    R0: tl.constexpr = row.shape[0]
    R1: tl.constexpr = row.shape[1]
    ptr = row[:, :, None] + tl.arange(0, 4)[None, None, :]
    m = ok[:, :, None]
    ss = tl.zeros([R0, R1], tl.float64)
    for k in tl.range(0, N, 16, num_stages=STAGES):
        a0, a1, a2, a3 = _square_loads(ptr, m, k, N)
        ss = _square_add(_square_add(_square_add(_square_add(ss, a0), a1), a2), a3)
    return ss


@triton.jit
def gelu_f(g):
    """The engine's tanh-form GELU (gelu_f): u = A (g (1 + B g^2)); t = 1 - 2 / (exp(2u) + 1);
    (0.5 g)(1 + t), binary32 in this order."""
    u = GELU_A * (g * (1.0 + GELU_B * (g * g)))
    t = 1.0 - tl.div_rn(tl.full(g.shape, 2.0, tl.float32), exp_f(u + u) + 1.0)
    return (0.5 * g) * (1.0 + t)


# ---------------------------------------------------------------------------- kernels


@triton.jit
def embed_kernel(tok_ptr, wq_ptr, wd_ptr, x_ptr, T, scale, E: tl.constexpr, BT: tl.constexpr,
                 SCALED: tl.constexpr = False):
    """x[t] = d * f32(q) of the token's row of the Q8_0 embedding (exact), times ``scale``
    when SCALED (Gemma: f32(sqrt(n_embd)), one binary32 multiply).  Grid: (cdiv(T, BT),)."""
    NB: tl.constexpr = E // 32
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    ok = t < T
    tok = tl.load(tok_ptr + t, mask=ok, other=0).to(tl.int64)
    t64 = t.to(tl.int64)
    b = tl.arange(0, 32)
    for blk in range(NB):
        q = tl.load(wq_ptr + tok[:, None] * E + blk * 32 + b[None, :], mask=ok[:, None], other=0).to(tl.float32)
        d = tl.load(wd_ptr + tok * NB + blk, mask=ok, other=0.0)
        x = d[:, None] * q
        if SCALED:
            x = x * scale
        tl.store(x_ptr + t64[:, None] * E + blk * 32 + b[None, :], x, mask=ok[:, None])


@triton.jit
def norm_quant_kernel(x_ptr, w_ptr, rows_ptr, y_ptr, q_ptr, s_ptr, sa_ptr, T, eps,
                      E: tl.constexpr, NORM: tl.constexpr, GATHER: tl.constexpr, STORE_Y: tl.constexpr,
                      BT: tl.constexpr, NBLK: tl.constexpr, RESIDUAL: tl.constexpr = False,
                      QUANT: tl.constexpr = True, GROUPS: tl.constexpr = 1, STAGES: tl.constexpr = 1):
    """Quantize BT rows of x (rows_ptr[i] when GATHER), after RMSNorm with weights w if NORM:
    ss = sum x_i^2 in double, sequential in index order; r = 1 / sqrt(ss / E + eps) in
    double; y = f32(x * r) * w.  Writes q [T, E], s and sa [T, E/32] (output row i for
    input row rows[i]) when QUANT, and y [T, E] when STORE_Y; RESIDUAL adds y to y_ptr's
    row instead (Gemma's post-norms: x = x + RMSNorm(out, w)); y_ptr is never x_ptr then.
    NBLK blocks of 32 at a time, GROUPS times a program, each program taking its rows' sums
    (on a GPU the sums are latency, not work, and the blocks run side by side, GROUPS 1;
    the interpreter pays per operation and takes them all).  STAGES: the sum's pipelining
    (sum_squares).  Grid: (cdiv(T, BT), E / (32 NBLK GROUPS))."""
    NB: tl.constexpr = E // 32
    i = tl.program_id(0) * BT + tl.arange(0, BT)
    ok = i < T
    i64 = i.to(tl.int64)
    if GATHER:
        row = tl.load(rows_ptr + i, mask=ok, other=0).to(tl.int64)
    else:
        row = i64
    if NORM:
        ss = tl.reshape(sum_squares((x_ptr + row * E)[:, None], ok[:, None], E, STAGES), [BT])
        r = (1.0 / tl.sqrt(ss / E + eps))[:, None, None]  # eps: the float32 widened
    col = tl.arange(0, NBLK)[None, :, None] * 32 + tl.arange(0, 32)[None, None, :]  # [1, NBLK, 32]
    blk = tl.arange(0, NBLK)[None, :]
    m3 = ok[:, None, None]
    m2 = ok[:, None]
    for gi in tl.static_range(GROUPS):  # the blocks are independent
        b0 = (tl.program_id(1) * GROUPS + gi) * NBLK
        xb = tl.load(x_ptr + row[:, None, None] * E + b0 * 32 + col, mask=m3, other=0.0)
        if NORM:
            w = tl.load(w_ptr + b0 * 32 + col)
            y = (xb.to(tl.float64) * r).to(tl.float32) * w
        else:
            y = xb
        if STORE_Y:
            tl.store(y_ptr + i64[:, None, None] * E + b0 * 32 + col, y, mask=m3)
        if RESIDUAL:
            res = y_ptr + i64[:, None, None] * E + b0 * 32 + col
            tl.store(res, tl.load(res, mask=m3, other=0.0) + y, mask=m3)
        if QUANT:
            q, s, sa = quantize_block(y, ok)
            tl.store(q_ptr + i64[:, None, None] * E + b0 * 32 + col, q, mask=m3)
            tl.store(s_ptr + i64[:, None] * NB + b0 + blk, s, mask=m2)
            tl.store(sa_ptr + i64[:, None] * NB + b0 + blk, sa, mask=m2)


@triton.jit
def matmul_kernel(aq_ptr, as_ptr, asa_ptr, wq_ptr, wd_ptr, wm_ptr, out_ptr, T, R, ldo,
                  K: tl.constexpr, KIND: tl.constexpr, RESIDUAL: tl.constexpr, BT: tl.constexpr, BR: tl.constexpr,
                  DOT_F32: tl.constexpr, STAGES: tl.constexpr = 1):
    """out[t, r] (+)= sum over the 32-column blocks b in order of
    Q4_1: acc + ((d * s) * f32(isum) + m * sa);  Q8_0: acc + (d * s) * f32(isum);
    K16 (Gemma's Q4_K and Q6_K): per 16-column half j of the block, in order,
    acc + ((scale_j * s) * f32(isum_j) + min_j * (s * f32(qsum_j))), qsum_j the sum of the
    activations over the half;
    isum the exact integer dot product: int8 x int8 -> int32 (a K16 half as a 32-column
    product with the other half's weights zero: tl.dot's int8 tiles are 32 deep), or,
    DOT_F32 (the interpreter, where numpy's integer products are slow), in float32, exact
    too: every product and partial sum is an integer below 32 * 128 * 128 < 2^24.
    RESIDUAL: out = out + acc.  STAGES: Triton's pipelining of the loop over the blocks (the
    next STAGES - 1 blocks' loads in flight, copied to shared memory asynchronously; the
    sum stays in block order).  Grid: (cdiv(R, BR), cdiv(T, BT))."""
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
    low = (k < 16)[:, None]  # K16: the block's first 16 columns
    acc = tl.zeros([BT, BR], tl.float32)
    for b in tl.range(0, NB, num_stages=STAGES):
        a = tl.load(ap + b * 32, mask=amask, other=0)
        w = tl.load(wp + b * 32, mask=wmask, other=0)
        s = tl.load(as_ptr + t64 * NB + b, mask=tok, other=0.0)
        if KIND == 3:  # K16
            zero = tl.zeros_like(w)
            w0 = tl.where(low, w, zero)
            w1 = tl.where(low, zero, w)
            if DOT_F32:
                af = a.to(tl.float32)
                isum0 = tl.dot(af, w0.to(tl.float32), input_precision="ieee")
                isum1 = tl.dot(af, w1.to(tl.float32), input_precision="ieee")
            else:
                isum0 = tl.dot(a, w0).to(tl.float32)
                isum1 = tl.dot(a, w1).to(tl.float32)
            qs0, qs1 = tl.split(tl.sum(tl.reshape(a.to(tl.int32), [BT, 2, 16]), axis=2))  # exact
            sq0 = s * qs0.to(tl.float32)
            sq1 = s * qs1.to(tl.float32)
            sc0 = tl.load(wd_ptr + r64 * (2 * NB) + 2 * b, mask=rok, other=0.0)
            sc1 = tl.load(wd_ptr + r64 * (2 * NB) + 2 * b + 1, mask=rok, other=0.0)
            mn0 = tl.load(wm_ptr + r64 * (2 * NB) + 2 * b, mask=rok, other=0.0)
            mn1 = tl.load(wm_ptr + r64 * (2 * NB) + 2 * b + 1, mask=rok, other=0.0)
            acc = acc + ((sc0[None, :] * s[:, None]) * isum0 + mn0[None, :] * sq0[:, None])
            acc = acc + ((sc1[None, :] * s[:, None]) * isum1 + mn1[None, :] * sq1[:, None])
        else:
            if DOT_F32:
                isum = tl.dot(a.to(tl.float32), w.to(tl.float32), input_precision="ieee")
            else:
                isum = tl.dot(a, w).to(tl.float32)  # int8 x int8 -> int32: exact in any order
            d = tl.load(wd_ptr + r64 * NB + b, mask=rok, other=0.0)
            if KIND == 1:  # Q4_1
                sa = tl.load(asa_ptr + t64 * NB + b, mask=tok, other=0.0)
                m = tl.load(wm_ptr + r64 * NB + b, mask=rok, other=0.0)
                acc = acc + ((d[None, :] * s[:, None]) * isum + m[None, :] * sa[:, None])
            else:  # Q8_0
                acc = acc + (d[None, :] * s[:, None]) * isum
    ptrs = out_ptr + t64[:, None] * ldo + r64[None, :]
    mask = tok[:, None] & rok[None, :]
    if RESIDUAL:
        acc = tl.load(ptrs, mask=mask, other=0.0) + acc
    tl.store(ptrs, acc, mask=mask)


@triton.jit
def gate_quant_kernel(gu_ptr, q_ptr, s_ptr, sa_ptr, T, F: tl.constexpr, BT: tl.constexpr, NBLK: tl.constexpr,
                      GELU: tl.constexpr = False):
    """a = act(g) * u (gu [T, 2F]: g then u), quantized, NBLK blocks of 32 at a time; act is
    SiLU, g / (1 + exp(-g)), or with GELU the engine's tanh-form GELU (Gemma).
    Grid: (cdiv(T, BT), F / (32 NBLK))."""
    NB: tl.constexpr = F // 32
    i = tl.program_id(0) * BT + tl.arange(0, BT)
    ok = i < T
    i64 = i.to(tl.int64)
    col = tl.arange(0, NBLK)[None, :, None] * 32 + tl.arange(0, 32)[None, None, :]
    blk = tl.arange(0, NBLK)[None, :]
    m3 = ok[:, None, None]
    m2 = ok[:, None]
    b0 = tl.program_id(1) * NBLK
    g = tl.load(gu_ptr + i64[:, None, None] * (2 * F) + b0 * 32 + col, mask=m3, other=0.0)
    u = tl.load(gu_ptr + i64[:, None, None] * (2 * F) + F + b0 * 32 + col, mask=m3, other=0.0)
    if GELU:
        a = gelu_f(g) * u
    else:
        a = tl.div_rn(g, 1.0 + exp_f(-g)) * u
    q, s, sa = quantize_block(a, ok)
    tl.store(q_ptr + i64[:, None, None] * F + b0 * 32 + col, q, mask=m3)
    tl.store(s_ptr + i64[:, None] * NB + b0 + blk, s, mask=m2)
    tl.store(sa_ptr + i64[:, None] * NB + b0 + blk, sa, mask=m2)


@triton.jit
def _pairs(HD: tl.constexpr, NEOX: tl.constexpr):
    """The RoPE pairs of a head (i, the first and the second index): adjacent (2i, 2i + 1),
    or NEOX's (i, i + HD/2)."""
    i = tl.arange(0, HD // 2)
    if NEOX:
        return i, i, i + HD // 2
    else:
        return i, 2 * i, 2 * i + 1


@triton.jit
def _head_norm(row, ok, x0, x1, w_ptr, i0, i1, eps, HD: tl.constexpr, STAGES: tl.constexpr):
    """RMSNorm of each head (row: a [BT, heads] tile of pointers to its HD values) on its
    pairs x0, x1 ([BT, heads, HD/2]): y = f32(x * r) * w, as the rule over the head."""
    r = (1.0 / tl.sqrt(sum_squares(row, ok, HD, STAGES) / HD + eps))[:, :, None]
    y0 = (x0.to(tl.float64) * r).to(tl.float32) * tl.load(w_ptr + i0)
    y1 = (x1.to(tl.float64) * r).to(tl.float32) * tl.load(w_ptr + i1)
    return y0, y1


@triton.jit
def rope_cache_kernel(qkv_ptr, stream_ptr, pos_ptr, cos_ptr, sin_ptr, qn_ptr, kn_ptr, kc_ptr, vc_ptr, sk_ptr, sv_ptr,
                      T, layer, C, NL, eps, qscale, NH: tl.constexpr, NKV: tl.constexpr, HP: tl.constexpr,
                      KP: tl.constexpr, BT: tl.constexpr, HD: tl.constexpr = 64, NEOX: tl.constexpr = False,
                      QK_NORM: tl.constexpr = False, STAGES: tl.constexpr = 1):
    """Per token (BT tokens a program, grid (cdiv(T, BT),)): every query head (Gemma,
    QK_NORM: after RMSNorm with qn) rotated at the token's position (pairs: _pairs), then
    times qscale (in place in qkv [T, (NH + 2 NKV) HD]); the keys (QK_NORM: after RMSNorm
    with kn) and values: the start token (position 0) keeps its key (unrotated) and value
    as float32; a later token's key, rotated, and value go to ring slot (p - 1) mod C as
    f16 (saturating)."""
    QD: tl.constexpr = NH * HD
    W: tl.constexpr = (NH + 2 * NKV) * HD
    HALF: tl.constexpr = HD // 2
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    tok = t < T
    t64 = t.to(tl.int64)
    sl = tl.load(stream_ptr + t, mask=tok, other=0).to(tl.int64)
    p = tl.load(pos_ptr + t, mask=tok, other=0)
    i, i0, i1 = _pairs(HD, NEOX)
    i0 = i0[None, None, :]
    i1 = i1[None, None, :]
    tm2 = tok[:, None]
    cs = tl.load(cos_ptr + p[:, None] * HALF + i[None, :], mask=tm2, other=0.0)[:, None, :]  # [BT, 1, HALF]
    sn = tl.load(sin_ptr + p[:, None] * HALF + i[None, :], mask=tm2, other=0.0)[:, None, :]
    h = tl.arange(0, HP)[None, :]
    hm = tok[:, None] & (h < NH)  # [BT, HP]
    qrow = qkv_ptr + t64[:, None] * W + h * HD
    x0 = tl.load(qrow[:, :, None] + i0, mask=hm[:, :, None], other=0.0)
    x1 = tl.load(qrow[:, :, None] + i1, mask=hm[:, :, None], other=0.0)
    if QK_NORM:
        x0, x1 = _head_norm(qrow, hm, x0, x1, qn_ptr, i0, i1, eps, HD, STAGES)
    tl.store(qrow[:, :, None] + i0, (x0 * cs - x1 * sn) * qscale, mask=hm[:, :, None])
    tl.store(qrow[:, :, None] + i1, (x0 * sn + x1 * cs) * qscale, mask=hm[:, :, None])
    kv = tl.arange(0, KP)[None, :]
    km = tok[:, None] & (kv < NKV)  # [BT, KP]
    km3 = km[:, :, None]
    krow = qkv_ptr + t64[:, None] * W + QD + kv * HD
    vrow = krow + NKV * HD
    k0 = tl.load(krow[:, :, None] + i0, mask=km3, other=0.0)
    k1 = tl.load(krow[:, :, None] + i1, mask=km3, other=0.0)
    if QK_NORM:
        k0, k1 = _head_norm(krow, km, k0, k1, kn_ptr, i0, i1, eps, HD, STAGES)
    v0 = tl.load(vrow[:, :, None] + i0, mask=km3, other=0.0)
    v1 = tl.load(vrow[:, :, None] + i1, mask=km3, other=0.0)
    head = ((sl[:, None] * NL + layer) * NKV + kv)[:, :, None]  # [BT, KP, 1]
    p3 = p[:, None, None]
    sink = km3 & (p3 == 0)
    spos = head * HD
    tl.store(sk_ptr + spos + i0, k0, mask=sink)
    tl.store(sk_ptr + spos + i1, k1, mask=sink)
    tl.store(sv_ptr + spos + i0, v0, mask=sink)
    tl.store(sv_ptr + spos + i1, v1, mask=sink)
    ring = km3 & (p3 >= 1)
    slot = tl.where(p3 >= 1, p3 - 1, 0) % C
    r0 = k0 * cs - k1 * sn
    r1 = k0 * sn + k1 * cs
    tl.store(kc_ptr + (head * HD + i0) * C + slot, f2h_bits(r0).to(tl.int16), mask=ring)
    tl.store(kc_ptr + (head * HD + i1) * C + slot, f2h_bits(r1).to(tl.int16), mask=ring)
    vpos = (head * (C + RING_TAIL) + slot) * HD
    v0 = f2h_bits(v0).to(tl.int16)
    v1 = f2h_bits(v1).to(tl.int16)
    tl.store(vc_ptr + vpos + i0, v0, mask=ring)
    tl.store(vc_ptr + vpos + i1, v1, mask=ring)
    for m in tl.static_range(1, RING_TAIL // 32 + 1):  # and again past the ring's end (C >= 32)
        tail = ring & (slot + (m - 1) * C < RING_TAIL)
        tl.store(vc_ptr + vpos + m * C * HD + i0, v0, mask=tail)
        tl.store(vc_ptr + vpos + m * C * HD + i1, v1, mask=tail)


@triton.jit
def _window(p, span, sink_until):
    """A query at position p: (lo, the first ring position it sees; 1 when the start token
    leads its scores, else 0; n, its number of scores)."""
    lo = tl.maximum(p - span + 1, 1)
    us = ((p < sink_until) | (sink_until < 0)).to(tl.int64)
    n = tl.where(p >= 1, p - lo + 1, 0) + us
    return lo, us, n


@triton.jit
def sink_rope_kernel(stream_ptr, pos_ptr, cos_ptr, sin_ptr, sk_ptr, rk_ptr, T, layer, NL, span,
                     NKV: tl.constexpr, KP: tl.constexpr, BT: tl.constexpr, HD: tl.constexpr = 64,
                     NEOX: tl.constexpr = False):
    """The start token's key of each KV head rotated at the token's virtual position
    lo - 1 (lo the window's first ring position; 0 wherever a local layer still sees the
    start token), into rk [T, NKV, HD].  Grid: (cdiv(T, BT),)."""
    HALF: tl.constexpr = HD // 2
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    tok = t < T
    sl = tl.load(stream_ptr + t, mask=tok, other=0).to(tl.int64)
    p = tl.load(pos_ptr + t, mask=tok, other=0)
    lo = tl.maximum(p - span + 1, 1)
    i, i0, i1 = _pairs(HD, NEOX)
    i = i[None, None, :]
    i0 = i0[None, None, :]
    i1 = i1[None, None, :]
    kv = tl.arange(0, KP)[None, :, None]
    km = tok[:, None, None] & (kv < NKV)
    row = (lo - 1)[:, None, None] * HALF + i
    cs = tl.load(cos_ptr + row, mask=tok[:, None, None], other=0.0)
    sn = tl.load(sin_ptr + row, mask=tok[:, None, None], other=0.0)
    src = sk_ptr + ((sl[:, None, None] * NL + layer) * NKV + kv) * HD
    k0 = tl.load(src + i0, mask=km, other=0.0)
    k1 = tl.load(src + i1, mask=km, other=0.0)
    dst = rk_ptr + (t.to(tl.int64)[:, None, None] * NKV + kv) * HD
    tl.store(dst + i0, k0 * cs - k1 * sn, mask=km)
    tl.store(dst + i1, k0 * sn + k1 * cs, mask=km)


@triton.jit
def attn_scores_kernel(qkv_ptr, stream_ptr, pos_ptr, kc_ptr, rk_ptr, sc_ptr, T, layer, C, NL, span, sink_until, NS,
                       NH: tl.constexpr, NKV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr,
                       BT: tl.constexpr, BS: tl.constexpr, HD: tl.constexpr = 64, GA: tl.constexpr = 0):
    """Scores of the G query heads of one KV head, BT tokens and BS time indices a
    program: e_0 = sum_d q_d k_sink,d while the start token leads (rk: its key rotated at
    lo - 1), then one score per ring position lo, lo + 1, ..., p; each sum sequential over
    d = 0..HD-1 from 0.  The key cache is read once for the G heads: in one tile padded to
    GP (GA = 0), or the first GA heads in one and the other G - GA in another, powers of
    two both (tiles.head_split: SmolLM2's 3 as 2 + 1, no padded head's arithmetic).
    Scores go to sc [T, NKV, GP, NS].  Grid: (cdiv(T, BT), NKV, cdiv(NS, BS))."""
    W: tl.constexpr = (NH + 2 * NKV) * HD
    A: tl.constexpr = GP if GA == 0 else GA  # heads of the first tile
    B: tl.constexpr = 1 if GA == 0 else G - GA  # of the second (none when GA = 0)
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    kvh = tl.program_id(1)
    tau = (tl.program_id(2) * BS + tl.arange(0, BS))[None, :]  # [1, BS]
    tok = t < T
    t64 = t.to(tl.int64)
    sl = tl.load(stream_ptr + t, mask=tok, other=0).to(tl.int64)
    p = tl.load(pos_ptr + t, mask=tok, other=0)
    lo, us, n = _window(p, span, sink_until)
    valid = tok[:, None] & (tau < n[:, None])  # [BT, BS]
    ring = valid & (tau >= us[:, None])
    slot = tl.where(ring, (lo[:, None] - 1 + tau - us[:, None]) % C, 0)
    ga = tl.arange(0, A)[None, :]
    gb = A + tl.arange(0, B)[None, :]
    qma = tok[:, None] & (ga < G)  # [BT, A]
    qmb = tok[:, None] & (gb < G)
    qa = qkv_ptr + t64[:, None] * W + (kvh * G + ga) * HD
    qb = qkv_ptr + t64[:, None] * W + (kvh * G + gb) * HD
    head = (sl * NL + layer) * NKV + kvh  # [BT]
    kbase = kc_ptr + head[:, None] * HD * C + slot
    rbase = rk_ptr + (t64 * NKV + kvh) * HD
    first = (tau == 0) & (us[:, None] == 1)  # [BT, BS]
    acc_a = tl.zeros([BT, A, BS], tl.float32)
    acc_b = tl.zeros([BT, B, BS], tl.float32)
    for d in tl.range(0, HD, loop_unroll_factor=8):  # unrolled: the loads overlap, the sums stay in order
        q_a = tl.load(qa + d, mask=qma, other=0.0)
        if GA > 0:
            q_b = tl.load(qb + d, mask=qmb, other=0.0)
        kd = tl.load(kbase + d * C, mask=ring, other=0).to(tl.float16, bitcast=True).to(tl.float32)
        kd = tl.where(first, tl.load(rbase + d, mask=tok, other=0.0)[:, None], kd)
        acc_a = acc_a + q_a[:, :, None] * kd[:, None, :]
        if GA > 0:
            acc_b = acc_b + q_b[:, :, None] * kd[:, None, :]
    out = sc_ptr + ((t64[:, None] * NKV + kvh) * GP)[:, :, None] * NS + tau[:, None, :]
    tl.store(out + ga[:, :, None] * NS, acc_a, mask=qma[:, :, None] & valid[:, None, :])
    if GA > 0:
        tl.store(out + gb[:, :, None] * NS, acc_b, mask=qmb[:, :, None] & valid[:, None, :])


@triton.jit
def _softmax_rows(lanes, x, at, m, w, mx, r4, ROWS: tl.constexpr):
    """attn_softmax_kernel's work on a tile of scores x [BT, ROWS, 4, 4] (m: those a token
    sees; w: those in the score rows): e = exp(x - mx), zero where unseen, stored in their
    place at ``at``; each lane adds the rows in order, each taken out of the tile exactly
    (the other rows exact zeros)."""
    e = tl.where(m, exp_f(x - mx), 0.0)
    tl.store(at, e, mask=w)
    for r in tl.static_range(ROWS):
        lanes = lanes + tl.sum(tl.where(r4 == r, e, 0.0), axis=1)
    return lanes


@triton.jit
def attn_softmax_kernel(pos_ptr, sc_ptr, tot_ptr, T, span, sink_until, NS, NKV: tl.constexpr, GP: tl.constexpr,
                        BT: tl.constexpr, ROWS: tl.constexpr = 8, STAGES: tl.constexpr = 4):
    """Softmax of one query head, BT tokens a program (grid (cdiv(T, BT), NKV, G), query head
    kvh * G + g): mx = max e; e_i = exp(e_i - mx) in place of the scores in sc [T, NKV, GP,
    NS]; their sum in 16 lanes (lane i mod 16, increasing i) and the fixed tree, to tot [T,
    NKV, GP].  Once a token and head, so that the values' programs (one for each few
    dimensions) take the exponentials as they are.  The loops run to NS, the step's longest
    score row (a plain argument: a CUDA graph replays with other positions); what a token
    does not see is not read, and its exponential is written as an exact zero (the values'
    loads take the row whole).  A tile is ROWS rows of 16 time indices, a loop trip takes
    one, and each lane adds a tile's rows in order, each taken out of the tile exactly.
    STAGES: Triton's pipelining of the loops (the next STAGES - 1 tiles' loads in flight,
    copied to shared memory asynchronously)."""
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    kvh = tl.program_id(1)
    g = tl.program_id(2)
    tok = t < T
    t64 = t.to(tl.int64)
    p = tl.load(pos_ptr + t, mask=tok, other=0)
    lo, us, n = _window(p, span, sink_until)
    # time index i = c0 + 16r + 4u + j: lane i mod 16 = 4u + j
    r4 = tl.arange(0, ROWS)[None, :, None, None]
    u3 = tl.arange(0, 4)[None, :, None]
    j3 = tl.arange(0, 4)[None, None, :]
    at = 16 * r4 + (4 * u3 + j3)[:, None, :, :]  # [1, ROWS, 4, 4]: the time index less c0
    head = (t64 * NKV + kvh) * GP + g  # [BT]
    row = sc_ptr + head[:, None, None, None] * NS + at  # [BT, ROWS, 4, 4]
    ok = tok[:, None, None, None]
    nn = n[:, None, None, None] - at  # an entry at c0 exists while c0 < nn
    inrow = NS - at  # and lies in the score row while c0 < inrow
    STEP: tl.constexpr = 16 * ROWS
    # the maximum (order does not matter)
    mx4 = tl.full([BT, ROWS, 4, 4], float("-inf"), tl.float32)
    for c0 in tl.range(0, NS, STEP, num_stages=STAGES):
        x = tl.load(row + c0, mask=ok & (c0 < nn), other=float("-inf"))
        mx4 = tl.maximum(mx4, x)
    mx = tl.where(tok, tl.max(tl.max(tl.max(mx4, axis=3), axis=2), axis=1), 0.0)[:, None, None, None]
    lanes = tl.zeros([BT, 4, 4], tl.float32)
    for c0 in tl.range(0, NS, STEP, num_stages=STAGES):
        x = tl.load(row + c0, mask=ok & (c0 < nn), other=0.0)
        lanes = _softmax_rows(lanes, x, row + c0, ok & (c0 < nn), ok & (c0 < inrow), mx, r4, ROWS)
    # sum = (((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)))+(((l8+l9)+(l10+l11))+((l12+l13)+(l14+l15)))
    lj0 = tl.sum(tl.where(j3 == 0, lanes, 0.0), axis=2)  # [BT, 4 (u)]
    lj1 = tl.sum(tl.where(j3 == 1, lanes, 0.0), axis=2)
    lj2 = tl.sum(tl.where(j3 == 2, lanes, 0.0), axis=2)
    lj3 = tl.sum(tl.where(j3 == 3, lanes, 0.0), axis=2)
    quad = (lj0 + lj1) + (lj2 + lj3)
    u2 = tl.arange(0, 4)[None, :]
    q0 = tl.sum(tl.where(u2 == 0, quad, 0.0), axis=1)  # [BT]
    q1 = tl.sum(tl.where(u2 == 1, quad, 0.0), axis=1)
    q2 = tl.sum(tl.where(u2 == 2, quad, 0.0), axis=1)
    q3 = tl.sum(tl.where(u2 == 3, quad, 0.0), axis=1)
    tl.store(tot_ptr + head, (q0 + q1) + (q2 + q3), mask=tok)


@triton.jit
def _value_loads(et, vt, k: tl.constexpr, there, qm, tok, HD: tl.constexpr):
    """attn_values_kernel's loads for the 4 time indices c0 + k + j of a trip from c0 (lane
    j's pointers there: et into the exponentials, vt into the value cache, whose slots
    run on past the ring's end; there: whether the indices lie in the score rows): the
    exponentials [BT, GP, 4] (exact zeros where a token does not see the time index:
    attn_softmax_kernel writes them) and the f16 value bits [BT, 4, BD], each a finite f16
    (zeros until written), which an exponential of exactly zero makes an exact zero.  No
    other values: what a mask leaves out is never added or stored.  Constant offsets from
    a trip's pointers: no address arithmetic per load."""
    e = tl.load(et + k, mask=qm[:, :, None] & there)
    v = tl.load(vt + k * HD, mask=tok[:, None, None] & there)
    return e, v


@triton.jit
def _value_add(A, e, v):
    """A + e * v for 4 time indices, one a position lane."""
    v = v.to(tl.float16, bitcast=True).to(tl.float32)  # [BT, 4, BD]
    return A + e[:, :, :, None] * v[:, None, :, :]


@triton.jit
def _value_group(et, vt, k: tl.constexpr, there, qm, tok, HD: tl.constexpr):
    """_value_loads of the 16 time indices c0 + k .. c0 + k + 15: 4 chunks of 4."""
    e0, v0 = _value_loads(et, vt, k, there, qm, tok, HD)
    e1, v1 = _value_loads(et, vt, k + 4, there, qm, tok, HD)
    e2, v2 = _value_loads(et, vt, k + 8, there, qm, tok, HD)
    e3, v3 = _value_loads(et, vt, k + 12, there, qm, tok, HD)
    return e0, v0, e1, v1, e2, v2, e3, v3


@triton.jit
def _value_group_add(A, e0, v0, e1, v1, e2, v2, e3, v3):
    """A plus a _value_group's 4 chunks, in order."""
    return _value_add(_value_add(_value_add(_value_add(A, e0, v0), e1, v1), e2, v2), e3, v3)


@triton.jit
def attn_values_kernel(stream_ptr, pos_ptr, vc_ptr, sv_ptr, e_ptr, tot_ptr, ao_ptr, q_ptr, s_ptr, sa_ptr, T, layer,
                       C, NL, span, sink_until, NS, NH: tl.constexpr, NKV: tl.constexpr, G: tl.constexpr,
                       GP: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, STAGES: tl.constexpr = 1,
                       HD: tl.constexpr = 64, UNROLL: tl.constexpr = 1, QUANT: tl.constexpr = False):
    """Weighted values of the G query heads of one KV head, BT tokens and BD of the HD
    dimensions a program (grid (cdiv(T, BT), NKV, HD / BD)), from the exponentials in e
    [T, NKV, GP, NS] and their sums in tot [T, NKV, GP] (attn_softmax_kernel): values in 4
    position lanes A_j (time index i mod 4, increasing i, from 0), o = (A_0 + A_1) + (A_2 +
    A_3); out o / sum.  The loop runs to NS, the step's longest score row (a multiple of
    64); what a token does not see adds exact zeros.  A loop trip takes two sets of 32
    time indices; UNROLL: Triton's unrolling of that loop (the sums keep their order).
    QUANT (BD a multiple of 32): the output projection's activations too, quantized in
    blocks of 32 as norm_quant_kernel quantizes them (q [T, NH HD], s and sa [T, NH HD /
    32]), one launch fewer a layer."""
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    kvh = tl.program_id(1)
    d0 = tl.program_id(2) * BD
    tok = t < T
    t64 = t.to(tl.int64)
    sl = tl.load(stream_ptr + t, mask=tok, other=0).to(tl.int64)
    p = tl.load(pos_ptr + t, mask=tok, other=0)
    lo, us, _ = _window(p, span, sink_until)
    g = tl.arange(0, GP)[None, :]
    qm = tok[:, None] & (g < G)  # [BT, GP]
    erow = e_ptr + ((t64[:, None] * NKV + kvh) * GP + g)[:, :, None] * NS  # [BT, GP, 1]
    jv = tl.arange(0, 4)[None, :]  # [1, 4]: position lane j
    dd = (d0 + tl.arange(0, BD))[None, None, :]  # [1, 1, BD]
    head = (sl * NL + layer) * NKV + kvh  # [BT]
    vbase = vc_ptr + head[:, None, None] * (C + RING_TAIL) * HD
    sink_v = tl.load(sv_ptr + head[:, None, None] * HD + dd, mask=tok[:, None, None], other=0.0)  # [BT, 1, BD]
    # time index tau >= us is ring slot (lo - 1 + tau - us) mod C = first + tau, less C past
    # the ring's end; a trip from c0 reads slots first + c0 (mod C) and the 95 after it, the
    # ring's tail repeating it: no division or wrap in the loop
    first = ((lo - 1 + C - us) % C).to(tl.int32)[:, None, None]  # [BT, 1, 1]
    us32 = us.to(tl.int32)[:, None]
    elane = erow + jv[:, None, :]  # [BT, GP, 4]: lane j's exponential at time index j
    vlane = vbase + jv[:, :, None] * HD + dd  # [BT, 4, BD]: lane j's value at slot j
    # sets of 32 time indices (groups p, q and r, s of 16: exponentials and values of 4
    # chunks each) in two sets of registers, each loaded a set before its products (the
    # loads' wait overlaps the other set's products, whatever order the compiler keeps; no
    # copies between the sets); a trip takes two sets.  STAGES > 1:
    # Triton's own pipelining besides
    zero = tl.zeros([1, 1, 1], tl.int32)
    rows = zero < NS  # true: the first trip's sets and every trip's own lie in the rows (NS >= 64)
    vt = vlane + first * HD
    p0, p1, p2, p3, p4, p5, p6, p7 = _value_group(elane, vt, 0, rows, qm, tok, HD)
    q0, q1, q2, q3, q4, q5, q6, q7 = _value_group(elane, vt, 16, rows, qm, tok, HD)
    # while the start token leads (us = 1), time index 0 is its binary32 value, not a ring
    # slot: lane 0 starts at 0 + e_0 * sink (the rule's first add) and the loop's term for
    # time index 0 weighs its ring slot by an exact zero
    lead = ((jv == 0) & (us32 == 1))[:, None, :]  # [BT, 1, 4]
    A = tl.zeros([BT, GP, 4, BD], tl.float32) + tl.where(lead, p0, 0.0)[:, :, :, None] * sink_v[:, None, :, :]
    p0 = tl.where(lead, 0.0, p0)
    for c0 in tl.range(0, NS, 64, num_stages=STAGES, loop_unroll_factor=UNROLL):
        slot = first + c0
        et = elane + c0
        vt = vlane + tl.where(slot >= C, slot - C, slot) * HD
        more = zero + c0 + 64 < NS  # the next trip's first set (NS is a multiple of 64)
        r0, r1, r2, r3, r4, r5, r6, r7 = _value_group(et, vt, 32, rows, qm, tok, HD)
        s0, s1, s2, s3, s4, s5, s6, s7 = _value_group(et, vt, 48, rows, qm, tok, HD)
        A = _value_group_add(A, p0, p1, p2, p3, p4, p5, p6, p7)
        A = _value_group_add(A, q0, q1, q2, q3, q4, q5, q6, q7)
        p0, p1, p2, p3, p4, p5, p6, p7 = _value_group(et, vt, 64, more, qm, tok, HD)
        q0, q1, q2, q3, q4, q5, q6, q7 = _value_group(et, vt, 80, more, qm, tok, HD)
        A = _value_group_add(A, r0, r1, r2, r3, r4, r5, r6, r7)
        A = _value_group_add(A, s0, s1, s2, s3, s4, s5, s6, s7)
    jd = tl.arange(0, 4)[None, None, :, None]
    a0 = tl.sum(tl.where(jd == 0, A, 0.0), axis=2)  # [BT, GP, BD]
    a1 = tl.sum(tl.where(jd == 1, A, 0.0), axis=2)
    a2 = tl.sum(tl.where(jd == 2, A, 0.0), axis=2)
    a3 = tl.sum(tl.where(jd == 3, A, 0.0), axis=2)
    o = (a0 + a1) + (a2 + a3)
    total = tl.load(tot_ptr + (t64[:, None] * NKV + kvh) * GP + g, mask=qm, other=1.0)
    out = tl.div_rn(o, tl.broadcast_to(total[:, :, None], o.shape))
    at = t64[:, None, None] * (NH * HD) + (kvh * G + g)[:, :, None] * HD + dd  # [BT, GP, BD]
    tl.store(ao_ptr + at, out, mask=qm[:, :, None])
    if QUANT:  # the blocks of 32 just written, read back in a tile of their own
        KB: tl.constexpr = BD // 32
        tl.debug_barrier()  # every lane's stores seen by the program's other lanes
        b = tl.arange(0, GP * KB)[None, :]  # [1, GP KB]: head b // KB, block b % KB
        blk = ((kvh * G + b // KB) * HD + d0) // 32 + b % KB  # the block's index in the row
        bm = tok[:, None] & (b // KB < G)  # [BT, GP KB]
        at = t64[:, None] * (NH * HD // 32) + blk
        col = (at * 32)[:, :, None] + tl.arange(0, 32)[None, None, :]  # [BT, GP KB, 32]
        q, s, sa = quantize_block(tl.load(ao_ptr + col, mask=bm[:, :, None], other=0.0), tok)
        tl.store(q_ptr + col, q, mask=bm[:, :, None])
        tl.store(s_ptr + at, s, mask=bm)
        tl.store(sa_ptr + at, sa, mask=bm)
