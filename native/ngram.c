/* lmzip._ngram: the n-gram and match statistics of one stream of tokens, in C.
 *
 * The same statistics, features and guesses as lmzip/predictors/ngram.py's NGramStats
 * (the reference; its docstrings define them), bit for bit: counts are integers, every
 * feature value is ln_table[count] + (ln_table[V - u] - ln_table[u]) with the table
 * handed in by Python, and successors keep the order in which they were first seen (a
 * Python dict's order), so the features list the same tokens in the same order.
 *
 * Contexts and repeats are found through open-addressing hash tables whose keys are
 * checked token by token against the history: no collision can change a result.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define COUNT_BUCKETS 4
#define MATCH_BUCKETS 4
#define GUESS_COUNTS 8
#define SURE_MATCH 16
#define MAX_MATCH 400
#define MAX_COUNT 65535
#define MAX_ORDERS 32

typedef struct {
    int32_t token;
    uint32_t count;
} succ_t;

typedef struct {
    Py_ssize_t end; /* the context is history[end - k : end] (k: its order) */
    int64_t total;  /* increments of its successors' counts */
    succ_t *succ;   /* in the order first seen */
    int32_t n, cap;
    int32_t order; /* index into orders */
} ctx_t;

/* open addressing: slots hold index + 1 (0: empty) */
typedef struct {
    int64_t *slot;
    uint64_t *key; /* the full hash, to skip most token comparisons */
    size_t mask, used;
} table_t;

typedef struct {
    PyObject_HEAD
    int64_t vocab;
    int n_orders;
    int orders[MAX_ORDERS];
    int longest_first[MAX_ORDERS];
    int match_min;
    int32_t *hist;
    Py_ssize_t len, hist_cap;
    ctx_t *ctx;
    Py_ssize_t n_ctx, ctx_cap;
    table_t contexts;   /* (order, context tokens) -> ctx index */
    table_t successors; /* (ctx index, token) -> index in its succ */
    table_t positions;  /* last match_min tokens -> history length after them */
    Py_ssize_t match_ptr, match_len;
    Py_buffer ln_buf; /* ln_table, shared with every other stream (held, not copied) */
    const double *ln; /* ln[c] for 0 <= c < n_ln */
    Py_ssize_t n_ln;
} Stats;

static inline uint64_t mix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static uint64_t hash_tokens(uint64_t seed, const int32_t *t, int k) {
    uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ULL);
    for (int i = 0; i < k; i++)
        h = mix64(h ^ (uint32_t)t[i]);
    return h;
}

static int table_init(table_t *t, size_t size) {
    t->slot = PyMem_Calloc(size, sizeof *t->slot);
    t->key = PyMem_Calloc(size, sizeof *t->key);
    t->mask = size - 1;
    t->used = 0;
    return t->slot && t->key ? 0 : -1;
}

static void table_free(table_t *t) {
    PyMem_Free(t->slot);
    PyMem_Free(t->key);
    t->slot = NULL;
    t->key = NULL;
}

/* insert (hash, value) where no equal key is (the caller looked first); grows at half full */
static int table_put(table_t *t, uint64_t h, int64_t value) {
    if (2 * (t->used + 1) > t->mask + 1) {
        table_t bigger;
        if (table_init(&bigger, 2 * (t->mask + 1)) < 0) {
            table_free(&bigger);
            return -1;
        }
        for (size_t i = 0; i <= t->mask; i++)
            if (t->slot[i]) {
                size_t j = t->key[i] & bigger.mask;
                while (bigger.slot[j])
                    j = (j + 1) & bigger.mask;
                bigger.slot[j] = t->slot[i];
                bigger.key[j] = t->key[i];
            }
        bigger.used = t->used;
        table_free(t);
        *t = bigger;
    }
    size_t j = h & t->mask;
    while (t->slot[j])
        j = (j + 1) & t->mask;
    t->slot[j] = value + 1;
    t->key[j] = h;
    t->used++;
    return 0;
}

