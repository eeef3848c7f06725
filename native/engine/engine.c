/* lmzip's portable deterministic inference engine: the forward pass (docs/engine.md).
 *
 * Style after karpathy/llama2.c: one forward pass in plain C.  What is different is
 * that every number is defined: matrix products in exact integer arithmetic inside
 * 32-column blocks, then float32 operations in one fixed order; everything else in
 * correctly rounded IEEE float32/float64 basic operations in one fixed order, with the
 * engine's own exp, log, sin and cos.  SIMD lanes always run across independent outputs
 * (rows, cache slots, dimensions), so vector code gives the scalar code's bits; threads
 * split outputs, never one sum.
 *
 * Build with -ffp-contract=off (no fused multiply-add), never -ffast-math.
 */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(LMZ_NO_SIMD) /* LMZ_NO_SIMD: portable C only */
#define LMZ_X86 1
#include <immintrin.h>
#elif defined(__aarch64__) && defined(__GNUC__) && !defined(LMZ_NO_SIMD)
#define LMZ_NEON 1
#include <arm_neon.h>
#endif

#if defined(__FAST_MATH__)
#error "the engine must not be built with -ffast-math"
#endif

/* ------------------------------------------------------------------ basic helpers */

static inline float f_from_bits(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static inline uint32_t f_bits(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }
static inline double d_from_bits(uint64_t b) { double f; memcpy(&f, &b, 8); return f; }
static inline uint64_t d_bits(double f) { uint64_t b; memcpy(&b, &f, 8); return b; }

/* f16 -> f32, exact (finite values: the converter refuses weights with inf/NaN, f2h saturates) */
static inline float h2f(uint16_t h) {
    uint32_t em = h & 0x7fffu, sign = (uint32_t)(h & 0x8000u) << 16;
    float normal = f_from_bits((em << 13) + 0x38000000u);
    float sub = (float)(int32_t)em * 5.9604644775390625e-08f; /* em * 2^-24, exact */
    float v = em < 0x400u ? sub : normal;
    return f_from_bits(f_bits(v) | sign);
}

/* f32 -> f16, round to nearest even; beyond the largest f16 saturates to +-65504 */
static inline uint16_t f2h(float f) {
    uint32_t x = f_bits(f), sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x >= 0x477ff000u) /* >= 65520 (also inf, NaN) */
        return (uint16_t)(sign | 0x7bffu);
    if (x < 0x38800000u) { /* below 2^-14: a subnormal f16, units of 2^-24 */
        float a = f_from_bits(x) * 16777216.0f;             /* exact */
        float r = (a + 8388608.0f) - 8388608.0f;            /* round half even, a < 2^10 */
        return (uint16_t)(sign | (uint32_t)r);
    }
    return (uint16_t)(sign | ((x - 0x38000000u + 0xfffu + ((x >> 13) & 1u)) >> 13));
}

/* exp(y) in float32, the engine's own: y clamped to [-87, 88], y = k ln2 + r with
 * k = rne(y log2 e), r = (y - k LN2_HI) - k LN2_LO, exp(r) by a degree-7 Taylor
 * polynomial (Horner), times 2^k built from bits.  Branch-free (selects only).  The
 * constants are shared with the SIMD versions (attn_simd.inc). */
#define EXP_LOG2E 1.44269502162933349609375f
#define EXP_ROUND 12582912.0f /* 1.5 * 2^23 */
#define EXP_LN2_HI 0.693145751953125f
#define EXP_LN2_LO 1.428606765330187045e-06f
#define EXP_C7 1.98412698e-4f /* 1/5040 */
#define EXP_C6 1.38888889e-3f
#define EXP_C5 8.33333377e-3f
#define EXP_C4 4.16666679e-2f
#define EXP_C3 1.66666672e-1f
#define GELU_A 0.797884560802865f /* sqrt(2 / pi) */
#define GELU_B 0.044715f
static inline float exp_f(float y) {
    y = y < -87.0f ? -87.0f : y;
    y = y > 88.0f ? 88.0f : y;
    float t = y * EXP_LOG2E + EXP_ROUND;
    float k = t - EXP_ROUND;
    float r = (y - k * EXP_LN2_HI) - k * EXP_LN2_LO;
    float p = EXP_C7;
    p = p * r + EXP_C6;
    p = p * r + EXP_C5;
    p = p * r + EXP_C4;
    p = p * r + EXP_C3;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t ki = (int32_t)k;
    return p * f_from_bits((uint32_t)(ki + 127) << 23);
}

static inline float tree16(const float *l) {
    return (((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))) +
           (((l[8] + l[9]) + (l[10] + l[11])) + ((l[12] + l[13]) + (l[14] + l[15])));
}

/* double precision helpers for the RoPE tables (basic operations only) */
static const double D_LN2_HI = 6.93147180369123816490e-01, D_LN2_LO = 1.90821492927058770002e-10;
static const double D_ROUND = 6755399441055744.0; /* 1.5 * 2^52 */

static double exp_d(double x) { /* |x| < 700 */
    double t = x * 1.4426950408889634 + D_ROUND;
    double k = t - D_ROUND;
    int64_t ki = (int64_t)(d_bits(t) - d_bits(D_ROUND));
    double r = (x - k * D_LN2_HI) - k * D_LN2_LO;
    double p = 1.0 / 6227020800.0; /* 1/13! */
    static const double c[13] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                                 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0,
                                 0.5, 1.0, 1.0};
    for (int i = 0; i < 13; i++)
        p = p * r + c[i];
    return p * d_from_bits((uint64_t)(ki + 1023) << 52);
}

static double log_d(double x) { /* x > 0, normal */
    uint64_t b = d_bits(x);
    int e = (int)((b >> 52) & 0x7ff) - 1023;
    double m = d_from_bits((b & 0x000fffffffffffffull) | 0x3ff0000000000000ull); /* [1, 2) */
    if (m > 1.4142135623730951) {
        m = m * 0.5;
        e += 1;
    }
    double f = (m - 1.0) / (m + 1.0), s = f * f;
    double p = 1.0 / 25.0;
    for (int k = 23; k >= 1; k -= 2)
        p = p * s + 1.0 / (double)k;
    double lnm = 2.0 * f * p;
    return (double)e * D_LN2_HI + ((double)e * D_LN2_LO + lnm);
}

static void sincos_d(double a, double *s, double *c) { /* a >= 0 */
    static const double P1 = 1.57079632673412561417e+00, P2 = 6.07710050650619224932e-11,
                        P3 = 2.02226624879595063154e-21;
    double t = a * 6.36619772367581382433e-01 + D_ROUND;
    double k = t - D_ROUND;
    int64_t q = (int64_t)(d_bits(t) - d_bits(D_ROUND));
    double r = ((a - k * P1) - k * P2) - k * P3;
    double r2 = r * r;
    /* sin r = r (1 - r^2/3! + ...), cos r = 1 - r^2/2! + ...: Taylor to r^17 and r^18 */
    double ps, pc;
    /* written out for clarity: sin coefficients of r^(2j+1), cos of r^(2j) */
    static const double sc[9] = {1.0, -1.0 / 6.0, 1.0 / 120.0, -1.0 / 5040.0, 1.0 / 362880.0,
                                 -1.0 / 39916800.0, 1.0 / 6227020800.0, -1.0 / 1307674368000.0,
                                 1.0 / 355687428096000.0};
    static const double ccf[10] = {1.0, -0.5, 1.0 / 24.0, -1.0 / 720.0, 1.0 / 40320.0, -1.0 / 3628800.0,
                                   1.0 / 479001600.0, -1.0 / 87178291200.0, 1.0 / 20922789888000.0,
                                   -1.0 / 6402373705728000.0};
    ps = sc[8];
    for (int j = 7; j >= 0; j--)
        ps = ps * r2 + sc[j];
    ps = ps * r;
    pc = ccf[9];
    for (int j = 8; j >= 0; j--)
        pc = pc * r2 + ccf[j];
    switch ((int)(q & 3)) {
    case 0: *s = ps; *c = pc; break;
    case 1: *s = pc; *c = -ps; break;
    case 2: *s = -ps; *c = -pc; break;
    default: *s = -pc; *c = ps; break;
    }
}

/* ------------------------------------------------------------------ types */

enum { T_F32 = 0, T_Q4_1 = 1, T_Q8_0 = 2, T_K16 = 3 };
enum { ARCH_LLAMA = 0, ARCH_GEMMA3 = 1 };
#define Q4_GB 320 /* bytes per group (16 rows) x block (32 columns) */
#define Q8_GB 544

typedef struct {
    int type, rows, cols;
    const uint8_t *data;
} tensor;

typedef struct {
    tensor attn_norm, wq, wk, wv, wo, ffn_norm, wg, wu, wd;
    tensor q_norm, k_norm, post_attn_norm, post_ffn_norm; /* gemma3 only */
} layer;

/* activations quantized per 32-block: q int8, scale s, sum of q, s * sum */
typedef struct {
    int8_t *q;
    float *s, *sa;
    int32_t *sum;
} act;

typedef void (*mm_fn)(const uint8_t *W, int K, int g0, int g1, const act *x, int t0, int T, float *out, int ldo);
/* Attention of one token over one KV head, for the G query heads that share it
 * (docs/engine.md, per layer, step 4).  Time index i: the sink (if use_sink) is i = 0,
 * then ring positions lo, lo + 1, ... (n_ring of them, from ring slot (lo - 1) mod C). */
