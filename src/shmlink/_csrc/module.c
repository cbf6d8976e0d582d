/*
 * shmlink._core -- the Python binding of include/shmlink.h: module init,
 * the exceptions it raises, argument helpers shared by every file.
 *
 * File map (src/shmlink/_csrc/):
 *   internal.h  declarations shared by the files below
 *   module.c    module init, exceptions, argument and deadline parsing
 *   wait.c      the waits: spin, event-count sleep, lock sleep
 *   memory.c    Memory (atomic words, futex wait, robust lock) and View
 *   ring.c      Ring (shmlink.Queue)
 *   topic.c     Topic and Subscriber (shmlink.Topic)
 *   guard.c     surviving a truncated file: the SIGBUS guard over mapped ranges
 *   layout.c    LAYOUT: offsets and sizes of the header structs, for Python
 */
#include "internal.h"

/* The exception class of a return code: a new reference (NULL with an
 * exception set if shmlink.errors cannot be had).  Looked up when raised,
 * in the interpreter's own shmlink.errors: no class is cached in C. */
PyObject *sl_error_type(int rc) {
    const char *name;
    switch (rc) {
    case -ECANCELED:
    case -EPIPE:
        name = "SegmentClosed";
        break;
    case -ETIMEDOUT:
        name = "Timeout";
        break;
    case -EBADMSG:
        name = "CorruptSegment";
        break;
    case -EPROTO:
        name = "IncompatibleSegment";
        break;
    case -EMSGSIZE:
        name = "MessageTooLarge";
        break;
    case -ENOSPC:
        name = "TooManyParticipants";
        break;
    case -EINVAL:
        name = "InvalidArgument";
        break;
    case -EBUSY:
        name = "SegmentBusy";
        break;
    case -EPERM:
        name = "NotOwner";
        break;
    default:
        return Py_NewRef(PyExc_OSError);
    }
    PyObject *errors = PyImport_ImportModule("shmlink.errors"); /* sys.modules, once imported */
    if (!errors)
        return NULL;
    PyObject *cls = PyObject_GetAttrString(errors, name);
    Py_DECREF(errors);
    return cls;
}

int sl_raisef(int rc, const char *fmt, ...) {
    if (rc == -1 && PyErr_Occurred())
        return -1;
    va_list va;
    va_start(va, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (!msg)
        return -1;
    PyObject *type = sl_error_type(rc);
    if (!type) {
        Py_DECREF(msg);
        return -1;
    }
    if (type == PyExc_OSError) {
        PyObject *args = Py_BuildValue("(iO)", -rc, msg);
        if (args) {
            PyErr_SetObject(PyExc_OSError, args);
            Py_DECREF(args);
        }
    } else {
        PyErr_SetObject(type, msg);
    }
    Py_DECREF(msg);
    return -1;
}

int sl_raise(int rc, const char *what, PyObject *label) {
    if (!label)
        label = Py_None;
    switch (rc) {
    case -1:
        if (PyErr_Occurred())
            return -1;
        return sl_raisef(-EIO, "%s %R: internal error without an exception", what, label);
    case -ECANCELED:
        return sl_raisef(rc, "%s %R was closed (by another thread, or a signal handler) "
                         "while this call was using it", what, label);
    case -EPIPE:
        return sl_raisef(rc, "%s %R is closed; open it again to use it", what, label);
    case -ETIMEDOUT:
        return sl_raisef(rc, "%s %R: timed out", what, label);
    case -EBADMSG:
        return sl_raisef(rc, "%s %R is inconsistent (overwritten by a foreign or buggy "
                         "writer); remove it and recreate it", what, label);
    case -EPROTO:
        return sl_raisef(rc, "%s %R has an unknown magic or version; it was made by "
                         "another program or shmlink version", what, label);
    default:
        return sl_raisef(rc, "%s %R: %s", what, label, strerror(-rc));
    }
}

/* This process's identity, recomputed lazily after fork.  Process-wide on
 * purpose (not module state): every interpreter of the process is the same
 * process, and the atfork handler that clears it is registered once. */
uint32_t self_pid;
uint64_t self_start;

static void reset_identity_after_fork(void) { self_pid = 0; }
static void register_atfork(void) { pthread_atfork(NULL, NULL, reset_identity_after_fork); }


/* Parse a deadline (None or monotonic seconds) into *ts; returns the pointer
 * to use (NULL = forever) or sets *err. */
struct timespec *parse_deadline(PyObject *obj, struct timespec *ts,
                                       int *err) {
    *err = 0;
    if (obj == NULL || obj == Py_None)
        return NULL;
    double d = PyFloat_AsDouble(obj);
    if (d == -1.0 && PyErr_Occurred()) {
        *err = 1;
        return NULL;
    }
    if (d < 0)
        d = 0;
    if (d > 4e9)
        return NULL; /* far enough to be forever */
    ts->tv_sec = (time_t)d;
    ts->tv_nsec = (long)((d - (double)ts->tv_sec) * 1e9);
    if (ts->tv_nsec >= 1000000000L)
        ts->tv_nsec = 999999999L;
    return ts;
}


/* timeout in seconds (None = forever, 0 = do not wait) -> *seconds, with
 * -1 for forever (None, or more than 1e9 s).  0, or -1 with an exception. */
int parse_timeout_seconds(PyObject *obj, double *seconds) {
    *seconds = -1;
    if (obj == NULL || obj == Py_None)
        return 0;
    double d = PyFloat_AsDouble(obj);
    if (d == -1.0 && PyErr_Occurred())
        return -1;
    if (!(d >= 0)) {
        sl_raisef(-EINVAL, "timeout must be None or >= 0 seconds, not %R", obj);
        return -1;
    }
    if (d <= 1e9)
        *seconds = d;
    return 0;
}

/* timeout in seconds (None = forever, 0 = do not wait) -> *deadline. */
int parse_timeout(PyObject *obj, struct timespec *ts, struct timespec **deadline) {
    *deadline = NULL;
    double d;
    if (parse_timeout_seconds(obj, &d) < 0)
        return -1;
    if (d < 0)
        return 0; /* forever */
    if (d == 0) {
        ts->tv_sec = 0;
        ts->tv_nsec = 0;
        *deadline = ts;
        return 0;
    }
    shmlink_deadline_after(ts, d);
    *deadline = ts;
    return 0;
}


/* FASTCALL|KEYWORDS arguments (npos positional, then keyword-only timeout):
 * *timeout is the keyword's value or NULL.  0, or -1 with TypeError. */
int kw_only_timeout(const char *sig, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames, Py_ssize_t npos, PyObject **timeout) {
    *timeout = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs != npos)
        goto usage;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(kwnames, i)) ||
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "timeout") != 0)
            goto usage;
        *timeout = args[nargs + i];
    }
    return 0;
