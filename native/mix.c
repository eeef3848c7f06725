/* lmzip._mix: the mixer's work over the vocabulary, for every stream of a lockstep
 * group in one call.
 *
 * Per token and stream, lmzip/predictors/mixing.py's MixedStream does three things
 * that touch all V symbols; this computes them bit for bit like its numpy reference:
 *
 *   distributions(): s = llm * w_llm (as doubles), + bias, then the sparse features
 *       added in the order given (s[t] += a), then q = the quantized distribution of
 *       s (cdf_rule.h, the format's rule);
 *   learn(): once the token is known, E[llm] under q (the rule's 8-lane expect, for
 *       the language model's weight), the bias step
 *       bias -= (q + 1) * c; bias[token] += rate,
 *       and the n-gram and match features' weights (RMSprop on each feature's
 *       gradient value - E[value] under q, E summed exactly as math.fsum does).
 *
 * Only correctly rounded double operations in a fixed order per stream (build with
 * -ffp-contract=off).  Streams share nothing, so each call runs them on up to
 * `threads` threads with the GIL released: which thread takes which stream changes no
 * bit, and the thread count is not part of any file.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "cdf_rule.h"

#if !defined(_WIN32)
#include <pthread.h>
#define HAVE_THREADS 1
#endif

/* ------------------------------------------------------------------ run in parallel */

typedef void (*task_fn)(void *jobs, Py_ssize_t i);

typedef struct {
    task_fn fn;
    void *jobs;
    Py_ssize_t n;
    Py_ssize_t next; /* the next job nobody has taken (GCC atomic builtins) */
} work_t;

static void work(work_t *w) {
    for (;;) {
        Py_ssize_t i = __atomic_fetch_add(&w->next, 1, __ATOMIC_RELAXED);
        if (i >= w->n)
            return;
        w->fn(w->jobs, i);
    }
}

#ifdef HAVE_THREADS
/* A pool of helper threads kept between calls.  A call publishes its work and does it
 * too; helpers that wake in time take a share.  The caller waits only for helpers
 * that took part (`busy`), never for one that has not woken yet: on a machine where
 * other programs hold the cores, a late helper then finds the work gone (`current` is
 * NULL) and sleeps again, instead of the call waiting for it to be scheduled. */
enum { MAX_HELPERS = 255 };
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_wake = PTHREAD_COND_INITIALIZER, pool_idle = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER; /* one call at a time uses the pool */
static int helpers;             /* threads started */
static unsigned long generation; /* one per call */
static work_t *current;         /* the call's work while it runs, else NULL */
static int busy;                /* helpers inside current */

static void *helper(void *arg) {
    (void)arg;
    unsigned long seen = 0;
    pthread_mutex_lock(&pool_mu);
    for (;;) {
        while (generation == seen)
            pthread_cond_wait(&pool_wake, &pool_mu);
        seen = generation;
        work_t *w = current;
        if (w == NULL)
            continue; /* that call is over */
        busy++;
        pthread_mutex_unlock(&pool_mu);
        work(w);
        pthread_mutex_lock(&pool_mu);
        if (--busy == 0)
            pthread_cond_signal(&pool_idle);
    }
    return NULL;
}

/* a child process after fork() has none of the parent's helpers */
static void pool_after_fork(void) {
    pthread_mutex_init(&pool_mu, NULL);
    pthread_mutex_init(&call_mu, NULL);
    pthread_cond_init(&pool_wake, NULL);
    pthread_cond_init(&pool_idle, NULL);
    helpers = 0;
    busy = 0;
    current = NULL;
}
#endif

/* fn(jobs, i) for every i < n, on this thread and up to threads - 1 helpers; a helper
 * that cannot be started leaves its share to the others */