/* the tokens ending at history[end] equal the latest k tokens */
static inline int same_tail(const Stats *s, Py_ssize_t end, int k) {
    return memcmp(s->hist + end - k, s->hist + s->len - k, (size_t)k * sizeof(int32_t)) == 0;
}

/* the context of order index j ending now, or -1; *h receives its hash */
static Py_ssize_t find_context(const Stats *s, int j, uint64_t *h) {
    int k = s->orders[j];
    *h = hash_tokens((uint64_t)j, s->hist + s->len - k, k);
    for (size_t i = *h & s->contexts.mask; s->contexts.slot[i]; i = (i + 1) & s->contexts.mask) {
        if (s->contexts.key[i] != *h)
            continue;
        Py_ssize_t c = (Py_ssize_t)s->contexts.slot[i] - 1;
        if (s->ctx[c].order == j && same_tail(s, s->ctx[c].end, k))
            return c;
    }
    return -1;
}

static inline uint64_t succ_hash(Py_ssize_t c, int32_t token) {
    return mix64(((uint64_t)c << 32) ^ (uint32_t)token ^ 0x5bd1e995ULL);
}

static Py_ssize_t find_successor(const Stats *s, Py_ssize_t c, int32_t token, uint64_t *h) {
    *h = succ_hash(c, token);
    for (size_t i = *h & s->successors.mask; s->successors.slot[i]; i = (i + 1) & s->successors.mask) {
        if (s->successors.key[i] != *h)
            continue;
        Py_ssize_t k = (Py_ssize_t)s->successors.slot[i] - 1;
        if (s->ctx[c].succ[k].token == token)
            return k;
    }
    return -1;
}

/* the history position after the last earlier occurrence of the latest match_min tokens, or -1 */
static Py_ssize_t find_position(const Stats *s, uint64_t *h) {
    int n = s->match_min;
    *h = hash_tokens(0xabcdefULL, s->hist + s->len - n, n);
    for (size_t i = *h & s->positions.mask; s->positions.slot[i]; i = (i + 1) & s->positions.mask) {
        if (s->positions.key[i] != *h)
            continue;
        Py_ssize_t p = (Py_ssize_t)s->positions.slot[i] - 1;
        if (same_tail(s, p, n))
            return (Py_ssize_t)i; /* the slot: its value is updated in place */
    }
    return -1;
}

static int count_bucket(int64_t n) { return n < 2 ? 0 : n < 4 ? 1 : n < 16 ? 2 : 3; }
static int match_bucket(Py_ssize_t len) { return len < 8 ? 0 : len < 16 ? 1 : len < 32 ? 2 : 3; }

/* ------------------------------------------------------------------ update */

static int append_history(Stats *s, int32_t token) {
    if (s->len == s->hist_cap) {
        Py_ssize_t cap = s->hist_cap ? 2 * s->hist_cap : 1024;
        int32_t *h = PyMem_Realloc(s->hist, (size_t)cap * sizeof *h);
        if (h == NULL)
            return -1;
        s->hist = h;
        s->hist_cap = cap;
    }
    s->hist[s->len++] = token;
    return 0;
}

static int count(Stats *s, int j, int32_t token) {
    uint64_t h;
    Py_ssize_t c = find_context(s, j, &h);
    if (c < 0) {
        if (s->n_ctx == s->ctx_cap) {
            Py_ssize_t cap = s->ctx_cap ? 2 * s->ctx_cap : 1024;
            ctx_t *more = PyMem_Realloc(s->ctx, (size_t)cap * sizeof *more);
            if (more == NULL)
                return -1;
            s->ctx = more;
            s->ctx_cap = cap;
        }
        c = s->n_ctx;
        s->ctx[c] = (ctx_t){s->len, 0, NULL, 0, 0, j};
        if (table_put(&s->contexts, h, c) < 0)
            return -1;
        s->n_ctx++;
    }
    ctx_t *x = &s->ctx[c];
    Py_ssize_t k = find_successor(s, c, token, &h);
    if (k < 0) {
        if (x->n == x->cap) {
            int32_t cap = x->cap ? 2 * x->cap : 2;
            succ_t *more = PyMem_Realloc(x->succ, (size_t)cap * sizeof *more);
            if (more == NULL)
                return -1;
            x->succ = more;
            x->cap = cap;
        }
        k = x->n;
        x->succ[k] = (succ_t){token, 0};
        if (table_put(&s->successors, h, k) < 0)
            return -1;
        x->n++;
    }
    if (x->succ[k].count < MAX_COUNT) {
        x->succ[k].count++;
        x->total++;
    }
    return 0;
}

