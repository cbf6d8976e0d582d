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
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    sl_type_free(tp, (PyObject *)self);
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
    int guard; /* truncation guard token (guard.c), 0: none */
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
    sl_guard_unregister(m->guard);
    m->guard = 0;
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
    self->guard = sl_guard_register(self->view.buf, self->view.len);
    return 0;
}

static void Memory_dealloc(MemoryObject *self) {
    sl_guard_unregister(self->guard);
    if (self->has_view)
        PyBuffer_Release(&self->view);
    Py_CLEAR(self->label);
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    sl_type_free(tp, (PyObject *)self);
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
    static PyObject *Memory_##name##_impl(MemoryObject *self, PyObject *arg) {  \
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
    static PyObject *Memory_##name##_impl(MemoryObject *self, PyObject *args) { \
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
    static PyObject *Memory_##name##_impl(MemoryObject *self, PyObject *args) { \
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
    static PyObject *Memory_##name##_impl(MemoryObject *self, PyObject *args) { \
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

static PyObject *Memory_wait32_impl(MemoryObject *self, PyObject *args) {
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

static PyObject *Memory_wake32_impl(MemoryObject *self, PyObject *args) {
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

static PyObject *Memory_lock_acquire_impl(MemoryObject *self, PyObject *args) {
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

static PyObject *Memory_lock_try_impl(MemoryObject *self, PyObject *arg) {
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

static PyObject *Memory_lock_release_impl(MemoryObject *self, PyObject *arg) {
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

/* ======================================================================== */
/* Event and Board: the header's sequences (shmlink/event.h, board.h).      */
/* Each call attaches to the block at `off` (every constant loaded once and */
/* checked against this mapping), calls the header, and maps its return     */
/* code through sl_raise.  Waits go through sl_ec_wait, registered so that  */
/* release() wakes them.                                                    */
/* ======================================================================== */

/* The event block at off, or NULL with an exception. */
static int event_at(MemoryObject *self, Py_ssize_t off, struct shmlink_event_handle *h) {
    void *p = word_at(self, off, 8, 1);
    if (!p)
        return -1;
    int rc = shmlink_event_attach(h, p, (uint64_t)(self->view.len - off), SHMLINK_EVENT_VERSION);
    return rc == 0 ? 0 : sl_raise(rc, "event", self->label);
}

static int event_cond(void *obj, uint64_t unused) {
    (void)unused;
    return shmlink_event_is_set((const struct shmlink_event_handle *)obj);
}

static PyObject *Memory_event_set_impl(MemoryObject *self, PyObject *arg) {
    struct shmlink_event_handle h;
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if ((off == -1 && PyErr_Occurred()) || event_at(self, off, &h) < 0)
        return NULL;
    return PyBool_FromLong(shmlink_event_set(&h));
}

static PyObject *Memory_event_clear_impl(MemoryObject *self, PyObject *arg) {
    struct shmlink_event_handle h;
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if ((off == -1 && PyErr_Occurred()) || event_at(self, off, &h) < 0)
        return NULL;
    shmlink_event_clear(&h);
    Py_RETURN_NONE;
}

static PyObject *Memory_event_is_set_impl(MemoryObject *self, PyObject *arg) {
    struct shmlink_event_handle h;
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if ((off == -1 && PyErr_Occurred()) || event_at(self, off, &h) < 0)
        return NULL;
    return PyBool_FromLong(shmlink_event_is_set(&h));
}

static PyObject *Memory_event_stats_impl(MemoryObject *self, PyObject *arg) {
    struct shmlink_event_handle h;
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if ((off == -1 && PyErr_Occurred()) || event_at(self, off, &h) < 0)
        return NULL;
    return Py_BuildValue("{sisisKsKsi}", "set", shmlink_event_is_set(&h), "auto_reset",
                         (int)h.auto_reset, "sets",
                         (unsigned long long)shmlink_event_sets(&h), "wakes",
                         (unsigned long long)shmlink_event_wakes(&h), "armed",
                         shmlink_event_armed(&h));
}

PyDoc_STRVAR(Memory_event_wait_doc,
"event_wait($self, offset, deadline=None, spin_ns=0, /)\n--\n\n"
"Wait until the event at offset is set (consuming it, for auto-reset), until\n"
"the absolute time.monotonic() deadline (None = forever).  True, or False on\n"
"timeout.  Raises SegmentClosed if release() closes this handle meanwhile.");

static PyObject *Memory_event_wait_impl(MemoryObject *self, PyObject *args) {
    Py_ssize_t off;
    PyObject *dl = Py_None;
    long long spin_ns = 0;
    struct shmlink_event_handle h;
    if (!PyArg_ParseTuple(args, "n|OL", &off, &dl, &spin_ns) || event_at(self, off, &h) < 0)
        return NULL;
    struct timespec ts;
    int err;
    struct timespec *deadline = parse_deadline(dl, &ts, &err);
    if (err)
        return NULL;
    if (shmlink_event_try_wait(&h) == 0)
        Py_RETURN_TRUE;
    if (deadline && shmlink_deadline_passed(deadline))
        Py_RETURN_FALSE; /* a poll: nothing armed */
    PyObject *res = NULL;
    memory_enter(self);
    int reg = memory_register(self, &h.e->ec.seq);
    for (;;) {
        int rc = sl_ec_wait(&h.e->ec, event_cond, &h, 0, deadline, spin_ns, &self->closing);
        spin_ns = 0; /* spin once per call, not after each lost race */
        if (rc < 0 && rc != -ETIMEDOUT) {
            sl_raise(rc, "event", self->label);
            break;
        }
        if (shmlink_event_try_wait(&h) == 0) { /* consumes, for auto-reset */
            res = Py_NewRef(Py_True);
            break;
        }
        if (rc == -ETIMEDOUT) {
            res = Py_NewRef(Py_False);
            break;
        }
        /* woken, but another waiter consumed the set: wait again */
    }
    memory_unregister(self, reg);
    memory_leave(self);
    return res;
}

/* The board block at off, attached, with the capacity the caller recorded
 * at open; -1 with an exception otherwise. */
static int board_at(MemoryObject *self, Py_ssize_t off, unsigned long long capacity,
                    struct shmlink_board_handle *h) {
    void *p = word_at(self, off, 8, 1);
    if (!p)
        return -1;
    int rc = shmlink_board_attach(h, p, (uint64_t)(self->view.len - off));
    if (rc != 0)
        return sl_raise(rc, "board", self->label);
    if (h->capacity != capacity)
        return sl_raisef(-EBADMSG, "board %R: its capacity changed from %llu to %llu bytes "
                         "after it was opened; the control block was overwritten: remove "
                         "the board and create it again", self->label ? self->label : Py_None,
                         capacity, (unsigned long long)h->capacity);
    return 0;
}

static int board_corrupt(MemoryObject *self, const struct shmlink_board_handle *h) {
    return sl_raisef(-EBADMSG, "board %R: the published value's slot has an impossible "
                     "sequence or length (the board holds at most %llu bytes); the control "
                     "block was overwritten: remove the board and create it again",
                     self->label ? self->label : Py_None, (unsigned long long)h->capacity);
}

/* Take the writers' lock for a locked read or a write: 0 or 1 (taken over
 * from a dead writer), -ETIMEDOUT, or -1 with an exception.  Between
 * memory_enter and memory_leave (called by the caller). */
static int board_lock(MemoryObject *self, const struct shmlink_board_handle *h,
                      const struct timespec *deadline, long long spin_ns) {
    int reg = memory_register(self, &h->b->lock.owner);
    int rc = lock_acquire_blocking(&h->b->lock, deadline, spin_ns, &self->closing);
    memory_unregister(self, reg);
    if (rc >= 0 && self->closing) {
        shmlink_lock_release(&h->b->lock); /* taken as the handle closed: give it back */
        rc = -ECANCELED;
    }
    if (rc == -ECANCELED)
        return sl_raise(rc, "board", self->label);
    return rc;
}

PyDoc_STRVAR(Memory_board_read_doc,
"board_read($self, offset, capacity, copy=True, tries=32, /)\n--\n\n"
"(version, value) of the board at offset -- or (version, length) with\n"
"copy=False -- read whole: lock-free, or under the writers' lock when\n"
"writers overtook the reader `tries` times.  capacity: as recorded at open.");

static PyObject *Memory_board_read_impl(MemoryObject *self, PyObject *args) {
    Py_ssize_t off;
    unsigned long long capacity;
    int copy = 1, tries = SHMLINK_BOARD_READ_TRIES;
    struct shmlink_board_handle h;
    if (!PyArg_ParseTuple(args, "nK|pi", &off, &capacity, &copy, &tries) ||
        board_at(self, off, capacity, &h) < 0)
        return NULL;
    char small[512];
    PyObject *bytes = NULL;
    uint64_t cap = sizeof small, version = 0, need = 0;
    int64_t n;
    for (;;) {
        char *dst = !copy ? NULL : bytes ? PyBytes_AS_STRING(bytes) : small;
        n = shmlink_board_try_read(&h, dst, cap, &version, &need, tries);
        if (n == -EAGAIN) {
            /* Writers kept overtaking this reader: read with them held off. */
            memory_enter(self);
            int lk = board_lock(self, &h, NULL, 20000);
            if (lk >= 0)
                n = shmlink_board_read_unlock(&h, dst, cap, &version, &need, lk == 1);
            memory_leave(self);
            if (lk < 0) {
                Py_XDECREF(bytes);
                return NULL;
            }
        }
        if (n != -EMSGSIZE)
            break;
        Py_XDECREF(bytes); /* a larger value than the buffer: read again into one */
        bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)need);
        if (!bytes)
            return NULL;
        cap = need;
    }
    if (n < 0) {
        Py_XDECREF(bytes);
        return n == -EBADMSG ? (board_corrupt(self, &h), NULL)
                             : sl_raise_null((int)n, "board", self->label);
    }
    if (!copy)
        return Py_BuildValue("KL", (unsigned long long)version, (long long)n);
    if (!bytes)
        bytes = PyBytes_FromStringAndSize(small, (Py_ssize_t)n);
    else if ((uint64_t)n < cap && sl_bytes_shrink(&bytes, (Py_ssize_t)n) < 0)
        return NULL;
    if (!bytes)
        return NULL;
    PyObject *res = Py_BuildValue("KN", (unsigned long long)version, bytes);
    return res;
}

PyDoc_STRVAR(Memory_board_write_doc,
"board_write($self, offset, capacity, data, deadline=None, spin_ns=0, /)\n--\n\n"
"Write data as the board's new value under the writers' lock (waiting for it\n"
"until the absolute deadline; taking it over from a writer that died), publish\n"
"it and wake the armed waiters.  The new version, or None on timeout.");

static PyObject *Memory_board_write_impl(MemoryObject *self, PyObject *args) {
    Py_ssize_t off;
    unsigned long long capacity;
    Py_buffer data;
    PyObject *dl = Py_None;
    long long spin_ns = 0;
    struct shmlink_board_handle h;
    if (!PyArg_ParseTuple(args, "nKy*|OL", &off, &capacity, &data, &dl, &spin_ns))
        return NULL;
    PyObject *res = NULL;
    struct timespec ts;
    int err;
    struct timespec *deadline = parse_deadline(dl, &ts, &err);
    if (err || board_at(self, off, capacity, &h) < 0)
        goto done;
    if ((uint64_t)data.len > h.capacity) {
        sl_raisef(-EMSGSIZE, "board %R: a %zd-byte value does not fit; it holds at most %llu "
                  "bytes", self->label ? self->label : Py_None, data.len,
                  (unsigned long long)h.capacity);
        goto done;
    }
    uint32_t pid;
    uint64_t start;
    identity(&pid, &start);
    memory_enter(self);
    int lk = board_lock(self, &h, deadline, spin_ns);
    if (lk >= 0) {
        uint64_t version = 0;
        int rc = shmlink_board_write_unlock(&h, data.buf, (uint64_t)data.len, pid, lk == 1,
                                            &version);
        res = rc == 0 ? PyLong_FromUnsignedLongLong(version)
                      : sl_raise_null(rc, "board", self->label);
    } else if (lk == -ETIMEDOUT) {
        res = Py_NewRef(Py_None);
    }
    memory_leave(self);
done:
    PyBuffer_Release(&data);
    return res;
}

struct board_since {
    const struct shmlink_board_handle *h;
    uint64_t since;
};

static int board_changed(void *obj, uint64_t unused) {
    const struct board_since *w = (const struct board_since *)obj;
    (void)unused;
    return shmlink_board_version(w->h) != w->since;
}

PyDoc_STRVAR(Memory_board_wait_doc,
"board_wait($self, offset, capacity, since, deadline=None, spin_ns=0, /)\n--\n\n"
"Wait until the board's version differs from since; return it, or None at\n"
"the absolute deadline.  Raises SegmentClosed if release() closes this\n"
"handle meanwhile.");

static PyObject *Memory_board_wait_impl(MemoryObject *self, PyObject *args) {
    Py_ssize_t off;
    unsigned long long capacity, since;
    PyObject *dl = Py_None;
    long long spin_ns = 0;
    struct shmlink_board_handle h;
    if (!PyArg_ParseTuple(args, "nKK|OL", &off, &capacity, &since, &dl, &spin_ns) ||
        board_at(self, off, capacity, &h) < 0)
        return NULL;
    struct timespec ts;
    int err;
    struct timespec *deadline = parse_deadline(dl, &ts, &err);
    if (err)
        return NULL;
    struct board_since w = {&h, since};
    uint64_t v = shmlink_board_version(&h);
    if (v != since)
        return PyLong_FromUnsignedLongLong(v);
    if (deadline && shmlink_deadline_passed(deadline))
        Py_RETURN_NONE; /* a poll: nothing armed */
    memory_enter(self);
    int reg = memory_register(self, &h.b->changed.seq);
    int rc;
    do
        rc = sl_ec_wait(&h.b->changed, board_changed, &w, 0, deadline, spin_ns,
                        &self->closing);
    while (rc == 0 && !board_changed(&w, 0)); /* a spurious wake */
    memory_unregister(self, reg);
    PyObject *res;
    if (rc == 0)
        res = PyLong_FromUnsignedLongLong(shmlink_board_version(&h));
    else if (rc == -ETIMEDOUT)
        res = board_changed(&w, 0) ? PyLong_FromUnsignedLongLong(shmlink_board_version(&h))
                                   : Py_NewRef(Py_None);
    else
        res = sl_raise_null(rc, "board", self->label);
    memory_leave(self);
    return res;
}

PyDoc_STRVAR(Memory_ec_notify_doc,
"ec_notify($self, offset, everyone=False, bells=-1, /)\n--\n\n"
"Notify the event count (struct shmlink_eventcount) at offset after making a\n"
"condition true: wake its sleepers if one is armed (True if a futex wake was\n"
"made).  everyone=True: wake every sleeper, armed or not (a peer's handle is\n"
"going away), and advance the count.  bells >= 0: the offset of the count's\n"
"doorbell table (doorbell.h), rung with it.");

/* The doorbell table (doorbell.h) at off, or NULL with an exception. */
static struct shmlink_bells *bells_at(MemoryObject *self, Py_ssize_t off) {
    if (!word_at(self, off, 8, 1) ||
        !word_at(self, off + (Py_ssize_t)sizeof(struct shmlink_bells) - 8, 8, 1))
        return NULL;
    return (struct shmlink_bells *)((char *)self->view.buf + off);
}

static PyObject *Memory_ec_notify_impl(MemoryObject *self, PyObject *args) {
    Py_ssize_t off, bells_off = -1;
    int everyone = 0;
    if (!PyArg_ParseTuple(args, "n|pn", &off, &everyone, &bells_off))
        return NULL;
    struct shmlink_eventcount *ec = word_at(self, off, 8, 1);
    if (!ec)
        return NULL;
    struct shmlink_bells *bells = NULL;
    if (bells_off >= 0 && !(bells = bells_at(self, bells_off)))
        return NULL;
    if (everyone) {
        shmlink_ec_wake_all_bells(ec, bells);
        Py_RETURN_TRUE;
    }
    return PyBool_FromLong(shmlink_ec_notify_bells(ec, bells));
}

PyDoc_STRVAR(Memory_ec_arm_doc,
"ec_arm($self, offset, /)\n--\n\n"
"Arm the event count at offset (shmlink_ec_arm): the next notify wakes and\n"
"rings the doorbells.  Returns the armed value; re-check the condition after.");

static PyObject *Memory_ec_arm_impl(MemoryObject *self, PyObject *arg) {
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    struct shmlink_eventcount *ec = word_at(self, off, 8, 1);
    if (!ec)
        return NULL;
    return PyLong_FromUnsignedLong(shmlink_ec_arm(ec));
}

PyDoc_STRVAR(Memory_bells_claim_doc,
"bells_claim($self, offset, id, /)\n--\n\n"
"Register doorbell id in the table (struct shmlink_bells) at offset.  True, or\n"
"False when every slot holds a live doorbell.");

static PyObject *Memory_bells_claim_impl(MemoryObject *self, PyObject *args) {
    Py_ssize_t off;
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "nK", &off, &id))
        return NULL;
    struct shmlink_bells *t = bells_at(self, off);
    if (!t)
        return NULL;
    if (id == 0) {
        PyErr_SetString(PyExc_ValueError, "doorbell id 0 is not a doorbell");
        return NULL;
    }
    return PyBool_FromLong(shmlink_bells_claim(t, id) >= 0);
}

PyDoc_STRVAR(Memory_bells_release_doc,
"bells_release($self, offset, id, /)\n--\n\n"
"Unregister doorbell id from the table at offset.");

static PyObject *Memory_bells_release_impl(MemoryObject *self, PyObject *args) {
    Py_ssize_t off;
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "nK", &off, &id))
        return NULL;
    struct shmlink_bells *t = bells_at(self, off);
    if (!t)
        return NULL;
    shmlink_bells_release(t, id);
    Py_RETURN_NONE;
}