typedef struct {
    int G, D, C;          /* query heads, head dimensions (a multiple of 16), ring slots (of 16) */
    int use_sink, n_ring; /* the sink first in time order; ring positions */
    int64_t lo;           /* the first ring position */
    const float *q;       /* G x D: the rotated, scaled queries */
    const float *sink_k;  /* D: the start token's key, rotated where the schedule puts it */
    const float *sink_v;  /* D */
    const uint16_t *kc;   /* [C/16][D][16] f16 keys: 16 slots side by side per dimension */
    const uint16_t *vc;   /* [D/16][C][16] f16 values: 16 dimensions of a slot side by side */
    float *out;           /* G x D */
} attn_args;

typedef void (*attn_fn)(const attn_args *a, float *work);

/* The same attention in three stages, so that a few (token, KV head) pairs can be shared
 * among threads (the SIMD sets; the results do not depend on how it is split):
 * scores of the ring's blocks i0..i1-1 into sc (G x C, by slot); one head's scores in
 * time order into e and their softmax (returns the sum); the outputs over dimensions
 * c0..c1-1 (multiples of 16) from the exps of all heads (e + g * es). */
typedef struct {
    void (*scores)(const attn_args *a, int i0, int i1, float *sc);
    float (*softmax)(const attn_args *a, int g, const float *sc, float *e);
    void (*values)(const attn_args *a, int c0, int c1, const float *e, size_t es, const float *sum);
} attn_stages;

/* the ring's 16-slot blocks in time order: n0 from block first[0] (up to the ring's
 * end), then n1 from first[1] = 0 after the wrap */
typedef struct {
    int first[2], n0, n1;
} attn_ring;

static inline int attn_s0(const attn_args *a) { return a->n_ring > 0 ? (int)((a->lo - 1) % a->C) : 0; }

static inline attn_ring attn_ring_blocks(const attn_args *a) {
    attn_ring r = {{0, 0}, 0, 0};
    if (a->n_ring > 0) {
        int s0 = attn_s0(a), end = s0 + a->n_ring;
        r.first[0] = s0 / 16;
        r.n0 = ((end < a->C ? end : a->C) + 15) / 16 - r.first[0];
        r.n1 = end > a->C ? (end - a->C + 15) / 16 : 0;
    }
    return r;
}

/* floats per head of the time-ordered scores (n <= C + 1, padded to 16) */
static inline size_t attn_e_stride(int C) { return (size_t)C + 48; }

/* floats of work space an attention call needs (attn_args with these G and C) */
static size_t attn_work_floats(int G, int C) { return (size_t)G * ((size_t)C + attn_e_stride(C)) + 64; }
/* most query heads per KV head */
#define LMZ_MAX_GQ 16

typedef void (*k16_fn)(const tensor *W, int g0, int g1, const act *x, int T, float *out, int ldo);

typedef void (*quant_fn)(const float *x, int K, int8_t *q, float *s, float *sa, int32_t *sum);
typedef void (*act_fn)(float *g, const float *u, int n); /* g = f(g) * u */

typedef struct {
    const char *name;
    mm_fn q4, q8;
    attn_fn attn;
    const attn_stages *attn_split; /* NULL: the attention is never split (scalar) */
    k16_fn k16;
    quant_fn quant;          /* activation quantization (quantize_row) */
    act_fn silu_mul, gelu_mul; /* the gated MLP's activation times the up projection */
} isa_kernels;

/* ------------------------------------------------------------------ thread pool */

typedef void (*task_fn)(void *ctx, int part, int nparts);

/* A phase is cut into `nparts` parts (a task computes part i of n: the task functions
 * split their outputs by (i, n)); the caller and the workers claim parts from a shared
 * counter, so a descheduled worker delays nothing (the others take its parts).  Which
 * thread computes a part never changes its bits. */
typedef struct {
    int n; /* threads including the caller */
    pthread_t *th;
    atomic_int gen, stop, sleepers;
    atomic_ullong claim; /* generation << 32 | next part */
    atomic_int finished; /* parts done in this generation */
    task_fn fn;
    void *ctx;
    int nparts;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} pool;

typedef struct {
    pool *p;
    int tid;
} worker_arg;

static inline void cpu_relax(void) {
#if defined(LMZ_X86)
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* claim and run parts of generation g until none is left */
static void run_parts(pool *p, unsigned g) {
    for (;;) {
        unsigned long long c = atomic_load(&p->claim);
        if ((unsigned)(c >> 32) != g)
            return;
        task_fn fn = p->fn;
        void *ctx = p->ctx;
        int np = p->nparts;
        int part = (int)(c & 0xffffffffu);
        if (part >= np)
            return;
        if (!atomic_compare_exchange_weak(&p->claim, &c, c + 1))
            continue;
        fn(ctx, part, np);
        atomic_fetch_add(&p->finished, 1);
    }
}

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    pool *p = wa->p;
    free(wa);
    int seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load(&p->gen) == seen) {
            if (++spins < 4000) { /* about 0.1-0.5 ms, then yield, then sleep */
                cpu_relax();
                continue;
            }
            if (spins < 4200) {
                sched_yield();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->gen) == seen)
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        seen = atomic_load(&p->gen);
        if (atomic_load(&p->stop))
            return NULL;
        run_parts(p, (unsigned)seen);
    }
}

static void pool_run(pool *p, task_fn fn, void *ctx) {
    if (p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    int np = 4 * p->n;
    unsigned g = (unsigned)atomic_load(&p->gen) + 1;
    p->fn = fn;
    p->ctx = ctx;
    p->nparts = np;
    atomic_store(&p->finished, 0);
    atomic_store(&p->claim, (unsigned long long)g << 32);
    atomic_store(&p->gen, (int)g);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    run_parts(p, g);
    int spins = 0;
    while (atomic_load(&p->finished) < np) {
        if (++spins < 2000)
            cpu_relax();
        else
            sched_yield();
    }
}

static int pool_init(pool *p, int n) {
    memset(p, 0, sizeof *p);
    p->n = n;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (n <= 1)
        return 0;
    p->th = calloc((size_t)n, sizeof(pthread_t));
    for (int i = 1; i < n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        wa->p = p;
        wa->tid = i;
        if (pthread_create(&p->th[i], NULL, worker_main, wa) != 0) {
            p->n = i;
            free(wa);
            break;
        }
    }
    return 0;
}

static void pool_destroy(pool *p) {
    if (p->n > 1) {
        atomic_store(&p->stop, 1);
        pthread_mutex_lock(&p->mu);
        atomic_fetch_add(&p->gen, 1);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        for (int i = 1; i < p->n; i++)
            pthread_join(p->th[i], NULL);
    }
    free(p->th);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
}

/* ------------------------------------------------------------------ profile */

enum { P_PRODUCTS, P_ATTENTION, P_ROPE_CACHE, P_NORMS, P_HEAD, P_OTHER };
static const char *const PROF_NAMES[LMZ_PROF_PHASES] = {"products", "attention", "rope+cache", "norms",
                                                        "head", "other"};

static double mono_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------------ model, stream */

struct lmz_model {
    int arch; /* ARCH_LLAMA (weights format 1) or ARCH_GEMMA3 (format 2) */
    int n_layer, n_embd, n_ff, n_head, n_kv, head_dim, n_vocab, bos;
    /* gemma3: local (sliding-window) layers' RoPE base, window, every swa_pattern-th layer global */
    double rope_base_local;
    int swa_window, swa_pattern;
    float emb_scale, attn_scale; /* f32(sqrt(n_embd)); 1/sqrt(head_dim) from the file */
    double inv_freq_g[128], inv_freq_l[128];
    double rope_base;
    float eps;
    tensor tok_embd, out_norm;
    layer *layers;
    void *map;
    size_t map_size;
    double inv_freq[32];
    const isa_kernels *k;
    pool pool;
    pthread_mutex_t eval_lock;
    /* work buffers, grown on demand */
    size_t cap_tokens;
    float *x, *xb, *q, *kk, *vv, *ao, *hb, *tmp, *logit_tmp;
    act a_embd, a_ff;
    int32_t *tok_stream;
    int64_t *tok_pos;
    float *rope_tab; /* per token: cos_p[32], sin_p[32], cos_sink[32], sin_sink[32] */
    float **dest; /* head_logits: where each selected token's logits go */
    float *scratch; /* per part of a phase: the attention's work space */
    size_t scratch_per_thread;
    float *split; /* the attention's buffers when split in stages (run_attention) */
    size_t split_cap;
    /* lmz_profile: seconds per phase since the last read, when on */
    int prof_on;
    double prof[LMZ_PROF_PHASES], prof_t;
};

/* the time since the last mark belongs to `phase` (a no-op unless profiling) */
static inline void prof_mark(lmz_model *m, int phase) {
    if (m->prof_on) {
        double t = mono_seconds();
        m->prof[phase] += t - m->prof_t;
        m->prof_t = t;
    }
}

static inline void prof_start(lmz_model *m) {
    if (m->prof_on)
        m->prof_t = mono_seconds();
}

int lmz_profile(lmz_model *m, int enable, double *seconds) {
    pthread_mutex_lock(&m->eval_lock); /* not while an evaluation runs */
    if (seconds)
        memcpy(seconds, m->prof, sizeof m->prof);
    memset(m->prof, 0, sizeof m->prof);
    m->prof_on = enable != 0;
    pthread_mutex_unlock(&m->eval_lock);
    return LMZ_PROF_PHASES;
}

const char *lmz_profile_name(int phase) { return phase >= 0 && phase < LMZ_PROF_PHASES ? PROF_NAMES[phase] : NULL; }

struct lmz_stream {
    lmz_model *m;
    int W, C;      /* window; ring slots (multiple of 16) */
    int64_t n;     /* tokens evaluated = the next position */
    uint16_t *kc;  /* [layer][kv head][C/16][head_dim][16] f16, rotated at the absolute position */
    uint16_t *vc;  /* [layer][kv head][head_dim/16][C][16] f16 */
    float *sink_k; /* [layer][kv head * 64] the start token's key, not rotated */
    float *sink_v;
    float *hidden; /* [n_embd] the final normalized hidden state of the last token evaluated */
    size_t bytes;
};

/* ------------------------------------------------------------------ kernels: scalar (the definition) */

/* a = round-half-even(x * (127 / amax)), s = amax / 127, per 32-block; amax == 0: zeros */
static void quantize_row(const float *x, int K, int8_t *q, float *s, float *sa, int32_t *sum) {
    for (int b = 0; b < K / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) {
            float v = f_from_bits(f_bits(xb[i]) & 0x7fffffffu);
            amax = v > amax ? v : amax;
        }
        int32_t acc = 0;
        if (amax == 0.0f) {
            memset(q + 32 * b, 0, 32);
            s[b] = 0.0f;
        } else {
            float inv = 127.0f / amax;
            for (int i = 0; i < 32; i++) {
                float v = xb[i] * inv;
                float r = (v + 12582912.0f) - 12582912.0f;
                int32_t qi = (int32_t)r;
                qi = qi > 127 ? 127 : (qi < -127 ? -127 : qi);
                q[32 * b + i] = (int8_t)qi;
                acc += qi;
            }
            s[b] = amax / 127.0f;
        }
        sum[b] = acc;
        sa[b] = s[b] * (float)acc;
    }
}