static void run_jobs(task_fn fn, void *jobs, Py_ssize_t n, int threads) {
    work_t w = {fn, jobs, n, 0};
#ifdef HAVE_THREADS
    int want = (int)((Py_ssize_t)threads < n ? threads : n) - 1;
    if (want > MAX_HELPERS)
        want = MAX_HELPERS;
    if (want > 0) {
        pthread_mutex_lock(&call_mu);
        pthread_mutex_lock(&pool_mu);
        while (helpers < want) {
            pthread_t id;
            if (pthread_create(&id, NULL, helper, NULL) != 0)
                break;
            pthread_detach(id);
            helpers++;
        }
        current = &w;
        generation++;
        pthread_cond_broadcast(&pool_wake);
        pthread_mutex_unlock(&pool_mu);
        work(&w);
        pthread_mutex_lock(&pool_mu);
        while (busy > 0) /* helpers still finishing the jobs they took */
            pthread_cond_wait(&pool_idle, &pool_mu);
        current = NULL;
        pthread_mutex_unlock(&pool_mu);
        pthread_mutex_unlock(&call_mu);
        return;
    }
#else
    (void)threads;
#endif
    work(&w);
}

/* ------------------------------------------------------------------ buffers */

/* the buffer's element format without its byte-order prefix (native little-endian only) */
static const char *elem(const Py_buffer *b) {
    const char *f = b->format ? b->format : "B";
    while (*f == '@' || *f == '=' || *f == '<')
        f++;
    return f;
}

/* A contiguous buffer of n elements ('d' float64, 'f' float32, 'q'/'l' int64) or None.
 * Returns 0 with *held set on success (1 if a buffer was taken), -1 with an error set. */
