/*
 * Ring: the message ring of shmlink.Queue (include/shmlink/ring.h).
 */
#include "internal.h"

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
    double slice;         /* qsend/qrecv wait at most this long (s) before handing back; 0 none */
    PyObject *label;      /* the queue's name, for error messages */
    uint64_t view_next;   /* head after the viewed record */
    uint64_t view_head;   /* head before it (after skipped wrap markers) */
    int calls;            /* calls inside (GIL-protected; see "Handle lifetime") */
    int closing;          /* close() was called: calls end, new ones are refused */
    int live_views;       /* live exporters of the open zero-copy receive */
    int guard;            /* truncation guard token (guard.c), 0: none */
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
        if (sl_guard_hit(self->guard))                                         \
            res_ = sl_guard_result(res_, "queue", self->label);                \
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
    self->guard = sl_guard_register(self->view.buf, self->view.len);
    if (offset < 0 || size < 0 || offset % 64 != 0 || offset > self->view.len ||
        size > self->view.len - offset) {
        PyErr_SetString(PyExc_ValueError, "ring region outside the buffer");
        return -1;
    }
    int rc = shmlink_ring_attach(&self->h, (char *)self->view.buf + offset,
                                 (uint64_t)size);
    if (rc == -EPROTO) {
        sl_raisef(-EPROTO,
                        "the queue's ring has an unknown magic or version; it "
                        "was made by another program or shmlink version");
        return -1;
    }
    if (rc < 0) {
        sl_raisef(-EBADMSG,
                        "the queue's ring constants are inconsistent with its "
                        "size; the segment is corrupt: remove it and recreate");
        return -1;
    }
    return 0;
}

static void Ring_dealloc(RingObject *self) {
    Py_CLEAR(self->label);
    sl_guard_unregister(self->guard);
    if (self->has_view)
        PyBuffer_Release(&self->view);
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    sl_type_free(tp, (PyObject *)self);
    Py_DECREF(tp); /* a heap type: each instance holds a reference */
}

/* A return code of the header (or -1 with an exception) as an exception. */
static int ring_raise(RingObject *self, int rc) {
    if (rc == -EBADMSG)
        return sl_raisef(rc, "queue %R: its head, tail or a record header is inconsistent "
                         "(overwritten by a foreign or buggy writer); remove the queue and "
                         "recreate it", self->label ? self->label : Py_None);
    return sl_raise(rc, "queue", self->label);
}

/* Lock-free wait conditions (hints: the caller re-checks under its lock). */
static int cond_has_data(void *obj, uint64_t unused) {
    RingObject *r = (RingObject *)obj;
    return SHMLINK_LOAD_ACQUIRE(&r->h.ring->tail) != SHMLINK_LOAD_ACQUIRE(&r->h.ring->head);
}

static int cond_has_room(void *obj, uint64_t need) {
    RingObject *r = (RingObject *)obj;
    uint64_t tail = SHMLINK_LOAD_ACQUIRE(&r->h.ring->tail);
    uint64_t head = SHMLINK_LOAD_ACQUIRE(&r->h.ring->head);
    uint64_t used = tail - head;
    if (!shmlink_ring_positions_ok(&r->h, head, tail) ||
        tail + r->h.capacity + need > SHMLINK_RING_POS_LIMIT)
        return 1; /* corrupt or exhausted: let the locked path report it */
    /* room for the record, plus a possible wrap gap */
    uint64_t to_end = r->h.capacity - (tail % r->h.capacity);
    uint64_t gap = need > to_end ? to_end : 0;
    return used + gap + need <= r->h.capacity;
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
        return ring_raise(self, rc);
    return rc;
}

static int check_len(RingObject *self, Py_ssize_t len) {
    if ((uint64_t)len > self->h.max_message) {
        sl_raisef(-EMSGSIZE,
                     "message of %zd bytes is larger than this queue's "
                     "max_message_size of %llu; split it or create the queue "
                     "with a larger capacity / max_message_size",
                     len, (unsigned long long)self->h.max_message);
        return -1;
    }
    return 0;
}


static int ring_len_ok(void *ring, Py_ssize_t len) {
    return check_len((RingObject *)ring, len);
}

/* The header's gather callback over an array of Py_buffer. */
static void gather_buffers(void *ctx, uint64_t i, const void **data, uint64_t *len) {
    const Py_buffer *bufs = (const Py_buffer *)ctx;
    *data = bufs[i].buf;
    *len = (uint64_t)bufs[i].len;
}

/* Send a batch of buffers; returns how many were sent (all unless timeout),
 * or -1 with an exception.  timed_out set when the deadline passed.  The
 * sequence is the header's (shmlink_ring_send_many_unlock); this loop only
 * takes the lock and waits for room. */
static Py_ssize_t ring_send_buffers(RingObject *self, Py_buffer *bufs,
                                    Py_ssize_t n, const struct timespec *deadline,
                                    int64_t spin_ns, int *timed_out) {
    struct shmlink_ring *r = self->h.ring;
    uint64_t done = 0;
    *timed_out = 0;
    while (done < (uint64_t)n) {
        int rc = ring_lock(self, &r->prod_lock, deadline, spin_ns);
        if (rc == -1)
            return -1;
        if (rc == -ETIMEDOUT) {
            *timed_out = 1;
            return (Py_ssize_t)done;
        }
        uint32_t pid;
        uint64_t start;
        identity(&pid, &start);
        int prc = shmlink_ring_send_many_unlock(&self->h, gather_buffers, bufs, (uint64_t)n,
                                                &done, pid, start);
        if (prc == -EAGAIN) {
            if (no_wait(deadline)) {
                *timed_out = 1; /* try_ form */
                return (Py_ssize_t)done;
            }
            int chk = sl_retry_check(deadline);
            if (chk < 0)
                return -1;
            if (chk > 0) {
                *timed_out = 1;
                return (Py_ssize_t)done;
            }
            int wrc = sl_ec_wait(&r->space_ec, cond_has_room, self,
                                 shmlink_ring_record_size((uint64_t)bufs[done].len),
                                 deadline, spin_ns, &self->closing);
            if (wrc == -ETIMEDOUT) {
                *timed_out = 1;
                return (Py_ssize_t)done;
            }
            if (wrc < 0)
                return ring_raise(self, wrc);
        } else if (prc < 0) {
            return ring_raise(self, prc);
        }
    }
    return (Py_ssize_t)done;
}

