/* The engine's own scalar kernels, exported for tests (tests/test_gpu_kernels.py).
 *
 * Includes engine.c itself, so the tests always compare against the engine's current
 * definitions (docs/engine.md), never a copy.  Not part of the package: the tests build
 * it with `gcc -O2 -ffp-contract=off -shared -fPIC` and call it through ctypes.
 */
#include "engine.c"

static void probe_init(void) {
    if (!H2F[0x3c00])
        for (int i = 0; i < 65536; i++)
            H2F[i] = h2f((uint16_t)i);
}

void probe_quantize_row(const float *x, int K, int8_t *q, float *s, float *sa, int32_t *sum) {
    quantize_row(x, K, q, s, sa, sum);
}

/* out[t][r] for T tokens of quantized activations (q[T][K], s/sa/sum[T][K/32]), rows in G groups of 16 */
static void probe_mm(mm_fn f, const uint8_t *W, int K, int G, int8_t *q, float *s, float *sa, int32_t *sum, int T,
                     float *out) {
    probe_init();
    act a = {q, s, sa, sum};
    f(W, K, 0, G, &a, 0, T, out, 16 * G);
}

void probe_mm_q4(const uint8_t *W, int K, int G, int8_t *q, float *s, float *sa, int32_t *sum, int T, float *out) {
    probe_mm(mm_q4_scalar, W, K, G, q, s, sa, sum, T, out);
}

void probe_mm_q8(const uint8_t *W, int K, int G, int8_t *q, float *s, float *sa, int32_t *sum, int T, float *out) {
    probe_mm(mm_q8_scalar, W, K, G, q, s, sa, sum, T, out);
}

void probe_rmsnorm(float *y, const float *x, const float *w, int n, float eps) { rmsnorm(y, x, w, n, eps); }

void probe_exp_f(const float *x, float *y, int n) {
    for (int i = 0; i < n; i++)
        y[i] = exp_f(x[i]);
}

/* SiLU times the up projection (the engine's silu_mul_scalar): y = (g / (1 + exp(-g))) * u */
void probe_silu_mul(const float *g, const float *u, float *y, int n) {
    memcpy(y, g, sizeof(float) * (size_t)n);
    silu_mul_scalar(y, u, n);
}

void probe_f2h(const float *x, uint16_t *y, int n) {
    for (int i = 0; i < n; i++)
        y[i] = f2h(x[i]);
}

double probe_exp_d(double x) { return exp_d(x); }
double probe_log_d(double x) { return log_d(x); }
void probe_sincos_d(const double *a, double *s, double *c, int n) {
    for (int i = 0; i < n; i++)
        sincos_d(a[i], s + i, c + i);
}

/* the RoPE of a 64-value head at table (cs, sn), in place */
void probe_rope(float *x, const float *cs, const float *sn) { rope(x, cs, sn); }

/* inv_freq[i] = exp_d(-(2i/64) log_d(base)), i < 32, as lmz_load computes it */
void probe_inv_freq(double base, double *out) {
    double lb = log_d(base);
    for (int i = 0; i < 32; i++)
        out[i] = exp_d(-((double)(2 * i) / 64.0) * lb);
}

/* the attention of one token over one KV head for its G query heads (attn_scalar, the
 * definition): queries G x D (rotated, scaled), the sink's key already rotated (read only
 * when use_sink: Gemma's local layers drop it), the ring in the engine's layouts (keys
 * [C/16][D][16], values [D/16][C][16]); out G x D */
void probe_attn(int G, int D, int use_sink, const float *q, const float *sink_k, const float *sink_v,
                const uint16_t *kc, const uint16_t *vc, int C, int64_t lo, int n_ring, float *out) {
    probe_init();
    attn_args a = {G, D, C, use_sink, n_ring, lo, q, sink_k, sink_v, kc, vc, out};
    float *work = malloc(sizeof(float) * attn_work_floats(G, C));
    attn_scalar(&a, work);
    free(work);
}

/* Gemma 3 (gemma.inc and its kernels in engine.c) */

/* inv_freq[i] = exp_d(-(2i/D) log_d(base)), i < D/2, as lmz_load computes Gemma's */
void probe_inv_freq_dim(double base, int D, double *out) {
    double lb = log_d(base);
    for (int i = 0; i < D / 2; i++)
        out[i] = exp_d(-((double)(2 * i) / (double)D) * lb);
}

/* NEOX RoPE of a head of 2 * half values at table (cs, sn), in place */
void probe_rope_neox(float *x, const float *cs, const float *sn, int half) { rope_neox(x, cs, sn, half); }

/* GELU times the up projection (gelu_mul_scalar): y = gelu(g) * u */
void probe_gelu_mul(const float *g, const float *u, float *y, int n) {
    memcpy(y, g, sizeof(float) * (size_t)n);
    gelu_mul_scalar(y, u, n);
}

/* out[t][r] of a K16 matrix (the weights file's bytes: rows x K int8, then the scales and
 * mins [rows][K/16] f32) for T tokens of quantized activations */
void probe_mm_k16(const uint8_t *W, int rows, int K, int8_t *q, float *s, float *sa, int32_t *sum, int T,
                  float *out) {
    tensor t = {T_K16, rows, K, W};
    act a = {q, s, sa, sum};
    mm_k16_scalar(&t, 0, rows / 16, &a, T, out, rows);
}