static int take(PyObject *obj, Py_buffer *b, int *held, const char *what, const char *kinds, Py_ssize_t n,
                int writable, int none_ok) {
    *held = 0;
    if (obj == Py_None) {
        if (none_ok)
            return 0;
        PyErr_Format(PyExc_TypeError, "%s must be an array, not None", what);
        return -1;
    }
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, b, flags) < 0)
        return -1;
    *held = 1;
    const char *f = elem(b);
    int ok = strlen(f) == 1 && strchr(kinds, f[0]) != NULL && b->itemsize == (f[0] == 'f' ? 4 : 8);
    if (!ok || (n >= 0 && b->len != n * b->itemsize)) {
        PyErr_Format(PyExc_ValueError, "%s must be a contiguous %s array%s", what,
                     kinds[0] == 'q' ? "int64" : kinds[1] == 'f' ? "float64 or float32" : "float64",
                     n >= 0 ? " as long as the vocabulary" : "");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ jobs */

/* the buffers a job holds while it runs: every job type starts with this */
enum { MAX_BUFS = 7 };
typedef struct {
    Py_buffer bufs[MAX_BUFS];
    int held[MAX_BUFS];
} held_t;

/* what a kind of job is: its size, how one is read from its tuple, run, and answered */
typedef struct {
    size_t size;
    int (*parse)(void *job, PyObject *item); /* 0, or -1 with an error set */
    task_fn task;
    PyObject *(*answer)(const void *job);
} job_kind;

static void release(held_t *h) {
    for (int k = 0; k < MAX_BUFS; k++)
        if (h->held[k]) {
            PyBuffer_Release(&h->bufs[k]);
            h->held[k] = 0;
        }
}

/* kind(jobs, threads): read every job of the list, run them on up to `threads` threads
 * without the GIL, and answer a list (one item per job) */
static PyObject *run_list(PyObject *args, const job_kind *kind) {
    PyObject *list;
    int threads;
    if (!PyArg_ParseTuple(args, "O!i", &PyList_Type, &list, &threads))
        return NULL;
    if (threads < 1) {
        PyErr_SetString(PyExc_ValueError, "threads must be at least 1");
        return NULL;
    }
    Py_ssize_t n_jobs = PyList_GET_SIZE(list);
    char *jobs = PyMem_Calloc(n_jobs ? (size_t)n_jobs : 1, kind->size);
    if (jobs == NULL)
        return PyErr_NoMemory();
    PyObject *result = NULL;
    Py_ssize_t ready = 0;
    for (; ready < n_jobs; ready++)
        if (kind->parse(jobs + ready * kind->size, PyList_GET_ITEM(list, ready)) < 0)
            goto done;
    Py_BEGIN_ALLOW_THREADS
    run_jobs(kind->task, jobs, n_jobs, threads);
    Py_END_ALLOW_THREADS
    result = PyList_New(n_jobs);
    for (Py_ssize_t k = 0; result != NULL && k < n_jobs; k++) {
        PyObject *v = kind->answer(jobs + k * kind->size);
        if (v == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, k, v);
    }
done:
    for (Py_ssize_t k = 0; k < n_jobs && k <= ready; k++)
        release((held_t *)(jobs + k * kind->size));
    PyMem_Free(jobs);
    return result;
}

/* ------------------------------------------------------------------ features */

/* features a step takes at most (a mixer has 16 to 24 slots) */
enum { MAX_FEATURES = 64 };

/* the features of a token's mix: feature f is weight slot slots[f] on the tokens and
 * values [bounds[f-1], bounds[f]) of the flat arrays (NGramStats.features_flat) */
typedef struct {
    Py_ssize_t n, slots[MAX_FEATURES], bounds[MAX_FEATURES];
} slots_t;

/* slots and bounds (lists of ints) for weights of n_slots and n_values flat values */
static int parse_slots(PyObject *slots, PyObject *bounds, Py_ssize_t n_slots, Py_ssize_t n_values, slots_t *out) {
    if (!PyList_Check(slots) || !PyList_Check(bounds)) {
        PyErr_SetString(PyExc_TypeError, "slots and bounds must be lists");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(slots), before = 0;
    if (n > MAX_FEATURES || PyList_GET_SIZE(bounds) != n) {
        PyErr_Format(PyExc_ValueError, "slots and bounds must be lists of the same length, at most %d",
                     (int)MAX_FEATURES);
        return -1;
    }
    for (Py_ssize_t f = 0; f < n; f++) {
        out->slots[f] = PyLong_AsSsize_t(PyList_GET_ITEM(slots, f));
        out->bounds[f] = PyLong_AsSsize_t(PyList_GET_ITEM(bounds, f));
        if (PyErr_Occurred())
            return -1;
        if (out->slots[f] < 0 || out->slots[f] >= n_slots || out->bounds[f] < before || out->bounds[f] > n_values) {
            PyErr_SetString(PyExc_ValueError, "a feature's slot or bounds out of range");
            return -1;
        }
        before = out->bounds[f];
    }
    out->n = n;
    return 0;
}

/* ------------------------------------------------------------------ distributions */

typedef struct {
    held_t h; /* s, q, llm, bias, tokens, adds */
    const void *llm; /* NULL: no language model */
    int llm_double;
    double w_llm;
    const double *bias; /* NULL: none */
    const int64_t *tokens;
    const double *adds; /* with w: the features' values, each times its slot's weight */
    Py_ssize_t n_feats;
    const double *w; /* NULL: adds are added as they are */
    slots_t weights;
    double *s, *q;
    Py_ssize_t n;
    Py_ssize_t token; /* the token the compressor codes, or -1 */
    double top, sum, below; /* below: the sum of q[:token] (its interval starts there, + token) */
} dist_job;

/* sum(q[:k]): integers below 2^53, so exact in any order (the coder's cumulative count) */
DISPATCH static double prefix_sum(const double *q, Py_ssize_t k) {
    double total = 0.0;
    Py_ssize_t i = 0;
#if defined(__GNUC__) && !defined(LMZIP_SCALAR)
    v4d acc = {0.0, 0.0, 0.0, 0.0};
    for (; i + 4 <= k; i += 4) {
        v4d v;
        memcpy(&v, q + i, sizeof v);
        acc += v;
    }
    total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
#endif
    for (; i < k; i++)
        total += q[i];
    return total;
}

/* s = llm * w (+ bias), elementwise (two roundings: -ffp-contract=off), and the largest
 * s_k that is not NaN with its first index, found on the way (the rule's first passes,
 * which read s once more and up to the largest again, are then skipped: the step is
 * memory-bound).  Each vector lane keeps its own largest and where it first was; the
 * first index of the largest is the least of the lanes' that hold it.  A max is exact in
 * any order; only which of +0.0 and -0.0 it keeps may differ, and the rule reads m only
 * through x - m and x == m, where they are the same. */
#if defined(__GNUC__) && !defined(LMZIP_SCALAR)
#define MIX_MAX_VECTOR(LOAD4)                                                               \
    const v4d ninf = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};                          \
    v4d mv = ninf;                                                                          \
    v4i at = {0, 1, 2, 3}, first = {0, 0, 0, 0};                                            \
    const v4i four = {4, 4, 4, 4};                                                          \
    for (; k + 4 <= n; k += 4) {                                                            \
        v4d x, v;                                                                           \
        LOAD4(x, k);                                                                        \
        v = x * w;                                                                          \
        if (bias != NULL) {                                                                 \
            v4d b;                                                                          \
            memcpy(&b, bias + k, sizeof b);                                                 \
            v = v + b;                                                                      \
        }                                                                                   \
        memcpy(s + k, &v, sizeof v);                                                        \
        v4i bigger = (v4i)(v > mv); /* NaN fails every comparison */                        \
        mv = (v4d)(((v4i)v & bigger) | ((v4i)mv & ~bigger));                                \
        first = (at & bigger) | (first & ~bigger);                                          \
        at += four;                                                                         \
    }                                                                                       \
    for (int j = 0; j < 4; j++)                                                             \
        m = mv[j] > m ? mv[j] : m;                                                          \
    for (int j = 0; j < 4; j++)                                                             \
        if (mv[j] == m && m > -INFINITY && (*best < 0 || first[j] < *best))                 \
            *best = first[j];
#else
#define MIX_MAX_VECTOR(LOAD4)
#endif
#define MIX_MAX_BODY(LOAD, LOAD4)                                                           \
    double m = -INFINITY;                                                                   \
    Py_ssize_t k = 0;                                                                       \
    *best = -1;                                                                             \
    MIX_MAX_VECTOR(LOAD4)                                                                   \
    for (; k < n; k++) {                                                                    \
        double v = LOAD(k) * w;                                                             \
        if (bias != NULL)                                                                   \
            v = v + bias[k];                                                                \
        s[k] = v;                                                                           \
        if (v > m) {                                                                        \
            m = v;                                                                          \
            *best = k;                                                                      \
        }                                                                                   \
    }                                                                                       \
    return m;

DISPATCH static double mix_f(double *s, const float *xf, double w, const double *bias, Py_ssize_t n,
                             Py_ssize_t *best) {
    MIX_MAX_BODY(LOAD_F, LOAD4_F)
}

DISPATCH static double mix_d(double *s, const double *xd, double w, const double *bias, Py_ssize_t n,
                             Py_ssize_t *best) {
    MIX_MAX_BODY(LOAD_D, LOAD4_D)
}

static void dist_task(void *jobs, Py_ssize_t i) {
    dist_job *j = (dist_job *)jobs + i;
    double *s = j->s;
    Py_ssize_t n = j->n;
    double m = INFINITY; /* the largest score once known, else +inf: the rule finds it */
    Py_ssize_t best = -1; /* and the first index of it (-1: none, all -inf or NaN) */
    if (j->llm == NULL) {
        for (Py_ssize_t k = 0; k < n; k++) /* 0.0 + bias: numpy's s.fill(0.0); s += bias */
            s[k] = j->bias != NULL ? 0.0 + j->bias[k] : 0.0;
    } else if (j->llm_double) {
        m = mix_d(s, (const double *)j->llm, j->w_llm, j->bias, n, &best);
    } else {
        m = mix_f(s, (const float *)j->llm, j->w_llm, j->bias, n, &best);
    }
    for (Py_ssize_t k = 0, f = 0; k < j->n_feats; k++) { /* in order: a token may be in several features */
        Py_ssize_t t = j->tokens[k];
        double add = j->adds[k];
        if (j->w != NULL) { /* w[slot] * value: the product numpy's repeat(w) * values makes */
            while (k >= j->weights.bounds[f])
                f++;
            add = j->w[j->weights.slots[f]] * add;
        }
        if (s[t] == m) /* the largest may go down: not known any more */
            m = INFINITY;
        s[t] = s[t] + add;
    }
    /* the features' tokens, now: a new largest, or the largest again at an earlier index */
    for (Py_ssize_t k = 0; k < j->n_feats && m != INFINITY; k++) {
        Py_ssize_t t = j->tokens[k];
        if (s[t] > m || (s[t] == m && t < best)) {
            m = s[t];
            best = t;
        }
    }
    if (m == INFINITY || m == -INFINITY) /* unknown, a score +inf, or none finite: the rule's own */
        quantize(s, 1, n, j->q, &j->top, &j->sum);
    else
        quantize_from(s, 1, n, j->q, m, 0.0, best, &j->top, &j->sum);
    if (j->token >= 0) /* while q is still in this core's cache */
        j->below = prefix_sum(j->q, j->token);
}

static int parse_dist(void *job, PyObject *item) {
    dist_job *j = (dist_job *)job;
    Py_buffer *b = j->h.bufs;
    int *held = j->h.held;
    PyObject *llm, *bias, *toks, *adds, *s, *q, *weights = Py_None;
    j->token = -1;
    if (!PyArg_ParseTuple(item, "OdOOOOO|On;a job is (llm, w_llm, bias, tokens, adds, s, q[, weights[, token]])",
                          &llm, &j->w_llm, &bias, &toks, &adds, &s, &q, &weights, &j->token))
        return -1;
    if (take(s, &b[0], &held[0], "s", "d", -1, 1, 0) < 0)
        return -1;
    j->n = b[0].len / 8;
    if (j->n < 2 || j->n >= TOTAL / 2) {
        PyErr_Format(PyExc_ValueError, "vocabulary size %zd out of range", j->n);
        return -1;
    }
    if (take(q, &b[1], &held[1], "q", "d", j->n, 1, 0) < 0 || take(llm, &b[2], &held[2], "llm", "df", j->n, 0, 1) < 0 ||
        take(bias, &b[3], &held[3], "bias", "d", j->n, 0, 1) < 0 ||
        take(toks, &b[4], &held[4], "tokens", "ql", -1, 0, 1) < 0)
        return -1;
    if (b[0].buf == b[1].buf) {
        PyErr_SetString(PyExc_ValueError, "s and q must be different arrays");
        return -1;
    }
    j->llm = held[2] ? b[2].buf : NULL;
    j->llm_double = held[2] && elem(&b[2])[0] == 'd';
    j->bias = held[3] ? (const double *)b[3].buf : NULL;
    if (j->token < -1 || j->token >= j->n) {
        PyErr_Format(PyExc_ValueError, "token %zd outside the vocabulary", j->token);
        return -1;
    }
    j->s = (double *)b[0].buf;
    j->q = (double *)b[1].buf;
    if (!held[4]) {
        if (adds != Py_None) {
            PyErr_SetString(PyExc_TypeError, "adds without tokens");
            return -1;
        }
        return 0;
    }
    j->n_feats = b[4].len / 8;
    if (take(adds, &b[5], &held[5], "adds", "d", -1, 0, 0) < 0)
        return -1;
    if (b[5].len != j->n_feats * 8) {
        PyErr_SetString(PyExc_ValueError, "tokens and adds must have the same length");
        return -1;
    }
    j->tokens = (const int64_t *)b[4].buf;
    j->adds = (const double *)b[5].buf;
    for (Py_ssize_t k = 0; k < j->n_feats; k++)
        if (j->tokens[k] < 0 || j->tokens[k] >= j->n) {
            PyErr_Format(PyExc_ValueError, "feature token %lld outside the vocabulary", (long long)j->tokens[k]);
            return -1;
        }
    if (weights == Py_None)
        return 0;
    /* weights (slots, bounds, w): adds are values, each feature's times its weight */
    PyObject *slots, *bounds, *w;
    if (!PyArg_ParseTuple(weights, "OOO;weights are (slots, bounds, w)", &slots, &bounds, &w) ||
        take(w, &b[6], &held[6], "w", "d", -1, 0, 0) < 0 || parse_slots(slots, bounds, b[6].len / 8, j->n_feats,
                                                                        &j->weights) < 0)
        return -1;
    if (j->weights.n == 0 || j->weights.bounds[j->weights.n - 1] != j->n_feats) {
        PyErr_SetString(PyExc_ValueError, "the features' bounds must end at the number of values");
        return -1;
    }
    j->w = (const double *)b[6].buf;
    return 0;
}

static PyObject *answer_dist(const void *job) {
    const dist_job *j = (const dist_job *)job;
    if (j->token >= 0)
        return Py_BuildValue("(ddd)", j->top, j->sum, j->below);
    return Py_BuildValue("(dd)", j->top, j->sum);
}

static const job_kind DIST = {sizeof(dist_job), parse_dist, dist_task, answer_dist};

static PyObject *py_distributions(PyObject *self, PyObject *args) { return run_list(args, &DIST); }

/* ------------------------------------------------------------------ learn */

typedef struct {
    held_t h; /* q, llm, bias, the features' tokens and values, their weights w and g2 */
    const double *q;
    const void *llm; /* NULL: no expectation wanted */
    int llm_double;
    double *bias; /* NULL: no bias */
    Py_ssize_t token, n;
    double c, rate, expected;
    /* the features' step (w NULL: none): feature f is slot slots[f], its tokens and
     * values [bounds[f-1], bounds[f]) */
    slots_t features;
    const int64_t *tokens;
    const double *values;
    double *w, *g2;
    double w_rate, decay, w_min, w_max;
    int overflow; /* a sum that is not finite: refused when answering */
} learn_job;

/* The correctly rounded sum of values added one by one: Shewchuk's non-overlapping
 * partials, then their sum rounded half-even across partials, so the result is
 * Python's math.fsum's (every correctly rounded sum is the same double).  Finite
 * values only (the caller checks the total). */
enum { MAX_PARTIALS = 64 }; /* non-overlapping doubles: at most ~41 */
typedef struct {
    double p[MAX_PARTIALS];
    int n;
} exact_sum_t;

static void exact_add(exact_sum_t *e, double x) {
    int k = 0;
    for (int i = 0; i < e->n; i++) {
        double y = e->p[i];
        if (fabs(x) < fabs(y)) {
            double t = x;
            x = y;
            y = t;
        }
        double hi = x + y;
        double lo = y - (hi - x);
        if (lo != 0.0)
            e->p[k++] = lo;
        x = hi;
    }
    e->n = k;
    if (x != 0.0 && e->n < MAX_PARTIALS)
        e->p[e->n++] = x;
}

static double exact_total(const exact_sum_t *e) {
    int n = e->n;
    double hi = 0.0, lo = 0.0;
    if (n == 0)
        return 0.0;
    hi = e->p[--n];
    while (n > 0) { /* from the largest down, while the sum stays exact */
        double x = hi, y = e->p[--n];
        hi = x + y;
        lo = y - (hi - x);
        if (lo != 0.0)
            break;
    }
    /* halfway between two doubles once the rest is counted: round to even */
    if (n > 0 && ((lo < 0.0 && e->p[n - 1] < 0.0) || (lo > 0.0 && e->p[n - 1] > 0.0))) {
        double y = lo * 2.0, x = hi + y;
        if (y == x - hi)
            hi = x;
    }
    return hi;
}

/* the features' weights, as MixedStream._learn_features */
static void features_step(learn_job *j) {
    Py_ssize_t start = 0;
    for (Py_ssize_t f = 0; f < j->features.n; f++) {
        Py_ssize_t end = j->features.bounds[f], slot = j->features.slots[f];
        double value = 0.0;
        int found = 0;
        exact_sum_t sum = {.n = 0};
        for (Py_ssize_t i = start; i < end; i++) {
            int64_t t = j->tokens[i];
            exact_add(&sum, (j->q[t] + 1.0) * j->values[i]);
            if (!found && t == j->token) {
                value = j->values[i];
                found = 1;
            }
        }
        double total = exact_total(&sum);
        if (!(total - total == 0.0))
            j->overflow = 1;
        double g = value - total / (double)TOTAL;
        j->g2[slot] = j->decay * j->g2[slot] + (1.0 - j->decay) * (g * g);
        double x = j->w[slot] + j->w_rate * g / sqrt(j->g2[slot] + 1e-6);
        x = x > j->w_min ? x : j->w_min; /* Python's max(w_min, x), then min(w_max, x) */
        j->w[slot] = x < j->w_max ? x : j->w_max;
        start = end;
    }
}

/* bias -= (q + 1) * c, elementwise */
DISPATCH static void bias_step(double *b, const double *q, double c, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++)
        b[k] = b[k] - (q[k] + 1.0) * c;
}