PyDoc_STRVAR(Ring_send_doc,
"send($self, data, deadline=None, spin_ns=0, /)\n--\n\n"
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
"send_many($self, messages, deadline=None, spin_ns=0, /)\n--\n\n"
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

/* What one locked receive does with each record (the header's deliver
 * callback, called with cons_lock held and the GIL): append it as bytes to
 * list, or store it as bytes in *one, or copy it into into[into_len]. */
struct deliver_ctx {
    PyObject *list;
    PyObject **one;
    void *into;
    Py_ssize_t into_len;
    Py_ssize_t len; /* length of the last record seen */
};

static int deliver_record(void *ctx, const uint8_t *src, uint64_t len) {
    struct deliver_ctx *c = (struct deliver_ctx *)ctx;
    c->len = (Py_ssize_t)len;
    if (!c->list && !c->one) {
        if (c->len > c->into_len)
            return -EMSGSIZE;
        memcpy(c->into, src, (size_t)len);
        return 0;
    }
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (!b)
        return -1;
    if (len > 65536) {
        Py_BEGIN_ALLOW_THREADS
        memcpy(PyBytes_AS_STRING(b), src, (size_t)len);
        Py_END_ALLOW_THREADS
    } else {
        memcpy(PyBytes_AS_STRING(b), src, (size_t)len);
    }
    if (c->one) {
        *c->one = b;
        return 0;
    }
    int arc = PyList_Append(c->list, b);
    Py_DECREF(b);
    return arc < 0 ? -1 : 0;
}

/* The one receive loop: take cons_lock and hand up to max records to
 * deliver (the header's shmlink_ring_recv_many_unlock), or wait for data
 * until the deadline.  Returns the count taken (0 on timeout), -1 with an
 * exception, or -EMSGSIZE (deliver refused the record; nothing raised). */
static int64_t ring_take(RingObject *self, shmlink_ring_deliver_fn deliver, void *ctx,
                         uint64_t max, const struct timespec *deadline, int64_t spin_ns) {
    struct shmlink_ring *r = self->h.ring;
    for (;;) {
        int rc = ring_lock(self, &r->cons_lock, deadline, spin_ns);
        if (rc == -1)
            return -1;
        if (rc == -ETIMEDOUT)
            return 0;
        int64_t n = shmlink_ring_recv_many_unlock(&self->h, deliver, ctx, max);
        if (n == -EMSGSIZE)
            return n;
        if (n < 0)
            return ring_raise(self, (int)n);
        if (n > 0)
            return n;
        if (no_wait(deadline))
            return 0;
        int chk = sl_retry_check(deadline);
        if (chk != 0)
            return chk < 0 ? -1 : 0;
        int wrc = sl_ec_wait(&r->data_ec, cond_has_data, self, 0, deadline, spin_ns, &self->closing);
        if (wrc == -ETIMEDOUT)
            return 0;
        if (wrc < 0)
            return ring_raise(self, wrc);
    }
}

/* Receive: blocks until at least one record or the deadline.  Returns the
 * count taken (0 on timeout) or -1 with an exception. */
static Py_ssize_t ring_recv(RingObject *self, Py_ssize_t max, PyObject *list,
                            PyObject **one, void *into, Py_ssize_t into_len,
                            Py_ssize_t *out_len, const struct timespec *deadline,
                            int64_t spin_ns) {
    struct deliver_ctx c = {list, one, into, into_len, 0};
    int64_t n = ring_take(self, deliver_record, &c, (uint64_t)max, deadline, spin_ns);
    if (n == -EMSGSIZE) {
        *out_len = c.len;
        return sl_raisef(-EMSGSIZE,
                         "the next message has %zd bytes but the buffer holds only %zd; "
                         "it stays in the queue: receive it into a larger buffer",
                         c.len, into_len);
    }
    if (n > 0 && out_len)
        *out_len = c.len;
    return (Py_ssize_t)n;
}

PyDoc_STRVAR(Ring_recv_doc,
"recv($self, deadline=None, spin_ns=0, /)\n--\n\n"
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
"recv_many($self, max_count, deadline=None, spin_ns=0, /)\n--\n\n"
"Wait until at least one message is there (or the deadline), then take up\n"
"to max_count in one locked pass.  Returns a list (empty on timeout).");

static PyObject *Ring_recv_many_impl(RingObject *self, PyObject *args) {
    Py_ssize_t max;
    PyObject *dl = Py_None;
    long long spin = 0;
    if (!PyArg_ParseTuple(args, "n|OL", &max, &dl, &spin))
        return NULL;
    if (max < 1) {
        sl_raisef(-EINVAL, "max_count must be at least 1, not %zd", max);
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
"recv_into($self, buffer, deadline=None, spin_ns=0, /)\n--\n\n"
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
"view_begin($self, deadline=None, spin_ns=0, /)\n--\n\n"
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
        uint64_t head, next;
        int64_t len = shmlink_ring_view_begin_locked(&self->h, &head, &next);
        if (len >= 0) { /* cons_lock stays held until view_end */
            self->in_view = 1;
            self->view_head = head;
            self->view_next = next;
            Py_ssize_t base = (Py_ssize_t)((self->h.data - (uint8_t *)self->view.buf) +
                                           (Py_ssize_t)(head % self->h.capacity) +
                                           SHMLINK_RECORD_HEADER);
            return Py_BuildValue("nn", base, (Py_ssize_t)len);
        }
        if (len != -EAGAIN)
            return ring_raise(self, (int)len), NULL;
        if (no_wait(deadline))
            Py_RETURN_NONE;
        int chk = sl_retry_check(deadline);
        if (chk < 0)
            return NULL;
        if (chk > 0)
            Py_RETURN_NONE;
        int wrc = sl_ec_wait(&r->data_ec, cond_has_data, self, 0, deadline, spin, &self->closing);
        if (wrc == -ETIMEDOUT)
            Py_RETURN_NONE;
        if (wrc < 0)
            return ring_raise(self, wrc), NULL;
    }
}

/* End the open zero-copy receive (the caller checked live_views). */
static void ring_view_end(RingObject *self, int consume) {
    self->in_view = 0;
    shmlink_ring_view_end(&self->h, self->view_head, self->view_next, consume);
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
"view($self, offset, length, /)\n--\n\n"
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
    uint64_t head = SHMLINK_LOAD_ACQUIRE(&r->head), tail = SHMLINK_LOAD_ACQUIRE(&r->tail);
    uint64_t sent = SHMLINK_LOAD_RELAXED(&r->sent), received = SHMLINK_LOAD_RELAXED(&r->received);
    uint64_t used = tail - head;
    if (used > self->h.capacity)
        used = self->h.capacity; /* inconsistent: report full, recv reports corruption */
    return Py_BuildValue("{sKsKsKsKsKsI}", "capacity", (unsigned long long)self->h.capacity,
                         "max_message", (unsigned long long)self->h.max_message,
                         "used", (unsigned long long)used, "sent", (unsigned long long)sent,
                         "received", (unsigned long long)received,
                         "producer_pid", SHMLINK_LOAD_RELAXED(&r->prod_lock.owner));
}

/* No call is inside a closing ring any more: give the mapping back. */
static void ring_finish(RingObject *self) {
    if (!self->has_view)
        return;
    if (self->in_view)
        ring_view_end(self, 0); /* the message stays for the next receive */
    self->in_view = 0;
    sl_guard_unregister(self->guard);
    self->guard = 0;
    PyBuffer_Release(&self->view);
    self->has_view = 0;
}

static PyObject *Ring_close(RingObject *self, PyObject *unused) {
    if (!self->has_view)
        Py_RETURN_TRUE;
    SHMLINK_STORE_RELAXED(&self->closing, 1);
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
"ring_init($module, buffer, offset, size, max_message=0, /)\n--\n\n"
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

/* How long qsend/qrecv wait, from their timeout=: *wait_s seconds (-1
 * forever, 0 not at all), capped at the handle's slice (self->slice), in
 * which case *sliced is set and running out of time is not a timeout: the
 * call hands back (False/None) so the caller can check the ring's locks
 * between slices (Queue's forged-holder guard).  0, or -1 with an
 * exception for a bad timeout. */
static int qwait_seconds(RingObject *self, PyObject *timeout, double *wait_s, int *sliced) {
    *sliced = 0;
    if (parse_timeout_seconds(timeout, wait_s) < 0)
        return -1;
    if (*wait_s != 0 && self->slice > 0 && (*wait_s < 0 || self->slice < *wait_s)) {
        *wait_s = self->slice;
        *sliced = 1;
    }
    return 0;
}

/* The deadline of a wait of wait_s seconds (as above) starting now.  Only
 * computed once a first attempt has failed: a call that needs no wait reads
 * no clock. */
static const struct timespec *qwait_until(double wait_s, struct timespec *ts) {
    if (wait_s < 0)
        return NULL;
    if (wait_s == 0)
        return &zero_deadline;
    shmlink_deadline_after(ts, wait_s);
    return ts;
}

PyDoc_STRVAR(Ring_qsend_doc,
"qsend($self, data, /, *, timeout=None)\n--\n\n"
"Queue.send in one C call: append one message, waiting while the queue is\n"
"full; raise shmlink.Timeout if there is no room within timeout seconds.\n"
"Returns True when sent, or False when the handle's slice ended first\n"
"(nothing was sent; time is left: call again).");

static PyObject *Ring_qsend_impl(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
    PyObject *timeout;
    if (kw_only_timeout("send(data, *, timeout=None)", args, nargs, kwnames, 1, &timeout) < 0)
        return NULL;
    double wait_s;
    int sliced;
    if (qwait_seconds(self, timeout, &wait_s, &sliced) < 0)
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    Py_ssize_t n = -1;
    if (check_len(self, b.len) == 0) {
        int timed_out;
        /* room now (as try_send), else wait */
        n = ring_send_buffers(self, &b, 1, &zero_deadline, 1, &timed_out);
        if (n == 0 && wait_s != 0) {
            struct timespec ts;
            n = ring_send_buffers(self, &b, 1, qwait_until(wait_s, &ts), self->spin,
                                  &timed_out);
        }
    }
    PyBuffer_Release(&b);
    if (n < 0)
        return NULL;
    if (n == 0 && sliced)
        Py_RETURN_FALSE;
    if (n == 0) {
        sl_raisef(-ETIMEDOUT, "queue %R stayed full for %R s; nothing was sent",
                     self->label ? self->label : Py_None, timeout ? timeout : Py_None);
        return NULL;
    }
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(Ring_qrecv_doc,
"qrecv($self, /, *, timeout=None)\n--\n\n"
"Queue.recv in one C call: take the oldest message as bytes, waiting until\n"
"one arrives; raise shmlink.Timeout if none does within timeout seconds.\n"
"Returns None when the handle's slice ended first (time is left: call again).");

static PyObject *Ring_qrecv_impl(RingObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
    PyObject *timeout;
    if (kw_only_timeout("recv(*, timeout=None)", args, nargs, kwnames, 0, &timeout) < 0)
        return NULL;
    double wait_s;
    int sliced;
    if (qwait_seconds(self, timeout, &wait_s, &sliced) < 0)
        return NULL;
    PyObject *one = NULL;
    /* a message now (as try_recv), else wait */
    Py_ssize_t n = ring_recv(self, 1, NULL, &one, NULL, 0, NULL, &zero_deadline, 1);
    if (n == 0 && wait_s != 0) {
        struct timespec ts;
        n = ring_recv(self, 1, NULL, &one, NULL, 0, NULL, qwait_until(wait_s, &ts),
                      self->spin);
    }
    if (n > 0)
        return one;
    Py_XDECREF(one);
    if (n == 0 && sliced)
        Py_RETURN_NONE;
    if (n == 0)
        sl_raisef(-ETIMEDOUT, "queue %R: no message within %R s",
                     self->label ? self->label : Py_None, timeout ? timeout : Py_None);
    return NULL;
}

/* ======================================================================== */
/* Connection frames (include/shmlink/connection.h): a frame is one ring    */
/* record, built by shmlink_frame_build and checked by                      */
/* shmlink_frame_decode_header.  shmlink.Connection sends and receives only */
/* through these; Python never packs or parses a frame header.              */
/* ======================================================================== */

/* Frames up to this many bytes are built on the stack; larger ones in a
 * heap buffer (the ring copies the frame in under prod_lock, so it must be
 * contiguous: header, then payload).  A 4 KiB payload with its header and
 * a tag byte still fits. */
#define FRAME_STACK (4096 + 64)

/* A frame's (kind, id) from two Python ints; -1 with an exception. */
static int frame_kind_id(PyObject *k, PyObject *i, uint32_t *kind, uint64_t *id) {
    unsigned long kv = PyLong_AsUnsignedLong(k);
    unsigned long long iv = kv == (unsigned long)-1 && PyErr_Occurred()
                                ? 0 : PyLong_AsUnsignedLongLong(i);
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1; /* not an int: the TypeError stands */
        PyErr_Clear();
        return sl_raisef(-EINVAL, "frame kind %R and id %R: both must be in range (a request "
                         "id is 1 .. 2**56 - 1)", k, i);
    }
    if (kv > SHMLINK_FRAME_KIND_MAX || !shmlink_frame_valid((uint32_t)kv, iv))
        return sl_raisef(-EINVAL, "a frame of kind %lu with id %llu breaks the connection "
                         "protocol (connection.h, shmlink_frame_valid)", kv, iv);
    *kind = (uint32_t)kv;
    *id = (uint64_t)iv;
    return 0;
}

/* Send one frame (kind, id, the payload object's bytes): 1 sent, 0 timed
 * out, -1 with an exception. */
static int frame_send(RingObject *self, PyObject *const *args, const struct timespec *deadline,
                      long long spin) {
    uint32_t kind = 0;
    uint64_t id = 0;
    if (frame_kind_id(args[0], args[1], &kind, &id) < 0)
        return -1;
    Py_buffer b;
    if (PyObject_GetBuffer(args[2], &b, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    int res = -1;
    uint64_t room = self->h.max_message > SHMLINK_FRAME_HEADER
                        ? self->h.max_message - SHMLINK_FRAME_HEADER : 0;
    if ((uint64_t)b.len > room) {
        sl_raisef(-EMSGSIZE, "connection %R: a message of %zd bytes is larger than its "
                  "max_message_size of %llu; split it, or listen with a larger capacity",
                  self->label ? self->label : Py_None, b.len, (unsigned long long)room);
        goto out;
    }
    uint8_t stack[FRAME_STACK];
    Py_buffer f = {0};
    f.len = (Py_ssize_t)SHMLINK_FRAME_HEADER + b.len;
    f.buf = f.len <= FRAME_STACK ? stack : PyMem_Malloc((size_t)f.len);
    if (!f.buf) {
        PyErr_NoMemory();
        goto out;
    }
    if (b.len > 65536) {
        Py_BEGIN_ALLOW_THREADS
        shmlink_frame_build(f.buf, kind, id, b.buf, (uint64_t)b.len);
        Py_END_ALLOW_THREADS
    } else {
        shmlink_frame_build(f.buf, kind, id, b.buf, (uint64_t)b.len);
    }
    int timed_out;
    Py_ssize_t n = ring_send_buffers(self, &f, 1, deadline, spin, &timed_out);
    if (n >= 0)
        res = n == 1;
    if (f.buf != stack)
        PyMem_Free(f.buf);
out:
    PyBuffer_Release(&b);
    return res;
}

PyDoc_STRVAR(Ring_send_frame_doc,
"send_frame($self, kind, id, payload, deadline=None, spin_ns=0, /)\n--\n\n"
"Append one connection frame (the header of kind and id, then the payload),\n"
"waiting for room until deadline.  True when sent, False on timeout.  A\n"
"payload over max_message - FRAME_HEADER raises MessageTooLarge; a kind/id\n"
"pair the protocol forbids, InvalidArgument.");

static PyObject *Ring_send_frame_impl(RingObject *self, PyObject *const *args,
                                      Py_ssize_t nargs) {
    if (nargs < 3) {
        PyErr_SetString(PyExc_TypeError, "send_frame() takes kind, id and payload");
        return NULL;
    }
    struct timespec ts, *deadline;
    long long spin;
    if (fast_wait_args(args, nargs, 3, &ts, &deadline, &spin) < 0)
        return NULL;
    int r = frame_send(self, args, deadline, spin);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *Ring_try_send_frame_impl(RingObject *self, PyObject *const *args,
                                          Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "try_send_frame() takes kind, id and payload");
        return NULL;
    }
    /* as try_send: no wait for room, a brief one for a busy producer lock */
    int r = frame_send(self, args, &zero_deadline, 1);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

/* The deliver callback of a frame receive: the header copied out once and
 * checked, the payload copied into a bytes object.  A frame that breaks
 * the protocol is consumed (bad set): the caller raises CorruptSegment. */
struct frame_ctx {
    PyObject *payload;
    uint32_t kind;
    uint64_t id, len;
    uint8_t head[SHMLINK_FRAME_HEADER];
    int bad;
};

static int deliver_frame(void *ctx, const uint8_t *src, uint64_t len) {
    struct frame_ctx *c = (struct frame_ctx *)ctx;
    c->len = len;
    memset(c->head, 0, sizeof c->head);
    memcpy(c->head, src, (size_t)(len < SHMLINK_FRAME_HEADER ? len : SHMLINK_FRAME_HEADER));
    if (shmlink_frame_decode_header(c->head, len, &c->kind, &c->id) != 0) {
        c->bad = 1;
        return 0;
    }
    uint64_t n = len - SHMLINK_FRAME_HEADER;
    PyObject *p = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (!p)
        return -1; /* the frame stays queued */
    if (n > 65536) {
        Py_BEGIN_ALLOW_THREADS
        memcpy(PyBytes_AS_STRING(p), src + SHMLINK_FRAME_HEADER, (size_t)n);
        Py_END_ALLOW_THREADS
    } else {
        memcpy(PyBytes_AS_STRING(p), src + SHMLINK_FRAME_HEADER, (size_t)n);
    }
    c->payload = p;
    return 0;
}

/* Receive one frame: (kind, id, payload), None on timeout, NULL with an
 * exception. */
static PyObject *frame_recv(RingObject *self, const struct timespec *deadline, long long spin) {
    struct frame_ctx c;
    c.payload = NULL;
    c.bad = 0;
    int64_t n = ring_take(self, deliver_frame, &c, 1, deadline, spin);
    if (n < 0) {
        Py_XDECREF(c.payload);
        return NULL;
    }
    if (n == 0)
        Py_RETURN_NONE;
    if (c.bad) {
        char hex[2 * SHMLINK_FRAME_HEADER + 1];
        uint64_t shown = c.len < SHMLINK_FRAME_HEADER ? c.len : SHMLINK_FRAME_HEADER;
        for (uint64_t j = 0; j < shown; j++)
            snprintf(hex + 2 * j, 3, "%02x", c.head[j]);
        hex[2 * shown] = '\0';
        sl_raisef(-EBADMSG, "connection %R: the peer sent a malformed frame (%llu bytes, "
                  "header 0x%s): it breaks the connection protocol; close the connection",
                  self->label ? self->label : Py_None, (unsigned long long)c.len, hex);
        return NULL;
    }
    PyObject *res = PyTuple_New(3);
    PyObject *k = PyLong_FromUnsignedLong(c.kind);
    PyObject *i = PyLong_FromUnsignedLongLong(c.id);
    if (!res || !k || !i) {
        Py_XDECREF(res);
        Py_XDECREF(k);
        Py_XDECREF(i);
        Py_DECREF(c.payload);
        return NULL;
    }
    PyTuple_SET_ITEM(res, 0, k);
    PyTuple_SET_ITEM(res, 1, i);
    PyTuple_SET_ITEM(res, 2, c.payload);
    return res;
}

PyDoc_STRVAR(Ring_recv_frame_doc,
"recv_frame($self, deadline=None, spin_ns=0, /)\n--\n\n"
"Take the oldest connection frame, waiting until deadline: (kind, id,\n"
"payload), or None on timeout.  A frame that breaks the protocol (shorter\n"
"than a header, an unknown kind, a kind/id pair it forbids) is taken and\n"
"CorruptSegment raised.");

static PyObject *Ring_recv_frame_impl(RingObject *self, PyObject *const *args,
                                      Py_ssize_t nargs) {
    struct timespec ts, *deadline;
    long long spin;
    if (fast_wait_args(args, nargs, 0, &ts, &deadline, &spin) < 0)
        return NULL;
    return frame_recv(self, deadline, spin);
}

static PyObject *Ring_try_recv_frame_impl(RingObject *self, PyObject *unused) {
    return frame_recv(self, &zero_deadline, 1);
}

/* ======================================================================== */
/* shmlink.multiprocessing's Queue: put and get in one C call.              */
/*                                                                          */
/* A queue item is one MSG frame under the channel's writer lock (the       */
/* channel layout is shmlink/multiprocessing/_channel.py's; Python passes   */
/* the offsets).  Its payload is a pickle (protocol 2 and later start with  */
/* the PROTO opcode 0x80) or a tag byte and raw data: CHAN_BYTES (an exact  */
/* bytes object) or CHAN_STR (an exact str, UTF-8), which need no pickler.  */
/* Both ends are shmlink.multiprocessing: the channel's VERSION names this  */
/* format.                                                                  */
/* ======================================================================== */

enum { CHAN_BYTES = 1, CHAN_STR = 2 };

/* The word of `width` bytes at the offset given by arg, inside this
 * handle's mapping and aligned to `width`; NULL with an exception. */
static void *ring_word(RingObject *self, PyObject *arg, Py_ssize_t width) {
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t align = width > 8 ? 8 : width;
    if (off < 0 || off > self->view.len - width || off % align != 0) {
        PyErr_Format(PyExc_IndexError, "word offset %zd (width %zd) outside the %zd-byte "
                     "mapping or misaligned", off, width, self->view.len);
        return NULL;
    }
    return (char *)self->view.buf + off;
}

/* The channel words of a chan_put/chan_get call: the robust lock at the
 * offset lock_arg, and the u32 count at count_arg (None: *count NULL).
 * 0, or -1 with an exception. */
static int chan_words(RingObject *self, PyObject *lock_arg, PyObject *count_arg,
                      struct shmlink_lock **l, uint32_t **count) {
    *count = NULL;
    if (!(*l = ring_word(self, lock_arg, (Py_ssize_t)sizeof **l)))
        return -1;
    if (count_arg != Py_None && !(*count = ring_word(self, count_arg, 4)))
        return -1;
    return 0;
}

/* One item's payload: the raw data of a bytes/str (tag set), or a pickle
 * made by dumps (owner: the object it returned, viewed in b). */
struct chan_payload {
    uint8_t tag;
    const char *data;
    Py_ssize_t len;
    PyObject *owner;
    Py_buffer b;
};

static int chan_encode(PyObject *obj, PyObject *dumps, struct chan_payload *p) {
    p->tag = 0;
    p->owner = NULL;
    if (PyBytes_CheckExact(obj)) {
        p->tag = CHAN_BYTES;
        p->data = PyBytes_AsString(obj);
        p->len = PyBytes_Size(obj);
        return 0;
    }
    if (PyUnicode_CheckExact(obj)) {
        p->data = PyUnicode_AsUTF8AndSize(obj, &p->len);
        if (p->data) {
            p->tag = CHAN_STR;
            return 0;
        }
        PyErr_Clear(); /* lone surrogates: not UTF-8, so pickled */
    }
    p->owner = PyObject_CallFunctionObjArgs(dumps, obj, NULL);
    if (!p->owner)
        return -1;
    if (PyObject_GetBuffer(p->owner, &p->b, PyBUF_C_CONTIGUOUS) < 0) {
        Py_CLEAR(p->owner);
        return -1;
    }
    p->data = (const char *)p->b.buf;
    p->len = p->b.len;
    return 0;
}

static void chan_payload_release(struct chan_payload *p) {
    if (p->owner) {
        PyBuffer_Release(&p->b);
        Py_CLEAR(p->owner);
    }
}

/* The payload as one object, for the caller's slow path: the pickle
 * itself, or a bytes of tag + data. */
static PyObject *chan_payload_object(struct chan_payload *p) {
    if (!p->tag)
        return Py_NewRef(p->owner);
    PyObject *out = PyBytes_FromStringAndSize(NULL, p->len + 1);
    if (!out)
        return NULL;
    char *dst = PyBytes_AsString(out);
    dst[0] = (char)p->tag;
    memcpy(dst + 1, p->data, (size_t)p->len);
    return out;
}

/* Decode an item's payload (copied out of shared memory: read once here).
 * *obj: the item (bytes or str), or *pickle: the pickle's bytes for the
 * caller's loads.  0, 1 (malformed: an empty payload, a str that is not
 * UTF-8), or -1 with an exception. */
static int chan_decode(const uint8_t *p, uint64_t n, PyObject **obj, PyObject **pickle) {
    if (n == 0)
        return 1;
    uint8_t tag = p[0];
    if (tag == CHAN_BYTES) {
        *obj = PyBytes_FromStringAndSize((const char *)p + 1, (Py_ssize_t)(n - 1));
        return *obj ? 0 : -1;
    }
    if (tag == CHAN_STR) {
        *obj = PyUnicode_DecodeUTF8((const char *)p + 1, (Py_ssize_t)(n - 1), "strict");
        if (*obj)
            return 0;
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            return -1;
        PyErr_Clear();
        return 1;
    }
    *pickle = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    return *pickle ? 0 : -1;
}

PyDoc_STRVAR(Ring_chan_put_doc,
"chan_put($self, obj, dumps, lock, count, patience, /)\n--\n\n"
"shmlink.multiprocessing.Queue.put's fast path: encode obj (an exact bytes\n"
"or str as it is, anything else with dumps), add 1 to the u32 at offset\n"
"count (None: no count), and append the item as one MSG frame under the\n"
"robust lock at offset lock.  When the lock is busy or the ring full, wait\n"
"while the ring's consumers make progress: give up after patience seconds\n"
"(0: at once) in which they took nothing.  True when sent; otherwise the\n"
"encoded payload, still to be delivered (the count is added).");

/* One attempt of chan_put: 1 sent, 0 not (lock busy or no room), -1 with
 * an exception.  With a deadline, waits for the lock until then. */
static int chan_try_put(RingObject *self, struct shmlink_lock *l, Py_buffer *f,
                        const struct timespec *deadline) {
    if (!deadline) {
        uint32_t pid;
        uint64_t start;
        identity(&pid, &start);
        if (shmlink_lock_try_or_steal(l, pid, start) < 0)
            return 0;
    } else {
        int rc = ring_lock(self, l, deadline, self->spin);
        if (rc == -1)
            return -1;
        if (rc == -ETIMEDOUT)
            return 0;
    }
    int timed_out;
    Py_ssize_t n = ring_send_buffers(self, f, 1, &zero_deadline, 1, &timed_out);
    shmlink_lock_release(l);
    return n < 0 ? -1 : n == 1;
}

/* Send the frame f under l, waiting while consumers take records (at most
 * patience_s seconds without progress).  1 sent, 0 gave up, -1 error. */
static int chan_send_patient(RingObject *self, struct shmlink_lock *l, Py_buffer *f,
                             double patience_s) {
    int r = chan_try_put(self, l, f, NULL);
    if (r != 0 || patience_s <= 0)
        return r;
    struct shmlink_ring *ring = self->h.ring;
    uint64_t need = shmlink_ring_record_size((uint64_t)f->len);
    uint64_t seen = SHMLINK_LOAD_RELAXED(&ring->received);
    struct timespec until;
    shmlink_deadline_after(&until, patience_s);
    for (;;) {
        int w = sl_ec_wait(&ring->space_ec, cond_has_room, self, need, &until, self->spin,
                           &self->closing);
        if (w < 0 && w != -ETIMEDOUT)
            return ring_raise(self, w);
        r = chan_try_put(self, l, f, &until);
        if (r != 0)
            return r;
        uint64_t now = SHMLINK_LOAD_RELAXED(&ring->received);
        if (now != seen) {
            seen = now; /* they are taking records: give them another patience_s */
            shmlink_deadline_after(&until, patience_s);
        } else if (sl_retry_check(&until) != 0) {
            return PyErr_Occurred() ? -1 : 0;
        }
    }
}

static PyObject *Ring_chan_put_impl(RingObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "chan_put() takes obj, dumps, lock, count, patience");
        return NULL;
    }
    struct shmlink_lock *l;
    uint32_t *count;
    if (chan_words(self, args[2], args[3], &l, &count) < 0)
        return NULL;
    double patience = PyFloat_AsDouble(args[4]);
    if (patience == -1.0 && PyErr_Occurred())
        return NULL;
    struct chan_payload p;
    if (chan_encode(args[0], args[1], &p) < 0)
        return NULL;
    if (count)
        SHMLINK_FETCH_ADD(count, 1u);
    int sent = 0;
    uint64_t total = (uint64_t)SHMLINK_FRAME_HEADER + (p.tag ? 1u : 0u) + (uint64_t)p.len;
    if (total <= self->h.max_message) {
        uint8_t stack[FRAME_STACK];
        Py_buffer f = {0};
        f.len = (Py_ssize_t)total;
        f.buf = total <= FRAME_STACK ? stack : PyMem_Malloc((size_t)total);
        if (!f.buf) {
            PyErr_NoMemory();
            sent = -1;
        } else {
            uint8_t *dst = (uint8_t *)f.buf;
            shmlink_frame_encode(dst, SHMLINK_FRAME_MSG, 0);
            dst += SHMLINK_FRAME_HEADER;
            if (p.tag)
                *dst++ = p.tag;
            memcpy(dst, p.data, (size_t)p.len);
            sent = chan_send_patient(self, l, &f, patience);
            if (f.buf != stack)
                PyMem_Free(f.buf);
        }
    }
    PyObject *res = sent < 0 ? NULL : sent ? Py_NewRef(Py_True) : chan_payload_object(&p);
    if (!res && count)
        SHMLINK_FETCH_ADD(count, (uint32_t)-1); /* nothing was put */
    chan_payload_release(&p);
    return res;
}

struct chan_get_ctx {
    PyObject *obj, *pickle;
    int bad;
};

/* The deliver callback of chan_get: a MSG frame is decoded and consumed;
 * any other frame (the first part of a large item) stays for the slow
 * path (-EMSGSIZE, nothing raised); a malformed one is consumed (bad). */
static int deliver_item(void *ctx, const uint8_t *src, uint64_t len) {
    struct chan_get_ctx *c = (struct chan_get_ctx *)ctx;
    uint8_t head[SHMLINK_FRAME_HEADER];
    uint32_t kind;
    uint64_t id;
    memset(head, 0, sizeof head);
    memcpy(head, src, (size_t)(len < SHMLINK_FRAME_HEADER ? len : SHMLINK_FRAME_HEADER));
    if (shmlink_frame_decode_header(head, len, &kind, &id) != 0) {
        c->bad = 1;
        return 0;
    }
    if (kind != SHMLINK_FRAME_MSG)
        return -EMSGSIZE;
    uint64_t n = len - SHMLINK_FRAME_HEADER;
    const uint8_t *payload = src + SHMLINK_FRAME_HEADER;
    if (n > 0) {
        /* bytes and pickles are copied out once, straight into their object
         * (nothing here reads their content); a str is copied out first, so
         * that the UTF-8 decoder reads memory no other process writes */
        uint8_t tag;
        memcpy(&tag, payload, 1);
        if (tag == CHAN_BYTES) {
            c->obj = PyBytes_FromStringAndSize((const char *)payload + 1, (Py_ssize_t)(n - 1));
            return c->obj ? 0 : -1;
        }
        if (tag != CHAN_STR) {
            c->pickle = PyBytes_FromStringAndSize((const char *)payload, (Py_ssize_t)n);
            return c->pickle ? 0 : -1;
        }
    }
    uint8_t stack[FRAME_STACK];
    uint8_t *copy = n <= FRAME_STACK ? stack : (uint8_t *)PyMem_Malloc((size_t)n);
    if (!copy) {
        PyErr_NoMemory();
        return -1; /* the item stays queued */
    }
    memcpy(copy, payload, (size_t)n);
    int rc = chan_decode(copy, n, &c->obj, &c->pickle);
    if (copy != stack)
        PyMem_Free(copy);
    if (rc < 0)
        return -1;
    c->bad = rc;
    return 0;
}

PyDoc_STRVAR(Ring_chan_get_doc,
"chan_get($self, lock, count, maxsize, loads, miss, /)\n--\n\n"
"shmlink.multiprocessing.Queue.get's fast path: if the robust lock at\n"
"offset lock is free and the next frame is a whole item, take it, subtract\n"
"1 from the u32 at offset count (None: no count; waking its waiters when it\n"
"was at least maxsize > 0) and return the item (loads for a pickle).\n"
"Returns miss when the lock is busy, the ring empty, or the next item comes\n"
"in parts.  A malformed item is taken and CorruptSegment raised.");

static PyObject *Ring_chan_get_impl(RingObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "chan_get() takes lock, count, maxsize, loads, miss");
        return NULL;
    }
    struct shmlink_lock *l;
    uint32_t *count;
    if (chan_words(self, args[0], args[1], &l, &count) < 0)
        return NULL;
    unsigned long maxsize = PyLong_AsUnsignedLong(args[2]);
    if (maxsize == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    uint32_t pid;
    uint64_t start;
    identity(&pid, &start);
    if (shmlink_lock_try_or_steal(l, pid, start) < 0)
        return Py_NewRef(args[4]);
    struct chan_get_ctx c = {NULL, NULL, 0};
    int64_t n = ring_take(self, deliver_item, &c, 1, &zero_deadline, 1);
    shmlink_lock_release(l);
    if (n == -EMSGSIZE || n == 0)
        return Py_NewRef(args[4]);
    if (n < 0)
        return NULL;
    if (count) {
        uint32_t old = SHMLINK_FETCH_ADD(count, (uint32_t)-1);
        if (maxsize && old >= maxsize)
            shmlink_futex_wake(count, INT_MAX);
    }
    if (c.bad) {
        sl_raisef(-EBADMSG, "queue %R: an item is malformed (written by a foreign or buggy "
                  "process); it was dropped", self->label ? self->label : Py_None);
        return NULL;
    }
    if (c.obj)
        return c.obj;
    PyObject *res = PyObject_CallFunctionObjArgs(args[3], c.pickle, NULL);
    Py_DECREF(c.pickle);
    return res;
}

static PyObject *Ring_chan_put(RingObject *self, PyObject *const *args, Py_ssize_t nargs) {
    RING_CALL(self, Ring_chan_put_impl(self, args, nargs));
}
static PyObject *Ring_chan_get(RingObject *self, PyObject *const *args, Py_ssize_t nargs) {
    RING_CALL(self, Ring_chan_get_impl(self, args, nargs));
}

PyDoc_STRVAR(chan_encode_doc,
"chan_encode($module, obj, dumps, /)\n--\n\n"
"A shmlink.multiprocessing.Queue item's payload, as chan_put encodes it.");

static PyObject *chan_encode_fn(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "chan_encode() takes obj and dumps");
        return NULL;
    }
    struct chan_payload p;
    if (chan_encode(args[0], args[1], &p) < 0)
        return NULL;
    PyObject *res = chan_payload_object(&p);
    chan_payload_release(&p);
    return res;
}