/* ======================================================================== */
/* Mutex: the header's sequences (shmlink/mutex.h).  Each call checks the   */
/* control block at `off` lies in this mapping, calls the header and maps   */
/* its return code; the take-over bookkeeping (inconsistent, the dead       */
/* holder's PID) is done by the header before the call returns to Python.  */
/* ======================================================================== */

/* The mutex control block at off, or NULL with an exception. */
static struct shmlink_mutex *mutex_at(MemoryObject *self, Py_ssize_t off, int write) {
    struct shmlink_mutex *m = word_at(self, off, 8, write);
    if (!m || !word_at(self, off + SHMLINK_MUTEX_SIZE - 8, 8, write))
        return NULL;
    return m;
}

/* mutex_at for a method's one argument, the offset (a Python int). */
static struct shmlink_mutex *mutex_arg(MemoryObject *self, PyObject *arg, int write) {
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    return mutex_at(self, off, write);
}

/* (0, 0) taken; (1, dead PID) taken from a holder that died, or still
 * inconsistent since one did. */
static PyObject *mutex_taken_result(struct shmlink_mutex *m, int rc) {
    if (rc == 0)
        return Py_BuildValue("(ii)", 0, 0);
    return Py_BuildValue("(ik)", 1, (unsigned long)shmlink_mutex_block_dead_pid(m));
}