static void learn_task(void *jobs, Py_ssize_t i) {
    learn_job *j = (learn_job *)jobs + i;
    const double *q = j->q;
    if (j->llm != NULL) /* the expectation, and the bias step in the same pass */
        j->expected = j->llm_double ? expect_step_d(q, (const double *)j->llm, j->bias, j->c, j->n)
                                    : expect_step_f(q, (const float *)j->llm, j->bias, j->c, j->n);
    else if (j->bias != NULL)
        bias_step(j->bias, q, j->c, j->n);
    if (j->bias != NULL)
        j->bias[j->token] = j->bias[j->token] + j->rate;
    if (j->w != NULL)
        features_step(j);
}

/* the features of a learning job: (slots, bounds, tokens, values, w, g2, rate, decay,
 * w_min, w_max) */
static int parse_features(learn_job *j, PyObject *feats) {
    Py_buffer *b = j->h.bufs;
    int *held = j->h.held;
    PyObject *slots, *bounds, *toks, *vals, *w, *g2;
    if (!PyArg_ParseTuple(feats, "OOOOOOdddd;features are (slots, bounds, tokens, values, w, g2, rate, decay, "
                          "w_min, w_max)", &slots, &bounds, &toks, &vals, &w, &g2, &j->w_rate, &j->decay, &j->w_min,
                          &j->w_max))
        return -1;
    if (take(toks, &b[3], &held[3], "feature tokens", "ql", -1, 0, 0) < 0 ||
        take(vals, &b[4], &held[4], "feature values", "d", b[3].len / 8, 0, 0) < 0 ||
        take(w, &b[5], &held[5], "w", "d", -1, 1, 0) < 0 || take(g2, &b[6], &held[6], "g2", "d", b[5].len / 8, 1, 0) < 0 ||
        parse_slots(slots, bounds, b[5].len / 8, b[3].len / 8, &j->features) < 0)
        return -1;
    j->tokens = (const int64_t *)b[3].buf;
    j->values = (const double *)b[4].buf;
    Py_ssize_t used = j->features.n ? j->features.bounds[j->features.n - 1] : 0;
    for (Py_ssize_t i = 0; i < used; i++)
        if (j->tokens[i] < 0 || j->tokens[i] >= j->n) {
            PyErr_Format(PyExc_ValueError, "feature token %lld outside the vocabulary", (long long)j->tokens[i]);
            return -1;
        }
    if (b[5].buf == b[6].buf) {
        PyErr_SetString(PyExc_ValueError, "w and g2 must be different arrays");
        return -1;
    }
    j->w = (double *)b[5].buf;
    j->g2 = (double *)b[6].buf;
    return 0;
}