/* 1 when pickling o never looks a reducer up (ForkingPickler's table or
 * copyreg's): a tree of at most *budget objects, at most PLAIN_DEPTH deep,
 * of the exact types the pickler writes itself.  0 for anything else (a
 * subclass, complex, a cycle, a large tree): the caller's full pickler.
 * Reads only; calls no Python code, so nothing changes the tree during the
 * scan (between the scan and the pickling, see _channel.dumps). */
#define PLAIN_DEPTH 16
static int plain_tree(PyObject *o, int depth, Py_ssize_t *budget) {
    if (--*budget < 0 || depth > PLAIN_DEPTH)
        return 0;
    PyTypeObject *t = Py_TYPE(o);
    if (o == Py_None || t == &PyBool_Type || t == &PyLong_Type || t == &PyFloat_Type ||
        t == &PyUnicode_Type || t == &PyBytes_Type || t == &PyByteArray_Type)
        return 1;
    if (t == &PyTuple_Type) {
        Py_ssize_t n = PyTuple_Size(o);
        for (Py_ssize_t i = 0; i < n; i++)
            if (!plain_tree(PyTuple_GetItem(o, i), depth + 1, budget))
                return 0;
        return 1;
    }
    if (t == &PyList_Type) {
        for (Py_ssize_t i = 0; i < PyList_Size(o); i++) {
            PyObject *item = PyList_GetItem(o, i); /* NULL: a list still being built */
            if (!item || !plain_tree(item, depth + 1, budget))
                return 0;
        }
        return 1;
    }
    if (t == &PyDict_Type) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(o, &pos, &k, &v))
            if (!plain_tree(k, depth + 1, budget) || !plain_tree(v, depth + 1, budget))
                return 0;
        return 1;
    }
    return 0;
}

