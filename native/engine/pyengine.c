/* lmzip._engine: the Python binding of the portable engine (native/engine/engine.h).
 *
 *   Engine(path, threads=1, isa="")   load a weights file
 *     .n_vocab, .bos, .isa, .threads
 *     .new_stream(context) -> int      a stream handle
 *     .free_stream(handle)
 *     .stream_pos(handle) -> int       tokens evaluated so far
 *     .stream_bytes(handle) -> int     its cache memory
 *     .stream_hidden(handle, out)      the final normalized hidden state (n_embd float32)
 *                                      of its last evaluation into a writable buffer
 *     .eval(handles, tokens, out)      tokens: a list (one per handle) of lists of ids;
 *                                      out: a writable float32 buffer of
 *                                      len(handles) * n_vocab: each stream's logits after
 *                                      its last token.  The GIL is released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "engine.h"

typedef struct {
    PyObject_HEAD lmz_model *m;
} EngineObject;

static void Engine_dealloc(EngineObject *self) {
    if (self->m)
        lmz_free(self->m);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Engine_init(EngineObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", "threads", "isa", NULL};
    const char *path, *isa = "";
    int threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|is", kwlist, &path, &threads, &isa))
        return -1;
    char err[512];
    lmz_model *m;
    Py_BEGIN_ALLOW_THREADS m = lmz_load(path, threads, isa, err, sizeof err);
    Py_END_ALLOW_THREADS if (!m) {
        PyErr_SetString(PyExc_RuntimeError, err);
        return -1;
    }
    if (self->m)
        lmz_free(self->m);
    self->m = m;
    return 0;
}

static PyObject *Engine_new_stream(EngineObject *self, PyObject *args) {
    int context;
    if (!PyArg_ParseTuple(args, "i", &context))
        return NULL;
    lmz_stream *s = lmz_stream_new(self->m, context);
    if (!s)
        return PyErr_Format(PyExc_ValueError, "cannot make a stream of context %d (16..65536; memory?)", context);
    return PyLong_FromVoidPtr(s);
}

static lmz_stream *handle(PyObject *o) {
    void *p = PyLong_AsVoidPtr(o);
    if (!p && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "null stream handle");
    return p;
}

static PyObject *Engine_free_stream(EngineObject *self, PyObject *arg) {
    lmz_stream *s = handle(arg);
    if (!s)
        return NULL;
    lmz_stream_free(s);
    Py_RETURN_NONE;
}

static PyObject *Engine_stream_pos(EngineObject *self, PyObject *arg) {
    lmz_stream *s = handle(arg);
    return s ? PyLong_FromLongLong(lmz_stream_pos(s)) : NULL;
}

static PyObject *Engine_stream_bytes(EngineObject *self, PyObject *arg) {
    lmz_stream *s = handle(arg);
    return s ? PyLong_FromSize_t(lmz_stream_bytes(s)) : NULL;
}

/* eval (rows = 0: the logits after each stream's last token, one row per stream) and
 * eval_rows (rows = 1: after every token, sum of the counts rows) */
static PyObject *eval_common(EngineObject *self, PyObject *args, int rows) {
    PyObject *handles, *tokens;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "OOw*", &handles, &tokens, &out))
        return NULL;
    PyObject *hs = PySequence_Fast(handles, "handles must be a sequence");
    PyObject *ts = hs ? PySequence_Fast(tokens, "tokens must be a sequence") : NULL;
    PyObject *result = NULL;
    lmz_stream **st = NULL;
    int32_t **tp = NULL;
    int *cnt = NULL;
    Py_ssize_t n = 0;
    if (!ts)
        goto done;
    n = PySequence_Fast_GET_SIZE(hs);
    int V = lmz_n_vocab(self->m);
    if (PySequence_Fast_GET_SIZE(ts) != n) {
        PyErr_SetString(PyExc_ValueError, "one token list per stream");
        goto done;
    }
    if (!rows && out.len < (Py_ssize_t)(n * V * sizeof(float))) {
        PyErr_SetString(PyExc_ValueError, "the output buffer is too small");
        goto done;
    }
    st = calloc((size_t)n + 1, sizeof *st);
    tp = calloc((size_t)n + 1, sizeof *tp);
    cnt = calloc((size_t)n + 1, sizeof *cnt);
    if (!st || !tp || !cnt) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!(st[i] = handle(PySequence_Fast_GET_ITEM(hs, i))))
            goto done;
        PyObject *tl = PySequence_Fast(PySequence_Fast_GET_ITEM(ts, i), "tokens[i] must be a sequence");
        if (!tl)
            goto done;
        Py_ssize_t k = PySequence_Fast_GET_SIZE(tl);
        if (k < 1 || k > INT32_MAX) {
            Py_DECREF(tl);
            PyErr_SetString(PyExc_ValueError, "every stream needs at least one token");
            goto done;
        }
        tp[i] = malloc(sizeof(int32_t) * (size_t)k);
        cnt[i] = (int)k;
        for (Py_ssize_t j = 0; j < k; j++) {
            long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(tl, j));
            if (v == -1 && PyErr_Occurred()) {
                Py_DECREF(tl);
                goto done;
            }
            if (v < 0 || v >= V) {
                Py_DECREF(tl);
                PyErr_Format(PyExc_ValueError, "token %ld out of range", v);
                goto done;
            }
            tp[i][j] = (int32_t)v;
        }
        Py_DECREF(tl);
    }
    if (rows) {
        Py_ssize_t total = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            total += cnt[i];
        if (out.len / (Py_ssize_t)sizeof(float) / V < total) {
            PyErr_SetString(PyExc_ValueError, "the output buffer is too small (one row per token)");
            goto done;
        }
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = rows ? lmz_eval_rows(self->m, (int)n, st, (const int32_t *const *)tp, cnt,
                                                     (float *)out.buf)
                                     : lmz_eval(self->m, (int)n, st, (const int32_t *const *)tp, cnt, (float *)out.buf);
    Py_END_ALLOW_THREADS if (rc != 0) {
        PyErr_SetString(PyExc_RuntimeError, "engine evaluation failed");
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (tp)
        for (Py_ssize_t i = 0; i < n; i++)
            free(tp[i]);
    free(st), free(tp), free(cnt);
    Py_XDECREF(hs);
    Py_XDECREF(ts);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *Engine_eval(EngineObject *self, PyObject *args) { return eval_common(self, args, 0); }
static PyObject *Engine_eval_rows(EngineObject *self, PyObject *args) { return eval_common(self, args, 1); }

static PyObject *Engine_stream_hidden(EngineObject *self, PyObject *args) {
    PyObject *h;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "Ow*", &h, &out))
        return NULL;
    lmz_stream *s = handle(h);
    int E = lmz_n_embd(self->m);
    if (s && out.len < (Py_ssize_t)(E * sizeof(float))) {
        PyErr_SetString(PyExc_ValueError, "the output buffer is too small");
        s = NULL;
    }
    if (s)
        memcpy(out.buf, lmz_stream_hidden(s), (size_t)E * sizeof(float));
    PyBuffer_Release(&out);
    if (!s)
        return NULL;
    Py_RETURN_NONE;
}