static float H2F[65536];

/* Q4_1: out[t][16g+l] = sum over blocks b in order of
 *   acc = acc + ((d * s_b) * isum + m * sa_b),  isum = sum_j q_j a_j (exact int32) */
static void mm_q4_scalar(const uint8_t *W, int K, int g0, int g1, const act *x, int t0, int T, float *out, int ldo) {
    int nb = K / 32;
    for (int g = g0; g < g1; g++) {
        const uint8_t *Wg = W + (size_t)g * nb * Q4_GB;
        for (int t = t0; t < T; t++) {
            const int8_t *a = x->q + (size_t)t * K;
            const float *s = x->s + (size_t)t * nb, *sa = x->sa + (size_t)t * nb;
            float acc[16] = {0};
            for (int b = 0; b < nb; b++) {
                const uint8_t *B = Wg + (size_t)b * Q4_GB;
                const int8_t *ab = a + 32 * b;
                const uint16_t *dh = (const uint16_t *)(B + 256), *mh = (const uint16_t *)(B + 288);
                for (int l = 0; l < 16; l++) {
                    int32_t isum = 0;
                    for (int c = 0; c < 4; c++)
                        for (int j = 0; j < 4; j++) {
                            int w = B[64 * c + 4 * l + j];
                            isum += (w & 15) * ab[8 * c + j] + (w >> 4) * ab[8 * c + 4 + j];
                        }
                    acc[l] = acc[l] + ((H2F[dh[l]] * s[b]) * (float)isum + H2F[mh[l]] * sa[b]);
                }
            }
            for (int l = 0; l < 16; l++)
                out[(size_t)t * ldo + 16 * g + l] = acc[l];
        }
    }
}

/* Q8_0: acc = acc + (d * s_b) * isum, isum = sum_j q_j a_j (exact; stored as q + 128) */
static void mm_q8_scalar(const uint8_t *W, int K, int g0, int g1, const act *x, int t0, int T, float *out, int ldo) {
    int nb = K / 32;
    for (int g = g0; g < g1; g++) {
        const uint8_t *Wg = W + (size_t)g * nb * Q8_GB;
        for (int t = t0; t < T; t++) {
            const int8_t *a = x->q + (size_t)t * K;
            const float *s = x->s + (size_t)t * nb;
            float acc[16] = {0};
            for (int b = 0; b < nb; b++) {
                const uint8_t *B = Wg + (size_t)b * Q8_GB;
                const int8_t *ab = a + 32 * b;
                const uint16_t *dh = (const uint16_t *)(B + 512);
                for (int l = 0; l < 16; l++) {
                    int32_t isum = 0;
                    for (int c = 0; c < 8; c++)
                        for (int j = 0; j < 4; j++)
                            isum += ((int)B[64 * c + 4 * l + j] - 128) * ab[4 * c + j];
                    acc[l] = acc[l] + (H2F[dh[l]] * s[b]) * (float)isum;
                }
            }
            for (int l = 0; l < 16; l++)
                out[(size_t)t * ldo + 16 * g + l] = acc[l];
        }
    }
}

/* K16 (gemma3's Q4_K and Q6_K matrices): row-major int8 q, then per row and 16-column
 * sub-block j an f32 scale ws and an f32 min wm (value = ws * q + wm, GGUF's own values).
 * For each sub-block j in order (b = j / 2 its activation block):
 *   acc = acc + ((ws * s_b) * isum_j + wm * (s_b * qsum_j)),
 * isum_j = sum of q * a over the 16 columns, qsum_j = sum of a (both exact int32). */
static void mm_k16_scalar(const tensor *W, int g0, int g1, const act *x, int T, float *out, int ldo) {
    int K = W->cols, nj = K / 16, nb = K / 32;
    const int8_t *Q = (const int8_t *)W->data;
    const float *WS = (const float *)(W->data + (size_t)W->rows * K);
    const float *WM = WS + (size_t)W->rows * nj;
    for (int r = 16 * g0; r < 16 * g1; r++) {
        const int8_t *q = Q + (size_t)r * K;
        const float *ws = WS + (size_t)r * nj, *wm = WM + (size_t)r * nj;
        for (int t = 0; t < T; t++) {
            const int8_t *a = x->q + (size_t)t * K;
            const float *s = x->s + (size_t)t * nb;
            float acc = 0.0f;
            for (int j = 0; j < nj; j++) {
                int32_t isum = 0, qsum = 0;
                for (int i = 0; i < 16; i++) {
                    isum += (int32_t)q[16 * j + i] * a[16 * j + i];
                    qsum += a[16 * j + i];
                }
                float sb = s[j / 2];
                acc = acc + ((ws[j] * sb) * (float)isum + wm[j] * (sb * (float)qsum));
            }
            out[(size_t)t * ldo + r] = acc;
        }
    }
}

/* Attention, the definition: one query head at a time in plain C, the scores in time
 * order, each sum in the order docs/engine.md gives (the scalar set runs this; the SIMD
 * sets compute the same operations for all G heads in one pass over the cache,
 * attn_simd.inc).  e: n = use_sink + n_ring floats. */
__attribute__((optimize("no-tree-vectorize"))) static void attn_head_ref(const attn_args *a, const float *q,
                                                                         float *e, float *out) {
    int D = a->D, C = a->C, n = a->use_sink + a->n_ring;
    int s0 = a->n_ring > 0 ? (int)((a->lo - 1) % C) : 0;
    int i = 0;
    if (a->use_sink) {
        float acc = 0.0f;
        for (int d = 0; d < D; d++)
            acc = acc + q[d] * a->sink_k[d];
        e[i++] = acc;
    }
    for (int r = 0, s = s0; r < a->n_ring; r++, s = s + 1 == C ? 0 : s + 1) {
        const uint16_t *kb = a->kc + (size_t)(s / 16) * D * 16 + s % 16;
        float acc = 0.0f;
        for (int d = 0; d < D; d++)
            acc = acc + q[d] * h2f(kb[16 * d]);
        e[i++] = acc;
    }
    float mx = e[0];
    for (i = 1; i < n; i++)
        mx = e[i] > mx ? e[i] : mx;
    float lane[16] = {0};
    for (i = 0; i < n; i++) {
        e[i] = exp_f(e[i] - mx);
        lane[i % 16] = lane[i % 16] + e[i];
    }
    float sum = tree16(lane);
    for (int d = 0; d < D; d++) {
        float A[4] = {0};
        i = 0;
        if (a->use_sink) {
            A[0] = A[0] + e[0] * a->sink_v[d];
            i = 1;
        }
        for (int s = s0; i < n; i++, s = s + 1 == C ? 0 : s + 1)
            A[i % 4] = A[i % 4] + e[i] * h2f(a->vc[((size_t)(d / 16) * C + s) * 16 + d % 16]);
        out[d] = ((A[0] + A[1]) + (A[2] + A[3])) / sum;
    }
}

static void attn_scalar(const attn_args *a, float *work) {
    for (int g = 0; g < a->G; g++)
        attn_head_ref(a, a->q + (size_t)g * a->D, work, a->out + (size_t)g * a->D);
}

/* g = (g / (1 + exp(-g))) * u: SiLU of the gate times the up projection */
static void silu_mul_scalar(float *g, const float *u, int n) {
    for (int i = 0; i < n; i++)
        g[i] = (g[i] / (1.0f + exp_f(-g[i]))) * u[i];
}

/* tanh-form GELU from the engine's own exp:
 * u = 0.7978845608 * (x * (1 + 0.044715 * (x * x))); t = 1 - 2 / (exp(2u) + 1);
 * gelu = (0.5 * x) * (1 + t)  (binary32, in this order) */
static inline float gelu_f(float x) {
    float u = GELU_A * (x * (1.0f + GELU_B * (x * x)));
    float t = 1.0f - 2.0f / (exp_f(u + u) + 1.0f);
    return (0.5f * x) * (1.0f + t);
}