usage:
    PyErr_Format(PyExc_TypeError, "%s (timeout is keyword-only)", sig);
    return -1;
}

/* ======================================================================== */
/* Handle lifetime.                                                         */
/*                                                                          */
/* Every handle (Memory, Ring, Topic, Subscriber) holds its own export of   */
/* the mapping and counts the calls inside it that may release the GIL     */
/* (`calls`, changed only under the GIL: two plain int operations per      */
/* call).  close() sets `closing` (read without the GIL by waits), wakes    */
/* the futex words this handle's calls may sleep on, and releases the      */
/* export at once if no call is inside; otherwise the last call to leave   */
/* releases it.  The mapping is unmapped only when no export is left (see  */
/* segment._detach), so no call ever touches unmapped memory, whatever the  */
/* interleaving -- also when close() runs in a signal handler inside one   */
/* of this thread's calls: close never waits for the calls to leave.       */
/* ======================================================================== */

int raise_closed(const char *what, PyObject *label) { return sl_raise(-EPIPE, what, label); }

int raise_closed_while_waiting(const char *what, PyObject *label) {
    return sl_raise(-ECANCELED, what, label);
}


int raise_views_alive(const char *what, int n) {
    PyErr_Format(PyExc_BufferError,
                 "%d object(s) made from this %s (a numpy array, a memoryview or a slice "
                 "of it) are still alive and would read memory that is about to be reused "
                 "or unmapped: copy what you need (bytes(view), array.copy()), delete them, "
                 "then release again",
                 n, what);
    return -1;
}


/* ---- batches (see internal.h) ---- */
int batch_gather(struct buffer_batch *b, PyObject *seq, const char *what,
                        int (*len_ok)(void *, Py_ssize_t), void *obj) {
    b->bufs = NULL;
    b->got = b->n = 0;
    b->fast = PySequence_Fast(seq, what);
    if (!b->fast)
        return -1;
    b->n = PySequence_Fast_GET_SIZE(b->fast);
    b->bufs = PyMem_Calloc(b->n ? (size_t)b->n : 1, sizeof(Py_buffer));
    if (!b->bufs) {
        PyErr_NoMemory();
        return -1;
    }
    for (; b->got < b->n; b->got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(b->fast, b->got), &b->bufs[b->got], PyBUF_C_CONTIGUOUS) < 0)
            return -1;
        if (len_ok(obj, b->bufs[b->got].len) < 0) {
            b->got++;
            return -1;
        }
    }
    return 0;
}

void batch_release(struct buffer_batch *b) {
    for (Py_ssize_t i = 0; i < b->got; i++)
        PyBuffer_Release(&b->bufs[i]);
    PyMem_Free(b->bufs);
    Py_XDECREF(b->fast);
}

/* Optional (deadline, spin_ns) arguments of a FASTCALL method, from index i. */
int fast_wait_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t i,
                          struct timespec *ts, struct timespec **deadline,
                          long long *spin) {
    int err;
    *deadline = parse_deadline(nargs > i ? args[i] : Py_None, ts, &err);
    if (err)
        return -1;
    *spin = 0;
    if (nargs > i + 1) {
        *spin = PyLong_AsLongLong(args[i + 1]);
        if (*spin == -1 && PyErr_Occurred())
            return -1;
    }
    if (nargs > i + 2) {
        PyErr_SetString(PyExc_TypeError, "too many arguments");
        return -1;
    }
    return 0;
}