PyDoc_STRVAR(plain_doc,
"plain($module, obj, /)\n--\n\n"
"True when pickling obj looks up no reducer: None, bool, int, float, str,\n"
"bytes, bytearray, and tuples, lists and dicts of them (exact types, a\n"
"small tree).  pickle.dumps(obj) is then ForkingPickler.dumps(obj), made\n"
"without building a pickler.");

static PyObject *plain_fn(PyObject *mod, PyObject *obj) {
    Py_ssize_t budget = 4096;
    return PyBool_FromLong(plain_tree(obj, 0, &budget));
}

PyDoc_STRVAR(chan_decode_doc,
"chan_decode($module, payload, loads, /)\n--\n\n"
"The item a shmlink.multiprocessing.Queue payload holds (the inverse of\n"
"chan_encode; loads for a pickle).  CorruptSegment for a malformed one.");

static PyObject *chan_decode_fn(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "chan_decode() takes payload and loads");
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    PyObject *obj = NULL, *pickle = NULL;
    int rc = chan_decode((const uint8_t *)b.buf, (uint64_t)b.len, &obj, &pickle);
    PyBuffer_Release(&b);
    if (rc < 0)
        return NULL;
    if (rc > 0) {
        sl_raisef(-EBADMSG, "a shmlink.multiprocessing queue item is malformed (written by "
                  "a foreign or buggy process)");
        return NULL;
    }
    if (obj)
        return obj;
    PyObject *res = PyObject_CallFunctionObjArgs(args[1], pickle, NULL);
    Py_DECREF(pickle);
    return res;
}