static void gelu_mul_scalar(float *g, const float *u, int n) {
    for (int i = 0; i < n; i++)
        g[i] = gelu_f(g[i]) * u[i];
}

static const isa_kernels K_SCALAR = {"scalar", mm_q4_scalar, mm_q8_scalar, attn_scalar, NULL, mm_k16_scalar,
                                     quantize_row, silu_mul_scalar, gelu_mul_scalar};

/* ------------------------------------------------------------------ kernels: SIMD, shared */

/* token loop shared by the SIMD matrix products: tokens in fours, twos, ones */
#define MM_DRIVER(NAME, GB, K1, K2, K4, EXTRA)                                                             \
    static void NAME(const uint8_t *W, int K, int g0, int g1, const act *x, int t0, int T, float *out,     \
                     int ldo)                                                                              \
    {                                                                                                      \
        int nb = K / 32;                                                                                   \
        for (int g = g0; g < g1; g++) {                                                                    \
            const uint8_t *Wg = W + (size_t)g * nb * GB;                                                   \
            int t = t0;                                                                                    \
            while (t < T) {                                                                                \
                int nt = T - t >= 4 ? 4 : T - t >= 2 ? 2 : 1;                                              \
                const int8_t *a[4];                                                                        \
                const float *s[4], *sa[4];                                                                 \
                const int32_t *sm[4];                                                                      \
                float *o[4];                                                                               \
                for (int i = 0; i < nt; i++) {                                                             \
                    a[i] = x->q + (size_t)(t + i) * K;                                                     \
                    s[i] = x->s + (size_t)(t + i) * nb;                                                    \
                    sa[i] = x->sa + (size_t)(t + i) * nb;                                                  \
                    sm[i] = x->sum + (size_t)(t + i) * nb;                                                 \
                    o[i] = out + (size_t)(t + i) * ldo + 16 * g;                                           \
                }                                                                                          \
                (void)sa;                                                                                  \
                (void)sm;                                                                                  \
                if (nt == 4)                                                                               \
                    K4(Wg, nb, a, s, EXTRA, o);                                                            \
                else if (nt == 2)                                                                          \
                    K2(Wg, nb, a, s, EXTRA, o);                                                            \
                else                                                                                       \
                    K1(Wg, nb, a, s, EXTRA, o);                                                            \
                t += nt;                                                                                   \
            }                                                                                              \
        }                                                                                                  \
    }

/* ------------------------------------------------------------------ kernels: x86, aarch64 SIMD */
#if defined(LMZ_X86)
#include "kernels_x86.inc"
#define BASE_Q4 mm_q4_sse2
#define BASE_Q8 mm_q8_sse2
#define BASE_ATTN attn_sse2
#define BASE_STAGES (&attn_stages_sse2)
#define BASE_QUANT quantize_sse2
#define BASE_SILU silu_mul_sse2
#define BASE_GELU gelu_mul_sse2
#elif defined(LMZ_NEON)
#include "kernels_neon.inc"
#define BASE_Q4 mm_q4_neon
#define BASE_Q8 mm_q8_neon
#define BASE_ATTN attn_neon
#define BASE_STAGES (&attn_stages_neon)
#define BASE_QUANT quantize_neon
#define BASE_SILU silu_mul_neon
#define BASE_GELU gelu_mul_neon
#else
#define BASE_Q4 mm_q4_scalar
#define BASE_Q8 mm_q8_scalar
#define BASE_ATTN attn_scalar
#define BASE_STAGES NULL
#define BASE_QUANT quantize_row
#define BASE_SILU silu_mul_scalar
#define BASE_GELU gelu_mul_scalar
#endif

/* the baseline every CPU of the architecture has: SSE2 on x86-64, NEON (ASIMD) on aarch64 */
#if defined(__x86_64__)
#define GENERIC_NAME "sse2"
#elif defined(__aarch64__)
#define GENERIC_NAME "neon"
#else
#define GENERIC_NAME "generic"
#endif
static const isa_kernels K_GENERIC = {GENERIC_NAME, BASE_Q4, BASE_Q8, BASE_ATTN, BASE_STAGES, mm_k16_scalar, BASE_QUANT,
                                      BASE_SILU, BASE_GELU};
#if defined(LMZ_NEON_DOT)
static const isa_kernels K_NEON_DOT = {"dotprod", mm_q4_neon_dot, mm_q8_neon_dot, attn_neon, &attn_stages_neon,
                                       mm_k16_scalar,
                                       quantize_neon, silu_mul_neon, gelu_mul_neon};
#endif

/* One 16-value f16 conversion against h2f on every finite f16 (inf and NaN: the converter
 * refuses models that hold them): the mismatches. */
static long f16_mismatches(void (*convert)(const uint16_t *, float *)) {
    long bad = 0;
    uint16_t h[16];
    float out[16];
    for (uint32_t base = 0; base < 0x10000u; base += 16) {
        for (int i = 0; i < 16; i++)
            h[i] = (uint16_t)(base + i);
        convert(h, out);
        for (int i = 0; i < 16; i++)
            bad += (h[i] & 0x7c00u) != 0x7c00u && f_bits(out[i]) != f_bits(h2f(h[i]));
    }
    return bad;
}

long lmz_selfcheck(char *report, size_t len) {
    const struct {
        const char *name;
        void (*convert)(const uint16_t *, float *);
        int present;
    } sets[] = {
#if defined(LMZ_X86)
        {"sse2", h2f16_sse2, 1},
        {"f16c", h2f16_f16c, __builtin_cpu_supports("avx2") && x86_has_f16c()},
        {"avx512", h2f16_avx512, __builtin_cpu_supports("avx512f")},
#elif defined(LMZ_NEON)
        {"neon", h2f16_neon, 1},
#endif
        {NULL, NULL, 0},
    };
    long bad = 0;
    size_t at = (size_t)snprintf(report, len, "f16->f32 on 63488 finite values:");
    if (!sets[0].name)
        snprintf(report, len, "no SIMD conversions in this build");
    for (int k = 0; sets[k].name && at < len; k++) {
        long wrong = sets[k].present ? f16_mismatches(sets[k].convert) : 0;
        bad += wrong;
        const char *sep = k ? "," : "";
        at += (size_t)(sets[k].present ? snprintf(report + at, len - at, "%s %s %ld wrong", sep, sets[k].name, wrong)
                                       : snprintf(report + at, len - at, "%s %s: not on this CPU", sep, sets[k].name));
    }
    return bad;
}

static const isa_kernels *pick_isa(const char *want, char *err, size_t errlen) {
    const char *env = getenv("LMZIP_ENGINE_ISA");
    if (!want || !*want)
        want = env && *env ? env : "auto";
#if defined(LMZ_X86)
    __builtin_cpu_init();
    int has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int has_f16c = x86_has_f16c();
    int has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    has_avx2 = has_avx2 && has_f16c;
    int has_ssse3 = __builtin_cpu_supports("ssse3");
    if (!strcmp(want, "auto"))
        return has_avx512 ? &K_AVX512 : has_avx2 ? &K_AVX2 : has_ssse3 ? &K_SSSE3 : &K_GENERIC;
    if (!strcmp(want, "avx512")) {
        if (has_avx512)
            return &K_AVX512;
        snprintf(err, errlen, "LMZIP_ENGINE_ISA=avx512: this CPU lacks AVX-512 F/BW/VL/VNNI");
        return NULL;
    }
    if (!strcmp(want, "avx2")) {
        if (has_avx2)
            return &K_AVX2;
        snprintf(err, errlen, "LMZIP_ENGINE_ISA=avx2: this CPU lacks AVX2/F16C");
        return NULL;
    }
    if (!strcmp(want, "ssse3")) {
        if (has_ssse3)
            return &K_SSSE3;
        snprintf(err, errlen, "LMZIP_ENGINE_ISA=ssse3: this CPU lacks SSSE3");
        return NULL;
    }
    if (!strcmp(want, "sse2"))
        return &K_GENERIC;
#else
#if defined(LMZ_NEON_DOT)
    int has_dot = neon_has_dotprod();
    if (!strcmp(want, "auto"))
        return has_dot ? &K_NEON_DOT : &K_GENERIC;
    if (!strcmp(want, "dotprod")) {
        if (has_dot)
            return &K_NEON_DOT;
        snprintf(err, errlen, "LMZIP_ENGINE_ISA=dotprod: this CPU lacks the ARMv8.2 dot product instructions");
        return NULL;
    }
#endif
    if (!strcmp(want, "auto") || !strcmp(want, "generic") || !strcmp(want, GENERIC_NAME))
        return &K_GENERIC;
#endif
    if (!strcmp(want, "scalar"))
        return &K_SCALAR;
#if defined(LMZ_X86)
    snprintf(err, errlen, "unknown or unavailable engine ISA '%s' (scalar, sse2, ssse3, avx2, avx512)", want);
#elif defined(LMZ_NEON)
    snprintf(err, errlen, "unknown or unavailable engine ISA '%s' (scalar, neon, dotprod)", want);
#else
    snprintf(err, errlen, "unknown or unavailable engine ISA '%s' (scalar, %s)", want, GENERIC_NAME);
#endif
    return NULL;
}

/* ------------------------------------------------------------------ loading */

static int read_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return (int)v; }

