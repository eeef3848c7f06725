/* lmzip._adapt: online adaptation of the output layer on the model's final hidden state
 * (issue 20), deterministic on every machine.
 *
 * A stream learns a correction D_i (n_embd floats) of the output row of token i; the
 * mixed scores of the K best tokens get s_i += D_i . h, h the final normalized hidden
 * state the engine's output head read (lmz_stream_hidden).  After each coded token the
 * rows of those K tokens and of the coded token take one gradient step on the code
 * length -ln p(token) with the coder's own quantized p: D_j -= c p_j h for the K
 * selected tokens j (in selection order), then D_token += c h, with c = rate / (h . h)
 * (a normalized step: one step changes that context's score by at most `rate` nats).
 * With centering (0 < center < 1) h is first replaced by h - mu, mu a running mean of the
 * hidden states (the first h, then mu = f32(center * mu) + f32((1 - center) * h) after
 * each use, float32 with the two constants rounded to float32): the rows then learn
 * what is particular to a context rather than the direction all states share.
 *
 * Numerics (a file-format commitment, like docs/engine.md): the K best are the K
 * largest finite scores among ids 0..n_model-1, ties to the lower id, in decreasing
 * order; h . h and D_i . h are sums in double of exact float products, sequential in
 * index order; c = rate / hh in double; the update step is float32: cf = (float)(c * p)
 * (p = (q + 1) / 2^24 in double), then D_d = D_d - cf * h_d (two roundings; built with
 * -ffp-contract=off, never -ffast-math).  Only basic IEEE operations: the same bits on
 * any CPU, compiler and vector width (lanes run across independent d).
 *
 *   Rows(n_embd, n_model, k, rate, center=0.0)
 *     .apply(hidden float32[n_embd], scores float64[>= n_model])   adds the corrections
 *     .learn(token, q float64[>= n_model])                         one step (after apply)
 *     .rows, .bytes                                                rows allocated, memory
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__FAST_MATH__)
#error "lmzip._adapt must not be built with -ffast-math"
#endif

#define MAX_K 4096
#define MAX_EMBD 16384

typedef struct {
    PyObject_HEAD int E, n_model, K;
    double rate;
    float center, one_minus; /* centering (0: off) */
    float *mu;     /* [E] the running mean (centering) */
    int64_t seen;  /* hidden states seen */
    int32_t *idx;  /* [n_model] row of each token, -1 none */
    float *D;      /* [cap][E] */
    int n_rows, cap;
    float *h;      /* [E] the hidden state of the last apply */
    double hh;
    int32_t *top;  /* [K] the tokens selected by the last apply */
    double *topv;
    int n_top;
    int applied;
} RowsObject;

static void Rows_dealloc(RowsObject *self) {
    free(self->idx), free(self->D), free(self->h), free(self->top), free(self->topv), free(self->mu);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Rows_init(RowsObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"n_embd", "n_model", "k", "rate", "center", NULL};
    int E, n, K;
    double rate, center = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiid|d", kwlist, &E, &n, &K, &rate, &center))
        return -1;
    if (E < 1 || E > MAX_EMBD || n < 1 || K < 1 || K > MAX_K || K > n || !(rate >= 0.0 && rate <= 16.0) ||
        !(center >= 0.0 && center < 1.0)) {
        PyErr_SetString(PyExc_ValueError, "bad adaptation settings");
        return -1;
    }
    self->E = E, self->n_model = n, self->K = K, self->rate = rate;
    self->center = (float)center, self->one_minus = (float)(1.0 - center);
    self->mu = calloc((size_t)E, sizeof(float));
    self->idx = malloc(sizeof(int32_t) * (size_t)n);
    self->h = malloc(sizeof(float) * (size_t)E);
    self->top = malloc(sizeof(int32_t) * (size_t)K);
    self->topv = malloc(sizeof(double) * (size_t)K);
    if (!self->idx || !self->h || !self->top || !self->topv || !self->mu) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < n; i++)
        self->idx[i] = -1;
    return 0;
}

static float *row(RowsObject *a, int token) { /* NULL: out of memory */
    if (a->idx[token] >= 0)
        return a->D + (size_t)a->idx[token] * a->E;
    if (a->n_rows == a->cap) {
        int cap = a->cap ? a->cap * 2 : 256;
        float *D = realloc(a->D, sizeof(float) * (size_t)cap * a->E);
        if (!D)
            return NULL;
        a->D = D, a->cap = cap;
    }
    float *r = a->D + (size_t)a->n_rows * a->E;
    memset(r, 0, sizeof(float) * (size_t)a->E);
    a->idx[token] = a->n_rows++;
    return r;
}