static int update_match(Stats *s, int32_t token) {
    if (s->match_ptr >= 0 && s->hist[s->match_ptr] == token) {
        s->match_ptr++;
        s->match_len = s->match_len + 1 < MAX_MATCH ? s->match_len + 1 : MAX_MATCH;
    } else {
        s->match_ptr = -1;
        s->match_len = 0;
    }
    if (append_history(s, token) < 0)
        return -1;
    int n = s->match_min;
    if (s->len < n)
        return 0;
    uint64_t h;
    Py_ssize_t slot = find_position(s, &h);
    if (s->match_ptr < 0 && slot >= 0) {
        Py_ssize_t found = (Py_ssize_t)s->positions.slot[slot] - 1;
        Py_ssize_t length = n;
        while (length < MAX_MATCH && found - length - 1 >= 0 &&
               s->hist[found - length - 1] == s->hist[s->len - length - 1])
            length++;
        s->match_ptr = found;
        s->match_len = length;
    }
    if (slot >= 0)
        s->positions.slot[slot] = s->len + 1; /* the key's tokens now end here */
    else if (table_put(&s->positions, h, s->len) < 0)
        return -1;
    return 0;
}

static PyObject *Stats_update(Stats *s, PyObject *arg) {
    long token = PyLong_AsLong(arg);
    if (token == -1 && PyErr_Occurred())
        return NULL;
    if (token < 0 || token >= s->vocab) {
        PyErr_Format(PyExc_ValueError, "token %ld outside the vocabulary", token);
        return NULL;
    }
    for (int j = 0; j < s->n_orders; j++)
        if (s->len >= s->orders[j] && count(s, j, (int32_t)token) < 0)
            return PyErr_NoMemory();
    if (s->match_min ? update_match(s, (int32_t)token) < 0 : append_history(s, (int32_t)token) < 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ features, guesses */

static void match_prediction(const Stats *s, long *token, Py_ssize_t *length) {
    if (!s->match_min || s->match_ptr < 0) {
        *token = -1;
        *length = 0;
    } else {
        *token = s->hist[s->match_ptr];
        *length = s->match_len;
    }
}

/* (slots, bounds, tokens bytes (int64), values bytes (float64)): feature f is slot
 * slots[f] with tokens[bounds[f - 1]:bounds[f]] (from 0 for the first) */
static PyObject *Stats_features_flat(Stats *s, PyObject *unused) {
    Py_ssize_t found[MAX_ORDERS];
    Py_ssize_t total = 0;
    for (int j = 0; j < s->n_orders; j++) {
        found[j] = -1;
        if (s->len < s->orders[j])
            continue;
        uint64_t h;
        found[j] = find_context(s, j, &h);
        if (found[j] >= 0)
            total += s->ctx[found[j]].n;
    }
    long predicted;
    Py_ssize_t length;
    match_prediction(s, &predicted, &length);
    total += predicted >= 0;
    PyObject *toks = PyBytes_FromStringAndSize(NULL, total * 8);
    PyObject *vals = PyBytes_FromStringAndSize(NULL, total * 8);
    PyObject *slots = PyList_New(0), *bounds = PyList_New(0);
    if (!toks || !vals || !slots || !bounds)
        goto fail;
    int64_t *t = (int64_t *)PyBytes_AS_STRING(toks);
    double *v = (double *)PyBytes_AS_STRING(vals);
    Py_ssize_t at = 0;
    for (int j = 0; j <= s->n_orders; j++) {
        int slot;
        if (j < s->n_orders) {
            if (found[j] < 0)
                continue;
            const ctx_t *x = &s->ctx[found[j]];
            Py_ssize_t u = x->n;
            if (s->vocab - u >= s->n_ln || u >= s->n_ln) {
                PyErr_SetString(PyExc_ValueError, "the ln table is too short for this vocabulary");
                goto fail;
            }
            double base = s->ln[s->vocab - u] - s->ln[u]; /* as in ngram.py */
            for (Py_ssize_t i = 0; i < u; i++) {
                t[at + i] = x->succ[i].token;
                v[at + i] = s->ln[x->succ[i].count] + base;
            }
            slot = j * COUNT_BUCKETS + count_bucket(x->total);
            at += u;
        } else {
            if (predicted < 0)
                break;
            t[at] = predicted;
            v[at] = 1.0;
            slot = s->n_orders * COUNT_BUCKETS + match_bucket(length);
            at += 1;
        }
        PyObject *a = PyLong_FromLong(slot), *b = PyLong_FromSsize_t(at);
        int bad = !a || !b || PyList_Append(slots, a) < 0 || PyList_Append(bounds, b) < 0;
        Py_XDECREF(a);
        Py_XDECREF(b);
        if (bad)
            goto fail;
    }
    return Py_BuildValue("(NNNN)", slots, bounds, toks, vals);
fail:
    Py_XDECREF(toks);
    Py_XDECREF(vals);
    Py_XDECREF(slots);
    Py_XDECREF(bounds);
    return NULL;
}

static PyObject *Stats_match_prediction(Stats *s, PyObject *unused) {
    long token;
    Py_ssize_t length;
    match_prediction(s, &token, &length);
    return Py_BuildValue("(ln)", token, length);
}

static PyObject *Stats_guess(Stats *s, PyObject *unused) {
    long predicted;
    Py_ssize_t length;
    match_prediction(s, &predicted, &length);
    long match_situation = (long)s->n_orders * GUESS_COUNTS + match_bucket(length);
    if (predicted >= 0 && length >= SURE_MATCH)
        return Py_BuildValue("(ll)", predicted, match_situation);
    long token = -1, situation = -1;
    for (int i = 0; i < s->n_orders; i++) {
        int j = s->longest_first[i];
        if (s->len < s->orders[j])
            continue;
        uint64_t h;
        Py_ssize_t c = find_context(s, j, &h);
        if (c >= 0 && s->ctx[c].n > 0) {
            if (s->ctx[c].n > 1)
                return Py_BuildValue("(ll)", -1L, -1L);
            uint32_t n = s->ctx[c].succ[0].count;
            token = s->ctx[c].succ[0].token;
            situation = (long)j * GUESS_COUNTS + (long)(n < GUESS_COUNTS ? n : GUESS_COUNTS) - 1;
            break;
        }
    }
    if (predicted >= 0) {
        if (token < 0)
            return Py_BuildValue("(ll)", predicted, match_situation);
        if (predicted != token)
            return Py_BuildValue("(ll)", -1L, -1L);
    }
    return Py_BuildValue("(ll)", token, situation);
}

static PyObject *Stats_get_len(Stats *s, void *closure) { return PyLong_FromSsize_t(s->len); }

/* ------------------------------------------------------------------ the type */

static int Stats_init(Stats *s, PyObject *args, PyObject *kw) {
    static char *names[] = {"vocab_size", "orders", "match_min", "ln_table", NULL};
    long vocab;
    PyObject *orders, *table;
    int match_min;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "lOiO", names, &vocab, &orders, &match_min, &table))
        return -1;
    if (s->ln != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Stats is initialized once");
        return -1;
    }
    Py_buffer ln;
    if (PyObject_GetBuffer(table, &ln, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    const char *f = ln.format ? ln.format : "B";
    while (*f == '@' || *f == '=' || *f == '<') /* native little-endian only */
        f++;
    if (strcmp(f, "d") != 0) {
        PyBuffer_Release(&ln);
        PyErr_SetString(PyExc_ValueError, "ln_table must be a contiguous float64 array");
        return -1;
    }
    int rc = -1;
    PyObject *seq = PySequence_Fast(orders, "orders must be a sequence of integers");
    if (seq == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (vocab < 2 || n > MAX_ORDERS || match_min < 0 || match_min > 64 || ln.len % 8 || ln.len < 16) {
        PyErr_SetString(PyExc_ValueError, "bad n-gram settings");
        goto done;
    }
    s->n_orders = (int)n;
    for (Py_ssize_t j = 0; j < n; j++) {
        long k = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, j));
        if (k < 1 || k > 32) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "n-gram orders must be 1..32");
            goto done;
        }
        s->orders[j] = (int)k;
    }
    /* longest order first, ties in their given order (Python's stable sort) */
    for (int j = 0; j < s->n_orders; j++)
        s->longest_first[j] = j;
    for (int a = 1; a < s->n_orders; a++)
        for (int b = a; b > 0 && s->orders[s->longest_first[b]] > s->orders[s->longest_first[b - 1]]; b--) {
            int tmp = s->longest_first[b];
            s->longest_first[b] = s->longest_first[b - 1];
            s->longest_first[b - 1] = tmp;
        }
    s->vocab = vocab;
    s->match_min = match_min;
    s->match_ptr = -1;
    s->match_len = 0;
    if (table_init(&s->contexts, 1024) < 0 || table_init(&s->successors, 1024) < 0 ||
        table_init(&s->positions, 1024) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    s->ln_buf = ln; /* released with the object */
    s->ln = (const double *)ln.buf;
    s->n_ln = ln.len / 8;
    rc = 0;
done:
    Py_XDECREF(seq);
    if (rc < 0)
        PyBuffer_Release(&ln);
    return rc;
}