/* bytes a tensor of this type and shape occupies, or 0 if the shape does not fit the type */
static uint64_t tensor_bytes(int type, int rows, int cols) {
    if (rows < 1 || cols < 1)
        return 0;
    uint64_t r = (uint64_t)rows, c = (uint64_t)cols;
    switch (type) {
    case T_F32: return r * c * 4;
    case T_Q4_1: return rows % 16 || cols % 32 ? 0 : r / 16 * (c / 32) * Q4_GB;
    case T_Q8_0: return rows % 16 || cols % 32 ? 0 : r / 16 * (c / 32) * Q8_GB;
    case T_K16: return rows % 16 || cols % 32 ? 0 : r * c + 2 * r * (c / 16) * 4;
    default: return 0;
    }
}

/* a tensor is a matrix (Q8_0, Q4_1 or K16) or a vector (F32, one row) of the given shape, inside the file */
static int shape_ok(const tensor *t, int matrix, int rows, int cols, const uint8_t *base, size_t size) {
    if (matrix ? t->type == T_F32 : t->type != T_F32)
        return 0;
    if (t->rows != rows || t->cols != cols)
        return 0;
    uint64_t need = tensor_bytes(t->type, rows, cols);
    uint64_t off = (uint64_t)(t->data - base);
    return need > 0 && off <= size && need <= size - off;
}

static int gemma_shapes_ok(const lmz_model *m, size_t size) {
    const uint8_t *b = m->map;
    int E = m->n_embd, F = m->n_ff, D = m->head_dim, QD = m->n_head * D, KVD = m->n_kv * D;
    if (!shape_ok(&m->tok_embd, 1, m->n_vocab, E, b, size) || m->tok_embd.type != T_Q8_0 ||
        !shape_ok(&m->out_norm, 0, 1, E, b, size))
        return 0;
    for (int l = 0; l < m->n_layer; l++) {
        const layer *L = m->layers + l;
        if (!shape_ok(&L->attn_norm, 0, 1, E, b, size) || !shape_ok(&L->wq, 1, QD, E, b, size) ||
            !shape_ok(&L->wk, 1, KVD, E, b, size) || !shape_ok(&L->wv, 1, KVD, E, b, size) ||
            !shape_ok(&L->q_norm, 0, 1, D, b, size) || !shape_ok(&L->k_norm, 0, 1, D, b, size) ||
            !shape_ok(&L->wo, 1, E, QD, b, size) || !shape_ok(&L->post_attn_norm, 0, 1, E, b, size) ||
            !shape_ok(&L->ffn_norm, 0, 1, E, b, size) || !shape_ok(&L->wg, 1, F, E, b, size) ||
            !shape_ok(&L->wu, 1, F, E, b, size) || !shape_ok(&L->wd, 1, E, F, b, size) ||
            !shape_ok(&L->post_ffn_norm, 0, 1, E, b, size))
            return 0;
    }
    return 1;
}

lmz_model *lmz_load(const char *path, int threads, const char *isa, char *err, size_t errlen) {
    char dummy[8];
    if (!err) {
        err = dummy;
        errlen = sizeof dummy;
    }
    const isa_kernels *k = pick_isa(isa, err, errlen);
    if (!k)
        return NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 256) {
        close(fd);
        snprintf(err, errlen, "%s: not an engine weights file", path);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "cannot map %s: %s", path, strerror(errno));
        return NULL;
    }
    const uint8_t *h = map;
    int format = size >= 12 ? read_u32(h + 8) : 0;
    if (memcmp(h, "LMZENG\0\1", 8) != 0 || (format != 1 && format != 2)) {
        munmap(map, size);
        snprintf(err, errlen, "%s: not an engine weights file of format 1 or 2", path);
        return NULL;
    }
    lmz_model *m = calloc(1, sizeof *m);
    m->map = map;
    m->map_size = size;
    m->k = k;
    m->arch = format == 2 ? ARCH_GEMMA3 : ARCH_LLAMA;
    m->n_layer = read_u32(h + 12);
    m->n_embd = read_u32(h + 16);
    m->n_ff = read_u32(h + 20);
    m->n_head = read_u32(h + 24);
    m->n_kv = read_u32(h + 28);
    m->head_dim = read_u32(h + 32);
    m->n_vocab = read_u32(h + 36);
    int rope_dim = read_u32(h + 40);
    m->bos = read_u32(h + 44);
    memcpy(&m->rope_base, h + 48, 8);
    memcpy(&m->eps, h + 56, 4);
    int n_t = read_u32(h + 60);
    int per_layer = m->arch == ARCH_GEMMA3 ? 13 : 9;
    int bad;
    if (m->arch == ARCH_GEMMA3) {
        memcpy(&m->rope_base_local, h + 64, 8);
        m->swa_window = read_u32(h + 72);
        m->swa_pattern = read_u32(h + 76);
        int D = m->head_dim;
        bad = D < 2 || D > 512 || D % 32 || rope_dim != D || m->n_kv < 1 || m->n_head % m->n_kv ||
              m->swa_window < 1 || m->swa_pattern < 1 || m->n_head * D > 65536 || m->n_ff < m->n_head * D ||
              !(m->rope_base > 1.0 && m->rope_base < 1e300) ||
              !(m->rope_base_local > 1.0 && m->rope_base_local < 1e300);
        m->emb_scale = __builtin_sqrtf((float)m->n_embd);
        m->attn_scale = 1.0f / __builtin_sqrtf((float)D);
    } else {
        bad = m->head_dim != 64 || rope_dim != 64 || m->n_head % m->n_kv || m->n_embd != m->n_head * 64;
    }
    if (bad || m->n_kv < 1 || m->n_head % m->n_kv || m->n_head / m->n_kv > LMZ_MAX_GQ || m->n_layer < 1 || n_t != 2 + per_layer * m->n_layer || m->n_embd % 32 || m->n_ff % 32 ||
        m->n_vocab % 16 || (size_t)256 + 32 * (size_t)n_t > size) {
        lmz_free(m);
        snprintf(err, errlen, "%s: unsupported model shape", path);
        return NULL;
    }
    tensor *all = calloc((size_t)n_t, sizeof(tensor));
    for (int i = 0; i < n_t; i++) {
        const uint8_t *e = h + 256 + 32 * i;
        uint64_t off, sz;
        memcpy(&off, e + 16, 8);
        memcpy(&sz, e + 24, 8);
        if (off > size || sz > size - off) {
            free(all);
            lmz_free(m);
            snprintf(err, errlen, "%s: truncated", path);
            return NULL;
        }
        all[i].type = read_u32(e);
        all[i].rows = read_u32(e + 4);
        all[i].cols = read_u32(e + 8);
        all[i].data = h + off;
    }
    m->tok_embd = all[0];
    m->out_norm = all[1];
    m->layers = calloc((size_t)m->n_layer, sizeof(layer));
    for (int l = 0; l < m->n_layer; l++) {
        tensor *t = all + 2 + per_layer * l;
        layer *L = m->layers + l;
        if (m->arch == ARCH_GEMMA3) {
            L->attn_norm = t[0], L->wq = t[1], L->wk = t[2], L->wv = t[3], L->q_norm = t[4], L->k_norm = t[5];
            L->wo = t[6], L->post_attn_norm = t[7], L->ffn_norm = t[8], L->wg = t[9], L->wu = t[10];
            L->wd = t[11], L->post_ffn_norm = t[12];
        } else {
            L->attn_norm = t[0], L->wq = t[1], L->wk = t[2], L->wv = t[3], L->wo = t[4];
            L->ffn_norm = t[5], L->wg = t[6], L->wu = t[7], L->wd = t[8];
        }
    }
    free(all);
    if (m->arch == ARCH_GEMMA3 && !gemma_shapes_ok(m, size)) {
        lmz_free(m);
        snprintf(err, errlen, "%s: tensor types or shapes do not match the model (damaged file?)", path);
        return NULL;
    }
    if (m->tok_embd.type != T_Q8_0) {
        lmz_free(m);
        snprintf(err, errlen, "%s: the token embedding must be Q8_0", path);
        return NULL;
    }
    if (m->arch == ARCH_GEMMA3) {
        double lg = log_d(m->rope_base), ll = log_d(m->rope_base_local);
        int half = m->head_dim / 2;
        for (int i = 0; i < half; i++) {
            m->inv_freq_g[i] = exp_d(-((double)(2 * i) / (double)m->head_dim) * lg);
            m->inv_freq_l[i] = exp_d(-((double)(2 * i) / (double)m->head_dim) * ll);
        }
    }
    /* inv_freq[i] = base^(-2i/64) = exp(-(2i/64) ln base), in double with the engine's own functions */
    double lb = log_d(m->rope_base);
    for (int i = 0; i < 32; i++)
        m->inv_freq[i] = exp_d(-((double)(2 * i) / 64.0) * lb);
    if (!H2F[0x3c00])
        for (int i = 0; i < 65536; i++)
            H2F[i] = h2f((uint16_t)i);
    pthread_mutex_init(&m->eval_lock, NULL);
    pool_init(&m->pool, threads < 1 ? 1 : threads);
    return m;
}

static void free_buffers(lmz_model *m) {
    free(m->x), free(m->xb), free(m->q), free(m->kk), free(m->vv), free(m->ao), free(m->hb), free(m->tmp);
    free(m->logit_tmp);
    free(m->a_embd.q), free(m->a_embd.s), free(m->a_embd.sa), free(m->a_embd.sum);
    free(m->a_ff.q), free(m->a_ff.s), free(m->a_ff.sa), free(m->a_ff.sum);
    free(m->tok_stream), free(m->tok_pos), free(m->rope_tab), free(m->dest);
}

