/*
 * Topic and Subscriber: one-to-many broadcast (shmlink.Topic;
 * include/shmlink/topic.h).
 */
#include "internal.h"

/* ======================================================================== */
/* Topic and Subscriber: one-to-many broadcast (shmlink.Topic).             */
/*                                                                          */
/* The protocol lives in include/shmlink.h (shmlink_topic_*); this is how   */
/* Python drives it: one C call per message, batch forms that loop in C,    */
/* waits with the GIL released that let signal handlers run, and handles    */
/* that another thread may close while a call of theirs waits.              */
/* ======================================================================== */


typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
    struct shmlink_topic_handle h;
    PyObject *name;
    long long spin_ns; /* how long a blocked call spins before it sleeps; -1: forever */
    int calls;         /* calls inside (GIL-protected; see "Handle lifetime") */
    int closing;       /* close() was called: calls end, new ones are refused */
    int guard;         /* truncation guard token (guard.c), 0: none */
} TopicObject;

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
    struct shmlink_topic_handle h;
    PyObject *name;
    long long spin_ns;
    /* slot, pid, gen, cursor, next_seq, missed, received: private copies,
     * authoritative; the slot's copies are for publishers */
    struct shmlink_topic_reader r;
    int busy;    /* a call is in progress (it may be waiting, GIL released) */
    int cancel;  /* interrupt(): waits end at once, receives return nothing */
    int closing; /* close() from another thread: the waiting call raises */
    int in_view; /* a zero-copy receive is open */
    int live_views; /* live exporters of the open zero-copy receive */
    uint64_t view_pos, view_len, view_seq;
    int guard;      /* truncation guard token (guard.c), 0: none */
} SubscriberObject;


static int topic_corrupt(PyObject *name) {
    sl_raisef(-EBADMSG,
                 "topic %R: its positions, subscriber table or a record header are "
                 "inconsistent (overwritten by a foreign or buggy writer); remove the "
                 "topic and recreate it",
                 name);
    return -1;
}

static int topic_closed_while_waiting(PyObject *name) {
    return sl_raisef(-ECANCELED, "topic %R was closed by another thread while this call "
                     "waited", name);
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
    self->guard = sl_guard_register(self->view.buf, self->view.len);
    Py_XSETREF(self->name, Py_NewRef(name));
    if (offset < 0 || size < 0 || offset % 64 != 0 || offset > self->view.len ||
        size > self->view.len - offset) {
        PyErr_SetString(PyExc_ValueError, "topic region outside the buffer");
        return -1;
    }
    int rc = shmlink_topic_attach(&self->h, (char *)self->view.buf + offset, (uint64_t)size);
    if (rc == -EPROTO) {
        sl_raisef(-EPROTO,
                     "topic %R has an unknown magic or version; it was made by another "
                     "program or shmlink version",
                     name);
        return -1;
    }
    if (rc < 0) {
        sl_raisef(-EBADMSG,
                     "topic %R: its constants are inconsistent with its size; the segment "
                     "is corrupt: remove it and recreate it",
                     name);
        return -1;
    }
    self->spin_ns = 50000;
    return 0;
}

static void Topic_dealloc(TopicObject *self) {
    sl_guard_unregister(self->guard);
    if (self->has_view)
        PyBuffer_Release(&self->view);
    Py_XDECREF(self->name);
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    sl_type_free(tp, (PyObject *)self);
    Py_DECREF(tp); /* a heap type: each instance holds a reference */
}

static int topic_ready(TopicObject *self) {
    if (!self->has_view || self->closing) {
        raise_closed("topic", self->name);
        return 0;
    }
    return 1;
}

static void topic_finish(TopicObject *self) {
    sl_guard_unregister(self->guard);
    self->guard = 0;
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
        if (sl_guard_hit(self->guard))                                         \
            res_ = sl_guard_result(res_, "topic", self->name);                 \
        if (--self->calls == 0 && self->closing)                               \
            topic_finish(self);                                                \
        return res_;                                                           \
    } while (0)

