/*
 * shmlink._core -- the Python binding of include/shmlink.h.
 *
 * Only what must be native: atomic access to shared words, futex waits that
 * release the GIL and let Ctrl-C through, the robust lock, and the hot paths
 * of the message ring.  Everything else is Python.
 *
 * Deadlines are absolute time.monotonic() values (CLOCK_MONOTONIC), computed
 * once by the caller; None means "wait forever".  Waits return False/None on
 * timeout; Python raises the typed shmlink.Timeout.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <structmember.h>

#include "include/shmlink.h"

/* Exceptions from shmlink.errors, looked up at import. */
static PyObject *CorruptSegment, *MessageTooLarge, *IncompatibleSegment, *Timeout,
    *SegmentClosed;

/* This process's identity, recomputed lazily after fork. */
static uint32_t self_pid;
static uint64_t self_start;

static void reset_identity_after_fork(void) { self_pid = 0; }

static inline void identity(uint32_t *pid, uint64_t *start) {
    /* No getpid() per call (a syscall on the hot path): the atfork handler
     * clears the cache in a forked child. */
    if (self_pid == 0) {
        self_pid = (uint32_t)getpid();
        self_start = shmlink_process_start_time(self_pid);
    }
    *pid = self_pid;
    *start = self_start;
}

/* Parse a deadline (None or monotonic seconds) into *ts; returns the pointer
 * to use (NULL = forever) or sets *err. */
static struct timespec *parse_deadline(PyObject *obj, struct timespec *ts,
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

/* Longest a futex sleep lasts before the GIL is taken back to run signal
 * handlers.  A signal that arrives *during* the futex syscall interrupts it
 * (EINTR); one that arrives between two syscalls would otherwise only be
 * noticed at the deadline.  This bounds Ctrl-C latency in every wait. */
#define SIGNAL_SLICE_S 0.1

/* timeout in seconds (None = forever, 0 = do not wait) -> *deadline. */
static int parse_timeout(PyObject *obj, struct timespec *ts, struct timespec **deadline) {
    *deadline = NULL;
    if (obj == NULL || obj == Py_None)
        return 0;
    double d = PyFloat_AsDouble(obj);
    if (d == -1.0 && PyErr_Occurred())
        return -1;
    if (!(d >= 0)) {
        PyErr_Format(PyExc_ValueError, "timeout must be None or >= 0 seconds, not %R", obj);
        return -1;
    }
    if (d == 0) {
        ts->tv_sec = 0;
        ts->tv_nsec = 0;
        *deadline = ts;
        return 0;
    }
    if (d > 1e9)
        return 0; /* far enough to be forever */
    shmlink_deadline_after(ts, d);
    *deadline = ts;
    return 0;
}

static inline int no_wait(const struct timespec *d) {
    return d && d->tv_sec == 0 && d->tv_nsec == 0;
}

/* FASTCALL|KEYWORDS arguments (npos positional, then keyword-only timeout):
 * *timeout is the keyword's value or NULL.  0, or -1 with TypeError. */
static int kw_only_timeout(const char *sig, PyObject *const *args, Py_ssize_t nargs,
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

static int raise_closed(const char *what, PyObject *label) {
    PyErr_Format(SegmentClosed, "%s %R is closed; open it again to use it", what,
                 label ? label : Py_None);
    return -1;
}

static int raise_closed_while_waiting(const char *what, PyObject *label) {
    PyErr_Format(SegmentClosed, "%s %R was closed (by another thread, or a signal handler) "
                 "while this call was using it", what, label ? label : Py_None);
    return -1;
}

/* Wake every sleeper on a shared word (ours, and spuriously other
 * processes': every waiter re-checks its condition). */
static inline void wake_word(uint32_t *p) { shmlink_futex_wake(p, INT_MAX); }

/* ======================================================================== */
/* Zero-copy views: an exporter that keeps the mapping mapped and counts    */
/* itself in its owner, so that the owner can tell whether a numpy array or */
/* memoryview made from a view is still alive (numpy keeps a reference to   */
/* the exporter, not always a buffer export).                               */
/* ======================================================================== */

typedef struct {
    PyObject_HEAD
    Py_buffer src;      /* export of the mapping: it stays mapped while we live */
    char *buf;
    Py_ssize_t len;
    int readonly;
    Py_ssize_t exports; /* buffers handed out and not yet released */
    PyObject *owner;    /* the handle whose *live counts us */
    int *live;          /* owner's count of live exporters */
} ViewObject;

static int View_getbuffer(ViewObject *self, Py_buffer *view, int flags) {
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->buf, self->len, self->readonly,
                          flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void View_releasebuffer(ViewObject *self, Py_buffer *view) { self->exports--; }

static void View_dealloc(ViewObject *self) {
    if (self->live)
        (*self->live)--;
    Py_CLEAR(self->owner);
    if (self->src.obj)
        PyBuffer_Release(&self->src);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyBufferProcs View_as_buffer = {
    (getbufferproc)View_getbuffer,
    (releasebufferproc)View_releasebuffer,
};

static PyTypeObject ViewType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmlink._core.View",
    .tp_basicsize = sizeof(ViewObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The exporter behind a zero-copy view: keeps the mapping mapped while "
              "anything made from the view lives.",
    .tp_dealloc = (destructor)View_dealloc,
    .tp_as_buffer = &View_as_buffer,
};

/* A memoryview of len bytes at off of the mapping `mapped` exports, counted
 * in *live of owner (kept alive by the view). */
static PyObject *make_view(PyObject *mapped, Py_ssize_t off, Py_ssize_t len, int readonly,
                           PyObject *owner, int *live) {
    ViewObject *v = PyObject_New(ViewObject, &ViewType);
    if (!v)
        return NULL;
    v->src.obj = NULL;
    v->owner = NULL;
    v->live = NULL;
    v->exports = 0;
    if (PyObject_GetBuffer(mapped, &v->src, readonly ? PyBUF_SIMPLE : PyBUF_WRITABLE) < 0) {
        Py_DECREF(v);
        return NULL;
    }
    if (off < 0 || len < 0 || off > v->src.len || len > v->src.len - off) {
        Py_DECREF(v);
        PyErr_SetString(PyExc_IndexError, "view outside the mapping");
        return NULL;
    }
    v->buf = (char *)v->src.buf + off;
    v->len = len;
    v->readonly = readonly || v->src.readonly;
    v->owner = Py_NewRef(owner);
    v->live = live;
    (*live)++;
    PyObject *mv = PyMemoryView_FromObject((PyObject *)v);
    Py_DECREF(v);
    return mv;
}

static int raise_views_alive(const char *what, int n) {
    PyErr_Format(PyExc_BufferError,
                 "%d object(s) made from this %s (a numpy array, a memoryview or a slice "
                 "of it) are still alive and would read memory that is about to be reused "
                 "or unmapped: copy what you need (bytes(view), array.copy()), delete them, "
                 "then release again",
                 n, what);
    return -1;
}

static inline uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* ======================================================================== */
/* Memory: a mapped buffer, and atomic access to its aligned words.         */
/* ======================================================================== */

#define MEMORY_MAX_WAITERS 16

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
    int calls;    /* wait32 / lock_acquire calls inside (GIL-protected) */
    int closing;  /* release() was asked while calls > 0 */
    int views;    /* live exporters made by view() */
    PyObject *label;
    /* The words this handle's calls sleep on, registered under the GIL so
     * that release() can wake them (full: the call sees `closing` within a
     * slice of SIGNAL_SLICE_S). */
    uint32_t *waiting[MEMORY_MAX_WAITERS];
} MemoryObject;

static int memory_register(MemoryObject *m, uint32_t *p) {
    for (int i = 0; i < MEMORY_MAX_WAITERS; i++)
        if (!m->waiting[i]) {
            m->waiting[i] = p;
            return i;
        }
    return -1;
}

static void memory_unregister(MemoryObject *m, int i) {
    if (i >= 0)
        m->waiting[i] = NULL;
}

/* The last call left a closing Memory: give the mapping back. */
static void memory_finish(MemoryObject *m) {
    if (m->has_view) {
        PyBuffer_Release(&m->view);
        m->has_view = 0;
    }
}

static inline void memory_leave(MemoryObject *m) {
    if (--m->calls == 0 && m->closing)
        memory_finish(m);
}

static int Memory_init(MemoryObject *self, PyObject *args, PyObject *kw) {
    PyObject *obj;
    static char *kwlist[] = {"buffer", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &obj))
        return -1;
    if (self->has_view || self->calls) {
        PyErr_SetString(PyExc_RuntimeError, "Memory already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        if (PyObject_GetBuffer(obj, &self->view, PyBUF_C_CONTIGUOUS) < 0)
            return -1;
    }
    self->has_view = 1;
    return 0;
}

static void Memory_dealloc(MemoryObject *self) {
    if (self->has_view)
        PyBuffer_Release(&self->view);
    Py_CLEAR(self->label);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Checked address of an aligned word of `width` bytes at off. */
static void *word_at(MemoryObject *m, Py_ssize_t off, Py_ssize_t width,
                     int write) {
    if (!m->has_view || m->closing) {
        raise_closed("segment", m->label);
        return NULL;
    }
    if (off < 0 || off > m->view.len - width || off % width != 0) {
        PyErr_Format(PyExc_IndexError,
                     "word offset %zd (width %zd) outside the %zd-byte mapping "
                     "or misaligned",
                     off, width, m->view.len);
        return NULL;
    }
    if (write && m->view.readonly) {
        PyErr_SetString(PyExc_PermissionError,
                        "the segment is mapped read-only; open it with "
                        "readonly=False to change it");
        return NULL;
    }
    return (char *)m->view.buf + off;
}

#define DEF_LOAD(name, type, conv)                                              \
    static PyObject *Memory_##name(MemoryObject *self, PyObject *arg) {        \
        Py_ssize_t off = PyLong_AsSsize_t(arg);                                \
        if (off == -1 && PyErr_Occurred())                                     \
            return NULL;                                                       \
        type *p = word_at(self, off, sizeof(type), 0);                         \
        if (!p)                                                                \
            return NULL;                                                       \
        return conv(SHM_LOAD_ACQUIRE(p));                                      \
    }
DEF_LOAD(load32, uint32_t, PyLong_FromUnsignedLong)
DEF_LOAD(load64, uint64_t, PyLong_FromUnsignedLongLong)

#define DEF_STORE(name, type, fmt)                                              \
    static PyObject *Memory_##name(MemoryObject *self, PyObject *args) {       \
        Py_ssize_t off;                                                        \
        unsigned long long v;                                                  \
        if (!PyArg_ParseTuple(args, "nK", &off, &v))                           \
            return NULL;                                                       \
        type *p = word_at(self, off, sizeof(type), 1);                         \
        if (!p)                                                                \
            return NULL;                                                       \
        /* SYNC: release; pairs with the acquire of load32/load64. */          \
        SHM_STORE_SEQ_CST(p, (type)v);                                         \
        Py_RETURN_NONE;                                                        \
    }
DEF_STORE(store32, uint32_t, "K")
DEF_STORE(store64, uint64_t, "K")

#define DEF_CAS(name, type)                                                     \
    static PyObject *Memory_##name(MemoryObject *self, PyObject *args) {       \
        Py_ssize_t off;                                                        \
        unsigned long long e, d;                                               \
        if (!PyArg_ParseTuple(args, "nKK", &off, &e, &d))                      \
            return NULL;                                                       \
        type *p = word_at(self, off, sizeof(type), 1);                         \
        if (!p)                                                                \
            return NULL;                                                       \
        type expected = (type)e;                                               \
        return PyBool_FromLong(SHM_CAS(p, &expected, (type)d));                \
    }
DEF_CAS(cas32, uint32_t)
DEF_CAS(cas64, uint64_t)

#define DEF_ADD(name, type, conv)                                               \
    static PyObject *Memory_##name(MemoryObject *self, PyObject *args) {       \
        Py_ssize_t off;                                                        \
        long long d;                                                           \
        if (!PyArg_ParseTuple(args, "nL", &off, &d))                           \
            return NULL;                                                       \
        type *p = word_at(self, off, sizeof(type), 1);                         \
        if (!p)                                                                \
            return NULL;                                                       \
        return conv(SHM_FETCH_ADD(p, (type)d));                                \
    }
DEF_ADD(add32, uint32_t, PyLong_FromUnsignedLong)
DEF_ADD(add64, uint64_t, PyLong_FromUnsignedLongLong)

PyDoc_STRVAR(Memory_wait32_doc,
"wait32(offset, expected, deadline=None)\n--\n\n"
"Sleep while the 32-bit word at offset equals expected, until woken or the\n"
"absolute time.monotonic() deadline.  Releases the GIL; a signal runs its\n"
"Python handler (KeyboardInterrupt propagates).  Returns False on timeout,\n"
"True otherwise (the wake may be spurious: re-check your condition).");

static PyObject *Memory_wait32(MemoryObject *self, PyObject *args) {
    Py_ssize_t off;
    unsigned long expected;
    PyObject *dl = Py_None;
    if (!PyArg_ParseTuple(args, "nk|O", &off, &expected, &dl))
        return NULL;
    uint32_t *p = word_at(self, off, 4, 0);
    if (!p)
        return NULL;
    struct timespec ts;
    int err;
    struct timespec *deadline = parse_deadline(dl, &ts, &err);
    if (err)
        return NULL;
    PyObject *res = NULL;
    self->calls++;
    for (;;) {
        int rc = 0;
        struct timespec slice;
        int reg = memory_register(self, p);
        Py_BEGIN_ALLOW_THREADS
        shmlink_deadline_min(&slice, deadline, SIGNAL_SLICE_S);
        if (!SHM_LOAD_RELAXED(&self->closing))
            rc = shmlink_futex_wait(p, (uint32_t)expected, &slice);
        Py_END_ALLOW_THREADS
        memory_unregister(self, reg);
        if (self->closing) {
            raise_closed_while_waiting("segment", self->label);
            break;
        }
        if (rc == -EINTR || (rc == -ETIMEDOUT && !shmlink_deadline_passed(deadline))) {
            if (PyErr_CheckSignals() < 0)
                break;
            if (self->closing) { /* a signal handler closed this handle */
                raise_closed_while_waiting("segment", self->label);
                break;
            }
            if (SHM_LOAD_ACQUIRE(p) != (uint32_t)expected) {
                res = Py_NewRef(Py_True);
                break;
            }
            continue;
        }
        /* woken, the value already differed, or the deadline passed */
        res = Py_NewRef(rc == -ETIMEDOUT ? Py_False : Py_True);
        break;
    }
    memory_leave(self);
    return res;
}