void lmz_free(lmz_model *m) {
    if (!m)
        return;
    if (m->layers) {
        pool_destroy(&m->pool);
        pthread_mutex_destroy(&m->eval_lock);
    }
    free_buffers(m);
    free(m->scratch);
    free(m->split);
    free(m->layers);
    if (m->map)
        munmap(m->map, m->map_size);
    free(m);
}

int lmz_n_vocab(const lmz_model *m) { return m->n_vocab; }
int lmz_bos(const lmz_model *m) { return m->bos; }
const char *lmz_isa(const lmz_model *m) { return m->k->name; }
int lmz_threads(const lmz_model *m) { return m->pool.n; }

lmz_stream *lmz_stream_new(lmz_model *m, int context) {
    if (context < 16 || context > 65536)
        return NULL;
    lmz_stream *s = calloc(1, sizeof *s);
    s->m = m;
    s->W = context;
    /* the ring holds the window, and Gemma's local layers' window when that is longer, and
     * the rest of a step's tokens */
    int span = context - 1;
    if (m->arch == ARCH_GEMMA3 && m->swa_window > span)
        span = m->swa_window;
    s->C = (span + (LMZ_MAX_STEP - 1) + 15) & ~15;
    size_t per = (size_t)m->n_layer * m->n_kv * s->C * m->head_dim;
    s->kc = calloc(per, sizeof(uint16_t));
    s->vc = calloc(per, sizeof(uint16_t));
    s->sink_k = calloc((size_t)m->n_layer * m->n_kv * m->head_dim, sizeof(float));
    s->sink_v = calloc((size_t)m->n_layer * m->n_kv * m->head_dim, sizeof(float));
    s->hidden = calloc((size_t)m->n_embd, sizeof(float));
    s->bytes = 2 * per * sizeof(uint16_t) + 2 * (size_t)m->n_layer * m->n_kv * m->head_dim * sizeof(float);
    if (!s->kc || !s->vc || !s->sink_k || !s->sink_v || !s->hidden) {
        lmz_stream_free(s);
        return NULL;
    }
    return s;
}

void lmz_stream_free(lmz_stream *s) {
    if (!s)
        return;
    free(s->kc), free(s->vc), free(s->sink_k), free(s->sink_v), free(s->hidden);
    free(s);
}

int64_t lmz_stream_pos(const lmz_stream *s) { return s->n; }
size_t lmz_stream_bytes(const lmz_stream *s) { return s->bytes; }
const float *lmz_stream_hidden(const lmz_stream *s) { return s->hidden; }
int lmz_n_embd(const lmz_model *m) { return m->n_embd; }

/* ------------------------------------------------------------------ forward pass */

static int grow(lmz_model *m, size_t T) {
    if (T <= m->cap_tokens)
        return 0;
    free_buffers(m);
    size_t E = (size_t)m->n_embd, F = (size_t)m->n_ff, KV = (size_t)m->n_kv * m->head_dim;
    size_t QD = (size_t)m->n_head * m->head_dim, RT = m->arch == ARCH_GEMMA3 ? 1024 : 128;
#define ALLOC(p, n) if (!((p) = malloc((n) * sizeof(*(p)) + 64))) return -1
    ALLOC(m->x, T * E);
    ALLOC(m->xb, T * E);
    ALLOC(m->q, T * QD);
    ALLOC(m->kk, T * KV);
    ALLOC(m->vv, T * KV);
    ALLOC(m->ao, T * QD);
    ALLOC(m->hb, T * 2 * F);
    ALLOC(m->tmp, T * (E > F ? E : F));
    ALLOC(m->logit_tmp, T * (size_t)m->n_vocab);
    size_t Kmax = E > F ? E : F;
    ALLOC(m->a_embd.q, T * E);
    ALLOC(m->a_embd.s, T * E / 32);
    ALLOC(m->a_embd.sa, T * E / 32);
    ALLOC(m->a_embd.sum, T * E / 32);
    ALLOC(m->a_ff.q, T * Kmax);
    ALLOC(m->a_ff.s, T * Kmax / 32);
    ALLOC(m->a_ff.sa, T * Kmax / 32);
    ALLOC(m->a_ff.sum, T * Kmax / 32);
    ALLOC(m->tok_stream, T);
    ALLOC(m->tok_pos, T);
    ALLOC(m->rope_tab, T * RT);
    ALLOC(m->dest, T);
#undef ALLOC
    m->cap_tokens = T;
    return 0;
}

/* y = (float)((double)x_i * r) * w_i, r = 1 / sqrt(sum_i x_i^2 / n + eps) in double,
 * the sum sequential in index order */
static void rmsnorm(float *y, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss = ss + (double)x[i] * (double)x[i];
    double r = 1.0 / __builtin_sqrt(ss / (double)n + (double)eps);
    for (int i = 0; i < n; i++)
        y[i] = (float)((double)x[i] * r) * w[i];
}