static PyObject *Ring_send_frame(RingObject *self, PyObject *const *args, Py_ssize_t nargs) {
    RING_CALL(self, Ring_send_frame_impl(self, args, nargs));
}
static PyObject *Ring_try_send_frame(RingObject *self, PyObject *const *args,
                                     Py_ssize_t nargs) {
    RING_CALL(self, Ring_try_send_frame_impl(self, args, nargs));
}
static PyObject *Ring_recv_frame(RingObject *self, PyObject *const *args, Py_ssize_t nargs) {
    RING_CALL(self, Ring_recv_frame_impl(self, args, nargs));
}
static PyObject *Ring_try_recv_frame(RingObject *self, PyObject *unused) {
    RING_CALL(self, Ring_try_recv_frame_impl(self, unused));
}

#define FRAME_METHODS                                                                     \
    {"send_frame", (PyCFunction)(void (*)(void))Ring_send_frame, METH_FASTCALL,             \
     Ring_send_frame_doc},                                                                \
    {"try_send_frame", (PyCFunction)(void (*)(void))Ring_try_send_frame, METH_FASTCALL,     \
     "try_send_frame($self, kind, id, payload, /)\n--\n\nAppend one connection frame if "  \
     "there is room now; True if sent."},                                                 \
    {"recv_frame", (PyCFunction)(void (*)(void))Ring_recv_frame, METH_FASTCALL,             \
     Ring_recv_frame_doc},                                                                \
    {"try_recv_frame", (PyCFunction)Ring_try_recv_frame, METH_NOARGS,                       \
     "try_recv_frame($self, /)\n--\n\nTake the oldest connection frame if there is one "   \
     "now: (kind, id, payload), else None."},