/* profile(enable) -> {phase: seconds} since the last call; switches the timers on or off */
static PyObject *Engine_profile(EngineObject *self, PyObject *arg) {
    int enable = PyObject_IsTrue(arg);
    if (enable < 0)
        return NULL;
    double sec[LMZ_PROF_PHASES];
    int n = lmz_profile(self->m, enable, sec);
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < n; i++) {
        PyObject *v = PyFloat_FromDouble(sec[i]);
        if (!v || PyDict_SetItemString(d, lmz_profile_name(i), v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *Engine_get_n_embd(EngineObject *self, void *c) { return PyLong_FromLong(lmz_n_embd(self->m)); }
static PyObject *Engine_get_n_vocab(EngineObject *self, void *c) { return PyLong_FromLong(lmz_n_vocab(self->m)); }
static PyObject *Engine_get_bos(EngineObject *self, void *c) { return PyLong_FromLong(lmz_bos(self->m)); }
static PyObject *Engine_get_isa(EngineObject *self, void *c) { return PyUnicode_FromString(lmz_isa(self->m)); }
static PyObject *Engine_get_threads(EngineObject *self, void *c) { return PyLong_FromLong(lmz_threads(self->m)); }

static PyMethodDef Engine_methods[] = {
    {"new_stream", (PyCFunction)Engine_new_stream, METH_VARARGS, "new_stream(context) -> handle"},
    {"free_stream", (PyCFunction)Engine_free_stream, METH_O, "free_stream(handle)"},
    {"stream_pos", (PyCFunction)Engine_stream_pos, METH_O, "tokens evaluated by a stream"},
    {"stream_bytes", (PyCFunction)Engine_stream_bytes, METH_O, "cache bytes of a stream"},
    {"eval", (PyCFunction)Engine_eval, METH_VARARGS, "eval(handles, tokens, out)"},
    {"eval_rows", (PyCFunction)Engine_eval_rows, METH_VARARGS,
     "eval_rows(handles, tokens, out): the logits after every token, out[sum of the counts, n_vocab] in order"},
    {"stream_hidden", (PyCFunction)Engine_stream_hidden, METH_VARARGS,
     "stream_hidden(handle, out): the final normalized hidden state (n_embd float32) of its last evaluation"},
    {"profile", (PyCFunction)Engine_profile, METH_O,
     "profile(enable) -> {phase: seconds} of the forward pass since the last call (wall time; then reset); "
     "enable switches the timers on or off"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Engine_getset[] = {
    {"n_vocab", (getter)Engine_get_n_vocab, NULL, NULL, NULL},
    {"n_embd", (getter)Engine_get_n_embd, NULL, NULL, NULL},
    {"bos", (getter)Engine_get_bos, NULL, NULL, NULL},
    {"isa", (getter)Engine_get_isa, NULL, NULL, NULL},
    {"threads", (getter)Engine_get_threads, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "lmzip._engine.Engine",
    .tp_basicsize = sizeof(EngineObject),
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "the portable engine: a loaded weights file",
    .tp_methods = Engine_methods,
    .tp_getset = Engine_getset,
    .tp_init = (initproc)Engine_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_engine", "lmzip's portable inference engine", -1,
                                       NULL};

PyMODINIT_FUNC PyInit__engine(void) {
    if (PyType_Ready(&EngineType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&moduledef);
    if (!mod)
        return NULL;
    Py_INCREF(&EngineType);
    PyModule_AddObject(mod, "Engine", (PyObject *)&EngineType);
    PyModule_AddIntConstant(mod, "NUMERICS", LMZ_ENGINE_NUMERICS);
    PyModule_AddIntConstant(mod, "FORMAT", LMZ_ENGINE_FORMAT);
    PyModule_AddIntConstant(mod, "MAX_STEP", LMZ_MAX_STEP);
    return mod;
}