PyDoc_STRVAR(Memory_mutex_acquire_doc,
"mutex_acquire($self, offset, deadline=None, spin_ns=0, /)\n--\n\n"
"Take the mutex at offset (mutex.h), waiting until the absolute deadline.\n"
"Returns (0, 0) when taken, (1, pid) when taken but a holder (pid) died\n"
"holding it and nobody marked it consistent since (the caller holds it),\n"
"None on timeout.  Raises SegmentClosed if release() closes this handle\n"
"meanwhile, or what a signal handler raises (the lock is not held then).");

static PyObject *Memory_mutex_acquire(MemoryObject *self, PyObject *args) {
    Py_ssize_t off;
    PyObject *dl = Py_None;
    long long spin_ns = 0;
    if (!PyArg_ParseTuple(args, "n|OL", &off, &dl, &spin_ns))
        return NULL;
    struct shmlink_mutex *m = mutex_at(self, off, 1);
    if (!m)
        return NULL;
    struct timespec ts;
    int err;
    struct timespec *deadline = parse_deadline(dl, &ts, &err);
    if (err)
        return NULL;
    memory_enter(self);
    int reg = memory_register(self, &m->lock.owner);
    int rc = mutex_lock_blocking(m, deadline, spin_ns, &self->closing);
    memory_unregister(self, reg);
    PyObject *res = NULL;
    if ((rc == 0 || rc == -EOWNERDEAD) && self->closing) {
        uint32_t pid;
        uint64_t start;
        identity(&pid, &start);
        /* taken as the handle closed: give it back (still inconsistent if a
         * holder died: the next locker is told) */
        shmlink_mutex_block_unlock(m, pid);
        rc = -ECANCELED;
    }
    if (rc == 0 || rc == -EOWNERDEAD)
        res = mutex_taken_result(m, rc);
    else if (rc == -ETIMEDOUT)
        res = Py_NewRef(Py_None);
    else if (rc == -ECANCELED)
        raise_closed_while_waiting("mutex", self->label);
    else
        sl_raise(rc, "mutex", self->label);
    memory_leave(self);
    return res;
}

