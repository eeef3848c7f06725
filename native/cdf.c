/* lmzip._cdf: model scores -> the range coder's integer distribution, fast.
 *
 * Implements the quantization rule of docs/format.md ("From scores to the coder's
 * distribution") bit for bit like the numpy reference in lmzip/cdf.py.  That is
 * only possible because the rule uses nothing but IEEE-754 double operations that
 * are correctly rounded everywhere (+, -, *, /, exact scaling by powers of two,
 * round-to-nearest-even) in a fixed order: no libm exp, no pairwise or vectorized
 * summation.  Build with -ffp-contract=off so that no a*b+c becomes a fused
 * multiply-add (which rounds once instead of twice).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

/* The rule, on n scores (float or double), writing q_i = freq_i - 1 as doubles
 * (what constriction's Categorical(perfect=False) takes: see lmzip/coding.py).
 * *top and *sum receive max(x) and the normalizer, for callers that want the
 * unquantized probabilities exp(x_i - top) / sum. */
static void quantize(const void *scores, int is_double, Py_ssize_t n, double *q, double *top, double *sum) {
    double *e = q; /* e_i is computed in place, then replaced by q_i */
    double m = -INFINITY;
    Py_ssize_t n_posinf = 0, best = 0;
    double best_x = -INFINITY;
    for (Py_ssize_t i = 0; i < n; i++) {
        double x = is_double ? ((const double *)scores)[i] : (double)((const float *)scores)[i];
        if (x != x)
            x = -INFINITY; /* NaN counts as -inf */
        e[i] = x;
        if (x > best_x) { /* first index of the largest score */
            best_x = x;
            best = i;
        }
        if (x == INFINITY)
            n_posinf++;
        else if (x > m)
            m = x;
    }
    if (n_posinf || m == -INFINITY) {
        /* +inf scores share the mass; with no finite score at all, uniform */
        for (Py_ssize_t i = 0; i < n; i++)
            e[i] = n_posinf ? (e[i] == INFINITY ? 1.0 : 0.0) : 1.0;
    } else {
        const uint64_t rounder_bits = to_bits(ROUNDER);
        for (Py_ssize_t i = 0; i < n; i++) {
            double y = e[i] - m;
            double keep = (double)(y >= UNDERFLOW); /* 0 below the cut, also for -inf */
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
            double v = p * from_bits((uint64_t)(ki + 1023) << 52); /* exact: k >= -1010 */
            e[i] = v * keep;
        }
    }
    double lane[LANES] = {0};
    Py_ssize_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            lane[j] += e[i + j];
    for (int j = 0; i + j < n; j++)
        lane[j] += e[i + j];
    double s = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    const double budget = (double)(TOTAL - n);
    const double scale = budget / s;
    for (Py_ssize_t i = 0; i < n; i++) {
        double v = e[i] * scale;
        double f = (v + TWO52) - TWO52; /* v rounded to an integer (0 <= v < 2^24) */
        q[i] = f - (double)(f > v);     /* floor */
    }
    double used_lane[LANES] = {0}; /* integers below 2^53: exact in any order */
    for (i = 0; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            used_lane[j] += q[i + j];
    for (int j = 0; i + j < n; j++)
        used_lane[j] += q[i + j];
    double used = 0.0;
    for (int j = 0; j < LANES; j++)
        used += used_lane[j];
    q[best] += budget - used;
    *top = m;
    *sum = s;
}

static PyObject *py_quantize(PyObject *self, PyObject *args) {
    PyObject *in_obj, *out_obj;
    Py_buffer in, out;
    if (!PyArg_ParseTuple(args, "OO", &in_obj, &out_obj))
        return NULL;
    if (PyObject_GetBuffer(in_obj, &in, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&in);
        return NULL;
    }
    PyObject *result = NULL;
    const char *fmt_in = in.format ? in.format : "B";
    const char *fmt_out = out.format ? out.format : "B";
    while (*fmt_in == '@' || *fmt_in == '=' || *fmt_in == '<') /* native little-endian only */
        fmt_in++;
    while (*fmt_out == '@' || *fmt_out == '=' || *fmt_out == '<')
        fmt_out++;
    int is_double;
    Py_ssize_t n;
    if (strcmp(fmt_in, "f") == 0) {
        is_double = 0;
        n = in.len / (Py_ssize_t)sizeof(float);
    } else if (strcmp(fmt_in, "d") == 0) {
        is_double = 1;
        n = in.len / (Py_ssize_t)sizeof(double);
    } else {
        PyErr_SetString(PyExc_TypeError, "scores must be a contiguous float32 or float64 buffer");
        goto done;
    }
    if (strcmp(fmt_out, "d") != 0 || out.len != n * (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_TypeError, "out must be a contiguous float64 buffer as long as scores");
        goto done;
    }
    if (n < 2 || n >= TOTAL / 2) {
        PyErr_Format(PyExc_ValueError, "vocabulary size %zd out of range", n);
        goto done;
    }
    double top, sum;
    Py_BEGIN_ALLOW_THREADS
    quantize(in.buf, is_double, n, (double *)out.buf, &top, &sum);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("(dd)", top, sum);
done:
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"quantize", py_quantize, METH_VARARGS,
     "quantize(scores, out) -> (max, sum)\n\n"
     "Write q_i = freq_i - 1 of the lmzip quantization rule into the float64 buffer\n"
     "out; scores is a float32 or float64 buffer of natural-log scores."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "lmzip._cdf", "Native CDF builder of lmzip (see lmzip/cdf.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__cdf(void) { return PyModule_Create(&module); }