static PyObject *Memory_wake32(MemoryObject *self, PyObject *args) {
    Py_ssize_t off;
    int n = INT_MAX;
    if (!PyArg_ParseTuple(args, "n|i", &off, &n))
        return NULL;
    uint32_t *p = word_at(self, off, 4, 0);
    if (!p)
        return NULL;
    int rc = shmlink_futex_wake(p, n);
    return PyLong_FromLong(rc < 0 ? 0 : rc);
}

/* Spin on a lock for up to spin_ns, then sleep in liveness-checked slices.
 * Returns 0 (taken), 1 (taken from a dead owner), -ETIMEDOUT, or -1 with a
 * Python exception set (a signal handler raised).  Called with the GIL. */
static int lock_acquire_blocking(struct shmlink_lock *l,
                                 const struct timespec *deadline,
                                 int64_t spin_ns, const int *cancel) {
    uint32_t pid;
    uint64_t start;
    identity(&pid, &start);
    if (shmlink_lock_try(l, pid, start) == 0)
        return 0;
    int rc = -EBUSY;
    if (spin_ns != 0) {
        Py_BEGIN_ALLOW_THREADS
        uint64_t until = now_ns() + (uint64_t)(spin_ns < 0 ? 1000000 : spin_ns);
        for (unsigned i = 0;; i++) {
            if (SHM_LOAD_RELAXED(&l->owner) == 0 &&
                shmlink_lock_try(l, pid, start) == 0) {
                rc = 0;
                break;
            }
            if (SHM_LOAD_RELAXED(cancel))
                break;
            if (i < 64)
                SHM_CPU_RELAX();
            else
                sched_yield(); /* the holder may be waiting for our CPU */
            if ((i & 63) == 63 && now_ns() > until)
                break;
        }
        Py_END_ALLOW_THREADS
        if (rc == 0)
            return 0;
    }
    for (;;) {
        /* One liveness slice (20 ms) per GIL release, then signal handlers
         * run: a Ctrl-C between two slices is seen at the next one.  The
         * handle's close() wakes the sleep (the owner word). */
        int taken = 0;
        if (SHM_LOAD_RELAXED(cancel))
            return -ECANCELED;
        Py_BEGIN_ALLOW_THREADS
        if (shmlink_lock_try(l, pid, start) == 0)
            taken = 1;
        else if (!SHM_LOAD_RELAXED(cancel))
            rc = shmlink_lock_wait_once(l, pid, start, deadline);
        Py_END_ALLOW_THREADS
        if (taken)
            return 0;
        if (rc == 1 || rc == -ETIMEDOUT)
            return rc;
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
}

PyDoc_STRVAR(Memory_lock_acquire_doc,
"lock_acquire(offset, deadline=None, spin_ns=0)\n--\n\n"
"Take the robust lock at offset.  Returns 0 when taken, 1 when taken from a\n"
"holder that died (the data it guards may be half-written), None on timeout.\n"
"Raises SegmentClosed if release() closes this handle meanwhile.");

static PyObject *Memory_lock_acquire(MemoryObject *self, PyObject *args) {
    Py_ssize_t off;
    PyObject *dl = Py_None;
    long long spin_ns = 0;
    if (!PyArg_ParseTuple(args, "n|OL", &off, &dl, &spin_ns))
        return NULL;
    struct shmlink_lock *l = word_at(self, off, 8, 1);
    if (!l || !word_at(self, off + 8, 8, 1))
        return NULL;
    struct timespec ts;
    int err;
    struct timespec *deadline = parse_deadline(dl, &ts, &err);
    if (err)
        return NULL;
    self->calls++;
    int reg = memory_register(self, &l->owner);
    int rc = lock_acquire_blocking(l, deadline, spin_ns, &self->closing);
    memory_unregister(self, reg);
    PyObject *res = NULL;
    if (rc == 0 && self->closing) {
        shmlink_lock_release(l); /* taken as the handle closed: give it back */
        rc = -ECANCELED;
    }
    if (rc == -ECANCELED)
        raise_closed_while_waiting("segment", self->label);
    else if (rc == -ETIMEDOUT)
        res = Py_NewRef(Py_None);
    else if (rc >= 0)
        res = PyLong_FromLong(rc);
    memory_leave(self);
    return res;
}

static PyObject *Memory_lock_try(MemoryObject *self, PyObject *arg) {
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    struct shmlink_lock *l = word_at(self, off, 8, 1);
    if (!l || !word_at(self, off + 8, 8, 1))
        return NULL;
    uint32_t pid;
    uint64_t start;
    identity(&pid, &start);
    if (shmlink_lock_try(l, pid, start) == 0)
        return PyLong_FromLong(0);
    /* A dead holder is taken over even by a non-blocking attempt. */
    uint32_t owner = SHM_LOAD_ACQUIRE(&l->owner);
    uint64_t owner_start = SHM_LOAD_RELAXED(&l->owner_start);
    if (owner != 0 && !shmlink_process_alive(owner, owner_start) &&
        shmlink_lock_steal(l, owner, owner_start, pid, start))
        return PyLong_FromLong(1);
    Py_RETURN_NONE;
}

static PyObject *Memory_lock_release(MemoryObject *self, PyObject *arg) {
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    struct shmlink_lock *l = word_at(self, off, 8, 1);
    if (!l || !word_at(self, off + 8, 8, 1))
        return NULL;
    shmlink_lock_release(l);
    Py_RETURN_NONE;
}

static PyObject *Memory_fence(MemoryObject *self, PyObject *unused) {
    SHM_FENCE();
    Py_RETURN_NONE;
}

static PyObject *Memory_release(MemoryObject *self, PyObject *unused) {
    if (!self->has_view)
        Py_RETURN_TRUE;
    if (self->calls > 0) {
        /* Calls inside (other threads', or the one a signal handler
         * interrupted): wake them; the last to leave releases. */
        SHM_STORE_RELAXED(&self->closing, 1);
        for (int i = 0; i < MEMORY_MAX_WAITERS; i++)
            if (self->waiting[i])
                wake_word(self->waiting[i]);
        Py_RETURN_FALSE;
    }
    self->closing = 1;
    memory_finish(self);
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(Memory_view_doc,
"view(offset, length, readonly=False)\n--\n\n"
"A memoryview of length bytes at offset, backed by an exporter that keeps\n"
"the mapping mapped while anything made from it lives (counted in views).");

static PyObject *Memory_view(MemoryObject *self, PyObject *args) {
    Py_ssize_t off, len;
    int readonly = 0;
    if (!PyArg_ParseTuple(args, "nn|p", &off, &len, &readonly))
        return NULL;
    if (!self->has_view || self->closing)
        return raise_closed("segment", self->label), NULL;
    return make_view(self->view.obj, off, len, readonly || self->view.readonly,
                     (PyObject *)self, &self->views);
}

static PyObject *Memory_get_size(MemoryObject *self, void *closure) {
    return PyLong_FromSsize_t(self->has_view ? self->view.len : 0);
}

static PyObject *Memory_get_views(MemoryObject *self, void *closure) {
    return PyLong_FromLong(self->views);
}

static PyObject *Memory_get_closed(MemoryObject *self, void *closure) {
    return PyBool_FromLong(!self->has_view || self->closing);
}

static PyMethodDef Memory_methods[] = {
    {"load32", (PyCFunction)Memory_load32, METH_O,
     "load32(offset)\n--\n\nAcquire-load the aligned 32-bit word at offset."},
    {"load64", (PyCFunction)Memory_load64, METH_O,
     "load64(offset)\n--\n\nAcquire-load the aligned 64-bit word at offset."},
    {"store32", (PyCFunction)Memory_store32, METH_VARARGS,
     "store32(offset, value)\n--\n\nStore (sequentially consistent)."},
    {"store64", (PyCFunction)Memory_store64, METH_VARARGS,
     "store64(offset, value)\n--\n\nStore (sequentially consistent)."},
    {"cas32", (PyCFunction)Memory_cas32, METH_VARARGS,
     "cas32(offset, expected, desired)\n--\n\nCompare-and-swap; True if swapped."},
    {"cas64", (PyCFunction)Memory_cas64, METH_VARARGS,
     "cas64(offset, expected, desired)\n--\n\nCompare-and-swap; True if swapped."},
    {"add32", (PyCFunction)Memory_add32, METH_VARARGS,
     "add32(offset, delta)\n--\n\nAtomic fetch-add (wrapping); returns the old value."},
    {"add64", (PyCFunction)Memory_add64, METH_VARARGS,
     "add64(offset, delta)\n--\n\nAtomic fetch-add (wrapping); returns the old value."},
    {"wait32", (PyCFunction)Memory_wait32, METH_VARARGS, Memory_wait32_doc},
    {"wake32", (PyCFunction)Memory_wake32, METH_VARARGS,
     "wake32(offset, n=INT_MAX)\n--\n\nWake up to n waiters of the word; returns how many."},
    {"lock_acquire", (PyCFunction)Memory_lock_acquire, METH_VARARGS,
     Memory_lock_acquire_doc},
    {"lock_try", (PyCFunction)Memory_lock_try, METH_O,
     "lock_try(offset)\n--\n\nTake the lock if free (0) or if its holder died (1); None if held."},
    {"lock_release", (PyCFunction)Memory_lock_release, METH_O,
     "lock_release(offset)\n--\n\nRelease the lock and wake one waiter."},
    {"fence", (PyCFunction)Memory_fence, METH_NOARGS,
     "fence()\n--\n\nFull memory fence."},
    {"release", (PyCFunction)Memory_release, METH_NOARGS,
     "release()\n--\n\nClose this handle: later calls raise SegmentClosed.  Releases the "
     "buffer (True) at once, or, while wait32/lock_acquire calls are inside, wakes them "
     "(they raise SegmentClosed) and returns False: the last to leave releases it."},
    {"view", (PyCFunction)Memory_view, METH_VARARGS, Memory_view_doc},
    {NULL}};

static PyMemberDef Memory_members[] = {
    {"label", T_OBJECT, offsetof(MemoryObject, label), 0, "name used in error messages"},
    {NULL}};

static PyGetSetDef Memory_getset[] = {
    {"size", (getter)Memory_get_size, NULL, "bytes in the buffer", NULL},
    {"views", (getter)Memory_get_views, NULL, "live exporters made by view()", NULL},
    {"closed", (getter)Memory_get_closed, NULL, "True once release() was called", NULL},
    {NULL}};

static PyTypeObject MemoryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmlink._core.Memory",
    .tp_basicsize = sizeof(MemoryObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Memory(buffer)\n--\n\nAtomic access to the aligned words of a "
              "shared buffer.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Memory_init,
    .tp_dealloc = (destructor)Memory_dealloc,
    .tp_methods = Memory_methods,
    .tp_members = Memory_members,
    .tp_getset = Memory_getset,
};

/* ======================================================================== */
/* Ring: the message ring of shmlink.Queue.                                 */
/* ======================================================================== */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
    struct shmlink_ring_handle h;
    int in_view;          /* a zero-copy receive holds cons_lock */
    long long spin;       /* wait strategy of qsend/qrecv (spin_ns) */
    PyObject *label;      /* the queue's name, for error messages */
    uint64_t view_next;   /* head after the viewed record */
    uint64_t view_head;   /* head before it (after skipped wrap markers) */
    int calls;            /* calls inside (GIL-protected; see "Handle lifetime") */
    int closing;          /* close() was called: calls end, new ones are refused */
    int live_views;       /* live exporters of the open zero-copy receive */
} RingObject;

static void ring_finish(RingObject *self);

/* Every method that touches the ring runs between these two. */
static inline int ring_enter(RingObject *self) {
    if (!self->has_view || self->closing)
        return raise_closed("queue", self->label);
    self->calls++;
    return 0;
}

static inline void ring_leave(RingObject *self) {
    if (--self->calls == 0 && self->closing)
        ring_finish(self);
}

#define RING_CALL(self, expr)                                                   \
    do {                                                                       \
        if (ring_enter(self) < 0)                                              \
            return NULL;                                                       \
        PyObject *res_ = (expr);                                               \
        ring_leave(self);                                                      \
        return res_;                                                           \
    } while (0)

static int Ring_init(RingObject *self, PyObject *args, PyObject *kw) {
    PyObject *obj;
    Py_ssize_t offset, size;
    static char *kwlist[] = {"buffer", "offset", "size", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Onn", kwlist, &obj, &offset,
                                     &size))
        return -1;
    if (self->has_view) {
        PyErr_SetString(PyExc_RuntimeError, "Ring already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    self->has_view = 1;
    if (offset < 0 || size < 0 || offset % 64 != 0 || offset > self->view.len ||
        size > self->view.len - offset) {
        PyErr_SetString(PyExc_ValueError, "ring region outside the buffer");
        return -1;
    }
    int rc = shmlink_ring_attach(&self->h, (char *)self->view.buf + offset,
                                 (uint64_t)size);
    if (rc == -EPROTO) {
        PyErr_SetString(IncompatibleSegment,
                        "the queue's ring has an unknown magic or version; it "
                        "was made by another program or shmlink version");
        return -1;
    }
    if (rc < 0) {
        PyErr_SetString(CorruptSegment,
                        "the queue's ring constants are inconsistent with its "
                        "size; the segment is corrupt: remove it and recreate");
        return -1;
    }
    return 0;
}

static void Ring_dealloc(RingObject *self) {
    Py_CLEAR(self->label);
    if (self->has_view)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int corrupt(void) {
    PyErr_SetString(CorruptSegment,
                    "the queue's head, tail or a record header is "
                    "inconsistent (overwritten by a foreign or buggy "
                    "writer); remove the queue and recreate it");
    return -1;
}

/* Lock-free hint that a wait may end; the caller re-checks under its lock. */
typedef int (*wait_cond)(void *obj, uint64_t arg);

/* The spin phase of every wait: poll cond(obj, arg) with the GIL released,
 * coming back every millisecond to let signal handlers run, for up to
 * spin_ns (-1: until the deadline).  Spin ~a microsecond, then keep polling
 * but hand the CPU to anyone else runnable on it: when the peer shares our
 * core, pure spinning only delays it (measured: 110 us round trips instead
 * of 1 us); sched_yield returns at once when nobody else can run.
 * Returns 1 (cond met), 0 (spin budget spent: sleep next), -ETIMEDOUT,
 * -ECANCELED (*cancel set) or -1 (a signal handler raised). */
static int spin_phase(wait_cond cond, void *obj, uint64_t arg, const struct timespec *until,
                      long long spin_ns, const int *cancel) {
    if (spin_ns == 0)
        return 0;
    uint64_t start = now_ns();
    for (;;) {
        int met = 0;
        uint64_t slice_end = now_ns() + 1000000;
        Py_BEGIN_ALLOW_THREADS
        for (unsigned i = 0;; i++) {
            if (cond(obj, arg) || SHM_LOAD_RELAXED(cancel)) {
                met = 1;
                break;
            }
            if (i < 64)
                SHM_CPU_RELAX();
            else
                sched_yield();
            if ((i & 31) == 31) {
                uint64_t t = now_ns();
                if (t > slice_end || (spin_ns > 0 && t - start > (uint64_t)spin_ns))
                    break;
                if (until && shmlink_deadline_passed(until))
                    break;
            }
        }
        Py_END_ALLOW_THREADS
        if (SHM_LOAD_RELAXED(cancel))
            return -ECANCELED;
        if (met)
            return 1;
        if (PyErr_CheckSignals() < 0)
            return -1;
        if (until && shmlink_deadline_passed(until))
            return -ETIMEDOUT;
        if (spin_ns > 0 && now_ns() - start > (uint64_t)spin_ns)
            return 0;
    }
}

/* Wait on an eventcount until cond(self) or deadline; spin first.  cond is
 * evaluated without locks (a hint; the caller retries under the lock).
 * Returns 0 (try again), -ETIMEDOUT, or -1 (exception). */
static int cond_has_data(void *obj, uint64_t unused) {
    RingObject *r = (RingObject *)obj;
    return SHM_LOAD_ACQUIRE(&r->h.ring->tail) != SHM_LOAD_ACQUIRE(&r->h.ring->head);
}

static int cond_has_room(void *obj, uint64_t need) {
    RingObject *r = (RingObject *)obj;
    uint64_t tail = SHM_LOAD_ACQUIRE(&r->h.ring->tail);
    uint64_t head = SHM_LOAD_ACQUIRE(&r->h.ring->head);
    uint64_t used = tail - head;
    if (used > r->h.capacity)
        return 1; /* corrupt: let the locked path report it */
    /* room for the record, plus a possible wrap gap */
    uint64_t to_end = r->h.capacity - (tail % r->h.capacity);
    uint64_t gap = need > to_end ? to_end : 0;
    return used + gap + need <= r->h.capacity;
}

static int ring_wait(RingObject *self, struct shmlink_eventcount *ec,
                     wait_cond cond, uint64_t arg,
                     const struct timespec *deadline, int64_t spin_ns) {
    int met = 0;
    int sp = spin_phase(cond, self, arg, deadline, spin_ns, &self->closing);
    if (sp != 0)
        return sp == 1 ? 0 : sp;
    for (;;) {
        int rc = 0;
        Py_BEGIN_ALLOW_THREADS
        uint32_t seq = shmlink_ec_arm(ec);
        if (cond(self, arg)) {
            met = 1;
        } else if (SHM_LOAD_RELAXED(&self->closing)) {
            rc = -EINTR; /* re-checked below, with the GIL */
        } else {
            struct timespec slice;
            shmlink_deadline_min(&slice, deadline, SIGNAL_SLICE_S);
            rc = shmlink_futex_wait(&ec->seq, seq, &slice);
            if (rc == -ETIMEDOUT && !shmlink_deadline_passed(deadline))
                rc = -EINTR; /* a slice ended: run signal handlers, re-check */
        }
        Py_END_ALLOW_THREADS
        if (met)
            return 0;
        if (self->closing)
            return -ECANCELED;
        if (rc == -EINTR) {
            if (PyErr_CheckSignals() < 0)
                return -1;
            if (self->closing) /* a signal handler closed this handle */
                return -ECANCELED;
            if (cond(self, arg))
                return 0;
            continue;
        }
        if (rc == -ETIMEDOUT)
            return -ETIMEDOUT;
        return 0;
    }
}

/* Take a ring lock: 0, -ETIMEDOUT, or -1 (exception).  A lock taken from a
 * dead holder needs no repair: the ring's state is committed by single
 * stores of head/tail, so whatever the dead holder left half-done is simply
 * not part of the ring. */
static int ring_lock(RingObject *self, struct shmlink_lock *l,
                     const struct timespec *deadline, int64_t spin_ns) {
    int rc = lock_acquire_blocking(l, deadline, spin_ns ? 200000 : 0, &self->closing);
    if (rc == 1)
        rc = 0;
    if (rc == 0 && self->closing) {
        shmlink_lock_release(l); /* taken as the handle closed: give it back */
        rc = -ECANCELED;
    }
    if (rc == -ECANCELED)
        return raise_closed_while_waiting("queue", self->label);
    return rc;
}

static inline int push_locked(RingObject *self, const void *data, uint64_t len,
                              uint64_t *tail_io) {
    return shmlink_ring_push_locked(&self->h, tail_io, data, len);
}

static inline void commit_tail(RingObject *self, uint64_t tail, uint64_t count) {
    shmlink_ring_commit(&self->h, tail, count);
}

static int check_len(RingObject *self, Py_ssize_t len) {
    if ((uint64_t)len > self->h.max_message) {
        PyErr_Format(MessageTooLarge,
                     "message of %zd bytes is larger than this queue's "
                     "max_message_size of %llu; split it or create the queue "
                     "with a larger capacity / max_message_size",
                     len, (unsigned long long)self->h.max_message);
        return -1;
    }
    return 0;
}

/* A batch of bytes-like objects viewed without copying (send_many and
 * publish_many).  batch_gather takes a buffer of every item and checks each
 * length with len_ok; batch_release undoes it, also after a failure. */
struct buffer_batch {
    PyObject *fast;
    Py_buffer *bufs;
    Py_ssize_t n, got;
};

static int batch_gather(struct buffer_batch *b, PyObject *seq, const char *what,
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
    PyObject **items = PySequence_Fast_ITEMS(b->fast);
    for (; b->got < b->n; b->got++) {
        if (PyObject_GetBuffer(items[b->got], &b->bufs[b->got], PyBUF_C_CONTIGUOUS) < 0)
            return -1;
        if (len_ok(obj, b->bufs[b->got].len) < 0) {
            b->got++;
            return -1;
        }
    }
    return 0;
}

static void batch_release(struct buffer_batch *b) {
    for (Py_ssize_t i = 0; i < b->got; i++)
        PyBuffer_Release(&b->bufs[i]);
    PyMem_Free(b->bufs);
    Py_XDECREF(b->fast);
}

static int ring_len_ok(void *ring, Py_ssize_t len) {
    return check_len((RingObject *)ring, len);
}

/* Send a batch of buffers; returns how many were sent (all unless timeout),
 * or -1 with an exception.  timed_out set when the deadline passed. */
static Py_ssize_t ring_send_buffers(RingObject *self, Py_buffer *bufs,
                                    Py_ssize_t n, const struct timespec *deadline,
                                    int64_t spin_ns, int *timed_out) {
    struct shmlink_ring *r = self->h.ring;
    Py_ssize_t done = 0;
    *timed_out = 0;
    while (done < n) {
        int rc = ring_lock(self, &r->prod_lock, deadline, spin_ns);
        if (rc == -1)
            return -1;
        if (rc == -ETIMEDOUT) {
            *timed_out = 1;
            return done;
        }
        uint64_t tail0 = SHM_LOAD_RELAXED(&r->tail), tail = tail0;
        const uint64_t round_start = tail0;
        Py_ssize_t before = done;
        int prc = 0;
        while (done < n) {
            uint64_t at = tail;
            prc = push_locked(self, bufs[done].buf, (uint64_t)bufs[done].len, &tail);
            if (prc == -EAGAIN && tail != at) {
                /* Only a wrap marker went in: publish what we have, and if
                 * the ring was drained up to the marker, step over it. */
                commit_tail(self, tail, (uint64_t)(done - before));
                before = done;
                tail0 = tail;
                uint32_t pid;
                uint64_t start;
                identity(&pid, &start);
                if (shmlink_ring_consume_wrap(&self->h, at, tail, pid, start))
                    continue;
            }
            if (prc < 0)
                break;
            done++;
        }
        if (tail != tail0)
            commit_tail(self, tail, (uint64_t)(done - before));
        shmlink_lock_release(&r->prod_lock);
        if (tail != round_start)
            shmlink_ec_notify(&r->data_ec);
        if (prc == -EBADMSG)
            return corrupt();
        if (prc == -EAGAIN) {
            if (deadline && deadline->tv_sec == 0 && deadline->tv_nsec == 0) {
                *timed_out = 1; /* try_ form */
                return done;
            }
            int wrc = ring_wait(self, &r->space_ec, cond_has_room,
                                shmlink_ring_record_size((uint64_t)bufs[done].len),
                                deadline, spin_ns);
            if (wrc == -ECANCELED)
                return raise_closed_while_waiting("queue", self->label);
            if (wrc == -1)
                return -1;
            if (wrc == -ETIMEDOUT) {
                *timed_out = 1;
                return done;
            }
        }
    }
    return done;
}

/* Optional (deadline, spin_ns) arguments of a FASTCALL method, from index i. */
static int fast_wait_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t i,
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
static int parse_wait(PyObject *dl, long long spin, struct timespec *ts,
                      struct timespec **deadline) {
    int err;
    *deadline = parse_deadline(dl, ts, &err);
    return err ? -1 : 0;
}

static const struct timespec zero_deadline = {0, 0};

PyDoc_STRVAR(Ring_send_doc,
"send(data, deadline=None, spin_ns=0)\n--\n\n"
"Append one message, waiting for room until deadline.  True when sent,\n"
"False on timeout.  deadline 0 means do not wait.");

static PyObject *Ring_send_impl(RingObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer b;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "send() takes the message as its first argument");
        return NULL;
    }
    struct timespec ts, *deadline;
    long long spin;
    if (fast_wait_args(args, nargs, 1, &ts, &deadline, &spin) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    PyObject *res = NULL;
    if (check_len(self, b.len) == 0) {
        int timed_out;
        Py_ssize_t n = ring_send_buffers(self, &b, 1, deadline, spin, &timed_out);
        if (n >= 0)
            res = PyBool_FromLong(n == 1);
    }
    PyBuffer_Release(&b);
    return res;
}

static PyObject *Ring_try_send_impl(RingObject *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    PyObject *res = NULL;
    if (check_len(self, b.len) == 0) {
        int timed_out;
        /* deadline 0: never wait for room; spin_ns 1: a lock held by another
         * producer for a memcpy is waited for briefly (ring_lock spins). */
        Py_ssize_t n = ring_send_buffers(self, &b, 1, &zero_deadline, 1, &timed_out);
        if (n >= 0)
            res = PyBool_FromLong(n == 1);
    }
    PyBuffer_Release(&b);
    return res;
}

PyDoc_STRVAR(Ring_send_many_doc,
"send_many(messages, deadline=None, spin_ns=0)\n--\n\n"
"Append each bytes-like object of the sequence, in order, as few lock\n"
"round trips as room allows; or each row of a 2-D C-contiguous buffer.\n"
"Returns how many were sent: all of them, or fewer when the deadline passed.");

static PyObject *Ring_send_many_impl(RingObject *self, PyObject *args) {
    PyObject *seq, *dl = Py_None;
    long long spin = 0;
    if (!PyArg_ParseTuple(args, "O|OL", &seq, &dl, &spin))
        return NULL;
    struct timespec ts, *deadline;
    if (parse_wait(dl, spin, &ts, &deadline) < 0)
        return NULL;
    if (PyObject_CheckBuffer(seq) && !PyBytes_Check(seq) && !PyByteArray_Check(seq)) {
        /* A 2-D C-contiguous buffer (a numpy array of records): one message
         * per row, without making a Python object per message. */
        Py_buffer whole;
        if (PyObject_GetBuffer(seq, &whole, PyBUF_ND | PyBUF_C_CONTIGUOUS) < 0)
            return NULL;
        if (whole.ndim != 2) {
            PyBuffer_Release(&whole);
            PyErr_SetString(PyExc_TypeError,
                            "send_many() takes a list of bytes-like objects, or a 2-D "
                            "C-contiguous buffer whose rows are the messages");
            return NULL;
        }
        Py_ssize_t rows = whole.shape[0], row = whole.shape[1] * whole.itemsize;
        Py_ssize_t sent = -1;
        Py_buffer *rbufs = PyMem_Calloc(rows ? (size_t)rows : 1, sizeof(Py_buffer));
        if (!rbufs) {
            PyBuffer_Release(&whole);
            return PyErr_NoMemory();
        }
        if (check_len(self, row) == 0) {
            for (Py_ssize_t i = 0; i < rows; i++) {
                rbufs[i].buf = (char *)whole.buf + i * row;
                rbufs[i].len = row;
            }
            int timed_out;
            sent = ring_send_buffers(self, rbufs, rows, deadline, spin, &timed_out);
        }
        PyMem_Free(rbufs);
        PyBuffer_Release(&whole);
        return sent < 0 ? NULL : PyLong_FromSsize_t(sent);
    }
    struct buffer_batch b;
    Py_ssize_t sent = -1;
    if (batch_gather(&b, seq, "send_many() takes an iterable of bytes-like objects",
                     ring_len_ok, self) == 0) {
        int timed_out;
        sent = ring_send_buffers(self, b.bufs, b.n, deadline, spin, &timed_out);
    }
    batch_release(&b);
    return sent < 0 ? NULL : PyLong_FromSsize_t(sent);
}

/* What one locked receive does with each record. */
enum pop_mode { POP_BYTES, POP_INTO };

/* Pop up to max records with cons_lock held.  For POP_BYTES appends bytes
 * to list; for POP_INTO copies one record into into/into_len and stores its
 * length in *out_len.  Returns records taken, or -EBADMSG, or -EMSGSIZE
 * (POP_INTO: record larger than the buffer; *out_len = its length), or -1
 * (Python exception). */
static Py_ssize_t pop_locked(RingObject *self, Py_ssize_t max, PyObject *list,
                             PyObject **one, void *into, Py_ssize_t into_len,
                             Py_ssize_t *out_len, int *moved) {
    struct shmlink_ring *r = self->h.ring;
    uint64_t head = SHM_LOAD_RELAXED(&r->head);
    uint64_t head0 = head;
    /* SYNC: pairs with the producers' release of tail in commit_tail. */
    uint64_t tail = SHM_LOAD_ACQUIRE(&r->tail);
    Py_ssize_t taken = 0;
    Py_ssize_t result = 0;
    while (taken < max) {
        int64_t len = shmlink_ring_peek(&self->h, &head, tail);
        if (len == -EAGAIN)
            break;
        if (len < 0) {
            result = -EBADMSG;
            break;
        }
        const uint8_t *src = self->h.data + (head % self->h.capacity) + SHMLINK_RECORD_HEADER;
        if (list || one) {
            PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
            if (!b) {
                result = -1;
                break;
            }
            if (len > 65536) {
                Py_BEGIN_ALLOW_THREADS
                memcpy(PyBytes_AS_STRING(b), src, (size_t)len);
                Py_END_ALLOW_THREADS
            } else {
                memcpy(PyBytes_AS_STRING(b), src, (size_t)len);
            }
            if (one) {
                *one = b;
            } else {
                int arc = PyList_Append(list, b);
                Py_DECREF(b);
                if (arc < 0) {
                    result = -1;
                    break;
                }
            }
        } else {
            *out_len = (Py_ssize_t)len;
            if (len > into_len) {
                result = -EMSGSIZE;
                break;
            }
            memcpy(into, src, (size_t)len);
        }
        head += shmlink_ring_record_size((uint64_t)len);
        taken++;
    }
    if (head != head0) {
        /* Counted before the commit (a kill in between leaves `received`
         * ahead, so len() reads low, never high). */
        SHM_STORE_RELAXED(&r->received, SHM_LOAD_RELAXED(&r->received) + (uint64_t)taken);
        /* SYNC: frees the space; pairs with the producers' acquire of head
         * in push_locked / cond_has_room. */
        SHM_STORE_RELEASE(&r->head, head);
        *moved = 1;
    }
    /* Messages taken before a corrupt record are delivered; the corrupt
     * record stays at head and the next receive reports it. */
    if (result == -EBADMSG && taken > 0)
        return taken;
    return result < 0 ? result : taken;
}

/* Receive: blocks until at least one record or the deadline.  Returns the
 * count taken (0 on timeout) or -1 with an exception. */
static Py_ssize_t ring_recv(RingObject *self, Py_ssize_t max, PyObject *list,
                            PyObject **one, void *into, Py_ssize_t into_len,
                            Py_ssize_t *out_len, const struct timespec *deadline,
                            int64_t spin_ns) {
    struct shmlink_ring *r = self->h.ring;
    for (;;) {
        int rc = ring_lock(self, &r->cons_lock, deadline, spin_ns);
        if (rc == -1)
            return -1;
        if (rc == -ETIMEDOUT)
            return 0;
        int moved = 0;
        Py_ssize_t n = pop_locked(self, max, list, one, into, into_len, out_len, &moved);
        shmlink_lock_release(&r->cons_lock);
        if (moved)
            shmlink_ec_notify(&r->space_ec);
        if (n == -1)
            return -1;
        if (n == -EBADMSG)
            return corrupt();
        if (n == -EMSGSIZE) {
            PyErr_Format(MessageTooLarge,
                         "the next message has %zd bytes but the buffer holds "
                         "only %zd; it stays in the queue: receive it into a "
                         "larger buffer",
                         *out_len, into_len);
            return -1;
        }
        if (n > 0)
            return n;
        if (deadline && deadline->tv_sec == 0 && deadline->tv_nsec == 0)
            return 0;
        int wrc = ring_wait(self, &r->data_ec, cond_has_data, 0, deadline, spin_ns);
        if (wrc == -ECANCELED)
            return raise_closed_while_waiting("queue", self->label);
        if (wrc == -1)
            return -1;
        if (wrc == -ETIMEDOUT)
            return 0;
    }
}

PyDoc_STRVAR(Ring_recv_doc,
"recv(deadline=None, spin_ns=0)\n--\n\n"
"Take the oldest message as bytes, waiting until deadline; None on timeout.");

/* Receive one message as bytes (or None on timeout). */
static PyObject *ring_recv_one(RingObject *self, const struct timespec *deadline,
                               long long spin) {
    PyObject *one = NULL;
    Py_ssize_t n = ring_recv(self, 1, NULL, &one, NULL, 0, NULL, deadline, spin);
    if (n > 0)
        return one;
    Py_XDECREF(one);
    if (n == 0)
        Py_RETURN_NONE;
    return NULL;
}

static PyObject *Ring_recv_impl(RingObject *self, PyObject *const *args, Py_ssize_t nargs) {
    struct timespec ts, *deadline;
    long long spin;
    if (fast_wait_args(args, nargs, 0, &ts, &deadline, &spin) < 0)
        return NULL;
    return ring_recv_one(self, deadline, spin);
}

static PyObject *Ring_try_recv_impl(RingObject *self, PyObject *unused) {
    return ring_recv_one(self, &zero_deadline, 1);
}

PyDoc_STRVAR(Ring_recv_many_doc,
"recv_many(max_count, deadline=None, spin_ns=0)\n--\n\n"
"Wait until at least one message is there (or the deadline), then take up\n"
"to max_count in one locked pass.  Returns a list (empty on timeout).");

static PyObject *Ring_recv_many_impl(RingObject *self, PyObject *args) {
    Py_ssize_t max;
    PyObject *dl = Py_None;
    long long spin = 0;
    if (!PyArg_ParseTuple(args, "n|OL", &max, &dl, &spin))
        return NULL;
    if (max < 1) {
        PyErr_SetString(PyExc_ValueError, "max_count must be at least 1");
        return NULL;
    }
    struct timespec ts, *deadline;
    if (parse_wait(dl, spin, &ts, &deadline) < 0)
        return NULL;
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    Py_ssize_t n = ring_recv(self, max, list, NULL, NULL, 0, NULL, deadline, spin);
    if (n < 0) {
        Py_DECREF(list);
        return NULL;
    }
    return list;
}

PyDoc_STRVAR(Ring_recv_into_doc,
"recv_into(buffer, deadline=None, spin_ns=0)\n--\n\n"
"Copy the oldest message into a writable buffer; returns its length, or\n"
"None on timeout.  A message larger than the buffer stays in the queue and\n"
"MessageTooLarge is raised.");

static PyObject *Ring_recv_into_impl(RingObject *self, PyObject *args) {
    Py_buffer b;
    PyObject *dl = Py_None;
    long long spin = 0;
    if (!PyArg_ParseTuple(args, "w*|OL", &b, &dl, &spin))
        return NULL;
    PyObject *res = NULL;
    struct timespec ts, *deadline;
    if (parse_wait(dl, spin, &ts, &deadline) == 0) {
        Py_ssize_t len = 0;
        Py_ssize_t n = ring_recv(self, 1, NULL, NULL, b.buf, b.len, &len, deadline, spin);
        if (n > 0)
            res = PyLong_FromSsize_t(len);
        else if (n == 0)
            res = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&b);
    return res;
}

PyDoc_STRVAR(Ring_view_begin_doc,
"view_begin(deadline=None, spin_ns=0)\n--\n\n"
"Zero-copy receive, first half: wait for a message and hold the consumer\n"
"lock; returns (offset, length) of its payload within the buffer, or None\n"
"on timeout.  Other consumers wait until view_end() or view_abort().");

static PyObject *Ring_view_begin_impl(RingObject *self, PyObject *args) {
    PyObject *dl = Py_None;
    long long spin = 0;
    if (!PyArg_ParseTuple(args, "|OL", &dl, &spin))
        return NULL;
    if (self->in_view) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a zero-copy receive is already open on this handle; "
                        "release it before taking the next");
        return NULL;
    }
    struct timespec ts, *deadline;
    if (parse_wait(dl, spin, &ts, &deadline) < 0)
        return NULL;
    struct shmlink_ring *r = self->h.ring;
    for (;;) {
        int rc = ring_lock(self, &r->cons_lock, deadline, spin);
        if (rc == -1)
            return NULL;
        if (rc == -ETIMEDOUT)
            Py_RETURN_NONE;
        uint64_t head = SHM_LOAD_RELAXED(&r->head);
        uint64_t tail = SHM_LOAD_ACQUIRE(&r->tail); /* SYNC: producers' tail release */
        int64_t len = shmlink_ring_peek(&self->h, &head, tail);
        if (len >= 0) {
            self->in_view = 1;
            self->view_head = head;
            self->view_next = head + shmlink_ring_record_size((uint64_t)len);
            Py_ssize_t base = (Py_ssize_t)((self->h.data - (uint8_t *)self->view.buf) +
                                           (Py_ssize_t)(head % self->h.capacity) +
                                           SHMLINK_RECORD_HEADER);
            return Py_BuildValue("nn", base, (Py_ssize_t)len);
        }
        int moved = 0;
        if (len == -EAGAIN && head != SHM_LOAD_RELAXED(&r->head)) {
            SHM_STORE_RELEASE(&r->head, head); /* consumed a wrap marker */
            moved = 1;
        }
        shmlink_lock_release(&r->cons_lock);
        if (moved)
            shmlink_ec_notify(&r->space_ec);
        if (len != -EAGAIN) {
            corrupt();
            return NULL;
        }
        if (deadline && deadline->tv_sec == 0 && deadline->tv_nsec == 0)
            Py_RETURN_NONE;
        int wrc = ring_wait(self, &r->data_ec, cond_has_data, 0, deadline, spin);
        if (wrc == -ECANCELED)
            return raise_closed_while_waiting("queue", self->label), NULL;
        if (wrc == -1)
            return NULL;
        if (wrc == -ETIMEDOUT)
            Py_RETURN_NONE;
    }
}