PyDoc_STRVAR(Memory_mutex_try_doc,
"mutex_try($self, offset, /)\n--\n\n"
"Take the mutex at offset if it is free now or its holder died: (0, 0) or\n"
"(1, dead pid) as mutex_acquire; None if a live process holds it.");

static PyObject *Memory_mutex_try(MemoryObject *self, PyObject *arg) {
    struct shmlink_mutex *m = mutex_arg(self, arg, 1);
    if (!m)
        return NULL;
    uint32_t pid;
    uint64_t start;
    identity(&pid, &start);
    int rc = shmlink_mutex_block_trylock(m, pid, start);
    if (rc == -EBUSY)
        Py_RETURN_NONE;
    if (rc == 0 || rc == -EOWNERDEAD)
        return mutex_taken_result(m, rc);
    return sl_raise_null(rc, "mutex", self->label);
}

static PyObject *Memory_mutex_release(MemoryObject *self, PyObject *arg) {
    struct shmlink_mutex *m = mutex_arg(self, arg, 1);
    if (!m)
        return NULL;
    uint32_t pid;
    uint64_t start;
    identity(&pid, &start);
    int rc = shmlink_mutex_block_unlock(m, pid);
    if (rc == -EPERM) {
        struct shmlink_mutex_stats st;
        shmlink_mutex_block_stats(m, &st);
        uint32_t owner = st.owner;
        if (owner)
            sl_raisef(rc, "mutex %R is not held by this process (holder PID %lu); only the "
                      "thread that acquired it may release it",
                      self->label ? self->label : Py_None, (unsigned long)owner);
        else
            sl_raisef(rc, "mutex %R is not held by anyone; only the thread that acquired it "
                      "may release it", self->label ? self->label : Py_None);
        return NULL;
    }
    if (rc != 0)
        return sl_raise_null(rc, "mutex", self->label);
    Py_RETURN_NONE;
}