static int get_buf(PyObject *o, Py_buffer *b, int writable, const char *fmt, Py_ssize_t min_items, const char *what) {
    if (PyObject_GetBuffer(o, b, (writable ? PyBUF_WRITABLE : 0) | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (strcmp(b->format, fmt) != 0 || b->len / b->itemsize < min_items) {
        PyErr_Format(PyExc_ValueError, "%s must be a contiguous %s array of at least %zd values", what,
                     fmt[0] == 'f' ? "float32" : "float64", min_items);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

static PyObject *Rows_apply(RowsObject *self, PyObject *args) {
    PyObject *ho, *so;
    if (!PyArg_ParseTuple(args, "OO", &ho, &so))
        return NULL;
    Py_buffer hb, sb;
    if (get_buf(ho, &hb, 0, "f", self->E, "hidden") < 0)
        return NULL;
    if (get_buf(so, &sb, 1, "d", self->n_model, "scores") < 0) {
        PyBuffer_Release(&hb);
        return NULL;
    }
    const int E = self->E, K = self->K, n = self->n_model;
    memcpy(self->h, hb.buf, sizeof(float) * (size_t)E);
    if (self->center > 0.0f) {
        float *h = self->h, *mu = self->mu;
        if (self->seen == 0)
            memcpy(mu, h, sizeof(float) * (size_t)E);
        for (int d = 0; d < E; d++) {
            float x = h[d];
            h[d] = x - mu[d];
            mu[d] = self->center * mu[d] + self->one_minus * x;
        }
    }
    self->seen++;
    double *s = sb.buf;
    const float *h = self->h;
    double hh = 0.0;
    for (int d = 0; d < E; d++)
        hh = hh + (double)h[d] * (double)h[d];
    self->hh = hh;
    /* the K largest finite scores, ties to the lower id (a later equal score never displaces) */
    int m = 0;
    int32_t *top = self->top;
    double *tv = self->topv;
    for (int i = 0; i < n; i++) {
        double v = s[i];
        if (!isfinite(v) || (m == K && !(v > tv[K - 1])))
            continue;
        int j = m < K ? m++ : K - 1;
        while (j > 0 && v > tv[j - 1]) {
            tv[j] = tv[j - 1], top[j] = top[j - 1];
            j--;
        }
        tv[j] = v, top[j] = i;
    }
    self->n_top = m;
    for (int k = 0; k < m; k++) {
        int r = self->idx[top[k]];
        if (r < 0)
            continue;
        const float *D = self->D + (size_t)r * E;
        double c = 0.0;
        for (int d = 0; d < E; d++)
            c = c + (double)D[d] * (double)h[d];
        s[top[k]] = s[top[k]] + c;
    }
    self->applied = 1;
    PyBuffer_Release(&hb);
    PyBuffer_Release(&sb);
    Py_RETURN_NONE;
}

static void axpy(float *D, float c, const float *h, int E) { /* D = D + c h, float32, elementwise */
    for (int d = 0; d < E; d++)
        D[d] = D[d] + c * h[d];
}

static PyObject *Rows_learn(RowsObject *self, PyObject *args) {
    int token;
    PyObject *qo;
    if (!PyArg_ParseTuple(args, "iO", &token, &qo))
        return NULL;
    if (!self->applied) {
        PyErr_SetString(PyExc_RuntimeError, "learn() without apply()");
        return NULL;
    }
    Py_buffer qb;
    if (get_buf(qo, &qb, 0, "d", self->n_model, "q") < 0)
        return NULL;
    const double *q = qb.buf;
    self->applied = 0;
    if (self->hh > 0.0 && self->rate > 0.0) {
        double c = self->rate / self->hh;
        for (int k = 0; k < self->n_top; k++) {
            double p = (q[self->top[k]] + 1.0) / 16777216.0; /* 2^24, exact */
            float *D = row(self, self->top[k]);
            if (!D)
                goto nomem;
            axpy(D, -(float)(c * p), self->h, self->E);
        }
        if (token >= 0 && token < self->n_model) { /* escapes are not the model's */
            float *D = row(self, token);
            if (!D)
                goto nomem;
            axpy(D, (float)c, self->h, self->E);
        }
    }
    PyBuffer_Release(&qb);
    Py_RETURN_NONE;
nomem:
    PyBuffer_Release(&qb);
    return PyErr_NoMemory();
}

static PyObject *Rows_get_rows(RowsObject *self, void *c) { return PyLong_FromLong(self->n_rows); }
static PyObject *Rows_get_bytes(RowsObject *self, void *c) {
    return PyLong_FromSize_t(sizeof(float) * (size_t)self->cap * self->E + sizeof(int32_t) * (size_t)self->n_model);
}

static PyMethodDef Rows_methods[] = {
    {"apply", (PyCFunction)Rows_apply, METH_VARARGS, "apply(hidden, scores): add the corrections to scores"},
    {"learn", (PyCFunction)Rows_learn, METH_VARARGS, "learn(token, q): one gradient step"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Rows_getset[] = {
    {"rows", (getter)Rows_get_rows, NULL, NULL, NULL},
    {"bytes", (getter)Rows_get_bytes, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RowsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "lmzip._adapt.Rows",
    .tp_basicsize = sizeof(RowsObject),
    .tp_dealloc = (destructor)Rows_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "online corrections of the output rows (see native/adapt.c)",
    .tp_methods = Rows_methods,
    .tp_getset = Rows_getset,
    .tp_init = (initproc)Rows_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_adapt", "online output-row adaptation", -1, NULL};

PyMODINIT_FUNC PyInit__adapt(void) {
    if (PyType_Ready(&RowsType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&moduledef);
    if (!mod)
        return NULL;
    Py_INCREF(&RowsType);
    PyModule_AddObject(mod, "Rows", (PyObject *)&RowsType);
    return mod;
}
