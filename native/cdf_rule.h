/* The quantization rule of docs/format.md ("From scores to the coder's distribution"),
 * bit for bit like the numpy reference in lmzip/cdf.py, for the extensions that code
 * with it (cdf.c: lmzip._cdf; mix.c: lmzip._mix).  That is only possible because the
 * rule uses nothing but IEEE-754 double operations that are correctly rounded
 * everywhere (+, -, *, /, exact scaling by powers of two, round-to-nearest-even) in a
 * fixed order: no libm exp, no pairwise or vectorized summation.  Build with
 * -ffp-contract=off so that no a*b+c becomes a fused multiply-add (which rounds once
 * instead of twice).  Include after <Python.h> (for Py_ssize_t).
 */
#ifndef LMZIP_CDF_RULE_H
#define LMZIP_CDF_RULE_H
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* the v4d helpers are inlined: no ABI is crossed */
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>

#define PRECISION 24
#define TOTAL ((int64_t)1 << PRECISION)

/* exp(y) for y <= 0: y = k ln2 + r with k = rint(y / ln2), |r| <= ln2 / 2, then a
 * degree-8 Taylor polynomial for exp(r) (relative error < 3e-9, far below what the
 * 2^-24 quantization can see) scaled by 2^k.  Branch-free so that compilers vectorize
 * it; vector lanes round exactly like scalar code. */
static const double LOG2E = 1.4426950408889634;          /* nearest double to 1/ln 2 */
static const double LN2_HI = 6.93147180369123816490e-01; /* low 32 bits zero: k*LN2_HI is exact */
static const double LN2_LO = 1.90821492927058770002e-10;
static const double ROUNDER = 6755399441055744.0;        /* 1.5 * 2^52: (v + R) - R == rint(v) */
static const double TWO52 = 4503599627370496.0;          /* 2^52 */
static const double UNDERFLOW = -700.0;                  /* exp below this counts as 0 */
#define DEGREE 8
static const double C[DEGREE + 1] = {
    1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
};
#define LANES 8 /* the normalizer is summed in 8 interleaved lanes, each in index order */

static inline double from_bits(uint64_t b) {
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

static inline uint64_t to_bits(double d) {
    uint64_t b;
    memcpy(&b, &d, sizeof b);
    return b;
}

/* Runtime dispatch: the same C is compiled twice, for baseline x86-64 (SSE2) and for
 * AVX2, and the loader picks the widest the CPU has.  Wider vectors change nothing in
 * the results: every lane rounds like scalar code, FMA is not enabled for either
 * clone (and -ffp-contract=off forbids contraction anyway), and the summation order
 * is the fixed 8-lane order below, not the vector width's. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(LMZIP_NO_CLONES)
#define DISPATCH __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DISPATCH
#endif

/* Pass 1: the largest finite score (NaN and +inf skipped) and the number of +inf.
 * Max and counting are exact in any order, so lanes and vectors are free to differ. */
#if defined(__GNUC__) && !defined(LMZIP_SCALAR)
typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));
/* a vector of float32 scores as doubles, or of doubles (the width is the destination's) */
#define LOAD_FLOATS(VF, VD, dst, i)                                                         \
    do {                                                                                    \
        VF f_;                                                                              \
        memcpy(&f_, xf + (i), sizeof f_);                                                   \
        dst = __builtin_convertvector(f_, VD);                                              \
    } while (0)
#define LOAD4_F(dst, i) LOAD_FLOATS(v4f, v4d, dst, i)
#define LOAD8_F(dst, i) LOAD_FLOATS(v8f, v8d, dst, i) /* 8 as one vector: no shuffles (GCC < 12 lacks them) */
#define LOAD4_D(dst, i) memcpy(&dst, xd + (i), sizeof dst)
#define LOAD8_D LOAD4_D
#define LARGEST_VECTOR(LOAD4)                                                               \
    const v4d inf = {INFINITY, INFINITY, INFINITY, INFINITY};                               \
    const v4d one = {1.0, 1.0, 1.0, 1.0};                                                   \
    v4d mv = -inf, pv = {0.0, 0.0, 0.0, 0.0};                                               \
    for (; i + 4 <= n; i += 4) {                                                            \
        v4d x;                                                                              \
        LOAD4(x, i);                                                                        \
        v4i is_inf = (v4i)(x == inf);                                                       \
        v4d xm = (v4d)(((v4i)x & ~is_inf) | ((v4i)(-inf) & is_inf));                        \
        v4i bigger = (v4i)(xm > mv); /* NaN fails every comparison */                       \
        mv = (v4d)(((v4i)xm & bigger) | ((v4i)mv & ~bigger));                               \
        pv += (v4d)((v4i)one & is_inf);                                                     \
    }                                                                                       \
    for (int j = 0; j < 4; j++) {                                                           \
        m = mv[j] > m ? mv[j] : m;                                                          \
        posinf += pv[j];                                                                    \
    }
