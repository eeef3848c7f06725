/* lmzip._cdf: model scores -> the range coder's integer distribution, fast.
 *
 * The Python face of the quantization rule (cdf_rule.h), bit for bit like the numpy
 * reference in lmzip/cdf.py.  Build with -ffp-contract=off (see cdf_rule.h).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "cdf_rule.h"

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

static PyObject *py_expect(PyObject *self, PyObject *args) {
    PyObject *q_obj, *x_obj;
    Py_buffer qb, xb;
    if (!PyArg_ParseTuple(args, "OO", &q_obj, &x_obj))
        return NULL;
    if (PyObject_GetBuffer(q_obj, &qb, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    if (PyObject_GetBuffer(x_obj, &xb, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&qb);
        return NULL;
    }
    PyObject *result = NULL;
    const char *fq = qb.format ? qb.format : "B", *fx = xb.format ? xb.format : "B";
    while (*fq == '@' || *fq == '=' || *fq == '<')
        fq++;
    while (*fx == '@' || *fx == '=' || *fx == '<')
        fx++;
    Py_ssize_t n = qb.len / (Py_ssize_t)sizeof(double);
    if (strcmp(fq, "d") != 0) {
        PyErr_SetString(PyExc_TypeError, "q must be a contiguous float64 buffer");
    } else if (strcmp(fx, "f") == 0 && xb.len == n * (Py_ssize_t)sizeof(float)) {
        double r;
        Py_BEGIN_ALLOW_THREADS
        r = expect_step_f((const double *)qb.buf, (const float *)xb.buf, NULL, 0.0, n);
        Py_END_ALLOW_THREADS
        result = PyFloat_FromDouble(r);
    } else if (strcmp(fx, "d") == 0 && xb.len == n * (Py_ssize_t)sizeof(double)) {
        double r;
        Py_BEGIN_ALLOW_THREADS
        r = expect_step_d((const double *)qb.buf, (const double *)xb.buf, NULL, 0.0, n);
        Py_END_ALLOW_THREADS
        result = PyFloat_FromDouble(r);
    } else {
        PyErr_SetString(PyExc_TypeError, "x must be a contiguous float32 or float64 buffer as long as q");
    }
    PyBuffer_Release(&qb);
    PyBuffer_Release(&xb);
    return result;
}

/* The symbol i whose interval [sum(q[:i]) + i, sum(q[:i + 1]) + i + 1) holds quantile
 * (q_i = freq_i - 1, integers: every sum exact in any order), scanning blocks of 64
 * (their sums in 8 vector lanes) and then the block that holds it. */
DISPATCH static Py_ssize_t find_symbol(const double *q, Py_ssize_t n, double quantile, double *below) {
    double cum = 0.0; /* sum(q[:i]) + i, where symbol i's interval starts */
    Py_ssize_t i = 0;
    for (; i + 64 <= n; i += 64) {
        double b = 64.0;
#if defined(__GNUC__) && !defined(LMZIP_SCALAR)
        v8d acc = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
        for (int k = 0; k < 64; k += 8) {
            v8d v;
            memcpy(&v, q + i + k, sizeof v);
            acc += v;
        }
        for (int j = 0; j < 8; j++)
            b += acc[j];
#else
        for (int k = 0; k < 64; k++)
            b += q[i + k];
#endif
        if (cum + b > quantile)
            break;
        cum += b;
    }
    for (; i < n; i++) {
        double f = q[i] + 1.0;
        if (cum + f > quantile)
            break;
        cum += f;
    }
    *below = cum - (double)i;
    return i;
}

static PyObject *py_find(PyObject *self, PyObject *args) {
    PyObject *q_obj;
    double quantile;
    Py_buffer qb;
    if (!PyArg_ParseTuple(args, "Od", &q_obj, &quantile))
        return NULL;
    if (PyObject_GetBuffer(q_obj, &qb, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    PyObject *result = NULL;
    const char *fmt = qb.format ? qb.format : "B";
    while (*fmt == '@' || *fmt == '=' || *fmt == '<')
        fmt++;
    if (strcmp(fmt, "d") != 0) {
        PyErr_SetString(PyExc_TypeError, "q must be a contiguous float64 buffer");
        goto done;
    }
    Py_ssize_t n = qb.len / (Py_ssize_t)sizeof(double), i;
    double below;
    Py_BEGIN_ALLOW_THREADS
    i = find_symbol((const double *)qb.buf, n, quantile, &below);
    Py_END_ALLOW_THREADS
    if (i >= n)
        PyErr_SetString(PyExc_ValueError, "the quantile is past the distribution's total");
    else
        result = Py_BuildValue("(nd)", i, below);
done:
    PyBuffer_Release(&qb);
    return result;
}

static PyMethodDef methods[] = {
    {"quantize", py_quantize, METH_VARARGS,
     "quantize(scores, out) -> (max, sum)\n\n"
     "Write q_i = freq_i - 1 of the lmzip quantization rule into the float64 buffer\n"
     "out; scores is a float32 or float64 buffer of natural-log scores."},
    {"expect", py_expect, METH_VARARGS,
     "expect(q, x) -> float\n\n"
     "sum of (q_i + 1) * x_i over the finite x_i, in the rule's fixed 8-lane order."},
    {"find", py_find, METH_VARARGS,
     "find(q, quantile) -> (symbol, below)\n\n"
     "The symbol whose interval of the coder's 2**24 (q_i + 1 wide, in order) holds quantile,\n"
     "and below = sum(q[:symbol])."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "lmzip._cdf", "Native CDF builder of lmzip (see lmzip/cdf.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__cdf(void) { return PyModule_Create(&module); }