/* End the open zero-copy receive (the caller checked live_views). */
static void ring_view_end(RingObject *self, int consume) {
    struct shmlink_ring *r = self->h.ring;
    self->in_view = 0;
    if (consume) {
        SHM_STORE_RELAXED(&r->received, SHM_LOAD_RELAXED(&r->received) + 1);
        /* SYNC: frees the record; pairs with the producers' head acquire. */
        SHM_STORE_RELEASE(&r->head, self->view_next);
    } else if (self->view_head != SHM_LOAD_RELAXED(&r->head)) {
        SHM_STORE_RELEASE(&r->head, self->view_head); /* skipped wrap markers */
    }
    shmlink_lock_release(&r->cons_lock);
    shmlink_ec_notify(&r->space_ec);
}

static PyObject *Ring_view_end(RingObject *self, PyObject *args) {
    int consume = 1;
    if (!PyArg_ParseTuple(args, "|p", &consume))
        return NULL;
    if (!self->in_view || !self->has_view)
        Py_RETURN_NONE;
    if (self->live_views > 0)
        return raise_views_alive("message view", self->live_views), NULL;
    ring_view_end(self, consume);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Ring_view_doc,
"view(offset, length)\n--\n\n"
"A read-only memoryview of the open zero-copy receive's payload (from\n"
"view_begin).  view_end() raises BufferError while anything made from it\n"
"(a numpy array, a slice) is alive.");