#else
#define LARGEST_VECTOR(LOAD4)
#endif
#define LARGEST_BODY(LOAD, LOAD4)                                                           \
    double m = -INFINITY, posinf = 0.0;                                                     \
    Py_ssize_t i = 0;                                                                       \
    LARGEST_VECTOR(LOAD4)                                                                   \
    for (; i < n; i++) {                                                                    \
        double x = LOAD(i);                                                                 \
        double xm = x == INFINITY ? -INFINITY : x;                                          \
        m = xm > m ? xm : m;                                                                \
        posinf += (double)(x == INFINITY);                                                  \
    }                                                                                       \
    *n_posinf = posinf;                                                                     \
    return m;

/* The first index i with x_i == target (there is one). */
#if defined(__GNUC__) && !defined(LMZIP_SCALAR)
#define FIRST_VECTOR(LOAD4)                                                                 \
    const v4d t4 = {target, target, target, target};                                        \
    for (; i + 4 <= n; i += 4) {                                                            \
        v4d x;                                                                              \
        LOAD4(x, i);                                                                        \
        v4i hit = (v4i)(x == t4);                                                           \
        if (hit[0] | hit[1] | hit[2] | hit[3])                                              \
            break;                                                                          \
    }
#else
#define FIRST_VECTOR(LOAD4)
#endif
#define FIRST_BODY(LOAD, LOAD4)                                                             \
    Py_ssize_t i = 0;                                                                       \
    FIRST_VECTOR(LOAD4)                                                                     \
    while (i < n && LOAD(i) != target)                                                      \
        i++;                                                                                \
    return i;

/* Pass 2: e_i = exp(x_i - m) into e, and the normalizer in its 8 fixed lanes: lane j
 * adds the e_i with i % 8 == j in index order (one 8-wide accumulator: one AVX-512
 * register, two AVX2 or four SSE2 ones, the same order). */
#if defined(__GNUC__) && !defined(LMZIP_SCALAR)
#define EXP_VECTOR(LOAD, LOAD8)                                                              \
    v8d acc = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};                                     \
    for (; i + LANES <= n; i += LANES) {                                                    \
        v8d x;                                                                              \
        LOAD8(x, i);                                                                        \
        x = exp8_nonpositive(x - m);                                                        \
        memcpy(e + i, &x, sizeof x);                                                        \
        acc += x;                                                                           \
    }                                                                                       \
    for (int j = 0; j < LANES; j++)                                                         \
        lane[j] = acc[j];
#else
#define EXP_VECTOR(LOAD, LOAD8)                                                             \
    for (; i + LANES <= n; i += LANES)                                                      \
        for (int j = 0; j < LANES; j++) {                                                   \
            double v = exp_nonpositive(LOAD(i + j) - m, rounder_bits);                      \
            e[i + j] = v;                                                                   \
            lane[j] += v;                                                                   \
        }
#endif
#define EXP_BODY(LOAD, LOAD8)                                                               \
    const uint64_t rounder_bits = to_bits(ROUNDER);                                         \
    double lane[LANES] = {0};                                                               \
    Py_ssize_t i = 0;                                                                       \
    EXP_VECTOR(LOAD, LOAD8)                                                                 \
    for (int j = 0; i + j < n; j++) { /* the last n % 8 */                                  \
        double v = exp_nonpositive(LOAD(i + j) - m, rounder_bits);                          \
        e[i + j] = v;                                                                       \
        lane[j] += v;                                                                       \
    }                                                                                       \
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));

/* exp(y) of the rule for y = x - m <= 0; NaN and -inf give 0 */
static inline double exp_nonpositive(double y, uint64_t rounder_bits) {
    double keep = (double)(y >= UNDERFLOW); /* 0 below the cut, also for -inf and NaN */
    y = y >= UNDERFLOW ? y : UNDERFLOW;     /* keeps the arithmetic finite */
    double t = y * LOG2E + ROUNDER;
    double k = t - ROUNDER;
    int64_t ki = (int64_t)(to_bits(t) - rounder_bits); /* == k, from the low bits of t */
    double r = (y - k * LN2_HI) - k * LN2_LO;
    double p = C[8]; /* Horner, written out so that the loop stays straight-line */
    p = p * r + C[7];
    p = p * r + C[6];
    p = p * r + C[5];
    p = p * r + C[4];
    p = p * r + C[3];
    p = p * r + C[2];
    p = p * r + C[1];
    p = p * r + C[0];
    return p * from_bits((uint64_t)(ki + 1023) << 52) * keep; /* 2^k exact: k >= -1010 */
}

