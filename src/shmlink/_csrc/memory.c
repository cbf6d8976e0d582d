/*
 * Memory (a mapped buffer and atomic access to its aligned words) and View
 * (the exporter behind every zero-copy memoryview).
 */
#include "internal.h"

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
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp); /* a heap type: each instance holds a reference */
}

static PyType_Slot View_slots[] = {
    {Py_tp_doc, (void *)"The exporter behind a zero-copy view: keeps the mapping mapped while "
              "anything made from the view lives."},
    {Py_tp_dealloc, View_dealloc},
    {Py_bf_getbuffer, View_getbuffer},
    {Py_bf_releasebuffer, View_releasebuffer},
    {0, NULL}};

static PyType_Spec View_spec = {"shmlink._core.View", sizeof(ViewObject), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION, View_slots};

/* A memoryview of len bytes at off of the mapping `mapped` exports, counted
 * in *live of owner (kept alive by the view). */
PyObject *make_view(PyObject *mapped, Py_ssize_t off, Py_ssize_t len, int readonly,
                           PyObject *owner, int *live) {
    ViewObject *v = PyObject_New(ViewObject, sl_state_of(owner)->View);
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

/* Every Memory method that may release the GIL runs between these two:
 * memory_enter counts the call (after word_at checked the handle is open);
 * memory_leave uncounts it and, for the last call out of a closing handle,
 * gives the mapping back.  While sleeping on a word, a call registers it
 * (memory_register / memory_unregister, under the GIL) so that release()
 * wakes it; after each sleep it checks self->closing and maps -ECANCELED
 * through sl_raise("segment", self->label). */
static inline void memory_enter(MemoryObject *m) { m->calls++; }

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
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp); /* a heap type: each instance holds a reference */
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
        return conv(SHMLINK_LOAD_ACQUIRE(p));                                      \
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
        SHMLINK_STORE_SEQ_CST(p, (type)v);                                         \
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
        return PyBool_FromLong(SHMLINK_CAS(p, &expected, (type)d));                \
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
        return conv(SHMLINK_FETCH_ADD(p, (type)d));                                \
    }
DEF_ADD(add32, uint32_t, PyLong_FromUnsignedLong)
DEF_ADD(add64, uint64_t, PyLong_FromUnsignedLongLong)

PyDoc_STRVAR(Memory_wait32_doc,
"wait32($self, offset, expected, deadline=None, /)\n--\n\n"
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
    memory_enter(self);
    for (;;) {
        int rc = 0;
        struct timespec slice;
        int reg = memory_register(self, p);
        Py_BEGIN_ALLOW_THREADS
        shmlink_deadline_min(&slice, deadline, SIGNAL_SLICE_S);
        if (!SHMLINK_LOAD_RELAXED(&self->closing))
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
            if (SHMLINK_LOAD_ACQUIRE(p) != (uint32_t)expected) {
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



PyDoc_STRVAR(Memory_lock_acquire_doc,
"lock_acquire($self, offset, deadline=None, spin_ns=0, /)\n--\n\n"
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
    memory_enter(self);
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
    uint32_t owner = SHMLINK_LOAD_ACQUIRE(&l->owner);
    uint64_t owner_start = SHMLINK_LOAD_RELAXED(&l->owner_start);
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
    SHMLINK_FENCE();
    Py_RETURN_NONE;
}

static PyObject *Memory_release(MemoryObject *self, PyObject *unused) {
    if (!self->has_view)
        Py_RETURN_TRUE;
    if (self->calls > 0) {
        /* Calls inside (other threads', or the one a signal handler
         * interrupted): wake them; the last to leave releases. */
        SHMLINK_STORE_RELAXED(&self->closing, 1);
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
"view($self, offset, length, readonly=False, /)\n--\n\n"
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
     "load32($self, offset, /)\n--\n\nAcquire-load the aligned 32-bit word at offset."},
    {"load64", (PyCFunction)Memory_load64, METH_O,
     "load64($self, offset, /)\n--\n\nAcquire-load the aligned 64-bit word at offset."},
    {"store32", (PyCFunction)Memory_store32, METH_VARARGS,
     "store32($self, offset, value, /)\n--\n\nStore (sequentially consistent)."},
    {"store64", (PyCFunction)Memory_store64, METH_VARARGS,
     "store64($self, offset, value, /)\n--\n\nStore (sequentially consistent)."},
    {"cas32", (PyCFunction)Memory_cas32, METH_VARARGS,
     "cas32($self, offset, expected, desired, /)\n--\n\nCompare-and-swap; True if swapped."},
    {"cas64", (PyCFunction)Memory_cas64, METH_VARARGS,
     "cas64($self, offset, expected, desired, /)\n--\n\nCompare-and-swap; True if swapped."},
    {"add32", (PyCFunction)Memory_add32, METH_VARARGS,
     "add32($self, offset, delta, /)\n--\n\nAtomic fetch-add (wrapping); returns the old value."},
    {"add64", (PyCFunction)Memory_add64, METH_VARARGS,
     "add64($self, offset, delta, /)\n--\n\nAtomic fetch-add (wrapping); returns the old value."},
    {"wait32", (PyCFunction)Memory_wait32, METH_VARARGS, Memory_wait32_doc},
    {"wake32", (PyCFunction)Memory_wake32, METH_VARARGS,
     "wake32($self, offset, n=2147483647, /)\n--\n\nWake up to n waiters of the word; returns how many."},
    {"lock_acquire", (PyCFunction)Memory_lock_acquire, METH_VARARGS,
     Memory_lock_acquire_doc},
    {"lock_try", (PyCFunction)Memory_lock_try, METH_O,
     "lock_try($self, offset, /)\n--\n\nTake the lock if free (0) or if its holder died (1); None if held."},
    {"lock_release", (PyCFunction)Memory_lock_release, METH_O,
     "lock_release($self, offset, /)\n--\n\nRelease the lock and wake one waiter."},
    {"fence", (PyCFunction)Memory_fence, METH_NOARGS,
     "fence($self, /)\n--\n\nFull memory fence."},
    {"release", (PyCFunction)Memory_release, METH_NOARGS,
     "release($self, /)\n--\n\nClose this handle: later calls raise SegmentClosed.  Releases the "
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

static PyType_Slot Memory_slots[] = {
    {Py_tp_doc, (void *)"Memory(buffer)\n--\n\nAtomic access to the aligned words of a "
              "shared buffer."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, Memory_init},
    {Py_tp_dealloc, Memory_dealloc},
    {Py_tp_methods, Memory_methods},
    {Py_tp_members, Memory_members},
    {Py_tp_getset, Memory_getset},
    {0, NULL}};

static PyType_Spec Memory_spec = {"shmlink._core.Memory", sizeof(MemoryObject), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE, Memory_slots};


/* Called from the module's exec slot: the View and Memory types. */
int memory_add_types(PyObject *m, sl_state *st) {
    st->View = (PyTypeObject *)PyType_FromModuleAndSpec(m, &View_spec, NULL);
    if (!st->View)
        return -1;
    st->Memory = (PyTypeObject *)PyType_FromModuleAndSpec(m, &Memory_spec, NULL);
    if (!st->Memory || PyModule_AddType(m, st->Memory) < 0)
        return -1;
    return 0;
}