static PyObject *Memory_mutex_mark_consistent(MemoryObject *self, PyObject *arg) {
    struct shmlink_mutex *m = mutex_arg(self, arg, 1);
    if (!m)
        return NULL;
    uint32_t pid;
    uint64_t start;
    identity(&pid, &start);
    int rc = shmlink_mutex_block_mark_consistent(m, pid);
    if (rc == -EPERM) {
        sl_raisef(rc, "mutex %R: acquire it before calling mark_consistent()",
                  self->label ? self->label : Py_None);
        return NULL;
    }
    if (rc != 0)
        return sl_raise_null(rc, "mutex", self->label);
    Py_RETURN_NONE;
}

static PyObject *Memory_mutex_stats(MemoryObject *self, PyObject *arg) {
    struct shmlink_mutex *m = mutex_arg(self, arg, 0);
    if (!m)
        return NULL;
    struct shmlink_mutex_stats st;
    shmlink_mutex_block_stats(m, &st);
    return Py_BuildValue("{sksksksksK}", "owner", (unsigned long)st.owner, "inconsistent",
                         (unsigned long)st.inconsistent, "holder", (unsigned long)st.holder,
                         "dead", (unsigned long)st.dead, "acquisitions",
                         (unsigned long long)st.acquisitions);
}

/* The layouts of event.h and board.h, for sync.py and board.py. */
int memory_register_layouts(PyObject *m) {
    PyObject *ev = Py_BuildValue(
        "{sisisisisisisisi}", "version", (int)SHMLINK_EVENT_VERSION, "size",
        (int)SHMLINK_EVENT_SIZE, "state", (int)offsetof(struct shmlink_event, state),
        "auto_reset", (int)offsetof(struct shmlink_event, auto_reset), "ec",
        (int)offsetof(struct shmlink_event, ec), "sets",
        (int)offsetof(struct shmlink_event, sets), "wakes",
        (int)offsetof(struct shmlink_event, wakes), "bells",
        (int)offsetof(struct shmlink_event, bells));
    PyObject *bd = Py_BuildValue(
        "{sisisIsKsKsKsisisisisisisisisi}", "version", (int)SHMLINK_BOARD_VERSION,
        "read_tries", (int)SHMLINK_BOARD_READ_TRIES, "magic",
        (unsigned int)SHMLINK_BOARD_MAGIC, "slot0", (unsigned long long)SHMLINK_BOARD_SLOT0,
        "slot_header", (unsigned long long)SHMLINK_BOARD_SLOT_HEADER, "max_capacity",
        (unsigned long long)SHMLINK_BOARD_MAX_CAPACITY, "layout_version",
        (int)offsetof(struct shmlink_board, layout_version), "capacity",
        (int)offsetof(struct shmlink_board, capacity), "lock",
        (int)offsetof(struct shmlink_board, lock), "takeovers",
        (int)offsetof(struct shmlink_board, takeovers), "last_writer_pid",
        (int)offsetof(struct shmlink_board, last_writer_pid), "published",
        (int)offsetof(struct shmlink_board, version), "changed",
        (int)offsetof(struct shmlink_board, changed), "wakes",
        (int)offsetof(struct shmlink_board, wakes), "bells",
        (int)offsetof(struct shmlink_board, bells));
    int rc = (ev && bd && PyModule_AddObjectRef(m, "EVENT_LAYOUT", ev) == 0 &&
              PyModule_AddObjectRef(m, "BOARD_LAYOUT", bd) == 0) ? 0 : -1;
    Py_XDECREF(ev);
    Py_XDECREF(bd);
    return rc;
}

