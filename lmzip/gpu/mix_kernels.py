"""Triton kernels for the mixer and the coder's distribution on the GPU (issue 28 item 4):
the rules of docs/format.md ("Mixing", "From scores to the coder's distribution") bit for
bit as ``lmzip._mix`` and ``lmzip._cdf`` compute them (native/mix.c, native/cdf_rule.h),
so that a GPU brings back only what the coder needs, not the logits.

The rules are float64 and use only correctly rounded operations (launched with fusion off;
lmzip.gpu.ptx scans their PTX as the engine's).  Where the C sums in a fixed order (the
normalizer and the language model's expectation: 8 interleaved lanes, each in index
order), a kernel does the same: its lanes are the 8 lanes of each stream, and the loop
over the vocabulary is sequential.  Sums of the integers ``q`` are exact in any order, so
those are ``tl.sum``.  Double constants are written by their bits (a Python float in a
kernel may become a float32 constant).

Layouts: streams are rows; the scores ``s``, the distribution ``q`` (``freq - 1``) and the
bias are float64 [rows, V]; the logits float32 [rows, V] (-inf for the tokenizer's
escapes).  ``idx`` maps a step's row to its stream's row in the group's state (bias,
``w_llm``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .constants import double_bits

__all__ = ["mix_kernel", "feature_kernel", "largest_kernel", "exp_sum_kernel", "floor_kernel", "find_kernel",
           "gather_kernel", "learn_kernel", "learn_finish_kernel", "launch_variants", "F64_BITS", "TOTAL", "LANES",
           "BLOCK", "ROWS", "SMALL"]

#: the kernels' argument types for ahead-of-time compilation (lmzip.gpu.ptx): pointers by
#: name, the bits of a double as int64, the other integers int32
ARG_TYPES = {"logits_ptr": "*fp32", "idx_ptr": "*i64", "row_ptr": "*i64", "token_ptr": "*i64", "best_ptr": "*i64",
             "posinf_ptr": "*i64", "quantile_ptr": "*i64", "c_bits": "i64", "rate_bits": "i64",
             "llm_rate_bits": "i64", "lo_bits": "i64", "hi_bits": "i64"}

#: tiles (never the numbers): vocabulary entries a program takes a trip (the kernels of one
#: program a row), rows a program of the 8-lane sums (a warp's 32 values a trip), entries
#: a program of the small gathers and scatters
BLOCK, ROWS, SMALL = 1024, 1, 256

TOTAL = 1 << 24
LANES = 8
T24 = tl.constexpr(TOTAL)


#: the double constants of native/cdf_rule.h, by their bits (tests/test_gpu_mix.py checks
#: them against the C literals)
F64_BITS: dict[str, int] = {
    "LOG2E": double_bits(1.4426950408889634),
    "LN2_HI": double_bits(6.93147180369123816490e-01),
    "LN2_LO": double_bits(1.90821492927058770002e-10),
    "ROUNDER": double_bits(6755399441055744.0),
    "TWO52": double_bits(4503599627370496.0),
    "UNDERFLOW": double_bits(-700.0),
    "C2": double_bits(1.0 / 2),
    "C3": double_bits(1.0 / 6),
    "C4": double_bits(1.0 / 24),
    "C5": double_bits(1.0 / 120),
    "C6": double_bits(1.0 / 720),
    "C7": double_bits(1.0 / 5040),
    "C8": double_bits(1.0 / 40320),
}

B_LOG2E = tl.constexpr(F64_BITS["LOG2E"])
B_LN2_HI = tl.constexpr(F64_BITS["LN2_HI"])
B_LN2_LO = tl.constexpr(F64_BITS["LN2_LO"])
B_ROUNDER = tl.constexpr(F64_BITS["ROUNDER"])
B_TWO52 = tl.constexpr(F64_BITS["TWO52"])
B_UNDERFLOW = tl.constexpr(F64_BITS["UNDERFLOW"])
B_C2 = tl.constexpr(F64_BITS["C2"])
B_C3 = tl.constexpr(F64_BITS["C3"])
B_C4 = tl.constexpr(F64_BITS["C4"])
B_C5 = tl.constexpr(F64_BITS["C5"])
B_C6 = tl.constexpr(F64_BITS["C6"])
B_C7 = tl.constexpr(F64_BITS["C7"])
B_C8 = tl.constexpr(F64_BITS["C8"])


@triton.jit
def _f64(bits):
    """A double constant from its bits, exactly."""
    return tl.full([1], bits, tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def _exp_nonpositive(y):
    """The rule's exp(y) for y = x - m <= 0 (cdf_rule.h exp_nonpositive): NaN and -inf
    give 0; y = k ln2 + r, degree-8 Taylor polynomial by Horner, times 2^k."""
    under = _f64(B_UNDERFLOW)
    rounder = _f64(B_ROUNDER)
    kept = y >= under  # false for -inf and NaN
    y = tl.where(kept, y, under)
    t = y * _f64(B_LOG2E) + rounder
    k = t - rounder
    ki = t.to(tl.int64, bitcast=True) - B_ROUNDER
    r = (y - k * _f64(B_LN2_HI)) - k * _f64(B_LN2_LO)
    p = _f64(B_C8)
    p = p * r + _f64(B_C7)
    p = p * r + _f64(B_C6)
    p = p * r + _f64(B_C5)
    p = p * r + _f64(B_C4)
    p = p * r + _f64(B_C3)
    p = p * r + _f64(B_C2)
    p = p * r + 1.0
    p = p * r + 1.0
    scale = ((ki + 1023) << 52).to(tl.float64, bitcast=True)
    return p * scale * tl.where(kept, 1.0, 0.0).to(tl.float64)


@triton.jit
def mix_kernel(logits_ptr, bias_ptr, wl_ptr, idx_ptr, s_ptr, V, HAS_LLM: tl.constexpr, HAS_BIAS: tl.constexpr,
               BLOCK: tl.constexpr):
    """s = llm * w_llm (+ bias), elementwise in float64 (two roundings); without a language
    model 0.0 + bias (numpy's fill(0.0) then += bias), or 0.0."""
    r = tl.program_id(0)
    at = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = at < V
    g = tl.load(idx_ptr + r).to(tl.int64)
    if HAS_LLM:
        x = tl.load(logits_ptr + r.to(tl.int64) * V + at, mask=ok, other=0.0).to(tl.float64)
        v = x * tl.load(wl_ptr + g)
    else:
        v = tl.zeros([BLOCK], tl.float64)
    if HAS_BIAS:
        v = v + tl.load(bias_ptr + g * V + at, mask=ok, other=0.0)
    tl.store(s_ptr + r.to(tl.int64) * V + at, v, mask=ok)


@triton.jit
def feature_kernel(s_ptr, row_ptr, token_ptr, add_ptr, M, V, F: tl.constexpr, BLOCK: tl.constexpr):
    """The features: entry m adds its F values to s[row, tok] one after the other, in the
    features' order (-0.0 where a feature has no value for the token: x + -0.0 == x, its
    sign included).  Each (row, token) is one entry, so no two programs write one score."""
    at = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = at < M
    row = tl.load(row_ptr + at, mask=ok, other=0).to(tl.int64)
    tok = tl.load(token_ptr + at, mask=ok, other=0).to(tl.int64)
    ptr = s_ptr + row * V + tok
    v = tl.load(ptr, mask=ok, other=0.0)
    for f in tl.static_range(F):
        v = v + tl.load(add_ptr + at.to(tl.int64) * F + f, mask=ok, other=0.0)
    tl.store(ptr, v, mask=ok)


@triton.jit
def largest_kernel(s_ptr, top_ptr, best_ptr, posinf_ptr, V, BLOCK: tl.constexpr):
    """Pass 1 of the rule, one program a row: the largest finite score (NaN and +inf left
    out; -inf if none), the first index of it, the number of +inf and the first index of
    one.  best: the index the remainder goes to (the first +inf if any, else the first
    largest; 0 with no finite score)."""
    r = tl.program_id(0).to(tl.int64)
    base = s_ptr + r * V
    m = tl.full([1], float("-inf"), tl.float64)
    first = tl.zeros([1], tl.int64)
    n_inf = tl.zeros([1], tl.int64)
    first_inf = tl.full([1], V, tl.int64)
    for k0 in range(0, V, BLOCK):
        at = k0 + tl.arange(0, BLOCK)
        x = tl.load(base + at, mask=at < V, other=float("-inf"))
        is_inf = x == float("inf")
        xm = tl.where(is_inf | (x != x), float("-inf"), x)
        bm = tl.max(xm, axis=0)
        bi = tl.min(tl.where(xm == bm, at, V), axis=0).to(tl.int64)
        bigger = bm > m
        first = tl.where(bigger, bi, first)
        m = tl.where(bigger, bm, m)
        n_inf += tl.sum(is_inf.to(tl.int64), axis=0)
        first_inf = tl.minimum(first_inf, tl.min(tl.where(is_inf, at, V), axis=0).to(tl.int64))
    best = tl.where(n_inf > 0, first_inf, tl.where(m == float("-inf"), 0, first))
    tl.store(top_ptr + r + tl.arange(0, 1), m)
    tl.store(best_ptr + r + tl.arange(0, 1), best)
    tl.store(posinf_ptr + r + tl.arange(0, 1), n_inf)


@triton.jit
def exp_sum_kernel(s_ptr, top_ptr, posinf_ptr, e_ptr, sum_ptr, R, V, RB: tl.constexpr):
    """Pass 2, RB rows a program: e_i = exp(s_i - m) (with +inf scores: 1 for them, 0 for
    the rest; with no finite score: 1) into e, and the normalizer in the rule's order: lane
    j adds the e_i with i % 8 == j in index order (the loop is sequential: 4 groups of 8 a
    trip, taken apart with split), then ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7))."""
    rows = tl.program_id(0) * RB + tl.arange(0, RB)
    rok = rows < R
    rows = rows.to(tl.int64)
    m = tl.load(top_ptr + rows, mask=rok, other=0.0)
    n_inf = tl.load(posinf_ptr + rows, mask=rok, other=0)
    special = (n_inf > 0) | (m == float("-inf"))
    off = _trip()
    acc = tl.zeros([RB, 8], tl.float64)
    for k0 in tl.range(0, V, 32, loop_unroll_factor=8):  # unrolled: the loads overlap, the sums stay in order
        at = k0 + off
        ok = rok[:, None, None] & (at < V)
        ptr = rows[:, None, None] * V + at
        x = tl.load(s_ptr + ptr, mask=ok, other=float("-inf"))
        e = _exp_nonpositive(x - m[:, None, None])
        ones = tl.where(n_inf[:, None, None] > 0, tl.where(x == float("inf"), 1.0, 0.0), 1.0).to(tl.float64)
        e = tl.where(special[:, None, None], ones, e)
        e = tl.where(ok, e, 0.0)  # past the end: adds +0.0 to a lane that is never -0.0
        tl.store(e_ptr + ptr, e, mask=ok)
        acc = _lanes_add(acc, e, RB)
    l01, l23, l45, l67 = _pairs(acc, RB)
    total = (l01 + l23) + (l45 + l67)
    tl.store(sum_ptr + rows, total, mask=rok)


@triton.jit
def _trip():
    """The offsets [1, 8, 4] of a trip of 32 values: lane j, group g is index 8 g + j."""
    lane = tl.arange(0, 8)
    grp = tl.arange(0, 4)
    return lane[None, :, None] + 8 * grp[None, None, :]


@triton.jit
def _lanes_add(acc, v, RB: tl.constexpr):
    """acc [RB, 8] lanes plus a trip's values v [RB, 8, 4] (v[r, j, g] is index 8 g + j of
    the trip), each lane adding its 4 in index order: taken apart with split, no arithmetic."""
    even, odd = tl.split(tl.reshape(v, [RB, 8, 2, 2]))
    c0, c2 = tl.split(even)
    c1, c3 = tl.split(odd)
    acc = ((acc + c0) + c1) + c2
    return acc + c3


@triton.jit
def _pairs(acc, RB: tl.constexpr):
    """The lanes' pair sums (l0+l1, l2+l3, l4+l5, l6+l7) of [RB, 8] lanes."""
    a = tl.reshape(acc, [RB, 4, 2])
    lo, hi = tl.split(a)  # lanes 0,2,4,6 and 1,3,5,7
    p = lo + hi  # [RB, 4]: l0+l1, l2+l3, l4+l5, l6+l7
    b = tl.reshape(p, [RB, 2, 2])
    p02, p13 = tl.split(b)  # (l0+l1, l4+l5) and (l2+l3, l6+l7)
    c0, c2 = tl.split(p02)
    c1, c3 = tl.split(p13)
    return c0, c1, c2, c3


@triton.jit
def floor_kernel(dist_ptr, sum_ptr, best_ptr, token_ptr, out_ptr, V, BLOCK: tl.constexpr):
    """Pass 3, one program a row: q_i = floor(e_i (T - V) / sum) in place, the remainder
    T - V - sum(q) to q[best] (integers: exact in any order).  With a token (>= 0):
    out[row] = (sum(q[:token]), q[token]) after the remainder."""
    r = tl.program_id(0).to(tl.int64)
    base = dist_ptr + r * V
    budget = (tl.full([1], T24, tl.int64) - V).to(tl.float64)
    scale = budget / tl.load(sum_ptr + r)
    two52 = _f64(B_TWO52)
    tok = tl.load(token_ptr + r).to(tl.int64)
    used = tl.zeros([1], tl.float64)
    below = tl.zeros([1], tl.float64)
    at_tok = tl.zeros([1], tl.float64)
    best = tl.load(best_ptr + r).to(tl.int64)
    at_best = tl.zeros([1], tl.float64)  # q[best], kept here: no thread reads another's store
    for k0 in range(0, V, BLOCK):
        at = k0 + tl.arange(0, BLOCK)
        ok = at < V
        v = tl.load(base + at, mask=ok, other=0.0) * scale
        f = (v + two52) - two52
        f = f - tl.where(f > v, 1.0, 0.0).to(tl.float64)
        f = tl.where(ok, f, 0.0)
        tl.store(base + at, f, mask=ok)
        used += tl.sum(f, axis=0)
        below += tl.sum(tl.where(at < tok, f, 0.0), axis=0)
        at_tok += tl.sum(tl.where(at == tok, f, 0.0), axis=0)
        at_best += tl.sum(tl.where(at == best, f, 0.0), axis=0)
    rest = budget - used
    one = tl.arange(0, 1)
    tl.debug_barrier()  # the loop's stores are done before q[best] is written again
    tl.store(base + best + one, at_best + rest)
    below = below + tl.where(best < tok, rest, 0.0)
    at_tok = at_tok + tl.where(best == tok, rest, 0.0)
    coded = (tok + tl.zeros([1], tl.int64)) >= 0
    tl.store(out_ptr + 2 * r + one, below, mask=coded)
    tl.store(out_ptr + 2 * r + 1 + one, at_tok, mask=coded)


@triton.jit
def find_kernel(dist_ptr, quantile_ptr, out_ptr, V, BLOCK: tl.constexpr):
    """The decoder's symbol, one program a row: the i whose interval [cum_i, cum_i + q_i + 1)
    of the 2^24 holds the quantile (cum_i = sum(q[:i]) + i, integers), written as
    (i, sum(q[:i]), q_i); i = V when the quantile is past the total (damage)."""
    r = tl.program_id(0).to(tl.int64)
    base = dist_ptr + r * V
    x = tl.load(quantile_ptr + r).to(tl.int64)
    cum = tl.zeros([1], tl.int64)  # where this block's first interval starts
    found = tl.full([1], V, tl.int64)
    below = tl.zeros([1], tl.int64)
    for k0 in range(0, V, BLOCK):
        at = k0 + tl.arange(0, BLOCK)
        ok = at < V
        f = tl.load(base + at, mask=ok, other=0.0).to(tl.int64) + 1
        f = tl.where(ok, f, 0)
        end = cum + tl.cumsum(f, axis=0)  # where each interval ends
        hit = ok & (end > x) & (found == V)
        i = tl.min(tl.where(hit, at, V), axis=0).to(tl.int64)
        start = tl.sum(tl.where(at == i, end - f, 0), axis=0)
        below = tl.where((found == V) & (i < V), start - i, below)
        found = tl.where(found == V, i, found)
        cum = cum + tl.sum(f, axis=0)
    one = tl.arange(0, 1)
    fq = tl.load(base + tl.minimum(found, V - 1) + one)
    tl.store(out_ptr + 3 * r + one, found.to(tl.float64))
    tl.store(out_ptr + 3 * r + 1 + one, below.to(tl.float64))
    tl.store(out_ptr + 3 * r + 2 + one, fq)


@triton.jit
def gather_kernel(src_ptr, row_ptr, token_ptr, out_ptr, M, V, BLOCK: tl.constexpr):
    """out[m] = src[row[m], tok[m]] (float64): q or s at the tokens the host needs."""
    at = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = at < M
    row = tl.load(row_ptr + at, mask=ok, other=0).to(tl.int64)
    tok = tl.load(token_ptr + at, mask=ok, other=0).to(tl.int64)
    tl.store(out_ptr + at, tl.load(src_ptr + row * V + tok, mask=ok, other=0.0), mask=ok)


@triton.jit
def learn_kernel(dist_ptr, logits_ptr, bias_ptr, idx_ptr, exp_ptr, R, V, c_bits, HAS_LLM: tl.constexpr,
                 HAS_BIAS: tl.constexpr, RB: tl.constexpr):
    """The learning step's vocabulary-wide part, RB rows a program: the expectation of the
    logits sum((q_i + 1) l_i) over the finite l_i in the rule's 8 lanes (as exp_sum_kernel),
    and in the same pass bias_i = bias_i - (q_i + 1) c (c given by its bits)."""
    rows = tl.program_id(0) * RB + tl.arange(0, RB)
    rok = rows < R
    rows = rows.to(tl.int64)
    g = tl.load(idx_ptr + rows, mask=rok, other=0).to(tl.int64)
    c = _f64(c_bits)
    off = _trip()
    acc = tl.zeros([RB, 8], tl.float64)
    for k0 in tl.range(0, V, 32, loop_unroll_factor=8):  # unrolled: the loads overlap, the sums stay in order
        at = k0 + off
        ok = rok[:, None, None] & (at < V)
        q1 = tl.load(dist_ptr + rows[:, None, None] * V + at, mask=ok, other=0.0) + 1.0
        if HAS_LLM:
            x = tl.load(logits_ptr + rows[:, None, None] * V + at, mask=ok, other=0.0).to(tl.float64)
            v = tl.where(ok & (x - x == 0.0), q1 * x, 0.0)  # finite only; +0.0 changes no lane
            acc = _lanes_add(acc, v, RB)
        if HAS_BIAS:
            bp = bias_ptr + g[:, None, None] * V + at
            b = tl.load(bp, mask=ok, other=0.0)
            tl.store(bp, b - q1 * c, mask=ok)
    l01, l23, l45, l67 = _pairs(acc, RB)
    tl.store(exp_ptr + rows, (l01 + l23) + (l45 + l67), mask=rok)


@triton.jit
def learn_finish_kernel(logits_ptr, bias_ptr, wl_ptr, idx_ptr, token_ptr, exp_ptr, R, V, rate_bits, llm_rate_bits,
                        lo_bits, hi_bits, HAS_LLM: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """After learn_kernel: bias[token] += rate, and the language model's weight
    w = min(hi, max(lo, w + llm_rate (l_t - E / 2^24))) when l_t is finite (Python's max
    and min: the first argument unless the second is larger / smaller)."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < R
    rows = rows.to(tl.int64)
    g = tl.load(idx_ptr + rows, mask=ok, other=0).to(tl.int64)
    tok = tl.load(token_ptr + rows, mask=ok, other=0).to(tl.int64)
    if HAS_BIAS:
        rate = _f64(rate_bits)
        bp = bias_ptr + g * V + tok
        tl.store(bp, tl.load(bp, mask=ok, other=0.0) + rate, mask=ok)
    if HAS_LLM:
        llm_rate = _f64(llm_rate_bits)
        lo = _f64(lo_bits)
        hi = _f64(hi_bits)
        value = tl.load(logits_ptr + rows * V + tok, mask=ok, other=0.0).to(tl.float64)
        expected = tl.load(exp_ptr + rows, mask=ok, other=0.0)
        w = tl.load(wl_ptr + g, mask=ok, other=1.0)
        x = w + llm_rate * (value - expected / 16777216.0)
        x = tl.where(x > lo, x, lo)
        x = tl.where(x < hi, x, hi)
        tl.store(wl_ptr + g, x, mask=ok & (value - value == 0.0))


def launch_variants() -> list[tuple[str, dict]]:
    """(kernel, constexprs) of every launch lmzip.gpu.mixer.DeviceMixer makes (lmzip.gpu.ptx
    compiles each ahead of time and scans its PTX)."""
    out = []
    for llm in (True, False):
        for bias in (True, False):
            out.append(("mix_kernel", dict(HAS_LLM=llm, HAS_BIAS=bias, BLOCK=BLOCK)))
            out.append(("learn_kernel", dict(HAS_LLM=llm, HAS_BIAS=bias, RB=ROWS)))
            out.append(("learn_finish_kernel", dict(HAS_LLM=llm, HAS_BIAS=bias, BLOCK=SMALL)))
    out += [("feature_kernel", dict(F=5, BLOCK=SMALL)), ("largest_kernel", dict(BLOCK=BLOCK)),
            ("exp_sum_kernel", dict(RB=ROWS)), ("floor_kernel", dict(BLOCK=BLOCK)),
            ("find_kernel", dict(BLOCK=BLOCK)), ("gather_kernel", dict(BLOCK=SMALL))]
    return out
