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
#include <stdint.h>

#include "include/shmlink.h"

/* Exceptions from shmlink.errors, looked up at import. */
static PyObject *CorruptSegment, *MessageTooLarge, *IncompatibleSegment;

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

static inline uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* ======================================================================== */
/* Memory: a mapped buffer, and atomic access to its aligned words.         */
/* ======================================================================== */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
} MemoryObject;

static int Memory_init(MemoryObject *self, PyObject *args, PyObject *kw) {
    PyObject *obj;
    static char *kwlist[] = {"buffer", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &obj))
        return -1;
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
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
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Checked address of an aligned word of `width` bytes at off. */
static void *word_at(MemoryObject *m, Py_ssize_t off, Py_ssize_t width,
                     int write) {
    if (!m->has_view) {
        PyErr_SetString(PyExc_ValueError, "shmlink memory is released");
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
    for (;;) {
        int rc;
        struct timespec slice;
        Py_BEGIN_ALLOW_THREADS
        shmlink_deadline_min(&slice, deadline, SIGNAL_SLICE_S);
        rc = shmlink_futex_wait(p, (uint32_t)expected, &slice);
        Py_END_ALLOW_THREADS
        if (rc == -EINTR || (rc == -ETIMEDOUT && !shmlink_deadline_passed(deadline))) {
            if (PyErr_CheckSignals() < 0)
                return NULL;
            if (SHM_LOAD_ACQUIRE(p) != (uint32_t)expected)
                Py_RETURN_TRUE;
            continue;
        }
        if (rc == -ETIMEDOUT)
            Py_RETURN_FALSE;
        Py_RETURN_TRUE; /* woken, or the value already differed */
    }
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
                                 int64_t spin_ns) {
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
            SHM_CPU_RELAX();
            if ((i & 63) == 63 && now_ns() > until)
                break;
        }
        Py_END_ALLOW_THREADS
        if (rc == 0)
            return 0;
    }
    for (;;) {
        /* One liveness slice (20 ms) per GIL release, then signal handlers
         * run: a Ctrl-C between two slices is seen at the next one. */
        int taken = 0;
        Py_BEGIN_ALLOW_THREADS
        if (shmlink_lock_try(l, pid, start) == 0)
            taken = 1;
        else
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
"holder that died (the data it guards may be half-written), None on timeout.");

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
    int rc = lock_acquire_blocking(l, deadline, spin_ns);
    if (rc == -1)
        return NULL;
    if (rc == -ETIMEDOUT)
        Py_RETURN_NONE;
    return PyLong_FromLong(rc);
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
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *Memory_get_size(MemoryObject *self, void *closure) {
    return PyLong_FromSsize_t(self->has_view ? self->view.len : 0);
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
     "release()\n--\n\nRelease the buffer so its mapping can be closed."},
    {NULL}};

static PyGetSetDef Memory_getset[] = {
    {"size", (getter)Memory_get_size, NULL, "bytes in the buffer", NULL},
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
    uint64_t view_next;   /* head after the viewed record */
    uint64_t view_head;   /* head before it (after skipped wrap markers) */
} RingObject;

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
    if (self->has_view)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ring_ready(RingObject *self) {
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError, "the queue is closed");
        return 0;
    }
    return 1;
}

static int corrupt(void) {
    PyErr_SetString(CorruptSegment,
                    "the queue's head, tail or a record header is "
                    "inconsistent (overwritten by a foreign or buggy "
                    "writer); remove the queue and recreate it");
    return -1;
}

/* Wait on an eventcount until cond(self) or deadline; spin first.  cond is
 * evaluated without locks (a hint; the caller retries under the lock).
 * Returns 0 (try again), -ETIMEDOUT, or -1 (exception). */
typedef int (*ring_cond)(RingObject *, uint64_t);

static int cond_has_data(RingObject *r, uint64_t unused) {
    return SHM_LOAD_ACQUIRE(&r->h.ring->tail) != SHM_LOAD_ACQUIRE(&r->h.ring->head);
}