static PyObject *Ring_view(RingObject *self, PyObject *args) {
    Py_ssize_t off, len;
    if (!PyArg_ParseTuple(args, "nn", &off, &len))
        return NULL;
    if (!self->has_view || self->closing)
        return raise_closed("queue", self->label), NULL;
    if (!self->in_view) {
        PyErr_SetString(PyExc_RuntimeError, "no zero-copy receive is open on this handle");
        return NULL;
    }
    return make_view(self->view.obj, off, len, 1, (PyObject *)self, &self->live_views);
}

static PyObject *Ring_stats_impl(RingObject *self, PyObject *unused) {
    struct shmlink_ring *r = self->h.ring;
    uint64_t head = SHM_LOAD_ACQUIRE(&r->head), tail = SHM_LOAD_ACQUIRE(&r->tail);
    uint64_t sent = SHM_LOAD_RELAXED(&r->sent), received = SHM_LOAD_RELAXED(&r->received);
    uint64_t used = tail - head;
    if (used > self->h.capacity)
        used = self->h.capacity; /* inconsistent: report full, recv reports corruption */
    return Py_BuildValue("{sKsKsKsKsKsI}", "capacity", (unsigned long long)self->h.capacity,
                         "max_message", (unsigned long long)self->h.max_message,
                         "used", (unsigned long long)used, "sent", (unsigned long long)sent,
                         "received", (unsigned long long)received,
                         "producer_pid", SHM_LOAD_RELAXED(&r->prod_lock.owner));
}

/* No call is inside a closing ring any more: give the mapping back. */
static void ring_finish(RingObject *self) {
    if (!self->has_view)
        return;
    if (self->in_view)
        ring_view_end(self, 0); /* the message stays for the next receive */
    self->in_view = 0;
    PyBuffer_Release(&self->view);
    self->has_view = 0;
}