static int topic_check_len(TopicObject *self, Py_ssize_t len) {
    if ((uint64_t)len > self->h.max_message) {
        sl_raisef(-EMSGSIZE,
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

/* Take pub_lock (the header's hooked lock wait: a close from another thread
 * or a signal handler ends it).  0, 1 (taken over from a holder that died),
 * -ETIMEDOUT, -ECANCELED (the handle is closing) or -1 (exception). */
static int topic_lock(TopicObject *self, const struct timespec *deadline, int spin) {
    struct shmlink_lock *l = &self->h.topic->pub_lock;
    int rc = lock_acquire_blocking(l, deadline, spin ? 200000 : 0, &self->closing);
    if (rc >= 0 && self->closing) {
        shmlink_lock_release(l); /* taken as the handle closed: give it back */
        return -ECANCELED;
    }
    return rc;
}

/* Lock-free hint for a blocked lossless publisher: every active cursor is
 * at or past `required` (or something needs the locked path's attention). */
static int cond_pub_room(void *obj, uint64_t required) {
    TopicObject *self = (TopicObject *)obj;
    if (SHMLINK_LOAD_RELAXED(&self->closing))
        return 1;
    uint64_t floor, tail = SHMLINK_LOAD_ACQUIRE(&self->h.topic->tail);
    if (shmlink_topic_scan_floor(&self->h, tail, &floor, 0) < 0)
        return 1;
    return floor >= required;
}

/* Publish n buffers in order.  Returns how many were published (all of
 * them unless *timed_out), or -1 with an exception. */
/* The header's gather callback over an array of Py_buffer. */
static void gather_buffers(void *ctx, uint64_t i, const void **data, uint64_t *len) {
    const Py_buffer *bufs = (const Py_buffer *)ctx;
    *data = bufs[i].buf;
    *len = (uint64_t)bufs[i].len;
}

static Py_ssize_t topic_publish_buffers(TopicObject *self, Py_buffer *bufs, Py_ssize_t n,
                                        const struct timespec *deadline, int *timed_out) {
    const struct shmlink_topic_handle *h = &self->h;
    struct shmlink_topic *t = h->topic;
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
        int prc;
        uint64_t required = 0, got = (uint64_t)done;
        if (rc == 1 && shmlink_topic_repair(h) < 0) {
            shmlink_lock_release(&t->pub_lock);
            prc = -EBADMSG;
        } else {
            prc = shmlink_topic_publish_many_unlock(h, gather_buffers, bufs, (uint64_t)n, &got,
                                                    check_alive, &required);
            check_alive = 0;
        }
        done = (Py_ssize_t)got;
        if (prc == -EBADMSG)
            return topic_corrupt(self->name);
        if (prc == -EAGAIN) {
            if (try_only) {
                *timed_out = 1;
                return done;
            }
            int chk = sl_retry_check(deadline);
            if (chk < 0)
                return -1;
            if (chk > 0) {
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
                /* The wait ended at its slice, not at a signal slice: a
                 * signal that landed outside the sleep is handled here, or
                 * a publisher that waits forever would never see it. */
                if (PyErr_CheckSignals() < 0)
                    return -1;
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
"publish($self, data, /, *, timeout=None)\n--\n\n"
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
            sl_raisef(-ETIMEDOUT,
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
"publish_many($self, messages, timeout=None, /)\n--\n\n"
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
"subscribe($self, oldest=False, timeout=None, /)\n--\n\n"
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
    PyTypeObject *sub_type = sl_state_of((PyObject *)self)->Subscriber;
    SubscriberObject *s = (SubscriberObject *)sl_type_alloc(sub_type);
    if (!s)
        return NULL;
    s->r.slot = -1;
    if (PyObject_GetBuffer(self->view.obj, &s->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(s);
        return NULL;
    }
    s->has_view = 1;
    s->guard = sl_guard_register(s->view.buf, s->view.len);
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
            sl_raisef(-ENOSPC,
                         "topic %R: all %u subscriber slots are held by live subscribers; "
                         "close some, or create the topic with a larger max_subscribers",
                         self->name, self->h.max_subscribers);
        else
            topic_corrupt(self->name);
        return NULL;
    }
    s->r.slot = slot;
    s->r.pid = pid;
    s->r.gen = gen;
    s->r.cursor = cursor;
    s->r.next_seq = seq;
    return (PyObject *)s;
}

static PyObject *Topic_state_impl(TopicObject *self, PyObject *unused) {
    const struct shmlink_topic_handle *h = &self->h;
    struct shmlink_topic *t = h->topic;
    uint64_t tail = SHMLINK_LOAD_ACQUIRE(&t->tail), head = SHMLINK_LOAD_ACQUIRE(&t->head);
    uint64_t published = SHMLINK_LOAD_RELAXED(&t->published);
    uint64_t held = tail >= head ? tail - head : 0;
    if (held > h->capacity)
        held = h->capacity; /* inconsistent: the receive paths report it */
    uint32_t hwm = SHMLINK_LOAD_RELAXED(&t->sub_hwm);
    if (hwm > h->max_subscribers)
        hwm = h->max_subscribers;
    PyObject *subs = PyList_New(0);
    if (!subs)
        return NULL;
    for (uint32_t i = 0; i < hwm; i++) {
        struct shmlink_topic_sub *s = &h->subs[i];
        if (SHMLINK_LOAD_ACQUIRE(&s->active) == 0)
            continue;
        uint32_t pid = SHMLINK_LOAD_RELAXED(&s->pid);
        uint64_t start = SHMLINK_LOAD_RELAXED(&s->start_time);
        uint64_t next = SHMLINK_LOAD_RELAXED(&s->next_seq);
        PyObject *d = Py_BuildValue(
            "{sIsIsOsKsKsK}", "slot", i, "pid", pid, "alive",
            shmlink_process_alive(pid, start) ? Py_True : Py_False, "lag",
            (unsigned long long)(published > next ? published - next : 0), "missed",
            (unsigned long long)SHMLINK_LOAD_RELAXED(&s->missed), "received",
            (unsigned long long)SHMLINK_LOAD_RELAXED(&s->received));
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
        (unsigned long long)SHMLINK_LOAD_RELAXED(&t->evicted), "publisher_pid",
        SHMLINK_LOAD_RELAXED(&t->pub_lock.owner), "subscribers", subs);
}

static PyObject *Topic_close(TopicObject *self, PyObject *unused) {
    if (!self->has_view)
        Py_RETURN_TRUE;
    SHMLINK_STORE_RELAXED(&self->closing, 1);
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
    return PyLong_FromUnsignedLongLong(SHMLINK_LOAD_RELAXED(&self->h.topic->published));
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
     "try_publish($self, data, /)\n--\n\nPublish one message if that needs no waiting; True if published."},
    {"publish_many", (PyCFunction)Topic_publish_many, METH_VARARGS, Topic_publish_many_doc},
    {"subscribe", (PyCFunction)Topic_subscribe, METH_VARARGS, Topic_subscribe_doc},
    {"state", (PyCFunction)Topic_state, METH_NOARGS,
     "state($self, /)\n--\n\nA dict: mode, capacity, published, held bytes, evictions, and each "
     "active subscriber's slot, pid, liveness, lag, missed and received counts."},
    {"close", (PyCFunction)Topic_close, METH_NOARGS,
     "close($self, /)\n--\n\nClose the handle: later calls raise SegmentClosed, calls inside are "
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

static PyType_Slot Topic_slots[] = {
    {Py_tp_doc, (void *)"Topic(buffer, offset, size, name=None)\n--\n\nA handle on the topic laid out "
              "by topic_init in buffer[offset:offset+size]: publish, subscribe, state."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, Topic_init},
    {Py_tp_dealloc, Topic_dealloc},
    {Py_tp_methods, Topic_methods},
    {Py_tp_members, Topic_members},
    {Py_tp_getset, Topic_getset},
    {0, NULL}};

static PyType_Spec Topic_spec = {"shmlink._core.Topic", sizeof(TopicObject), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE, Topic_slots};

/* ------------------------------------------------------------------------ */
/* Subscriber: one cursor, read without locks.                              */
/* ------------------------------------------------------------------------ */

static void Subscriber_dealloc(SubscriberObject *self) {
    sl_guard_unregister(self->guard);
    if (self->has_view) {
        uint32_t pid;
        uint64_t start;
        identity(&pid, &start);
        if (self->r.slot >= 0 && pid == self->r.pid) /* not in a forked child */
            shmlink_topic_release_slot(&self->h, self->r.slot, self->r.pid, self->r.gen);
        PyBuffer_Release(&self->view);
    }
    Py_XDECREF(self->name);
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    sl_type_free(tp, (PyObject *)self);
    Py_DECREF(tp); /* a heap type: each instance holds a reference */
}

/* No call is inside a closed subscriber any more: free the slot and give
 * the mapping back. */
static void sub_finish(SubscriberObject *self) {
    if (!self->has_view)
        return;
    uint32_t pid;
    uint64_t start;
    identity(&pid, &start);
    if (self->r.slot >= 0 && pid == self->r.pid) /* not in a forked child */
        shmlink_topic_release_slot(&self->h, self->r.slot, self->r.pid, self->r.gen);
    self->in_view = 0;
    sl_guard_unregister(self->guard);
    self->guard = 0;
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
        sl_raisef(-EPIPE, "this subscriber of topic %R is closed; subscribe again",
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
    if (pid != self->r.pid) {
        sl_raisef(-EPIPE,
                     "this subscriber of topic %R belongs to process %u; subscribe again in "
                     "this process",
                     self->name, self->r.pid);
        return -1;
    }
    if (SHMLINK_LOAD_RELAXED(&self->h.subs[self->r.slot].active) != self->r.gen) {
        sl_raisef(-EPIPE,
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
    return SHMLINK_LOAD_ACQUIRE(&self->h.topic->tail) != cursor;
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
/* The header's sink (shmlink_topic_recv_many) for a receive into Python:
 * each record becomes a bytes object, kept into *one or appended to list
 * when the header says it was intact. */
struct take_sink {
    PyObject *list;
    PyObject **one;
    PyObject *last; /* the copy awaiting keep */
};

static int take_copy(void *ctx, const uint8_t *payload, uint64_t len) {
    struct take_sink *t = (struct take_sink *)ctx;
    t->last = PyBytes_FromStringAndSize((const char *)payload, (Py_ssize_t)len);
    return t->last ? 0 : -1;
}

static int take_keep(void *ctx, int keep) {
    struct take_sink *t = (struct take_sink *)ctx;
    PyObject *b = t->last;
    t->last = NULL;
    if (!keep) {
        Py_DECREF(b);
        return 0;
    }
    if (t->one) {
        *t->one = b;
        return 0;
    }
    int rc = PyList_Append(t->list, b);
    Py_DECREF(b);
    return rc < 0 ? -1 : 0;
}

/* Take up to max messages, waiting until there is at least one, the
 * deadline, or cancel.  max == 1 with one != NULL: the message into *one;
 * else appended to list.  Returns how many (0: timeout or cancel), or -1. */
static Py_ssize_t sub_take_(SubscriberObject *self, Py_ssize_t max, PyObject *list,
                            PyObject **one, const struct timespec *deadline);

/* sub_take_, or CorruptSegment when the topic's file was truncated meanwhile
 * (guard.c): what it read were zeros.  The caller drops list / *one. */
static Py_ssize_t sub_take(SubscriberObject *self, Py_ssize_t max, PyObject *list,
                           PyObject **one, const struct timespec *deadline) {
    Py_ssize_t n = sub_take_(self, max, list, one, deadline);
    if (sl_guard_hit(self->guard) &&
        !(n < 0 && PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))) {
        PyErr_Clear();
        return sl_raise_truncated("topic", self->name);
    }
    return n;
}

static Py_ssize_t sub_take_(SubscriberObject *self, Py_ssize_t max, PyObject *list,
                            PyObject **one, const struct timespec *deadline) {
    const struct shmlink_topic_handle *h = &self->h;
    struct shmlink_topic *t = h->topic;
    struct take_sink ts = {list, one, NULL};
    const struct shmlink_topic_sink sink = {take_copy, take_keep, &ts};
    for (;;) {
        int64_t got = shmlink_topic_recv_many(h, &self->r, &sink, (uint64_t)max);
        if (got == -1)
            return -1;
        if (got == -EBADMSG)
            return topic_corrupt(self->name);
        if (got)
            return (Py_ssize_t)got;
        if (no_wait(deadline))
            return 0;
        if (self->cancel)
            return sub_cancelled(self);
        int chk = sl_retry_check(deadline);
        if (chk != 0)
            return chk < 0 ? -1 : 0;
        int w = topic_wait(&t->data_ec, cond_sub_data, self, self->r.cursor, deadline,
                           self->spin_ns, &self->cancel);
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
"recv($self, /, *, timeout=None)\n--\n\n"
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
        sl_raisef(-ETIMEDOUT, "topic %R: no message within %S s", self->name,
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
"recv_many($self, max_count, timeout=None, /)\n--\n\n"
"Wait until at least one message is there (or the timeout), then take up to\n"
"max_count at once.  Returns a list (empty on timeout or interrupt()).");

static PyObject *Subscriber_recv_many(SubscriberObject *self, PyObject *args) {
    Py_ssize_t max;
    PyObject *tmo = Py_None;
    if (!PyArg_ParseTuple(args, "n|O", &max, &tmo))
        return NULL;
    if (max < 1) {
        sl_raisef(-EINVAL, "max_count must be at least 1, not %zd", max);
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
"view_begin($self, timeout=None, /)\n--\n\n"
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
        uint64_t pos, seq;
        int64_t len = shmlink_topic_view_begin(h, &self->r, &pos, &seq);
        if (len >= 0) {
            self->in_view = 1;
            self->view_pos = pos;
            self->view_seq = seq;
            self->view_len = (uint64_t)len;
            Py_ssize_t base = (Py_ssize_t)(shmlink_topic_payload(h, pos) -
                                           (const uint8_t *)self->view.buf);
            res = Py_BuildValue("nn", base, (Py_ssize_t)len);
            break;
        }
        uint64_t cursor = self->r.cursor;
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
    if (sl_guard_hit(self->guard)) {
        self->in_view = 0;
        res = sl_guard_result(res, "topic", self->name);
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
    self->in_view = 0;
    int intact = shmlink_topic_view_end(&self->h, &self->r, self->view_pos, self->view_seq,
                                        self->view_len, consume);
    return PyBool_FromLong(intact);
}

static PyObject *Subscriber_interrupt(SubscriberObject *self, PyObject *args) {
    int on = 1;
    if (!PyArg_ParseTuple(args, "|p", &on))
        return NULL;
    self->cancel = on || self->closing;
    if (on && self->has_view)
        shmlink_ec_wake_all_bells(&self->h.topic->data_ec, &self->h.topic->data_bells);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Subscriber_view_doc,
"view($self, offset, length, /)\n--\n\n"
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
    SHMLINK_STORE_RELAXED(&self->closing, 1);
    SHMLINK_STORE_RELAXED(&self->cancel, 1);
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
    uint64_t published = SHMLINK_LOAD_RELAXED(&self->h.topic->published);
    return PyLong_FromUnsignedLongLong(published > self->r.next_seq ? published - self->r.next_seq
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
     "try_recv($self, /)\n--\n\nThe next message if there is one now, else None."},
    {"recv_many", (PyCFunction)Subscriber_recv_many, METH_VARARGS, Subscriber_recv_many_doc},
    {"view_begin", (PyCFunction)Subscriber_view_begin, METH_VARARGS, Subscriber_view_begin_doc},
    {"view_end", (PyCFunction)Subscriber_view_end, METH_VARARGS,
     "view_end($self, consume=True, /)\n--\n\nFinish a zero-copy receive: move past the message "
     "(or leave it, consume=False).  Returns False if a publisher may have overwritten "
     "it meanwhile (latest mode); it then counts as missed."},
    {"interrupt", (PyCFunction)Subscriber_interrupt, METH_VARARGS,
     "interrupt($self, on=True, /)\n--\n\nWhile on, waits end at once and receives return nothing "
     "(a thread blocked in recv returns).  interrupt(False) undoes it."},
    {"view", (PyCFunction)Subscriber_view, METH_VARARGS, Subscriber_view_doc},
    {"close", (PyCFunction)Subscriber_close, METH_NOARGS,
     "close($self, /)\n--\n\nClose the subscriber: later calls raise SegmentClosed; a call "
     "inside is woken and raises SegmentClosed.  The slot is freed and the buffer "
     "released now, or when that call leaves.  Returns True."},
    {NULL}};

static PyMemberDef Subscriber_members[] = {
    {"spin_ns", T_LONGLONG, offsetof(SubscriberObject, spin_ns), 0,
     "nanoseconds a blocked receive spins before it sleeps (-1: until its deadline)"},
    {"missed", T_ULONGLONG, offsetof(SubscriberObject, r.missed), READONLY,
     "messages overwritten before this subscriber could read them"},
    {"received", T_ULONGLONG, offsetof(SubscriberObject, r.received), READONLY,
     "messages this subscriber received"},
    {"next_seq", T_ULONGLONG, offsetof(SubscriberObject, r.next_seq), READONLY,
     "sequence number of the next message it expects"},
    {"slot", T_INT, offsetof(SubscriberObject, r.slot), READONLY, "its slot in the table"},
    {"name", T_OBJECT, offsetof(SubscriberObject, name), READONLY, "the topic's name"},
    {NULL}};

static PyGetSetDef Subscriber_getset[] = {
    {"lag", (getter)Subscriber_get_lag, NULL, "messages published that it has not read yet",
     NULL},
    {"closed", (getter)Subscriber_get_closed, NULL, "True once closed", NULL},
    {"busy", (getter)Subscriber_get_busy, NULL, "True while a call is in progress", NULL},
    {NULL}};

static PyType_Slot Subscriber_slots[] = {
    {Py_tp_doc, (void *)"A topic subscriber: one cursor, read without locks.  Made by "
              "Topic.subscribe()."},
    {Py_tp_dealloc, Subscriber_dealloc},
    {Py_tp_methods, Subscriber_methods},
    {Py_tp_members, Subscriber_members},
    {Py_tp_getset, Subscriber_getset},
    {0, NULL}};

static PyType_Spec Subscriber_spec = {"shmlink._core.Subscriber", sizeof(SubscriberObject), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION, Subscriber_slots};

PyDoc_STRVAR(topic_init_doc,
"topic_init($module, buffer, offset, size, mode, max_message=0, max_subscribers=64, /)\n--\n\n"
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
     "topic_footprint($module, capacity, max_subscribers, /)\n--\n\nBytes a topic needs: control "
     "block, subscriber table and ring."},
    {NULL}};

/* Called from the module's exec slot. */
int topic_register(PyObject *m, sl_state *st) {
    st->Topic = (PyTypeObject *)PyType_FromModuleAndSpec(m, &Topic_spec, NULL);
    if (!st->Topic || PyModule_AddType(m, st->Topic) < 0)
        return -1;
    st->Subscriber = (PyTypeObject *)PyType_FromModuleAndSpec(m, &Subscriber_spec, NULL);
    if (!st->Subscriber || PyModule_AddType(m, st->Subscriber) < 0 ||
        PyModule_AddIntConstant(m, "TOPIC_HEADER", (long)SHMLINK_TOPIC_SUBS_OFFSET) < 0 ||
        PyModule_AddIntConstant(m, "TOPIC_RECORD_HEADER", SHMLINK_TOPIC_RECORD_HEADER) < 0 ||
        PyModule_AddIntConstant(m, "TOPIC_SLOT_SIZE", SHMLINK_CACHE_LINE) < 0 ||
        PyModule_AddIntConstant(m, "TOPIC_MAX_SUBSCRIBERS", SHMLINK_TOPIC_MAX_SUBSCRIBERS) < 0 ||
        PyModule_AddFunctions(m, topic_functions) < 0)
        return -1;
    return 0;
}