static void rope(float *x, const float *cs, const float *sn) {
    for (int i = 0; i < 32; i++) {
        float x0 = x[2 * i], x1 = x[2 * i + 1];
        x[2 * i] = x0 * cs[i] - x1 * sn[i];
        x[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
    }
}

static void rope_table(const lmz_model *m, int64_t pos, float *cs, float *sn) {
    for (int i = 0; i < 32; i++) {
        double s, c;
        sincos_d((double)pos * m->inv_freq[i], &s, &c);
        cs[i] = (float)c;
        sn[i] = (float)s;
    }
}

/* What a matrix product task does with its rows once computed (the same operations,
 * moved into the parallel phase: each row belongs to one thread) */
enum {
    POST_NONE,
    POST_QKV,      /* llama: RoPE of q and k, q scaled, k and v into the stream's cache */
    POST_RESIDUAL, /* out[t][r] is added to the residual stream x[t][r] */
    POST_FFN,      /* gate and up in units of 32 rows: SiLU(gate) * up (GELU for Gemma), quantized */
};

/* a matrix product job: several matrices over the same activations, split among the
 * parts of the phase in units of 16 rows (each output computed by one thread) */
typedef struct {
    lmz_model *m;
    int nmat;
    const tensor *w[3];
    float *out[3];
    int ldo[3];
    const act *x;
    int T;
    int post;
    lmz_stream *const *streams; /* POST_QKV */
    int layer;
} mm_job;

/* POST_QKV for rows r0..r1-1 of matrix i (0 q, 1 k, 2 v) of every token: RoPE on the
 * pairs (2i, 2i+1) of each head (a pair never straddles a group of 16 rows), then q
 * times 0.125 (1/sqrt(64), exact); the start token's k (unrotated) and v are the sink's,
 * binary32; later tokens' go to ring slot (p - 1) mod C in f16 */
static void qkv_post(const mm_job *j, int i, int r0, int r1) {
    lmz_model *m = j->m;
    for (int t = 0; t < j->T; t++) {
        float *y = j->out[i] + (size_t)t * j->ldo[i];
        lmz_stream *s = j->streams[m->tok_stream[t]];
        int64_t p = m->tok_pos[t];
        const float *rt = m->rope_tab + (size_t)t * 128;
        if (i < 2 && (i == 0 || p > 0))
            for (int r = r0; r < r1; r += 2) {
                int pi = (r % 64) / 2;
                float x0 = y[r], x1 = y[r + 1];
                y[r] = x0 * rt[pi] - x1 * rt[32 + pi];
                y[r + 1] = x0 * rt[32 + pi] + x1 * rt[pi];
            }
        if (i == 0) {
            for (int r = r0; r < r1; r++)
                y[r] = y[r] * 0.125f;
            continue;
        }
        for (int r = r0; r < r1; r++) {
            size_t li = (size_t)j->layer * m->n_kv + r / 64;
            int d = r % 64;
            if (p == 0) {
                (i == 1 ? s->sink_k : s->sink_v)[li * 64 + d] = y[r];
                continue;
            }
            int slot = (int)((p - 1) % s->C);
            if (i == 1)
                s->kc[li * (size_t)s->C * 64 + (size_t)(slot / 16) * 1024 + (size_t)d * 16 + slot % 16] = f2h(y[r]);
            else
                s->vc[li * (size_t)s->C * 64 + ((size_t)(d / 16) * s->C + slot) * 16 + d % 16] = f2h(y[r]);
        }
    }
}

static void mm_task(void *ctx, int tid, int nth) {
    mm_job *j = ctx;
    lmz_model *m = j->m;
    const isa_kernels *k = m->k;
    if (j->post == POST_FFN) { /* units of 32 rows of gate and up; then h and its quantized blocks */
        int F = j->w[0]->rows, units = F / 32;
        int u0 = (int)((int64_t)units * tid / nth), u1 = (int)((int64_t)units * (tid + 1) / nth);
        if (u0 >= u1)
            return;
        for (int i = 0; i < 2; i++) {
            const tensor *W = j->w[i];
            if (W->type == T_K16)
                k->k16(W, 2 * u0, 2 * u1, j->x, j->T, j->out[i], F);
            else
                (W->type == T_Q8_0 ? k->q8 : k->q4)(W->data, W->cols, 2 * u0, 2 * u1, j->x, 0, j->T, j->out[i], F);
        }
        act_fn act = m->arch == ARCH_GEMMA3 ? k->gelu_mul : k->silu_mul;
        for (int t = 0; t < j->T; t++) {
            float *g = j->out[0] + (size_t)t * F + 32 * u0, *u = j->out[1] + (size_t)t * F + 32 * u0;
            act(g, u, 32 * (u1 - u0));
            k->quant(g, 32 * (u1 - u0), m->a_ff.q + (size_t)t * F + 32 * u0, m->a_ff.s + (size_t)t * (F / 32) + u0,
                     m->a_ff.sa + (size_t)t * (F / 32) + u0, m->a_ff.sum + (size_t)t * (F / 32) + u0);
        }
        return;
    }
    int total = 0;
    for (int i = 0; i < j->nmat; i++)
        total += j->w[i]->rows / 16;
    int g0 = (int)((int64_t)total * tid / nth), g1 = (int)((int64_t)total * (tid + 1) / nth);
    int base = 0;
    for (int i = 0; i < j->nmat; i++) {
        int G = j->w[i]->rows / 16;
        int a = g0 > base ? g0 - base : 0, b = g1 - base < G ? g1 - base : G;
        base += G;
        if (a >= b)
            continue;
        if (j->w[i]->type == T_K16) {
            k->k16(j->w[i], a, b, j->x, j->T, j->out[i], j->ldo[i]);
        } else {
            mm_fn f = j->w[i]->type == T_Q8_0 ? k->q8 : k->q4;
            f(j->w[i]->data, j->w[i]->cols, a, b, j->x, 0, j->T, j->out[i], j->ldo[i]);
        }
        if (j->post == POST_QKV)
            qkv_post(j, i, 16 * a, 16 * b);
        else if (j->post == POST_RESIDUAL)
            for (int t = 0; t < j->T; t++) {
                float *x = m->x + (size_t)t * m->n_embd, *y = j->out[i] + (size_t)t * j->ldo[i];
                for (int r = 16 * a; r < 16 * b; r++)
                    x[r] = x[r] + y[r];
            }
    }
}

/* Work per token between the products, split among threads by token when there are
 * several (each token's sums stay sequential, computed by one thread) */
typedef struct tok_job {
    lmz_model *m;
    lmz_stream *const *streams;
    int layer, T;
    void (*fn)(const struct tok_job *j, size_t t);
    const float *norm; /* the RMSNorm weights of fn, when it has one */
} tok_job;

static void tok_task(void *ctx, int part, int nparts) {
    tok_job *j = ctx;
    size_t a = (size_t)j->T * part / nparts, b = (size_t)j->T * (part + 1) / nparts;
    for (size_t t = a; t < b; t++)
        j->fn(j, t);
}

static void for_tokens(lmz_model *m, tok_job *j) {
    if (j->T > 1 && m->pool.n > 1) {
        pool_run(&m->pool, tok_task, j);
        return;
    }
    for (size_t t = 0; t < (size_t)j->T; t++)
        j->fn(j, t);
}

/* the activations a_embd[t] of RMSNorm(x[t], norm), quantized */
static void norm_quant_tok(const tok_job *j, size_t t) {
    lmz_model *m = j->m;
    size_t E = (size_t)m->n_embd;
    rmsnorm(m->xb + t * E, m->x + t * E, j->norm, (int)E, m->eps);
    m->k->quant(m->xb + t * E, (int)E, m->a_embd.q + t * E, m->a_embd.s + t * (E / 32), m->a_embd.sa + t * (E / 32),
                m->a_embd.sum + t * (E / 32));
}

/* the attention of token t over KV head kvh of layer l (llama): the sink's key rotated at
 * the virtual position lo - 1 into sk */
static attn_args attn_llama(const lmz_model *m, lmz_stream *const *streams, int l, int t, int kvh, float *sk) {
    int G = m->n_head / m->n_kv, E = m->n_embd;
    lmz_stream *s = streams[m->tok_stream[t]];
    int64_t p = m->tok_pos[t];
    int64_t lo = p - s->W + 2;
    if (lo < 1)
        lo = 1;
    size_t li = (size_t)l * m->n_kv + kvh;
    memcpy(sk, s->sink_k + li * 64, 64 * sizeof(float));
    const float *rt = m->rope_tab + (size_t)t * 128;
    rope(sk, rt + 64, rt + 96);
    attn_args a = {G, 64, s->C, 1, p >= 1 ? (int)(p - lo + 1) : 0, lo,
                   m->q + (size_t)t * E + (size_t)kvh * G * 64, sk, s->sink_v + li * 64,
                   s->kc + li * (size_t)s->C * 64, s->vc + li * (size_t)s->C * 64,
                   m->ao + (size_t)t * E + (size_t)kvh * G * 64};
    return a;
}

static attn_args attn_gemma(const lmz_model *m, lmz_stream *const *streams, int l, int t, int kvh, float *sk);

/* The attention phase of a layer: per (token, KV head) pair, all its query heads; the
 * outputs quantized into aq for the output projection. */
typedef struct {
    lmz_model *m;
    lmz_stream *const *streams;
    int layer, T;
    act *aq;
    /* split mode (few pairs): each pair's arguments; its buffers at buf + w * per_pair:
     * scores by slot (G x C), exps in time order (G x es), the sums (G), the sink's key
     * (D); R parts of its scores */
    attn_args *args;
    float *buf;
    size_t per_pair, es;
    int cmax, R;
} attn_job;

static attn_args attn_pair(const attn_job *j, int w, float *sk) {
    int t = w / j->m->n_kv, kvh = w % j->m->n_kv;
    return j->m->arch == ARCH_GEMMA3 ? attn_gemma(j->m, j->streams, j->layer, t, kvh, sk)
                                     : attn_llama(j->m, j->streams, j->layer, t, kvh, sk);
}

/* pair w's outputs (G x D values, whole 32-blocks) quantized */
static void attn_quant(const attn_job *j, const attn_args *a) {
    size_t o = (size_t)(a->out - j->m->ao), ob = o / 32;
    j->m->k->quant(a->out, a->G * a->D, j->aq->q + o, j->aq->s + ob, j->aq->sa + ob, j->aq->sum + ob);
}

static void attn_task(void *ctx, int part, int nparts) {
    attn_job *j = ctx;
    lmz_model *m = j->m;
    int total = j->T * m->n_kv;
    int a = (int)((int64_t)total * part / nparts), b = (int)((int64_t)total * (part + 1) / nparts);
    float *work = m->scratch + (size_t)part * m->scratch_per_thread, sk[512];
    for (int w = a; w < b; w++) {
        attn_args aa = attn_pair(j, w, sk);
        m->k->attn(&aa, work);
        attn_quant(j, &aa);
    }
}

static float *split_sc(const attn_job *j, int w) { return j->buf + (size_t)w * j->per_pair; }
static float *split_e(const attn_job *j, int w) { return split_sc(j, w) + (size_t)j->args[w].G * j->cmax; }
static float *split_sum(const attn_job *j, int w) { return split_e(j, w) + (size_t)j->args[w].G * j->es; }

/* items in order (pair, index) over n per pair: this part's range */
#define SPLIT_RANGE(n)                                                                                     \
    int total = j->T * j->m->n_kv * (n);                                                                   \
    int a = (int)((int64_t)total * part / nparts), b = (int)((int64_t)total * (part + 1) / nparts)

static void split_scores_task(void *ctx, int part, int nparts) {
    attn_job *j = ctx;
    SPLIT_RANGE(j->R);
    for (int it = a; it < b; it++) {
        const attn_args *aa = &j->args[it / j->R];
        attn_ring rb = attn_ring_blocks(aa);
        int nb = rb.n0 + rb.n1, r = it % j->R;
        j->m->k->attn_split->scores(aa, nb * r / j->R, nb * (r + 1) / j->R, split_sc(j, it / j->R));
    }
}

static void split_softmax_task(void *ctx, int part, int nparts) {
    attn_job *j = ctx;
    int G = j->m->n_head / j->m->n_kv;
    SPLIT_RANGE(G);
    for (int it = a; it < b; it++) {
        int w = it / G, g = it % G;
        split_sum(j, w)[g] = j->m->k->attn_split->softmax(&j->args[w], g, split_sc(j, w), split_e(j, w) + g * j->es);
    }
}

static void split_values_task(void *ctx, int part, int nparts) {
    attn_job *j = ctx;
    int nc = j->m->head_dim / 16;
    SPLIT_RANGE(nc);
    for (int it = a; it < b; it++) {
        int w = it / nc, c = it % nc;
        j->m->k->attn_split->values(&j->args[w], 16 * c, 16 * c + 16, split_e(j, w), j->es, split_sum(j, w));
    }
}

/* the attention of a layer: one (token, KV head) pair per item when there are enough
 * pairs to keep the threads busy, else each pair in three stages split among them */
static int run_attention(lmz_model *m, lmz_stream *const *streams, int layer, int T, act *aq) {
    attn_job j = {m, streams, layer, T, aq, NULL, NULL, 0, 0, 0, 1};
    int pairs = T * m->n_kv, G = m->n_head / m->n_kv, D = m->head_dim;
    if (!m->k->attn_split || m->pool.n < 2 || pairs >= 2 * m->pool.n) {
        pool_run(&m->pool, attn_task, &j);
        return 0;
    }
    int Cmax = 0;
    for (int t = 0; t < T; t++)
        Cmax = streams[m->tok_stream[t]]->C > Cmax ? streams[m->tok_stream[t]]->C : Cmax;
    j.cmax = Cmax;
    j.es = attn_e_stride(Cmax);
    j.per_pair = (size_t)G * ((size_t)Cmax + j.es + 1) + (size_t)D + 16;
    size_t arg_floats = (sizeof(attn_args) + sizeof(float) - 1) / sizeof(float) + 1;
    size_t need = (size_t)pairs * (j.per_pair + arg_floats);
    if (need > m->split_cap) {
        free(m->split);
        m->split = malloc(need * sizeof(float));
        m->split_cap = m->split ? need : 0;
        if (!m->split)
            return -1;
    }
    j.args = (attn_args *)(void *)m->split;
    j.buf = m->split + (size_t)pairs * arg_floats;
    for (int w = 0; w < pairs; w++) /* the sink's key kept after the pair's sums */
        j.args[w] = attn_pair(&j, w, j.buf + (size_t)w * j.per_pair + (size_t)G * ((size_t)Cmax + j.es + 1));
    j.R = (4 * m->pool.n + pairs - 1) / pairs;
    pool_run(&m->pool, split_scores_task, &j);
    pool_run(&m->pool, split_softmax_task, &j);
    pool_run(&m->pool, split_values_task, &j);
    for (int w = 0; w < pairs; w++)
        attn_quant(&j, &j.args[w]);
    return 0;
}

/* work space for the attention: one per part of a phase */
static int ensure_scratch(lmz_model *m, int n, lmz_stream *const *streams) {
    size_t need = 0;
    for (int i = 0; i < n; i++) {
        size_t w = attn_work_floats(m->n_head / m->n_kv, streams[i]->C);
        need = w > need ? w : need;
    }
    if (need <= m->scratch_per_thread)
        return 0;
    free(m->scratch);
    m->scratch = malloc(need * (m->pool.n > 1 ? 4 * (size_t)m->pool.n : 1) * sizeof(float));
    m->scratch_per_thread = m->scratch ? need : 0;
    return m->scratch ? 0 : -1;
}

static void embed(const lmz_model *m, int token, float *x) {
    int E = m->n_embd, nb = E / 32, g = token / 16, l = token % 16;
    const uint8_t *Wg = m->tok_embd.data + (size_t)g * nb * Q8_GB;
    for (int b = 0; b < nb; b++) {
        const uint8_t *B = Wg + (size_t)b * Q8_GB;
        float d = H2F[((const uint16_t *)(B + 512))[l]];
        for (int c = 0; c < 8; c++)
            for (int jj = 0; jj < 4; jj++)
                x[32 * b + 4 * c + jj] = d * (float)((int)B[64 * c + 4 * l + jj] - 128); /* exact */
    }
}

/* The logits of the step's tokens (x: their residual streams): of each stream's last token
 * when want_logits[i], to logits + i * n_vocab; or, when rows is not NULL, of every token,
 * stream i's k-th to rows[i][k].  A stream's hidden state is its last token's. */
static int head_logits(lmz_model *m, int n, lmz_stream *const *streams, const int *cnt, const int *want_logits,
                       float *logits, float *const *rows) {
    size_t E = (size_t)m->n_embd, V = (size_t)m->n_vocab, ns = 0, t = 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < cnt[i]; k++, t++) {
            int last = k == cnt[i] - 1;
            if (rows ? 0 : !(last && want_logits[i]))
                continue;
            float *y = m->xb + ns * E;
            rmsnorm(y, m->x + t * E, (const float *)m->out_norm.data, (int)E, m->eps);
            if (last)
                memcpy(streams[i]->hidden, y, E * sizeof(float));
            m->k->quant(y, (int)E, m->a_embd.q + ns * E, m->a_embd.s + ns * (E / 32), m->a_embd.sa + ns * (E / 32),
                        m->a_embd.sum + ns * (E / 32));
            m->dest[ns++] = rows ? rows[i] + (size_t)k * V : logits + (size_t)i * V;
        }
    prof_mark(m, P_NORMS);
    if (ns) {
        mm_job hd = {m, 1, {&m->tok_embd}, {m->logit_tmp}, {(int)V}, &m->a_embd, (int)ns, POST_NONE};
        pool_run(&m->pool, mm_task, &hd);
        for (size_t k = 0; k < ns; k++)
            memcpy(m->dest[k], m->logit_tmp + k * V, V * sizeof(float));
    }
    prof_mark(m, P_HEAD);
    return 0;
}