static PyObject *Ring_close(RingObject *self, PyObject *unused) {
    if (!self->has_view)
        Py_RETURN_TRUE;
    SHM_STORE_RELAXED(&self->closing, 1);
    if (self->calls > 0) {
        /* Calls inside: wake every word they may sleep on; each sees
         * `closing`, raises SegmentClosed, and the last one out releases. */
        struct shmlink_ring *r = self->h.ring;
        wake_word(&r->data_ec.seq);
        wake_word(&r->space_ec.seq);
        wake_word(&r->prod_lock.owner);
        wake_word(&r->cons_lock.owner);
        Py_RETURN_FALSE;
    }
    ring_finish(self);
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(ring_init_doc,
"ring_init(buffer, offset, size, max_message=0)\n--\n\n"
"Lay out an empty ring in buffer[offset:offset+size] (before the segment\n"
"is marked ready).  Returns (capacity, max_message).");

static PyObject *ring_init(PyObject *mod, PyObject *args) {
    Py_buffer b;
    Py_ssize_t offset, size;
    unsigned long long max_message = 0;
    if (!PyArg_ParseTuple(args, "w*nn|K", &b, &offset, &size, &max_message))
        return NULL;
    PyObject *res = NULL;
    if (offset < 0 || size < 0 || offset % 64 || offset > b.len || size > b.len - offset) {
        PyErr_SetString(PyExc_ValueError, "ring region outside the buffer");
    } else if (max_message > 0xFFFFFFF0ull) {
        PyErr_SetString(PyExc_ValueError, "max_message_size must be below 4 GiB");
    } else if (shmlink_ring_init((char *)b.buf + offset, (uint64_t)size, max_message) < 0) {
        PyErr_SetString(PyExc_ValueError, "ring region too small");
    } else {
        struct shmlink_ring *r = (struct shmlink_ring *)((char *)b.buf + offset);
        uint64_t mm = r->max_message > 0xFFFFFFF0ull ? 0xFFFFFFF0ull : r->max_message;
        r->max_message = mm;
        res = Py_BuildValue("KK", (unsigned long long)r->capacity, (unsigned long long)mm);
    }
    PyBuffer_Release(&b);
    return res;
}

/* ---- Queue.send / Queue.recv in one C call ----------------------------- */

PyDoc_STRVAR(Ring_qsend_doc,
"qsend(data, *, timeout=None)\n--\n\n"
"Queue.send in one C call: append one message, waiting while the queue is\n"
"full; raise shmlink.Timeout if there is no room within timeout seconds.");

static PyObject *Ring_qsend_impl(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
    PyObject *timeout;
    if (kw_only_timeout("send(data, *, timeout=None)", args, nargs, kwnames, 1, &timeout) < 0)
        return NULL;
    struct timespec ts, *deadline;
    if (parse_timeout(timeout, &ts, &deadline) < 0)
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    Py_ssize_t n = -1;
    if (check_len(self, b.len) == 0) {
        int timed_out;
        n = ring_send_buffers(self, &b, 1, deadline, self->spin, &timed_out);
    }
    PyBuffer_Release(&b);
    if (n < 0)
        return NULL;
    if (n == 0) {
        PyErr_Format(Timeout, "queue %R stayed full for %R s; nothing was sent",
                     self->label ? self->label : Py_None, timeout ? timeout : Py_None);
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Ring_qrecv_doc,
"qrecv(*, timeout=None)\n--\n\n"
"Queue.recv in one C call: take the oldest message as bytes, waiting until\n"
"one arrives; raise shmlink.Timeout if none does within timeout seconds.");

static PyObject *Ring_qrecv_impl(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
    PyObject *timeout;
    if (kw_only_timeout("recv(*, timeout=None)", args, nargs, kwnames, 0, &timeout) < 0)
        return NULL;
    struct timespec ts, *deadline;
    if (parse_timeout(timeout, &ts, &deadline) < 0)
        return NULL;
    PyObject *one = NULL;
    Py_ssize_t n = ring_recv(self, 1, NULL, &one, NULL, 0, NULL, deadline, self->spin);
    if (n > 0)
        return one;
    Py_XDECREF(one);
    if (n == 0)
        PyErr_Format(Timeout, "queue %R: no message within %R s",
                     self->label ? self->label : Py_None, timeout ? timeout : Py_None);
    return NULL;
}

/* The methods: each runs its _impl between ring_enter and ring_leave. */
static PyObject *Ring_send(RingObject *self, PyObject *const *args, Py_ssize_t nargs) {
    RING_CALL(self, Ring_send_impl(self, args, nargs));
}
static PyObject *Ring_try_send(RingObject *self, PyObject *arg) {
    RING_CALL(self, Ring_try_send_impl(self, arg));
}
static PyObject *Ring_send_many(RingObject *self, PyObject *args) {
    RING_CALL(self, Ring_send_many_impl(self, args));
}
static PyObject *Ring_recv(RingObject *self, PyObject *const *args, Py_ssize_t nargs) {
    RING_CALL(self, Ring_recv_impl(self, args, nargs));
}
static PyObject *Ring_try_recv(RingObject *self, PyObject *unused) {
    RING_CALL(self, Ring_try_recv_impl(self, unused));
}
static PyObject *Ring_recv_many(RingObject *self, PyObject *args) {
    RING_CALL(self, Ring_recv_many_impl(self, args));
}
static PyObject *Ring_recv_into(RingObject *self, PyObject *args) {
    RING_CALL(self, Ring_recv_into_impl(self, args));
}
static PyObject *Ring_view_begin(RingObject *self, PyObject *args) {
    RING_CALL(self, Ring_view_begin_impl(self, args));
}
static PyObject *Ring_stats(RingObject *self, PyObject *unused) {
    RING_CALL(self, Ring_stats_impl(self, unused));
}
static PyObject *Ring_qsend(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
    RING_CALL(self, Ring_qsend_impl(self, args, nargs, kwnames));
}
static PyObject *Ring_qrecv(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
    RING_CALL(self, Ring_qrecv_impl(self, args, nargs, kwnames));
}

static PyObject *Ring_get_closed(RingObject *self, void *c) {
    return PyBool_FromLong(!self->has_view || self->closing);
}

static PyObject *Ring_get_capacity(RingObject *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->h.capacity);
}
static PyObject *Ring_get_max_message(RingObject *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->h.max_message);
}

static PyMethodDef Ring_methods[] = {
    {"send", (PyCFunction)(void (*)(void))Ring_send, METH_FASTCALL, Ring_send_doc},
    {"qsend", (PyCFunction)(void (*)(void))Ring_qsend, METH_FASTCALL | METH_KEYWORDS,
     Ring_qsend_doc},
    {"qrecv", (PyCFunction)(void (*)(void))Ring_qrecv, METH_FASTCALL | METH_KEYWORDS,
     Ring_qrecv_doc},
    {"try_send", (PyCFunction)Ring_try_send, METH_O,
     "try_send(data)\n--\n\nAppend one message if there is room now; True if sent."},
    {"send_many", (PyCFunction)Ring_send_many, METH_VARARGS, Ring_send_many_doc},
    {"recv", (PyCFunction)(void (*)(void))Ring_recv, METH_FASTCALL, Ring_recv_doc},
    {"try_recv", (PyCFunction)Ring_try_recv, METH_NOARGS,
     "try_recv()\n--\n\nTake the oldest message if there is one now, else None."},
    {"recv_many", (PyCFunction)Ring_recv_many, METH_VARARGS, Ring_recv_many_doc},
    {"recv_into", (PyCFunction)Ring_recv_into, METH_VARARGS, Ring_recv_into_doc},
    {"view_begin", (PyCFunction)Ring_view_begin, METH_VARARGS, Ring_view_begin_doc},
    {"view_end", (PyCFunction)Ring_view_end, METH_VARARGS,
     "view_end(consume=True)\n--\n\nFinish a zero-copy receive: consume the "
     "record (or leave it, consume=False) and release the consumer lock."},
    {"stats", (PyCFunction)Ring_stats, METH_NOARGS,
     "stats()\n--\n\nA dict of capacity, max_message, used bytes, sent and received."},
    {"view", (PyCFunction)Ring_view, METH_VARARGS, Ring_view_doc},
    {"close", (PyCFunction)Ring_close, METH_NOARGS,
     "close()\n--\n\nClose the handle: later calls raise SegmentClosed.  Releases the "
     "buffer (ending an open zero-copy receive unconsumed) and returns True, or, while "
     "calls are inside, wakes them (they raise SegmentClosed) and returns False: the last "
     "to leave releases it."},
    {NULL}};

#include <structmember.h>
static PyMemberDef Ring_members[] = {
    {"spin", T_LONGLONG, offsetof(RingObject, spin), 0,
     "spin_ns used by qsend/qrecv: 0 block, -1 spin, >0 hybrid"},
    {"label", T_OBJECT, offsetof(RingObject, label), 0, "name used in error messages"},
    {NULL}};

static PyGetSetDef Ring_getset[] = {
    {"capacity", (getter)Ring_get_capacity, NULL, "ring bytes", NULL},
    {"max_message", (getter)Ring_get_max_message, NULL, "largest payload", NULL},
    {"closed", (getter)Ring_get_closed, NULL, "True once close() was called", NULL},
    {NULL}};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmlink._core.Ring",
    .tp_basicsize = sizeof(RingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ring(buffer, offset, size)\n--\n\nA handle on the message ring "
              "laid out by ring_init in buffer[offset:offset+size].",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ring_init,
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_methods = Ring_methods,
    .tp_members = Ring_members,
    .tp_getset = Ring_getset,
};

/* ======================================================================== */
/* Topic and Subscriber: one-to-many broadcast (shmlink.Topic).             */
/*                                                                          */
/* The protocol lives in include/shmlink.h (shmlink_topic_*); this is how   */
/* Python drives it: one C call per message, batch forms that loop in C,    */
/* waits with the GIL released that let signal handlers run, and handles    */
/* that another thread may close while a call of theirs waits.              */
/* ======================================================================== */

#include <sched.h>
#include <structmember.h> /* PyMemberDef types (T_LONGLONG ...) */

/* shmlink.errors: SegmentClosed, TooManyParticipants, Timeout */
static PyObject *TopicClosedError, *TopicFullError, *TopicTimeoutError;

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
    struct shmlink_topic_handle h;
    PyObject *name;
    long long spin_ns; /* how long a blocked call spins before it sleeps; -1: forever */
    int calls;         /* calls inside (GIL-protected; see "Handle lifetime") */
    int closing;       /* close() was called: calls end, new ones are refused */
} TopicObject;

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
    struct shmlink_topic_handle h;
    PyObject *name;
    long long spin_ns;
    int slot;
    uint32_t pid, gen;
    /* private copies: authoritative; the slot's copies are for publishers */
    uint64_t cursor, next_seq, missed, received;
    int busy;    /* a call is in progress (it may be waiting, GIL released) */
    int cancel;  /* interrupt(): waits end at once, receives return nothing */
    int closing; /* close() from another thread: the waiting call raises */
    int in_view; /* a zero-copy receive is open */
    int live_views; /* live exporters of the open zero-copy receive */
    uint64_t view_pos, view_next, view_seq;
} SubscriberObject;

static PyTypeObject TopicType, SubscriberType;

static int topic_corrupt(PyObject *name) {
    PyErr_Format(CorruptSegment,
                 "topic %R: its positions, subscriber table or a record header are "
                 "inconsistent (overwritten by a foreign or buggy writer); remove the "
                 "topic and recreate it",
                 name);
    return -1;
}

static int topic_closed_while_waiting(PyObject *name) {
    PyErr_Format(TopicClosedError,
                 "topic %R was closed by another thread while this call waited", name);
    return -1;
}

/* Wait on an event count until cond(obj, arg), *cancel, or `until`; spin
 * first (GIL released, back every millisecond for signal handlers).  cond
 * is a lock-free hint: the caller re-checks.  Returns 0 (re-check),
 * -ETIMEDOUT, -ECANCELED or -1 (a signal handler raised). */

/* Longest single futex sleep: the bound on how late a signal that slipped
 * in just before the sleep is handled. */
#define TOPIC_SIGNAL_SLICE_S 0.25

static int topic_wait(struct shmlink_eventcount *ec, wait_cond cond, void *obj, uint64_t arg,
                      const struct timespec *until, long long spin_ns, const int *cancel) {
    int sp = spin_phase(cond, obj, arg, until, spin_ns, cancel);
    if (sp != 0)
        return sp == 1 ? 0 : sp;
    for (;;) {
        /* A signal that arrived while this thread was not inside the futex
         * call did not interrupt it: look for one before every sleep, and
         * sleep in slices so that one landing just before the call waits
         * one slice at most. */
        if (PyErr_CheckSignals() < 0)
            return -1;
        struct timespec slice;
        shmlink_deadline_min(&slice, until, TOPIC_SIGNAL_SLICE_S);
        int rc = 0, met = 0;
        Py_BEGIN_ALLOW_THREADS
        uint32_t seen = shmlink_ec_arm(ec);
        if (cond(obj, arg) || SHM_LOAD_RELAXED(cancel))
            met = 1;
        else
            rc = shmlink_futex_wait(&ec->seq, seen, &slice);
        Py_END_ALLOW_THREADS
        if (SHM_LOAD_RELAXED(cancel))
            return -ECANCELED;
        if (met)
            return 0;
        if (rc == -EINTR)
            continue;
        if (rc == -ETIMEDOUT) {
            if (until && shmlink_deadline_passed(until))
                return -ETIMEDOUT;
            continue;
        }
        return 0; /* woken, or -EAGAIN: seq moved; the caller re-checks */
    }
}


/* ------------------------------------------------------------------------ */
/* Topic: the publisher side, subscribe, and state.                         */
/* ------------------------------------------------------------------------ */