static int cond_has_room(RingObject *r, uint64_t need) {
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
                     ring_cond cond, uint64_t arg,
                     const struct timespec *deadline, int64_t spin_ns) {
    int met = 0;
    if (spin_ns != 0) {
        /* Spin with the GIL released; come back every millisecond to let
         * signal handlers run. */
        uint64_t start = now_ns();
        for (;;) {
            uint64_t slice_end = now_ns() + 1000000;
            Py_BEGIN_ALLOW_THREADS
            for (unsigned i = 0;; i++) {
                if (cond(self, arg)) {
                    met = 1;
                    break;
                }
                SHM_CPU_RELAX();
                if ((i & 31) == 31) {
                    uint64_t t = now_ns();
                    if (t > slice_end || (spin_ns > 0 && t - start > (uint64_t)spin_ns))
                        break;
                    if (deadline && shmlink_deadline_passed(deadline))
                        break;
                }
            }
            Py_END_ALLOW_THREADS
            if (met)
                return 0;
            if (PyErr_CheckSignals() < 0)
                return -1;
            if (deadline && shmlink_deadline_passed(deadline))
                return -ETIMEDOUT;
            if (spin_ns > 0 && now_ns() - start > (uint64_t)spin_ns)
                break;
        }
    }
    for (;;) {
        int rc = 0;
        Py_BEGIN_ALLOW_THREADS
        uint32_t seq = SHM_LOAD_SEQ_CST(&ec->seq);
        SHM_FETCH_ADD(&ec->waiters, 1);
        SHM_FENCE();
        if (cond(self, arg)) {
            met = 1;
        } else {
            struct timespec slice;
            shmlink_deadline_min(&slice, deadline, SIGNAL_SLICE_S);
            rc = shmlink_futex_wait(&ec->seq, seq, &slice);
            if (rc == -ETIMEDOUT && !shmlink_deadline_passed(deadline))
                rc = -EINTR; /* a slice ended: run signal handlers, re-check */
        }
        SHM_FETCH_ADD(&ec->waiters, (uint32_t)-1);
        Py_END_ALLOW_THREADS
        if (met)
            return 0;
        if (rc == -EINTR) {
            if (PyErr_CheckSignals() < 0)
                return -1;
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
static int ring_lock(struct shmlink_lock *l, const struct timespec *deadline,
                     int64_t spin_ns) {
    int rc = lock_acquire_blocking(l, deadline, spin_ns ? 200000 : 0);
    if (rc == 1)
        rc = 0;
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

/* Send a batch of buffers; returns how many were sent (all unless timeout),
 * or -1 with an exception.  timed_out set when the deadline passed. */
static Py_ssize_t ring_send_buffers(RingObject *self, Py_buffer *bufs,
                                    Py_ssize_t n, const struct timespec *deadline,
                                    int64_t spin_ns, int *timed_out) {
    struct shmlink_ring *r = self->h.ring;
    Py_ssize_t done = 0;
    *timed_out = 0;
    while (done < n) {
        int rc = ring_lock(&r->prod_lock, deadline, spin_ns);
        if (rc == -1)
            return -1;
        if (rc == -ETIMEDOUT) {
            *timed_out = 1;
            return done;
        }
        uint64_t tail0 = SHM_LOAD_RELAXED(&r->tail), tail = tail0;
        Py_ssize_t before = done;
        int prc = 0;
        while (done < n) {
            prc = push_locked(self, bufs[done].buf, (uint64_t)bufs[done].len, &tail);
            if (prc < 0)
                break;
            done++;
        }
        if (tail != tail0)
            commit_tail(self, tail, (uint64_t)(done - before));
        shmlink_lock_release(&r->prod_lock);
        if (tail != tail0)
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

static PyObject *Ring_send(RingObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer b;
    if (!ring_ready(self))
        return NULL;
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

static PyObject *Ring_try_send(RingObject *self, PyObject *arg) {
    Py_buffer b;
    if (!ring_ready(self))
        return NULL;
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
"round trips as room allows.  Returns how many were sent: all of them,\n"
"or fewer when the deadline passed.");

static PyObject *Ring_send_many(RingObject *self, PyObject *args) {
    PyObject *seq, *dl = Py_None;
    long long spin = 0;
    if (!ring_ready(self))
        return NULL;
    if (!PyArg_ParseTuple(args, "O|OL", &seq, &dl, &spin))
        return NULL;
    struct timespec ts, *deadline;
    if (parse_wait(dl, spin, &ts, &deadline) < 0)
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "send_many() takes an iterable of bytes-like objects");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast), got = 0, sent = -1;
    Py_buffer *bufs = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    if (!bufs) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    PyObject **items = PySequence_Fast_ITEMS(fast);
    for (; got < n; got++) {
        if (PyObject_GetBuffer(items[got], &bufs[got], PyBUF_C_CONTIGUOUS) < 0)
            goto out;
        if (check_len(self, bufs[got].len) < 0) {
            got++;
            goto out;
        }
    }
    int timed_out;
    sent = ring_send_buffers(self, bufs, n, deadline, spin, &timed_out);
out:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&bufs[i]);
    PyMem_Free(bufs);
    Py_DECREF(fast);
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
        SHM_STORE_RELAXED(&r->received, SHM_LOAD_RELAXED(&r->received) + (uint64_t)taken);
        /* SYNC: frees the space; pairs with the producers' acquire of head
         * in push_locked / cond_has_room. */
        SHM_STORE_RELEASE(&r->head, head);
        *moved = 1;
    }
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
        int rc = ring_lock(&r->cons_lock, deadline, spin_ns);
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

static PyObject *Ring_recv(RingObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (!ring_ready(self))
        return NULL;
    struct timespec ts, *deadline;
    long long spin;
    if (fast_wait_args(args, nargs, 0, &ts, &deadline, &spin) < 0)
        return NULL;
    return ring_recv_one(self, deadline, spin);
}

static PyObject *Ring_try_recv(RingObject *self, PyObject *unused) {
    if (!ring_ready(self))
        return NULL;
    return ring_recv_one(self, &zero_deadline, 1);
}

PyDoc_STRVAR(Ring_recv_many_doc,
"recv_many(max_count, deadline=None, spin_ns=0)\n--\n\n"
"Wait until at least one message is there (or the deadline), then take up\n"
"to max_count in one locked pass.  Returns a list (empty on timeout).");

static PyObject *Ring_recv_many(RingObject *self, PyObject *args) {
    Py_ssize_t max;
    PyObject *dl = Py_None;
    long long spin = 0;
    if (!ring_ready(self))
        return NULL;
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

static PyObject *Ring_recv_into(RingObject *self, PyObject *args) {
    Py_buffer b;
    PyObject *dl = Py_None;
    long long spin = 0;
    if (!ring_ready(self))
        return NULL;
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

static PyObject *Ring_view_begin(RingObject *self, PyObject *args) {
    PyObject *dl = Py_None;
    long long spin = 0;
    if (!ring_ready(self))
        return NULL;
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
        int rc = ring_lock(&r->cons_lock, deadline, spin);
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
        if (wrc == -1)
            return NULL;
        if (wrc == -ETIMEDOUT)
            Py_RETURN_NONE;
    }
}

static PyObject *Ring_view_end(RingObject *self, PyObject *args) {
    int consume = 1;
    if (!PyArg_ParseTuple(args, "|p", &consume))
        return NULL;
    if (!self->in_view)
        Py_RETURN_NONE;
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
    Py_RETURN_NONE;
}

static PyObject *Ring_stats(RingObject *self, PyObject *unused) {
    if (!ring_ready(self))
        return NULL;
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

static PyObject *Ring_close(RingObject *self, PyObject *unused) {
    if (self->in_view) {
        PyObject *a = PyTuple_Pack(1, Py_False);
        PyObject *res = a ? Ring_view_end(self, a) : NULL;
        Py_XDECREF(a);
        Py_XDECREF(res);
        if (!res)
            return NULL;
    }
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
    Py_RETURN_NONE;
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

static PyObject *Ring_get_capacity(RingObject *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->h.capacity);
}
static PyObject *Ring_get_max_message(RingObject *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->h.max_message);
}

static PyMethodDef Ring_methods[] = {
    {"send", (PyCFunction)(void (*)(void))Ring_send, METH_FASTCALL, Ring_send_doc},
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
    {"close", (PyCFunction)Ring_close, METH_NOARGS,
     "close()\n--\n\nRelease the buffer (ends an open zero-copy receive unconsumed)."},
    {NULL}};

static PyGetSetDef Ring_getset[] = {
    {"capacity", (getter)Ring_get_capacity, NULL, "ring bytes", NULL},
    {"max_message", (getter)Ring_get_max_message, NULL, "largest payload", NULL},
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
    .tp_getset = Ring_getset,
};

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
    Py_DECREF(errors);
    if (!CorruptSegment || !MessageTooLarge || !IncompatibleSegment)
        return NULL;
    if (PyType_Ready(&MemoryType) < 0 || PyType_Ready(&RingType) < 0)
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
    return m;
}