static int parse_learn(void *job, PyObject *item) {
    learn_job *j = (learn_job *)job;
    Py_buffer *b = j->h.bufs;
    int *held = j->h.held;
    PyObject *q, *llm, *bias, *feats = Py_None;
    if (!PyArg_ParseTuple(item, "OOOndd|O;a job is (q, llm, bias, token, c, rate[, features])", &q, &llm, &bias,
                          &j->token, &j->c, &j->rate, &feats))
        return -1;
    if (take(q, &b[0], &held[0], "q", "d", -1, 0, 0) < 0)
        return -1;
    j->n = b[0].len / 8;
    if (take(llm, &b[1], &held[1], "llm", "df", j->n, 0, 1) < 0 ||
        take(bias, &b[2], &held[2], "bias", "d", j->n, 1, 1) < 0)
        return -1;
    if (j->token < 0 || j->token >= j->n) {
        PyErr_Format(PyExc_ValueError, "token %zd outside the vocabulary", j->token);
        return -1;
    }
    if (held[2] && b[2].buf == b[0].buf) {
        PyErr_SetString(PyExc_ValueError, "bias and q must be different arrays");
        return -1;
    }
    j->q = (const double *)b[0].buf;
    j->llm = held[1] ? b[1].buf : NULL;
    j->llm_double = held[1] && elem(&b[1])[0] == 'd';
    j->bias = held[2] ? (double *)b[2].buf : NULL;
    return feats == Py_None ? 0 : parse_features(j, feats);
}