/* The same exp on 8 values at once, written with GCC/clang vector extensions because
 * compilers keep the scalar version's select as a branch and do not vectorize it.
 * Same operations in the same order, so the same bits as exp_nonpositive. */
#if defined(__GNUC__) && !defined(LMZIP_SCALAR)
typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4i __attribute__((vector_size(32)));

typedef double v8d __attribute__((vector_size(64)));
typedef int64_t v8i __attribute__((vector_size(64)));

static inline v8d exp8_nonpositive(v8d y) {
    const v8d under = {UNDERFLOW, UNDERFLOW, UNDERFLOW, UNDERFLOW, UNDERFLOW, UNDERFLOW, UNDERFLOW, UNDERFLOW};
    const v8d one = {1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0};
    const v8d rounder = {ROUNDER, ROUNDER, ROUNDER, ROUNDER, ROUNDER, ROUNDER, ROUNDER, ROUNDER};
    v8i mask = (v8i)(y >= under); /* all ones where kept; false for -inf and NaN */
    v8d keep = (v8d)((v8i)one & mask);
    y = (v8d)(((v8i)y & mask) | ((v8i)under & ~mask));
    v8d t = y * LOG2E + rounder;
    v8d k = t - rounder;
    v8i ki = (v8i)t - (v8i)rounder;
    v8d r = (y - k * LN2_HI) - k * LN2_LO;
    v8d p = r * C[8] + C[7]; /* C[8] * r == r * C[8]: multiplication commutes exactly */
    p = p * r + C[6];
    p = p * r + C[5];
    p = p * r + C[4];
    p = p * r + C[3];
    p = p * r + C[2];
    p = p * r + C[1];
    p = p * r + C[0];
    return p * (v8d)((ki + 1023) << 52) * keep;
}
#endif

#define LOAD_F(i) ((double)xf[i])
#define LOAD_D(i) (xd[i])

DISPATCH static double largest_f(const float *xf, Py_ssize_t n, double *n_posinf) { LARGEST_BODY(LOAD_F, LOAD4_F) }
DISPATCH static double largest_d(const double *xd, Py_ssize_t n, double *n_posinf) { LARGEST_BODY(LOAD_D, LOAD4_D) }
DISPATCH static Py_ssize_t first_f(const float *xf, Py_ssize_t n, double target) { FIRST_BODY(LOAD_F, LOAD4_F) }
DISPATCH static Py_ssize_t first_d(const double *xd, Py_ssize_t n, double target) { FIRST_BODY(LOAD_D, LOAD4_D) }
DISPATCH static double exps_f(const float *xf, Py_ssize_t n, double m, double *e) { EXP_BODY(LOAD_F, LOAD8_F) }
DISPATCH static double exps_d(const double *xd, Py_ssize_t n, double m, double *e) { EXP_BODY(LOAD_D, LOAD8_D) }

/* Pass 3: q_i = floor(e_i * scale) in place; returns sum(q) (integers below 2^53, so
 * exact in any order). */
static inline double floor_scaled(double e, double scale) {
    double v = e * scale;
    double f = (v + TWO52) - TWO52; /* v rounded to an integer (0 <= v < 2^24) */
    return f - (double)(f > v);     /* floor */
}

DISPATCH static double floors(double *q, Py_ssize_t n, double scale) {
    double used = 0.0;
    Py_ssize_t i = 0;
#if defined(__GNUC__) && !defined(LMZIP_SCALAR)
    const v4d two52 = {TWO52, TWO52, TWO52, TWO52};
    const v4d one = {1.0, 1.0, 1.0, 1.0};
    v4d acc = {0.0, 0.0, 0.0, 0.0};
    for (; i + 4 <= n; i += 4) {
        v4d v;
        memcpy(&v, q + i, sizeof v);
        v = v * scale;
        v4d f = (v + two52) - two52;
        f = f - (v4d)((v4i)one & (v4i)(f > v));
        memcpy(q + i, &f, sizeof f);
        acc += f;
    }
    used = (acc[0] + acc[1]) + (acc[2] + acc[3]);
#endif
    for (; i < n; i++) {
        q[i] = floor_scaled(q[i], scale);
        used += q[i];
    }
    return used;
}

/* The rule, on n scores (float or double), writing q_i = freq_i - 1 as doubles
 * (what constriction's Categorical(perfect=False) takes: see lmzip/coding.py).
 * *top and *sum receive max(x) and the normalizer, for callers that want the
 * unquantized probabilities exp(x_i - top) / sum. */
static void quantize_from(const void *scores, int is_double, Py_ssize_t n, double *q, double m, double n_posinf,
                          Py_ssize_t first, double *top, double *sum);