/* Common argument parsing: (deadline, spin_ns). */
int parse_wait(PyObject *dl, long long spin, struct timespec *ts,
                      struct timespec **deadline) {
    int err;
    *deadline = parse_deadline(dl, ts, &err);
    return err ? -1 : 0;
}

const struct timespec zero_deadline = {0, 0};


/* ======================================================================== */
/* Module functions                                                         */
/* ======================================================================== */

static PyObject *py_process_start_time(PyObject *mod, PyObject *arg) {
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred())
        return NULL;
    if (pid <= 0 || pid > UINT32_MAX)
        return PyLong_FromLong(0);
    return PyLong_FromUnsignedLongLong(shmlink_process_start_time((uint32_t)pid));
}

static PyObject *py_process_alive(PyObject *mod, PyObject *args) {
    unsigned long pid;
    unsigned long long start = 0;
    if (!PyArg_ParseTuple(args, "k|K", &pid, &start))
        return NULL;
    if (pid > UINT32_MAX)
        Py_RETURN_FALSE;
    return PyBool_FromLong(shmlink_process_alive((uint32_t)pid, start));
}

static PyMethodDef module_methods[] = {
    {"process_start_time", py_process_start_time, METH_O,
     "process_start_time($module, pid, /)\n--\n\nStart time of pid in clock ticks since boot; 0 if gone."},
    {"process_alive", py_process_alive, METH_VARARGS,
     "process_alive($module, pid, start_time=0, /)\n--\n\nTrue if (pid, start_time) is a live process."},
    {NULL}};

static int core_exec(PyObject *m) {
    sl_state *st = PyModule_GetState(m);
    /* shmlink.errors is where every exception comes from: fail the import
     * now rather than at the first error if it cannot be imported. */
    PyObject *errors = PyImport_ImportModule("shmlink.errors");
    if (!errors)
        return -1;
    Py_DECREF(errors);
    /* once per process; an atomic flag, not pthread_once: that one is
     * pthread_once@GLIBC_2.34 on new glibc and would lift the wheel's
     * manylinux tag from 2_17 to 2_34 (tools/build_wheels.py) */
    static int atfork_registered;
    if (!__atomic_exchange_n(&atfork_registered, 1, __ATOMIC_ACQ_REL))
        register_atfork();
    if (sl_guard_install() < 0) /* survive a truncated file: guard.c */
        return PyErr_SetFromErrno(PyExc_OSError), -1;
    if (memory_add_types(m, st) < 0 || ring_register(m, st) < 0 || topic_register(m, st) < 0 ||
        layout_register(m) < 0 || memory_register_layouts(m) < 0 || doorbell_register(m) < 0)
        return -1;
    if (PyModule_AddIntConstant(m, "LAYOUT_VERSION", SHMLINK_LAYOUT_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "DATA_OFFSET", SHMLINK_DATA_OFFSET) < 0 ||
        PyModule_AddIntConstant(m, "MAX_PARTICIPANTS", SHMLINK_MAX_PARTICIPANTS) < 0 ||
        PyModule_AddIntConstant(m, "RING_HEADER", (long)SHMLINK_RING_DATA_OFFSET) < 0 ||
        PyModule_AddIntConstant(m, "RECORD_HEADER", SHMLINK_RECORD_HEADER) < 0 ||
        PyModule_AddIntConstant(m, "LOCK_SIZE", sizeof(struct shmlink_lock)) < 0)
        return -1;
    return 0;
}

static int core_traverse(PyObject *m, visitproc visit, void *arg) {
    sl_state *st = PyModule_GetState(m);
    Py_VISIT(st->View);
    Py_VISIT(st->Memory);
    Py_VISIT(st->Ring);
    Py_VISIT(st->Topic);
    Py_VISIT(st->Subscriber);
    return 0;
}

static int core_clear(PyObject *m) {
    sl_state *st = PyModule_GetState(m);
    Py_CLEAR(st->View);
    Py_CLEAR(st->Memory);
    Py_CLEAR(st->Ring);
    Py_CLEAR(st->Topic);
    Py_CLEAR(st->Subscriber);
    return 0;
}

static void core_free(void *m) { core_clear((PyObject *)m); }

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {0, NULL}};

static struct PyModuleDef coremodule = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmlink._core",
    .m_doc = "The native core of shmlink: atomics, futex waits, the robust lock, the "
             "message ring and the topic.  Private: use the shmlink package.",
    .m_size = sizeof(sl_state),
    .m_methods = module_methods,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

/* Multi-phase initialisation (PEP 489): the module object and its state are
 * made by the import system, then core_exec fills them in. */
PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&coremodule); }