/* one step: tokens[i][0..cnt[i]) of streams i (cnt[i] <= LMZ_MAX_STEP, 0 = sits out); the
 * logits per head_logits */
static int step(lmz_model *m, int n, lmz_stream *const *streams, const int32_t *const *tokens, const int *cnt,
                const int *want_logits, float *logits, float *const *rows) {
    int E = m->n_embd, F = m->n_ff, KVD = m->n_kv * 64;
    size_t T = 0;
    for (int i = 0; i < n; i++)
        T += (size_t)cnt[i];
    if (T == 0)
        return 0;
    if (grow(m, T))
        return -1;
    if (ensure_scratch(m, n, streams))
        return -1;
    prof_start(m);
    size_t t = 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < cnt[i]; k++, t++) {
            m->tok_stream[t] = i;
            int64_t p = streams[i]->n + k;
            m->tok_pos[t] = p;
            int64_t lo = p - streams[i]->W + 2;
            if (lo < 1)
                lo = 1;
            float *rt = m->rope_tab + t * 128;
            rope_table(m, p, rt, rt + 32);
            rope_table(m, lo - 1, rt + 64, rt + 96);
            embed(m, tokens[i][k], m->x + t * E);
        }
    prof_mark(m, P_OTHER);
    for (int l = 0; l < m->n_layer; l++) {
        const layer *L = m->layers + l;
        tok_job norm = {m, streams, l, (int)T, norm_quant_tok, (const float *)L->attn_norm.data};
        for_tokens(m, &norm);
        prof_mark(m, P_NORMS);
        mm_job qkv = {m, 3, {&L->wq, &L->wk, &L->wv}, {m->q, m->kk, m->vv}, {E, KVD, KVD}, &m->a_embd, (int)T,
                      POST_QKV, streams, l};
        pool_run(&m->pool, mm_task, &qkv); /* with RoPE and the cache writes */
        prof_mark(m, P_PRODUCTS);
        if (run_attention(m, streams, l, (int)T, &m->a_embd)) /* with the quantization of its outputs */
            return -1;
        prof_mark(m, P_ATTENTION);
        mm_job o = {m, 1, {&L->wo}, {m->tmp}, {E}, &m->a_embd, (int)T, POST_RESIDUAL};
        pool_run(&m->pool, mm_task, &o);
        prof_mark(m, P_PRODUCTS);
        norm.norm = (const float *)L->ffn_norm.data;
        for_tokens(m, &norm);
        prof_mark(m, P_NORMS);
        mm_job gu = {m, 2, {&L->wg, &L->wu}, {m->hb, m->hb + T * F}, {F, F}, &m->a_embd, (int)T, POST_FFN};
        pool_run(&m->pool, mm_task, &gu); /* with SiLU and the quantization of its output */
        mm_job dn = {m, 1, {&L->wd}, {m->tmp}, {E}, &m->a_ff, (int)T, POST_RESIDUAL};
        pool_run(&m->pool, mm_task, &dn);
        prof_mark(m, P_PRODUCTS);
    }
    for (int i = 0; i < n; i++)
        streams[i]->n += cnt[i];
    return head_logits(m, n, streams, cnt, want_logits, logits, rows);
}

#include "gemma.inc"

/* lmz_eval and lmz_eval_rows: steps of at most LMZ_MAX_STEP tokens per stream */
static int eval_steps(lmz_model *m, int n, lmz_stream *const *streams, const int32_t *const *tokens,
                      const int *counts, float *logits, float *rows) {
    for (int i = 0; i < n; i++) {
        if (counts[i] < 1 || streams[i]->m != m)
            return -1;
        for (int k = 0; k < counts[i]; k++)
            if (tokens[i][k] < 0 || tokens[i][k] >= m->n_vocab)
                return -1;
    }
    int *cnt = malloc(sizeof(int) * (size_t)n * 2);
    const int32_t **tk = malloc(sizeof(*tk) * (size_t)n);
    float **rw = malloc(sizeof(*rw) * (size_t)n);
    if (!cnt || !tk || !rw) {
        free(cnt), free(tk), free(rw);
        return -1;
    }
    int *want = cnt + n;
    int rc = 0;
    size_t row0 = 0;
    pthread_mutex_lock(&m->eval_lock);
    for (int done = 0;; done += LMZ_MAX_STEP) {
        int any = 0;
        row0 = 0;
        for (int i = 0; i < n; i++) {
            int left = counts[i] - done;
            cnt[i] = left <= 0 ? 0 : left > LMZ_MAX_STEP ? LMZ_MAX_STEP : left;
            want[i] = left > 0 && left <= LMZ_MAX_STEP;
            tk[i] = tokens[i] + done;
            if (rows)
                rw[i] = rows + (row0 + (size_t)done) * (size_t)m->n_vocab;
            row0 += (size_t)counts[i];
            any |= cnt[i] > 0;
        }
        if (!any)
            break;
        rc = m->arch == ARCH_GEMMA3 ? gemma_step(m, n, streams, tk, cnt, want, logits, rows ? rw : NULL)
                                    : step(m, n, streams, tk, cnt, want, logits, rows ? rw : NULL);
        if (rc != 0)
            break;
    }
    pthread_mutex_unlock(&m->eval_lock);
    free(cnt), free(tk), free(rw);
    return rc;
}

int lmz_eval(lmz_model *m, int n, lmz_stream *const *streams, const int32_t *const *tokens, const int *counts,
             float *logits) {
    return eval_steps(m, n, streams, tokens, counts, logits, NULL);
}

int lmz_eval_rows(lmz_model *m, int n, lmz_stream *const *streams, const int32_t *const *tokens, const int *counts,
                  float *rows) {
    return eval_steps(m, n, streams, tokens, counts, NULL, rows);
}