static PyObject *answer_learn(const void *job) {
    const learn_job *j = (const learn_job *)job;
    if (j->overflow) {
        PyErr_SetString(PyExc_OverflowError, "a feature's expectation is not finite");
        return NULL;
    }
    if (j->llm == NULL)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(j->expected);
}

static const job_kind LEARN = {sizeof(learn_job), parse_learn, learn_task, answer_learn};

static PyObject *py_learn(PyObject *self, PyObject *args) { return run_list(args, &LEARN); }

static PyObject *py_fsum(PyObject *self, PyObject *values) {
    PyObject *seq = PySequence_Fast(values, "fsum takes a sequence of floats");
    if (seq == NULL)
        return NULL;
    exact_sum_t sum = {.n = 0};
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        double x = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (x == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        exact_add(&sum, x);
    }
    Py_DECREF(seq);
    double total = exact_total(&sum);
    if (!(total - total == 0.0)) {
        PyErr_SetString(PyExc_OverflowError, "the sum is not finite");
        return NULL;
    }
    return PyFloat_FromDouble(total);
}

static PyMethodDef methods[] = {
    {"distributions", py_distributions, METH_VARARGS,
     "distributions(jobs, threads) -> [(max, sum), ...]\n\n"
     "For each job (llm, w_llm, bias, tokens, adds, s, q[, weights]): s = llm * w_llm + bias (llm\n"
     "and bias may be None), then s[tokens[k]] += adds[k] in order (tokens int64, adds float64, or\n"
     "both None; with weights (slots, bounds, w), adds[k] are values, each times w[slot] of its\n"
     "feature), then q = freq - 1 of s's quantized distribution (lmzip.cdf.quantize_into).\n"
     "With token (>= 0: the token a compressor codes), (max, sum, sum(q[:token]))."},
    {"learn", py_learn, METH_VARARGS,
     "learn(jobs, threads) -> [expected or None, ...]\n\n"
     "For each job (q, llm, bias, token, c, rate[, features]): expected = lmzip.cdf.expect(q, llm)\n"
     "if llm is not None; if bias is not None, bias -= (q + 1) * c, then bias[token] += rate;\n"
     "features (slots, bounds, tokens, values, w, g2, rate, decay, w_min, w_max): the feature\n"
     "weights' step of lmzip.predictors.mixing.MixedStream._learn_features, into w and g2."},
    {"fsum", py_fsum, METH_O,
     "fsum(values) -> float\n\n"
     "The correctly rounded sum of finite floats that the features' step uses: math.fsum's."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "lmzip._mix", "The mixer's per-token vocabulary work, a lockstep group at once "
                                         "(see lmzip/predictors/mixing.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__mix(void) {
#ifdef HAVE_THREADS
    pthread_atfork(NULL, NULL, pool_after_fork);
#endif
    return PyModule_Create(&module);
}