static int Topic_init(TopicObject *self, PyObject *args, PyObject *kw) {
    PyObject *obj, *name = Py_None;
    Py_ssize_t offset, size;
    static char *kwlist[] = {"buffer", "offset", "size", "name", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Onn|O", kwlist, &obj, &offset, &size, &name))
        return -1;
    if (self->has_view) {
        PyErr_SetString(PyExc_RuntimeError, "Topic already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    self->has_view = 1;
    Py_XSETREF(self->name, Py_NewRef(name));
    if (offset < 0 || size < 0 || offset % 64 != 0 || offset > self->view.len ||
        size > self->view.len - offset) {
        PyErr_SetString(PyExc_ValueError, "topic region outside the buffer");
        return -1;
    }
    int rc = shmlink_topic_attach(&self->h, (char *)self->view.buf + offset, (uint64_t)size);
    if (rc == -EPROTO) {
        PyErr_Format(IncompatibleSegment,
                     "topic %R has an unknown magic or version; it was made by another "
                     "program or shmlink version",
                     name);
        return -1;
    }
    if (rc < 0) {
        PyErr_Format(CorruptSegment,
                     "topic %R: its constants are inconsistent with its size; the segment "
                     "is corrupt: remove it and recreate it",
                     name);
        return -1;
    }
    self->spin_ns = 50000;
    return 0;
}

static void Topic_dealloc(TopicObject *self) {
    if (self->has_view)
        PyBuffer_Release(&self->view);
    Py_XDECREF(self->name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int topic_ready(TopicObject *self) {
    if (!self->has_view || self->closing) {
        raise_closed("topic", self->name);
        return 0;
    }
    return 1;
}

static void topic_finish(TopicObject *self) {
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
}

#define TOPIC_CALL(self, expr)                                                  \
    do {                                                                       \
        if (!topic_ready(self))                                                \
            return NULL;                                                       \
        self->calls++;                                                         \
        PyObject *res_ = (expr);                                               \
        if (--self->calls == 0 && self->closing)                               \
            topic_finish(self);                                                \
        return res_;                                                           \
    } while (0)

static int topic_check_len(TopicObject *self, Py_ssize_t len) {
    if ((uint64_t)len > self->h.max_message) {
        PyErr_Format(MessageTooLarge,
                     "message of %zd bytes is larger than topic %R's max_message_size of "
                     "%llu; split it, or create the topic with a larger capacity / "
                     "max_message_size",
                     len, self->name, (unsigned long long)self->h.max_message);
        return -1;
    }
    return 0;
}

static int topic_len_ok(void *topic, Py_ssize_t len) {
    return topic_check_len((TopicObject *)topic, len);
}

/* Take pub_lock, sleeping in slices so that a close from another thread is
 * noticed.  0, 1 (taken over from a holder that died), -ETIMEDOUT,
 * -ECANCELED (the handle is closing) or -1 (exception). */
static int topic_lock(TopicObject *self, const struct timespec *deadline, int spin) {
    struct shmlink_lock *l = &self->h.topic->pub_lock;
    uint32_t pid;
    uint64_t start;
    identity(&pid, &start);
    if (shmlink_lock_try(l, pid, start) == 0)
        return 0;
    for (;;) {
        if (PyErr_CheckSignals() < 0) /* see topic_wait */
            return -1;
        struct timespec slice;
        shmlink_deadline_min(&slice, deadline, 0.05);
        int rc = lock_acquire_blocking(l, &slice, spin ? 200000 : 0, &self->closing);
        if (rc >= 0 && self->closing) {
            shmlink_lock_release(l); /* taken as the handle closed: give it back */
            return -ECANCELED;
        }
        if (rc != -ETIMEDOUT)
            return rc;
        if (self->closing)
            return -ECANCELED;
        if (deadline && shmlink_deadline_passed(deadline))
            return -ETIMEDOUT;
    }
}

/* Lock-free hint for a blocked lossless publisher: every active cursor is
 * at or past `required` (or something needs the locked path's attention). */
static int cond_pub_room(void *obj, uint64_t required) {
    TopicObject *self = (TopicObject *)obj;
    if (SHM_LOAD_RELAXED(&self->closing))
        return 1;
    uint64_t floor, tail = SHM_LOAD_ACQUIRE(&self->h.topic->tail);
    if (shmlink_topic_scan_floor(&self->h, tail, &floor, 0) < 0)
        return 1;
    return floor >= required;
}

/* Publish n buffers in order.  Returns how many were published (all of
 * them unless *timed_out), or -1 with an exception. */
static Py_ssize_t topic_publish_buffers(TopicObject *self, Py_buffer *bufs, Py_ssize_t n,
                                        const struct timespec *deadline, int *timed_out) {
    const struct shmlink_topic_handle *h = &self->h;
    struct shmlink_topic *t = h->topic;
    int lossless = h->mode == SHMLINK_TOPIC_LOSSLESS;
    int try_only = no_wait(deadline);
    int check_alive = 0;
    Py_ssize_t done = 0;
    *timed_out = 0;
    while (done < n) {
        int rc = topic_lock(self, deadline, self->spin_ns != 0 || try_only);
        if (rc == -1)
            return -1;
        if (rc == -ECANCELED)
            return topic_closed_while_waiting(self->name);
        if (rc == -ETIMEDOUT) {
            *timed_out = 1;
            return done;
        }
        int prc = 0, rescanned = 0, any = 0;
        if (rc == 1 && shmlink_topic_repair(h) < 0)
            prc = -EBADMSG;
        uint64_t committed = SHM_LOAD_RELAXED(&t->tail), tail = committed;
        uint64_t head = SHM_LOAD_RELAXED(&t->head), seq = SHM_LOAD_RELAXED(&t->published);
        uint64_t floor = lossless ? SHM_LOAD_RELAXED(&t->floor) : UINT64_MAX;
        uint64_t required = 0;
        if (head > tail || tail - head > h->capacity || ((head | tail) & 15u))
            prc = -EBADMSG;
        while (prc == 0 && done < n) {
            int r = shmlink_topic_put(h, &tail, committed, &head, floor, bufs[done].buf,
                                      (uint32_t)bufs[done].len, seq, &required);
            if (r == 0) {
                seq++;
                done++;
                rescanned = 0;
            } else if (r == 1) {
                /* a wrap marker: the record goes at the start of the ring */
            } else if (r == -EINPROGRESS) {
                shmlink_topic_commit(h, tail, seq);
                committed = tail;
                any = 1;
            } else if (r == -EAGAIN && !rescanned) {
                rescanned = 1;
                if (check_alive) {
                    shmlink_topic_evict_dead(h, required);
                    check_alive = 0;
                }
                if (shmlink_topic_scan_floor(h, committed, &floor, 1) < 0)
                    prc = -EBADMSG;
                else
                    SHM_STORE_RELAXED(&t->floor, floor);
            } else {
                prc = r;
            }
        }
        if (tail != committed) {
            shmlink_topic_commit(h, tail, seq);
            any = 1;
        }
        shmlink_lock_release(&t->pub_lock);
        if (any)
            shmlink_ec_notify(&t->data_ec);
        if (prc == -EBADMSG)
            return topic_corrupt(self->name);
        if (prc == -EAGAIN) {
            if (try_only) {
                *timed_out = 1;
                return done;
            }
            /* Sleep for one liveness slice at most: then the subscribers
             * holding us back are checked, and the dead ones evicted. */
            struct timespec slice;
            shmlink_deadline_min(&slice, deadline, SHMLINK_LIVENESS_SLICE_S);
            int w = topic_wait(&t->space_ec, cond_pub_room, self, required, &slice,
                               self->spin_ns, &self->closing);
            if (w == -1)
                return -1;
            if (w == -ECANCELED)
                return topic_closed_while_waiting(self->name);
            if (w == -ETIMEDOUT) {
                if (deadline && shmlink_deadline_passed(deadline)) {
                    *timed_out = 1;
                    return done;
                }
                check_alive = 1;
            }
        }
    }
    return done;
}

PyDoc_STRVAR(Topic_publish_doc,
"publish(data, *, timeout=None)\n--\n\n"
"Publish one bytes-like message to every subscriber.  Lossless mode waits\n"
"(timeout seconds; None = forever) for the slowest live subscriber to make\n"
"room; latest mode never waits.  Raises Timeout (nothing was published) or\n"
"MessageTooLarge.");

static PyObject *Topic_publish_impl(TopicObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    PyObject *tmo;
    if (kw_only_timeout("publish(data, *, timeout=None)", args, nargs, kwnames, 1, &tmo) < 0)
        return NULL;
    struct timespec ts, *deadline;
    if (parse_timeout(tmo, &ts, &deadline) < 0)
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    PyObject *res = NULL;
    if (topic_check_len(self, b.len) == 0) {
        int timed_out;
        Py_ssize_t k = topic_publish_buffers(self, &b, 1, deadline, &timed_out);
        if (k == 1)
            res = Py_NewRef(Py_None);
        else if (k == 0)
            PyErr_Format(TopicTimeoutError,
                         "topic %R: the slowest subscriber left no room for %S s; nothing "
                         "was published",
                         self->name, tmo);
    }
    PyBuffer_Release(&b);
    return res;
}

static PyObject *Topic_try_publish_impl(TopicObject *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    static const struct timespec zero = {0, 0};
    PyObject *res = NULL;
    if (topic_check_len(self, b.len) == 0) {
        int timed_out;
        Py_ssize_t k = topic_publish_buffers(self, &b, 1, &zero, &timed_out);
        if (k >= 0)
            res = PyBool_FromLong(k == 1);
    }
    PyBuffer_Release(&b);
    return res;
}

PyDoc_STRVAR(Topic_publish_many_doc,
"publish_many(messages, timeout=None)\n--\n\n"
"Publish each bytes-like object of the sequence, in order, taking the\n"
"publisher lock as few times as room allows.  Returns how many were\n"
"published: all, or fewer when the timeout ran out (lossless mode).");

static PyObject *Topic_publish_many_impl(TopicObject *self, PyObject *args) {
    PyObject *seq, *tmo = Py_None;
    if (!PyArg_ParseTuple(args, "O|O", &seq, &tmo))
        return NULL;
    struct timespec ts, *deadline;
    if (parse_timeout(tmo, &ts, &deadline) < 0)
        return NULL;
    struct buffer_batch b;
    Py_ssize_t sent = -1;
    if (batch_gather(&b, seq, "publish_many() takes an iterable of bytes-like objects",
                     topic_len_ok, self) == 0) {
        int timed_out;
        sent = topic_publish_buffers(self, b.bufs, b.n, deadline, &timed_out);
    }
    batch_release(&b);
    return sent < 0 ? NULL : PyLong_FromSsize_t(sent);
}

PyDoc_STRVAR(Topic_subscribe_doc,
"subscribe(oldest=False, timeout=None)\n--\n\n"
"Claim a subscriber slot and return a Subscriber that reads from the next\n"
"message published (or, oldest=True, from the oldest one still held).\n"
"None if the publisher lock could not be taken within timeout.");

static PyObject *Topic_subscribe_impl(TopicObject *self, PyObject *args) {
    int oldest = 0;
    PyObject *tmo = Py_None;
    if (!PyArg_ParseTuple(args, "|pO", &oldest, &tmo))
        return NULL;
    struct timespec ts, *deadline;
    if (parse_timeout(tmo, &ts, &deadline) < 0)
        return NULL;
    SubscriberObject *s = (SubscriberObject *)SubscriberType.tp_alloc(&SubscriberType, 0);
    if (!s)
        return NULL;
    s->slot = -1;
    if (PyObject_GetBuffer(self->view.obj, &s->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(s);
        return NULL;
    }
    s->has_view = 1;
    if (s->view.buf != self->view.buf || s->view.len != self->view.len) {
        PyErr_SetString(PyExc_RuntimeError, "the topic's mapping moved");
        Py_DECREF(s);
        return NULL;
    }
    s->h = self->h;
    s->name = Py_NewRef(self->name);
    s->spin_ns = self->spin_ns;
    int rc = topic_lock(self, deadline, 1);
    if (rc < 0 && rc != -ETIMEDOUT) {
        Py_DECREF(s);
        if (rc == -ECANCELED)
            topic_closed_while_waiting(self->name);
        return NULL;
    }
    if (rc == -ETIMEDOUT) {
        Py_DECREF(s);
        Py_RETURN_NONE;
    }
    uint32_t pid, gen = 0;
    uint64_t start, cursor = 0, seq = 0;
    identity(&pid, &start);
    int slot = -EBADMSG;
    if (rc == 0 || shmlink_topic_repair(&self->h) == 0)
        slot = shmlink_topic_claim(&self->h, pid, start, oldest, &gen, &cursor, &seq);
    shmlink_lock_release(&self->h.topic->pub_lock);
    if (slot < 0) {
        Py_DECREF(s);
        if (slot == -ENOSPC)
            PyErr_Format(TopicFullError,
                         "topic %R: all %u subscriber slots are held by live subscribers; "
                         "close some, or create the topic with a larger max_subscribers",
                         self->name, self->h.max_subscribers);
        else
            topic_corrupt(self->name);
        return NULL;
    }
    s->slot = slot;
    s->pid = pid;
    s->gen = gen;
    s->cursor = cursor;
    s->next_seq = seq;
    return (PyObject *)s;
}

static PyObject *Topic_state_impl(TopicObject *self, PyObject *unused) {
    const struct shmlink_topic_handle *h = &self->h;
    struct shmlink_topic *t = h->topic;
    uint64_t tail = SHM_LOAD_ACQUIRE(&t->tail), head = SHM_LOAD_ACQUIRE(&t->head);
    uint64_t published = SHM_LOAD_RELAXED(&t->published);
    uint64_t held = tail >= head ? tail - head : 0;
    if (held > h->capacity)
        held = h->capacity; /* inconsistent: the receive paths report it */
    uint32_t hwm = SHM_LOAD_RELAXED(&t->sub_hwm);
    if (hwm > h->max_subscribers)
        hwm = h->max_subscribers;
    PyObject *subs = PyList_New(0);
    if (!subs)
        return NULL;
    for (uint32_t i = 0; i < hwm; i++) {
        struct shmlink_topic_sub *s = &h->subs[i];
        if (SHM_LOAD_ACQUIRE(&s->active) == 0)
            continue;
        uint32_t pid = SHM_LOAD_RELAXED(&s->pid);
        uint64_t start = SHM_LOAD_RELAXED(&s->start_time);
        uint64_t next = SHM_LOAD_RELAXED(&s->next_seq);
        PyObject *d = Py_BuildValue(
            "{sIsIsOsKsKsK}", "slot", i, "pid", pid, "alive",
            shmlink_process_alive(pid, start) ? Py_True : Py_False, "lag",
            (unsigned long long)(published > next ? published - next : 0), "missed",
            (unsigned long long)SHM_LOAD_RELAXED(&s->missed), "received",
            (unsigned long long)SHM_LOAD_RELAXED(&s->received));
        if (!d || PyList_Append(subs, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(subs);
            return NULL;
        }
        Py_DECREF(d);
    }
    return Py_BuildValue(
        "{sssKsKsIsKsKsKsIsN}", "mode", h->mode == SHMLINK_TOPIC_LOSSLESS ? "lossless" : "latest",
        "capacity", (unsigned long long)h->capacity, "max_message_size",
        (unsigned long long)h->max_message, "max_subscribers", h->max_subscribers, "published",
        (unsigned long long)published, "held_bytes", (unsigned long long)held, "evicted",
        (unsigned long long)SHM_LOAD_RELAXED(&t->evicted), "publisher_pid",
        SHM_LOAD_RELAXED(&t->pub_lock.owner), "subscribers", subs);
}

static PyObject *Topic_close(TopicObject *self, PyObject *unused) {
    if (!self->has_view)
        Py_RETURN_TRUE;
    SHM_STORE_RELAXED(&self->closing, 1);
    if (self->calls > 0) {
        /* Calls inside (waiting for room or for the publisher lock): wake
         * them; each raises SegmentClosed, the last one out releases. */
        wake_word(&self->h.topic->space_ec.seq);
        wake_word(&self->h.topic->pub_lock.owner);
        return Py_NewRef(Py_True);
    }
    topic_finish(self);
    Py_RETURN_TRUE;
}

/* The methods: each runs its _impl between the call count's ++ and --. */
static PyObject *Topic_publish(TopicObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    TOPIC_CALL(self, Topic_publish_impl(self, args, nargs, kwnames));
}
static PyObject *Topic_try_publish(TopicObject *self, PyObject *arg) {
    TOPIC_CALL(self, Topic_try_publish_impl(self, arg));
}
static PyObject *Topic_publish_many(TopicObject *self, PyObject *args) {
    TOPIC_CALL(self, Topic_publish_many_impl(self, args));
}
static PyObject *Topic_subscribe(TopicObject *self, PyObject *args) {
    TOPIC_CALL(self, Topic_subscribe_impl(self, args));
}
static PyObject *Topic_state(TopicObject *self, PyObject *unused) {
    TOPIC_CALL(self, Topic_state_impl(self, unused));
}

static PyObject *Topic_get_published(TopicObject *self, void *c) {
    if (!topic_ready(self))
        return NULL;
    return PyLong_FromUnsignedLongLong(SHM_LOAD_RELAXED(&self->h.topic->published));
}
static PyObject *Topic_get_capacity(TopicObject *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->h.capacity);
}
static PyObject *Topic_get_max_message(TopicObject *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->h.max_message);
}
static PyObject *Topic_get_max_subscribers(TopicObject *self, void *c) {
    return PyLong_FromUnsignedLong(self->h.max_subscribers);
}
static PyObject *Topic_get_mode(TopicObject *self, void *c) {
    return PyUnicode_FromString(self->h.mode == SHMLINK_TOPIC_LOSSLESS ? "lossless" : "latest");
}
static PyObject *Topic_get_closed(TopicObject *self, void *c) {
    return PyBool_FromLong(!self->has_view || self->closing);
}

static PyMethodDef Topic_methods[] = {
    {"publish", (PyCFunction)(void (*)(void))Topic_publish, METH_FASTCALL | METH_KEYWORDS,
     Topic_publish_doc},
    {"try_publish", (PyCFunction)Topic_try_publish, METH_O,
     "try_publish(data)\n--\n\nPublish one message if that needs no waiting; True if published."},
    {"publish_many", (PyCFunction)Topic_publish_many, METH_VARARGS, Topic_publish_many_doc},
    {"subscribe", (PyCFunction)Topic_subscribe, METH_VARARGS, Topic_subscribe_doc},
    {"state", (PyCFunction)Topic_state, METH_NOARGS,
     "state()\n--\n\nA dict: mode, capacity, published, held bytes, evictions, and each "
     "active subscriber's slot, pid, liveness, lag, missed and received counts."},
    {"close", (PyCFunction)Topic_close, METH_NOARGS,
     "close()\n--\n\nClose the handle: later calls raise SegmentClosed, calls inside are "
     "woken and raise SegmentClosed; the buffer is released now, or by the last call to "
     "leave.  Returns True."},
    {NULL}};

static PyMemberDef Topic_members[] = {
    {"spin_ns", T_LONGLONG, offsetof(TopicObject, spin_ns), 0,
     "nanoseconds a blocked call spins before it sleeps (-1: until its deadline)"},
    {"name", T_OBJECT, offsetof(TopicObject, name), READONLY, "the topic's name"},
    {NULL}};

static PyGetSetDef Topic_getset[] = {
    {"published", (getter)Topic_get_published, NULL, "messages published since creation", NULL},
    {"capacity", (getter)Topic_get_capacity, NULL, "ring bytes", NULL},
    {"max_message", (getter)Topic_get_max_message, NULL, "largest payload", NULL},
    {"max_subscribers", (getter)Topic_get_max_subscribers, NULL, "subscriber slots", NULL},
    {"mode", (getter)Topic_get_mode, NULL, "'lossless' or 'latest'", NULL},
    {"closed", (getter)Topic_get_closed, NULL, "True once close() released the buffer", NULL},
    {NULL}};

static PyTypeObject TopicType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmlink._core.Topic",
    .tp_basicsize = sizeof(TopicObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Topic(buffer, offset, size, name=None)\n--\n\nA handle on the topic laid out "
              "by topic_init in buffer[offset:offset+size]: publish, subscribe, state.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Topic_init,
    .tp_dealloc = (destructor)Topic_dealloc,
    .tp_methods = Topic_methods,
    .tp_members = Topic_members,
    .tp_getset = Topic_getset,
};

/* ------------------------------------------------------------------------ */
/* Subscriber: one cursor, read without locks.                              */
/* ------------------------------------------------------------------------ */

static void Subscriber_dealloc(SubscriberObject *self) {
    if (self->has_view) {
        uint32_t pid;
        uint64_t start;
        identity(&pid, &start);
        if (self->slot >= 0 && pid == self->pid) /* not in a forked child */
            shmlink_topic_release_slot(&self->h, self->slot, self->pid, self->gen);
        PyBuffer_Release(&self->view);
    }
    Py_XDECREF(self->name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* No call is inside a closed subscriber any more: free the slot and give
 * the mapping back. */
static void sub_finish(SubscriberObject *self) {
    if (!self->has_view)
        return;
    uint32_t pid;
    uint64_t start;
    identity(&pid, &start);
    if (self->slot >= 0 && pid == self->pid) /* not in a forked child */
        shmlink_topic_release_slot(&self->h, self->slot, self->pid, self->gen);
    self->in_view = 0;
    PyBuffer_Release(&self->view);
    self->has_view = 0;
}

/* The end of every call that sub_enter began (`busy` is the call count of
 * a subscriber: one call at a time). */
static inline void sub_leave(SubscriberObject *self) {
    self->busy = 0;
    if (self->closing)
        sub_finish(self);
}

/* Checks at the start of a receive; marks the subscriber busy. */
static int sub_enter(SubscriberObject *self) {
    if (!self->has_view || self->closing) {
        PyErr_Format(TopicClosedError, "this subscriber of topic %R is closed; subscribe again",
                     self->name ? self->name : Py_None);
        return -1;
    }
    if (self->busy) {
        PyErr_Format(PyExc_RuntimeError,
                     "this subscriber of topic %R is in use by another thread (an "
                     "on_message handler, or a receive in progress); use one subscriber "
                     "per thread",
                     self->name);
        return -1;
    }
    if (self->in_view) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a zero-copy receive is open on this subscriber; release it before "
                        "taking the next message");
        return -1;
    }
    uint32_t pid;
    uint64_t start;
    identity(&pid, &start);
    if (pid != self->pid) {
        PyErr_Format(TopicClosedError,
                     "this subscriber of topic %R belongs to process %u; subscribe again in "
                     "this process",
                     self->name, self->pid);
        return -1;
    }
    if (SHM_LOAD_RELAXED(&self->h.subs[self->slot].active) != self->gen) {
        PyErr_Format(TopicClosedError,
                     "this subscriber of topic %R lost its slot: another process saw this "
                     "one as dead (PID and start time did not match) and evicted it; "
                     "subscribe again",
                     self->name);
        return -1;
    }
    self->busy = 1;
    return 0;
}

static int cond_sub_data(void *obj, uint64_t cursor) {
    SubscriberObject *self = (SubscriberObject *)obj;
    return SHM_LOAD_ACQUIRE(&self->h.topic->tail) != cursor;
}

/* After a wait ended by cancel: 0 (interrupt: return nothing), or -1 with
 * SegmentClosed (another thread is closing this subscriber). */
static int sub_cancelled(SubscriberObject *self) {
    if (self->closing)
        return topic_closed_while_waiting(self->name);
    return 0;
}

/* Take up to max messages, waiting until there is at least one, the
 * deadline, or cancel.  max == 1 with one != NULL: the message into *one;
 * else appended to list.  Returns how many (0: timeout or cancel), or -1. */
static Py_ssize_t sub_take(SubscriberObject *self, Py_ssize_t max, PyObject *list,
                           PyObject **one, const struct timespec *deadline) {
    const struct shmlink_topic_handle *h = &self->h;
    struct shmlink_topic *t = h->topic;
    for (;;) {
        uint64_t cursor = self->cursor, next_seq = self->next_seq, missed = self->missed;
        /* SYNC: pairs with the publishers' release of tail in shmlink_topic_commit. */
        uint64_t tail = SHM_LOAD_ACQUIRE(&t->tail);
        uint64_t published = SHM_LOAD_RELAXED(&t->published);
        Py_ssize_t got = 0;
        int err = 0;
        while (got < max) {
            uint64_t seq;
            int stale = 0;
            int64_t len = shmlink_topic_peek(h, &cursor, tail, &seq);
            if (len == -EAGAIN)
                break;
            if (len == -ESTALE) {
                stale = 1;
            } else if (len < 0) {
                err = -EBADMSG;
                break;
            } else {
                PyObject *b = PyBytes_FromStringAndSize(
                    (const char *)shmlink_topic_payload(h, cursor), (Py_ssize_t)len);
                if (!b) {
                    err = -1;
                    break;
                }
                if (shmlink_topic_overtaken(h, cursor)) {
                    Py_DECREF(b); /* maybe torn: never delivered */
                    stale = 1;
                } else if (seq < next_seq || seq >= published) {
                    Py_DECREF(b);
                    err = -EBADMSG;
                    break;
                } else {
                    if (one) {
                        *one = b;
                    } else {
                        int a = PyList_Append(list, b);
                        Py_DECREF(b);
                        if (a < 0) {
                            err = -1;
                            break;
                        }
                    }
                    missed += seq - next_seq;
                    next_seq = seq + 1;
                    cursor += shmlink_topic_record_size((uint64_t)len);
                    got++;
                }
            }
            if (stale) {
                if (shmlink_topic_resume(h, &cursor, &tail) < 0) {
                    err = -EBADMSG;
                    break;
                }
                published = SHM_LOAD_RELAXED(&t->published);
            }
        }
        if (cursor != self->cursor) {
            self->cursor = cursor;
            self->next_seq = next_seq;
            self->missed = missed;
            self->received += (uint64_t)got;
            shmlink_topic_progress(h, self->slot, cursor, next_seq, missed, self->received);
        }
        if (err == -1)
            return -1;
        if (err == -EBADMSG)
            return topic_corrupt(self->name);
        if (got)
            return got;
        if (no_wait(deadline))
            return 0;
        if (self->cancel)
            return sub_cancelled(self);
        int w = topic_wait(&t->data_ec, cond_sub_data, self, cursor, deadline, self->spin_ns,
                           &self->cancel);
        if (w == -1)
            return -1;
        if (w == -ECANCELED)
            return sub_cancelled(self);
        if (w == -ETIMEDOUT)
            return 0;
    }
}

/* One message as bytes; None when nothing came (timeout or interrupt). */
static PyObject *sub_recv_one(SubscriberObject *self, const struct timespec *deadline) {
    if (sub_enter(self) < 0)
        return NULL;
    PyObject *one = NULL;
    Py_ssize_t n = sub_take(self, 1, NULL, &one, deadline);
    sub_leave(self);
    if (n > 0)
        return one;
    Py_XDECREF(one);
    if (n == 0)
        Py_RETURN_NONE;
    return NULL;
}

PyDoc_STRVAR(Subscriber_recv_doc,
"recv(*, timeout=None)\n--\n\n"
"The next message as bytes, waiting up to timeout seconds (None = forever).\n"
"Raises Timeout when none came.  Messages overwritten before they could be\n"
"read (latest mode) are skipped and counted in `missed`.  (Returns None\n"
"only when interrupt() ended the wait.)");

static PyObject *Subscriber_recv(SubscriberObject *self, PyObject *const *args,
                                 Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *tmo;
    if (kw_only_timeout("recv(*, timeout=None)", args, nargs, kwnames, 0, &tmo) < 0)
        return NULL;
    struct timespec ts, *deadline;
    if (parse_timeout(tmo, &ts, &deadline) < 0)
        return NULL;
    PyObject *res = sub_recv_one(self, deadline);
    if (res == Py_None && !self->cancel) {
        Py_DECREF(res);
        PyErr_Format(TopicTimeoutError, "topic %R: no message within %S s", self->name,
                     tmo ? tmo : Py_None);
        return NULL;
    }
    return res;
}

static PyObject *Subscriber_try_recv(SubscriberObject *self, PyObject *unused) {
    static const struct timespec zero = {0, 0};
    return sub_recv_one(self, &zero);
}

PyDoc_STRVAR(Subscriber_recv_many_doc,
"recv_many(max_count, timeout=None)\n--\n\n"
"Wait until at least one message is there (or the timeout), then take up to\n"
"max_count at once.  Returns a list (empty on timeout or interrupt()).");

static PyObject *Subscriber_recv_many(SubscriberObject *self, PyObject *args) {
    Py_ssize_t max;
    PyObject *tmo = Py_None;
    if (!PyArg_ParseTuple(args, "n|O", &max, &tmo))
        return NULL;
    if (max < 1) {
        PyErr_SetString(PyExc_ValueError, "max_count must be at least 1");
        return NULL;
    }
    struct timespec ts, *deadline;
    if (parse_timeout(tmo, &ts, &deadline) < 0)
        return NULL;
    if (sub_enter(self) < 0)
        return NULL;
    PyObject *list = PyList_New(0);
    Py_ssize_t n = list ? sub_take(self, max, list, NULL, deadline) : -1;
    sub_leave(self);
    if (n < 0) {
        Py_XDECREF(list);
        return NULL;
    }
    return list;
}

PyDoc_STRVAR(Subscriber_view_begin_doc,
"view_begin(timeout=None)\n--\n\n"
"Zero-copy receive, first half: wait for the next message and return\n"
"(offset, length) of its payload within the buffer, or None on timeout.\n"
"Lossless mode: publishers cannot overwrite it until view_end().  Latest\n"
"mode: they can; view_end() says whether they did.");

static PyObject *Subscriber_view_begin(SubscriberObject *self, PyObject *args) {
    PyObject *tmo = Py_None;
    if (!PyArg_ParseTuple(args, "|O", &tmo))
        return NULL;
    struct timespec ts, *deadline;
    if (parse_timeout(tmo, &ts, &deadline) < 0)
        return NULL;
    if (sub_enter(self) < 0)
        return NULL;
    const struct shmlink_topic_handle *h = &self->h;
    struct shmlink_topic *t = h->topic;
    PyObject *res = NULL;
    for (;;) {
        uint64_t cursor = self->cursor;
        uint64_t tail = SHM_LOAD_ACQUIRE(&t->tail); /* SYNC: publishers' tail release */
        uint64_t published = SHM_LOAD_RELAXED(&t->published);
        uint64_t seq;
        int64_t len;
        for (;;) {
            len = shmlink_topic_peek(h, &cursor, tail, &seq);
            /* the header must be intact before its length is handed out */
            if (len >= 0 && shmlink_topic_overtaken(h, cursor))
                len = -ESTALE;
            if (len != -ESTALE)
                break;
            if (shmlink_topic_resume(h, &cursor, &tail) < 0) {
                len = -EBADMSG;
                break;
            }
            published = SHM_LOAD_RELAXED(&t->published);
        }
        if (len >= 0 && (seq < self->next_seq || seq >= published))
            len = -EBADMSG;
        if (len >= 0) {
            self->in_view = 1;
            self->view_pos = cursor;
            self->view_seq = seq;
            self->view_next = cursor + shmlink_topic_record_size((uint64_t)len);
            Py_ssize_t base = (Py_ssize_t)(shmlink_topic_payload(h, cursor) -
                                           (const uint8_t *)self->view.buf);
            res = Py_BuildValue("nn", base, (Py_ssize_t)len);
            break;
        }
        if (cursor != self->cursor) { /* skipped a wrap marker, or resumed */
            self->cursor = cursor;
            shmlink_topic_progress(h, self->slot, cursor, self->next_seq, self->missed,
                                   self->received);
        }
        if (len != -EAGAIN) {
            topic_corrupt(self->name);
            break;
        }
        if (no_wait(deadline)) {
            res = Py_NewRef(Py_None);
            break;
        }
        int w = self->cancel ? -ECANCELED
                             : topic_wait(&t->data_ec, cond_sub_data, self, cursor, deadline,
                                          self->spin_ns, &self->cancel);
        if (w == -1)
            break;
        if (w == -ECANCELED && sub_cancelled(self) < 0)
            break;
        if (w == -ECANCELED || w == -ETIMEDOUT) {
            res = Py_NewRef(Py_None);
            break;
        }
    }
    sub_leave(self);
    return res;
}

static PyObject *Subscriber_view_end(SubscriberObject *self, PyObject *args) {
    int consume = 1;
    if (!PyArg_ParseTuple(args, "|p", &consume))
        return NULL;
    if (!self->in_view || !self->has_view)
        Py_RETURN_TRUE;
    if (self->live_views > 0)
        return raise_views_alive("message view", self->live_views), NULL;
    const struct shmlink_topic_handle *h = &self->h;
    self->in_view = 0;
    int intact = !shmlink_topic_overtaken(h, self->view_pos);
    if (consume && intact) {
        self->missed += self->view_seq - self->next_seq;
        self->next_seq = self->view_seq + 1;
        self->cursor = self->view_next;
        self->received++;
    } else {
        /* left for the next receive (which resumes at head if it is gone) */
        self->cursor = self->view_pos;
    }
    shmlink_topic_progress(h, self->slot, self->cursor, self->next_seq, self->missed,
                           self->received);
    return PyBool_FromLong(intact);
}

static PyObject *Subscriber_interrupt(SubscriberObject *self, PyObject *args) {
    int on = 1;
    if (!PyArg_ParseTuple(args, "|p", &on))
        return NULL;
    self->cancel = on || self->closing;
    if (on && self->has_view)
        shmlink_ec_wake_all(&self->h.topic->data_ec);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Subscriber_view_doc,
"view(offset, length)\n--\n\n"
"A read-only memoryview of the open zero-copy receive's payload (from\n"
"view_begin).  view_end() raises BufferError while anything made from it\n"
"(a numpy array, a slice) is alive.");

static PyObject *Subscriber_view(SubscriberObject *self, PyObject *args) {
    Py_ssize_t off, len;
    if (!PyArg_ParseTuple(args, "nn", &off, &len))
        return NULL;
    if (!self->has_view || self->closing)
        return raise_closed("subscriber of topic", self->name), NULL;
    if (!self->in_view) {
        PyErr_SetString(PyExc_RuntimeError, "no zero-copy receive is open on this subscriber");
        return NULL;
    }
    return make_view(self->view.obj, off, len, 1, (PyObject *)self, &self->live_views);
}

static PyObject *Subscriber_close(SubscriberObject *self, PyObject *unused) {
    if (!self->has_view)
        Py_RETURN_TRUE;
    SHM_STORE_RELAXED(&self->closing, 1);
    SHM_STORE_RELAXED(&self->cancel, 1);
    if (self->busy) {
        /* A call is inside (another thread's, or the one a signal handler
         * interrupted): wake it; it raises SegmentClosed and releases. */
        wake_word(&self->h.topic->data_ec.seq);
        Py_RETURN_TRUE;
    }
    sub_finish(self);
    Py_RETURN_TRUE;
}

static PyObject *Subscriber_get_lag(SubscriberObject *self, void *c) {
    if (!self->has_view)
        return PyLong_FromLong(0);
    uint64_t published = SHM_LOAD_RELAXED(&self->h.topic->published);
    return PyLong_FromUnsignedLongLong(published > self->next_seq ? published - self->next_seq
                                                                  : 0);
}
static PyObject *Subscriber_get_closed(SubscriberObject *self, void *c) {
    return PyBool_FromLong(!self->has_view || self->closing);
}
static PyObject *Subscriber_get_busy(SubscriberObject *self, void *c) {
    return PyBool_FromLong(self->busy);
}

static PyMethodDef Subscriber_methods[] = {
    {"recv", (PyCFunction)(void (*)(void))Subscriber_recv, METH_FASTCALL | METH_KEYWORDS,
     Subscriber_recv_doc},
    {"try_recv", (PyCFunction)Subscriber_try_recv, METH_NOARGS,
     "try_recv()\n--\n\nThe next message if there is one now, else None."},
    {"recv_many", (PyCFunction)Subscriber_recv_many, METH_VARARGS, Subscriber_recv_many_doc},
    {"view_begin", (PyCFunction)Subscriber_view_begin, METH_VARARGS, Subscriber_view_begin_doc},
    {"view_end", (PyCFunction)Subscriber_view_end, METH_VARARGS,
     "view_end(consume=True)\n--\n\nFinish a zero-copy receive: move past the message "
     "(or leave it, consume=False).  Returns False if a publisher may have overwritten "
     "it meanwhile (latest mode); it then counts as missed."},
    {"interrupt", (PyCFunction)Subscriber_interrupt, METH_VARARGS,
     "interrupt(on=True)\n--\n\nWhile on, waits end at once and receives return nothing "
     "(a thread blocked in recv returns).  interrupt(False) undoes it."},
    {"view", (PyCFunction)Subscriber_view, METH_VARARGS, Subscriber_view_doc},
    {"close", (PyCFunction)Subscriber_close, METH_NOARGS,
     "close()\n--\n\nClose the subscriber: later calls raise SegmentClosed; a call "
     "inside is woken and raises SegmentClosed.  The slot is freed and the buffer "
     "released now, or when that call leaves.  Returns True."},
    {NULL}};

static PyMemberDef Subscriber_members[] = {
    {"spin_ns", T_LONGLONG, offsetof(SubscriberObject, spin_ns), 0,
     "nanoseconds a blocked receive spins before it sleeps (-1: until its deadline)"},
    {"missed", T_ULONGLONG, offsetof(SubscriberObject, missed), READONLY,
     "messages overwritten before this subscriber could read them"},
    {"received", T_ULONGLONG, offsetof(SubscriberObject, received), READONLY,
     "messages this subscriber received"},
    {"next_seq", T_ULONGLONG, offsetof(SubscriberObject, next_seq), READONLY,
     "sequence number of the next message it expects"},
    {"slot", T_INT, offsetof(SubscriberObject, slot), READONLY, "its slot in the table"},
    {"name", T_OBJECT, offsetof(SubscriberObject, name), READONLY, "the topic's name"},
    {NULL}};

static PyGetSetDef Subscriber_getset[] = {
    {"lag", (getter)Subscriber_get_lag, NULL, "messages published that it has not read yet",
     NULL},
    {"closed", (getter)Subscriber_get_closed, NULL, "True once closed", NULL},
    {"busy", (getter)Subscriber_get_busy, NULL, "True while a call is in progress", NULL},
    {NULL}};

static PyTypeObject SubscriberType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmlink._core.Subscriber",
    .tp_basicsize = sizeof(SubscriberObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A topic subscriber: one cursor, read without locks.  Made by "
              "Topic.subscribe().",
    .tp_dealloc = (destructor)Subscriber_dealloc,
    .tp_methods = Subscriber_methods,
    .tp_members = Subscriber_members,
    .tp_getset = Subscriber_getset,
};

PyDoc_STRVAR(topic_init_doc,
"topic_init(buffer, offset, size, mode, max_message=0, max_subscribers=64)\n--\n\n"
"Lay out an empty topic in buffer[offset:offset+size] (before the segment\n"
"is marked ready); mode is 'lossless' or 'latest'.  Returns (capacity,\n"
"max_message).");

static PyObject *topic_init(PyObject *mod, PyObject *args) {
    Py_buffer b;
    Py_ssize_t offset, size;
    const char *mode;
    unsigned long long max_message = 0;
    unsigned int max_subs = 64;
    if (!PyArg_ParseTuple(args, "w*nns|KI", &b, &offset, &size, &mode, &max_message, &max_subs))
        return NULL;
    PyObject *res = NULL;
    uint32_t m = strcmp(mode, "lossless") == 0 ? SHMLINK_TOPIC_LOSSLESS
                 : strcmp(mode, "latest") == 0 ? SHMLINK_TOPIC_LATEST
                                               : 0;
    if (offset < 0 || size < 0 || offset % 64 || offset > b.len || size > b.len - offset) {
        PyErr_SetString(PyExc_ValueError, "topic region outside the buffer");
    } else if (m == 0) {
        PyErr_Format(PyExc_ValueError, "mode must be 'lossless' or 'latest', not %R",
                     PyTuple_GET_ITEM(args, 3));
    } else if (shmlink_topic_init((char *)b.buf + offset, (uint64_t)size, m, max_message,
                                  max_subs) < 0) {
        PyErr_SetString(PyExc_ValueError, "topic region too small, or bad max_subscribers");
    } else {
        struct shmlink_topic *t = (struct shmlink_topic *)((char *)b.buf + offset);
        res = Py_BuildValue("KK", (unsigned long long)t->capacity,
                            (unsigned long long)t->max_message);
    }
    PyBuffer_Release(&b);
    return res;
}

static PyObject *topic_footprint(PyObject *mod, PyObject *args) {
    unsigned long long capacity;
    unsigned int max_subs;
    if (!PyArg_ParseTuple(args, "KI", &capacity, &max_subs))
        return NULL;
    return PyLong_FromUnsignedLongLong(shmlink_topic_footprint(capacity, max_subs));
}

static PyMethodDef topic_functions[] = {
    {"topic_init", topic_init, METH_VARARGS, topic_init_doc},
    {"topic_footprint", topic_footprint, METH_VARARGS,
     "topic_footprint(capacity, max_subscribers)\n--\n\nBytes a topic needs: control "
     "block, subscriber table and ring."},
    {NULL}};

/* Called from PyInit__core. */
static int topic_register(PyObject *m) {
    PyObject *errors = PyImport_ImportModule("shmlink.errors");
    if (!errors)
        return -1;
    TopicClosedError = PyObject_GetAttrString(errors, "SegmentClosed");
    TopicFullError = PyObject_GetAttrString(errors, "TooManyParticipants");
    TopicTimeoutError = PyObject_GetAttrString(errors, "Timeout");
    Py_DECREF(errors);
    if (!TopicClosedError || !TopicFullError || !TopicTimeoutError)
        return -1;
    if (PyType_Ready(&TopicType) < 0 || PyType_Ready(&SubscriberType) < 0)
        return -1;
    if (PyModule_AddObjectRef(m, "Topic", (PyObject *)&TopicType) < 0 ||
        PyModule_AddObjectRef(m, "Subscriber", (PyObject *)&SubscriberType) < 0 ||
        PyModule_AddIntConstant(m, "TOPIC_HEADER", (long)SHMLINK_TOPIC_SUBS_OFFSET) < 0 ||
        PyModule_AddIntConstant(m, "TOPIC_RECORD_HEADER", SHMLINK_TOPIC_RECORD_HEADER) < 0 ||
        PyModule_AddIntConstant(m, "TOPIC_SLOT_SIZE", SHMLINK_CACHE_LINE) < 0 ||
        PyModule_AddIntConstant(m, "TOPIC_MAX_SUBSCRIBERS", SHMLINK_TOPIC_MAX_SUBSCRIBERS) < 0 ||
        PyModule_AddFunctions(m, topic_functions) < 0)
        return -1;
    return 0;
}

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
     "process_start_time(pid)\n--\n\nStart time of pid in clock ticks since boot; 0 if gone."},
    {"process_alive", py_process_alive, METH_VARARGS,
     "process_alive(pid, start_time=0)\n--\n\nTrue if (pid, start_time) is a live process."},
    {"ring_init", ring_init, METH_VARARGS, ring_init_doc},
    {NULL}};

static struct PyModuleDef coremodule = {
    PyModuleDef_HEAD_INIT, "shmlink._core",
    "The native core of shmlink: atomics, futex waits, the robust lock and the "
    "message ring.  Private: use the shmlink package.",
    -1, module_methods};

PyMODINIT_FUNC PyInit__core(void) {
    PyObject *errors = PyImport_ImportModule("shmlink.errors");
    if (!errors)
        return NULL;
    CorruptSegment = PyObject_GetAttrString(errors, "CorruptSegment");
    MessageTooLarge = PyObject_GetAttrString(errors, "MessageTooLarge");
    IncompatibleSegment = PyObject_GetAttrString(errors, "IncompatibleSegment");
    Timeout = PyObject_GetAttrString(errors, "Timeout");
    SegmentClosed = PyObject_GetAttrString(errors, "SegmentClosed");
    Py_DECREF(errors);
    if (!CorruptSegment || !MessageTooLarge || !IncompatibleSegment || !Timeout || !SegmentClosed)
        return NULL;
    if (PyType_Ready(&MemoryType) < 0 || PyType_Ready(&RingType) < 0 ||
        PyType_Ready(&ViewType) < 0)
        return NULL;
    pthread_atfork(NULL, NULL, reset_identity_after_fork);
    PyObject *m = PyModule_Create(&coremodule);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Memory", (PyObject *)&MemoryType) < 0 ||
        PyModule_AddObjectRef(m, "Ring", (PyObject *)&RingType) < 0 ||
        PyModule_AddIntConstant(m, "LAYOUT_VERSION", SHMLINK_LAYOUT_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "DATA_OFFSET", SHMLINK_DATA_OFFSET) < 0 ||
        PyModule_AddIntConstant(m, "MAX_PARTICIPANTS", SHMLINK_MAX_PARTICIPANTS) < 0 ||
        PyModule_AddIntConstant(m, "RING_HEADER", (long)SHMLINK_RING_DATA_OFFSET) < 0 ||
        PyModule_AddIntConstant(m, "RECORD_HEADER", SHMLINK_RECORD_HEADER) < 0 ||
        PyModule_AddIntConstant(m, "LOCK_SIZE", sizeof(struct shmlink_lock) ) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (topic_register(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
