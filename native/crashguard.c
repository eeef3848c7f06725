/* lmzip._crashguard: one line on stderr when native code kills the process.
 *
 * A model engine (llama.cpp) built for another CPU dies of SIGILL, and some of its
 * kernels have died of SIGSEGV on CPUs they mishandle.  Python cannot catch either: the
 * user would see only "Segmentation fault".  install(message) sets handlers for SIGSEGV,
 * SIGBUS, SIGILL and SIGFPE that write "lmzip: <message> (<signal>)" with write(2), the
 * only thing safe to do there, then let the signal take its default action, so the exit
 * status still tells what happened (128 + signal number).  The handlers run on their
 * own stack, so a stack overflow is reported too.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <signal.h>
#include <string.h>
#include <unistd.h>

static char message[1024];
static size_t message_len;
static char alt_stack[1 << 16];

static void write_all(const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(2, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void on_fatal(int sig) {
    const char *name = sig == SIGSEGV ? "segmentation fault"
                       : sig == SIGILL ? "illegal instruction"
                       : sig == SIGBUS ? "bus error"
                                       : "arithmetic exception";
    write_all("\nlmzip: ", 8);
    write_all(message, message_len);
    write_all(" (", 2);
    write_all(name, strlen(name));
    write_all(")\n", 2);
    /* SA_RESETHAND restored the default action: re-raise to die of the same signal */
    raise(sig);
}

static PyObject *install(PyObject *self, PyObject *args) {
    const char *text;
    Py_ssize_t len;
    (void)self;
    if (!PyArg_ParseTuple(args, "y#", &text, &len))
        return NULL;
    if ((size_t)len >= sizeof message)
        len = (Py_ssize_t)sizeof message - 1;
    memcpy(message, text, (size_t)len);
    message_len = (size_t)len;

    stack_t ss;
    memset(&ss, 0, sizeof ss);
    ss.ss_sp = alt_stack;
    ss.ss_size = sizeof alt_stack;
    sigaltstack(&ss, NULL);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND | SA_ONSTACK;
    const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        if (sigaction(sigs[i], &sa, NULL) != 0)
            return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"install", install, METH_VARARGS,
     "install(message: bytes) -> None: print 'lmzip: message (signal)' on stderr if native code crashes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "lmzip._crashguard", NULL, -1, methods};

PyMODINIT_FUNC PyInit__crashguard(void) { return PyModule_Create(&module); }