/* _core.FRAME_*: the frame format's constants (connection.h). */
static int frames_register(PyObject *m) {
    if (PyModule_AddIntConstant(m, "FRAME_HEADER", SHMLINK_FRAME_HEADER) < 0 ||
        PyModule_AddIntConstant(m, "FRAME_MSG", SHMLINK_FRAME_MSG) < 0 ||
        PyModule_AddIntConstant(m, "FRAME_REQ", SHMLINK_FRAME_REQ) < 0 ||
        PyModule_AddIntConstant(m, "FRAME_RESP", SHMLINK_FRAME_RESP) < 0 ||
        PyModule_AddIntConstant(m, "FRAME_ERR", SHMLINK_FRAME_ERR) < 0 ||
        PyModule_AddIntConstant(m, "FRAME_CLOSE", SHMLINK_FRAME_CLOSE) < 0 ||
        PyModule_AddIntConstant(m, "FRAME_WAKE", SHMLINK_FRAME_WAKE) < 0)
        return -1;
    PyObject *idmax = PyLong_FromUnsignedLongLong(SHMLINK_FRAME_ID_MAX);
    int rc = idmax ? PyModule_AddObjectRef(m, "FRAME_ID_MAX", idmax) : -1;
    Py_XDECREF(idmax);
    return rc;
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
static PyObject *Ring_may_recv_impl(RingObject *self, PyObject *unused) {
    return PyBool_FromLong(shmlink_ring_may_recv(&self->h));
}
static PyObject *Ring_may_send_impl(RingObject *self, PyObject *arg) {
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (n == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(shmlink_ring_may_send(&self->h, n));
}
static PyObject *Ring_may_recv(RingObject *self, PyObject *unused) {
    RING_CALL(self, Ring_may_recv_impl(self, unused));
}
static PyObject *Ring_may_send(RingObject *self, PyObject *arg) {
    RING_CALL(self, Ring_may_send_impl(self, arg));
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
     "try_send($self, data, /)\n--\n\nAppend one message if there is room now; True if sent."},
    {"send_many", (PyCFunction)Ring_send_many, METH_VARARGS, Ring_send_many_doc},
    {"recv", (PyCFunction)(void (*)(void))Ring_recv, METH_FASTCALL, Ring_recv_doc},
    {"try_recv", (PyCFunction)Ring_try_recv, METH_NOARGS,
     "try_recv($self, /)\n--\n\nTake the oldest message if there is one now, else None."},
    {"recv_many", (PyCFunction)Ring_recv_many, METH_VARARGS, Ring_recv_many_doc},
    {"recv_into", (PyCFunction)Ring_recv_into, METH_VARARGS, Ring_recv_into_doc},
    {"view_begin", (PyCFunction)Ring_view_begin, METH_VARARGS, Ring_view_begin_doc},
    {"view_end", (PyCFunction)Ring_view_end, METH_VARARGS,
     "view_end($self, consume=True, /)\n--\n\nFinish a zero-copy receive: consume the "
     "record (or leave it, consume=False) and release the consumer lock."},
    {"may_recv", (PyCFunction)Ring_may_recv, METH_NOARGS,
     "may_recv($self, /)\n--\n\nLock-free hint: a receive may find a message now."},
    {"may_send", (PyCFunction)Ring_may_send, METH_O,
     "may_send($self, nbytes, /)\n--\n\nLock-free hint: a send of nbytes may find room now "
     "(or fail at once)."},
    {"stats", (PyCFunction)Ring_stats, METH_NOARGS,
     "stats($self, /)\n--\n\nA dict of capacity, max_message, used bytes, sent and received."},
    {"view", (PyCFunction)Ring_view, METH_VARARGS, Ring_view_doc},
    FRAME_METHODS
    {"chan_put", (PyCFunction)(void (*)(void))Ring_chan_put, METH_FASTCALL, Ring_chan_put_doc},
    {"chan_get", (PyCFunction)(void (*)(void))Ring_chan_get, METH_FASTCALL, Ring_chan_get_doc},
    {"close", (PyCFunction)Ring_close, METH_NOARGS,
     "close($self, /)\n--\n\nClose the handle: later calls raise SegmentClosed.  Releases the "
     "buffer (ending an open zero-copy receive unconsumed) and returns True, or, while "
     "calls are inside, wakes them (they raise SegmentClosed) and returns False: the last "
     "to leave releases it."},
    {NULL}};

static PyMemberDef Ring_members[] = {
    {"spin", T_LONGLONG, offsetof(RingObject, spin), 0,
     "spin_ns used by qsend/qrecv: 0 block, -1 spin, >0 hybrid"},
    {"slice", T_DOUBLE, offsetof(RingObject, slice), 0,
     "qsend/qrecv wait at most this many seconds, then hand back False/None (0: no slice)"},
    {"label", T_OBJECT, offsetof(RingObject, label), 0, "name used in error messages"},
    {NULL}};

static PyGetSetDef Ring_getset[] = {
    {"capacity", (getter)Ring_get_capacity, NULL, "ring bytes", NULL},
    {"max_message", (getter)Ring_get_max_message, NULL, "largest payload", NULL},
    {"closed", (getter)Ring_get_closed, NULL, "True once close() was called", NULL},
    {NULL}};

static PyType_Slot Ring_slots[] = {
    {Py_tp_doc, (void *)"Ring(buffer, offset, size)\n--\n\nA handle on the message ring "
              "laid out by ring_init in buffer[offset:offset+size]."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, Ring_init},
    {Py_tp_dealloc, Ring_dealloc},
    {Py_tp_methods, Ring_methods},
    {Py_tp_members, Ring_members},
    {Py_tp_getset, Ring_getset},
    {0, NULL}};

static PyType_Spec Ring_spec = {"shmlink._core.Ring", sizeof(RingObject), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE, Ring_slots};

static PyMethodDef ring_functions[] = {
    {"ring_init", ring_init, METH_VARARGS, ring_init_doc},
    {"chan_encode", (PyCFunction)(void (*)(void))chan_encode_fn, METH_FASTCALL, chan_encode_doc},
    {"chan_decode", (PyCFunction)(void (*)(void))chan_decode_fn, METH_FASTCALL, chan_decode_doc},
    {"plain", plain_fn, METH_O, plain_doc},
    {NULL}};

/* Called from the module's exec slot. */
int ring_register(PyObject *m, sl_state *st) {
    st->Ring = (PyTypeObject *)PyType_FromModuleAndSpec(m, &Ring_spec, NULL);
    if (!st->Ring || PyModule_AddType(m, st->Ring) < 0 ||
        PyModule_AddFunctions(m, ring_functions) < 0 || frames_register(m) < 0)
        return -1;
    return 0;
}