static void quantize(const void *scores, int is_double, Py_ssize_t n, double *q, double *top, double *sum) {
    double n_posinf;
    double m = is_double ? largest_d((const double *)scores, n, &n_posinf) : largest_f((const float *)scores, n, &n_posinf);
    quantize_from(scores, is_double, n, q, m, n_posinf, -1, top, sum);
}

/* The rule once pass 1 is known: m, the largest finite score, and the number of +inf
 * (a caller that found them while writing the scores skips that pass); first, the first
 * index of m if the caller knows it, else -1. */
static void quantize_from(const void *scores, int is_double, Py_ssize_t n, double *q, double m, double n_posinf,
                          Py_ssize_t first, double *top, double *sum) {
    const float *xf = (const float *)scores;
    const double *xd = (const double *)scores;
    Py_ssize_t best = 0; /* the first index of the largest score (NaN counting as -inf) */
    double s;
    if (n_posinf > 0 || m == -INFINITY) {
        /* +inf scores share the mass; with no finite score at all, uniform */
        int found = n_posinf == 0; /* with no +inf, best stays 0 */
        for (Py_ssize_t i = 0; i < n; i++) {
            double x = is_double ? xd[i] : (double)xf[i];
            q[i] = n_posinf > 0 ? (double)(x == INFINITY) : 1.0;
            if (!found && x == INFINITY) {
                best = i;
                found = 1;
            }
        }
        double lane[LANES] = {0};
        Py_ssize_t i = 0;
        for (; i + LANES <= n; i += LANES)
            for (int j = 0; j < LANES; j++)
                lane[j] += q[i + j];
        for (int j = 0; i + j < n; j++)
            lane[j] += q[i + j];
        s = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    } else {
        best = first >= 0 ? first : is_double ? first_d(xd, n, m) : first_f(xf, n, m); /* m is some x_i */
        s = is_double ? exps_d(xd, n, m, q) : exps_f(xf, n, m, q);
    }
    const double budget = (double)(TOTAL - n);
    double used = floors(q, n, budget / s);
    q[best] += budget - used;
    *top = m;
    *sum = s;
}

/* expect(q, x) = sum over finite x_i of (q_i + 1) * x_i, in the rule's 8-lane order:
 * the mixer's expectation of a feature under the coded distribution (times 2^24).
 * Non-finite x_i (escape symbols at -inf) are skipped.  With b (not NULL), the mixer's
 * bias step b_i -= (q_i + 1) * c in the same pass over q (the step is memory-bound):
 * each element's operations are the same as apart. */
#if defined(__GNUC__) && !defined(LMZIP_SCALAR)
/* 8 elements at a time into the 8 lanes (the same order); a non-finite x_i adds +0.0,
 * which changes no lane (a lane starts at +0.0 and so is never -0.0) */
#define EXPECT_VECTOR(LOAD8)                                                                \
    v8d acc = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};                                     \
    for (; i + LANES <= n; i += LANES) {                                                    \
        v8d x, qv;                                                                          \
        LOAD8(x, i);                                                                        \
        memcpy(&qv, q + i, sizeof qv);                                                      \
        v8d q1 = qv + 1.0;                                                                  \
        v8i finite = (v8i)(x - x == 0.0);                                                   \
        acc += (v8d)((v8i)(q1 * x) & finite);                                               \
        if (b != NULL) {                                                                    \
            v8d bv;                                                                         \
            memcpy(&bv, b + i, sizeof bv);                                                  \
            bv = bv - q1 * c;                                                               \
            memcpy(b + i, &bv, sizeof bv);                                                  \
        }                                                                                   \
    }                                                                                       \
    for (int j = 0; j < LANES; j++)                                                         \
        lane[j] = acc[j];
#else
#define EXPECT_VECTOR(LOAD8)
#endif
#define EXPECT_BODY(LOAD, LOAD8)                                                            \
    double lane[LANES] = {0};                                                               \
    Py_ssize_t i = 0;                                                                       \
    EXPECT_VECTOR(LOAD8)                                                                    \
    for (; i < n; i++) {                                                                    \
        double v = LOAD(i), q1 = q[i] + 1.0;                                                \
        if (v - v == 0.0) /* finite */                                                      \
            lane[i % LANES] += q1 * v;                                                      \
        if (b != NULL)                                                                      \
            b[i] = b[i] - q1 * c;                                                           \
    }                                                                                       \
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));

DISPATCH static double expect_step_f(const double *q, const float *xf, double *b, double c, Py_ssize_t n) {
    EXPECT_BODY(LOAD_F, LOAD8_F)
}
DISPATCH static double expect_step_d(const double *q, const double *xd, double *b, double c, Py_ssize_t n) {
    EXPECT_BODY(LOAD_D, LOAD8_D)
}

#endif /* LMZIP_CDF_RULE_H */