/* Every method that touches the mapping: its result, or CorruptSegment
 * when the segment's file was truncated under it (guard.c). */
#define MEMORY_GUARDED(name)                                                   \
    static PyObject *Memory_##name(MemoryObject *self, PyObject *arg) {        \
        PyObject *res = Memory_##name##_impl(self, arg);                       \
        if (sl_guard_hit(self->guard))                                         \
            res = sl_guard_result(res, "segment", self->label);                \
        return res;                                                            \
    }
MEMORY_GUARDED(load32)
MEMORY_GUARDED(load64)
MEMORY_GUARDED(store32)
MEMORY_GUARDED(store64)
MEMORY_GUARDED(cas32)
MEMORY_GUARDED(cas64)
MEMORY_GUARDED(add32)
MEMORY_GUARDED(add64)
MEMORY_GUARDED(wait32)
MEMORY_GUARDED(wake32)
MEMORY_GUARDED(lock_acquire)
MEMORY_GUARDED(lock_try)
MEMORY_GUARDED(lock_release)
MEMORY_GUARDED(event_set)
MEMORY_GUARDED(event_clear)
MEMORY_GUARDED(event_is_set)
MEMORY_GUARDED(event_wait)
MEMORY_GUARDED(event_stats)
MEMORY_GUARDED(board_read)
MEMORY_GUARDED(board_write)
MEMORY_GUARDED(board_wait)
MEMORY_GUARDED(ec_notify)
MEMORY_GUARDED(ec_arm)
MEMORY_GUARDED(bells_claim)
MEMORY_GUARDED(bells_release)