static void Stats_dealloc(Stats *s) {
    for (Py_ssize_t c = 0; c < s->n_ctx; c++)
        PyMem_Free(s->ctx[c].succ);
    PyMem_Free(s->ctx);
    PyMem_Free(s->hist);
    if (s->ln != NULL)
        PyBuffer_Release(&s->ln_buf);
    table_free(&s->contexts);
    table_free(&s->successors);
    table_free(&s->positions);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyMethodDef Stats_methods[] = {
    {"update", (PyCFunction)Stats_update, METH_O, "update(token): learn that token followed, then append it"},
    {"features_flat", (PyCFunction)Stats_features_flat, METH_NOARGS,
     "features_flat() -> (slots, bounds, tokens, values): the features for the next token, feature f being\n"
     "slot slots[f] with tokens[bounds[f-1]:bounds[f]] (bytes of int64 and float64)"},
    {"match_prediction", (PyCFunction)Stats_match_prediction, METH_NOARGS, "match_prediction() -> (token, length)"},
    {"guess", (PyCFunction)Stats_guess, METH_NOARGS, "guess() -> (token, situation)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Stats_getset[] = {
    {"length", (getter)Stats_get_len, NULL, "tokens seen", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject StatsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "lmzip._ngram.Stats",
    .tp_basicsize = sizeof(Stats),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Stats(vocab_size, orders, match_min, ln_table): lmzip.predictors.ngram.NGramStats in C",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Stats_init,
    .tp_dealloc = (destructor)Stats_dealloc,
    .tp_methods = Stats_methods,
    .tp_getset = Stats_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "lmzip._ngram", "The n-gram and match statistics in C (see lmzip/predictors/ngram.py).",
    -1, NULL,
};

PyMODINIT_FUNC PyInit__ngram(void) {
    if (PyType_Ready(&StatsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&StatsType);
    if (PyModule_AddObject(m, "Stats", (PyObject *)&StatsType) < 0) {
        Py_DECREF(&StatsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