static PyObject *Memory_get_faulted(MemoryObject *self, void *closure) {
    return PyBool_FromLong(sl_guard_hit(self->guard));
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
    {"event_set", (PyCFunction)Memory_event_set, METH_O,
     "event_set($self, offset, /)\n--\n\nSet the event at offset (event.h); True if it made a futex wake."},
    {"event_clear", (PyCFunction)Memory_event_clear, METH_O,
     "event_clear($self, offset, /)\n--\n\nClear the event at offset."},
    {"event_is_set", (PyCFunction)Memory_event_is_set, METH_O,
     "event_is_set($self, offset, /)\n--\n\nWhether the event at offset is set (consumes nothing)."},
    {"event_wait", (PyCFunction)Memory_event_wait, METH_VARARGS, Memory_event_wait_doc},
    {"event_stats", (PyCFunction)Memory_event_stats, METH_O,
     "event_stats($self, offset, /)\n--\n\n{set, auto_reset, sets, wakes, armed} of the event at offset."},
    {"board_read", (PyCFunction)Memory_board_read, METH_VARARGS, Memory_board_read_doc},
    {"board_write", (PyCFunction)Memory_board_write, METH_VARARGS, Memory_board_write_doc},
    {"board_wait", (PyCFunction)Memory_board_wait, METH_VARARGS, Memory_board_wait_doc},
    {"ec_notify", (PyCFunction)Memory_ec_notify, METH_VARARGS, Memory_ec_notify_doc},
    {"ec_arm", (PyCFunction)Memory_ec_arm, METH_O, Memory_ec_arm_doc},
    {"bells_claim", (PyCFunction)Memory_bells_claim, METH_VARARGS, Memory_bells_claim_doc},
    {"bells_release", (PyCFunction)Memory_bells_release, METH_VARARGS, Memory_bells_release_doc},
    {"mutex_acquire", (PyCFunction)Memory_mutex_acquire, METH_VARARGS,
     Memory_mutex_acquire_doc},
    {"mutex_try", (PyCFunction)Memory_mutex_try, METH_O, Memory_mutex_try_doc},
    {"mutex_release", (PyCFunction)Memory_mutex_release, METH_O,
     "mutex_release($self, offset, /)\n--\n\nRelease the mutex at offset (held by this process: "
     "else NotOwner); it stays inconsistent if it was."},
    {"mutex_mark_consistent", (PyCFunction)Memory_mutex_mark_consistent, METH_O,
     "mutex_mark_consistent($self, offset, /)\n--\n\nClear the mutex's inconsistent mark "
     "(held by this process: else NotOwner)."},
    {"mutex_stats", (PyCFunction)Memory_mutex_stats, METH_O,
     "mutex_stats($self, offset, /)\n--\n\n{owner, inconsistent, holder, dead, acquisitions} "
     "of the mutex at offset (owner 0: free)."},
    {NULL}};

static PyMemberDef Memory_members[] = {
    {"label", T_OBJECT, offsetof(MemoryObject, label), 0, "name used in error messages"},
    {NULL}};

static PyGetSetDef Memory_getset[] = {
    {"size", (getter)Memory_get_size, NULL, "bytes in the buffer", NULL},
    {"views", (getter)Memory_get_views, NULL, "live exporters made by view()", NULL},
    {"closed", (getter)Memory_get_closed, NULL, "True once release() was called", NULL},
    {"faulted", (getter)Memory_get_faulted, NULL,
     "True once the buffer's file was truncated under it (its pages past the new end "
     "now read as zeros here; see guard.c)", NULL},
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
