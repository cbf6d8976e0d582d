/*
 * Declarations shared by the files of the binding (src/shmlink/_csrc/).
 * See module.c for the file map.
 *
 * Deadlines are absolute CLOCK_MONOTONIC times computed once by the caller;
 * NULL means "wait forever".  Waits return 0/None on timeout; the caller
 * raises the typed shmlink.Timeout.
 */
#ifndef SHMLINK_CSRC_INTERNAL_H
#define SHMLINK_CSRC_INTERNAL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <structmember.h>

#define SHMLINK_BELL_SENDER_EXTERN 1 /* one sender socket per process: doorbell.c */
#include "shmlink.h"

/* ---- the limited API (abi3) ----------------------------------------------
 * setup.py builds this binding against the limited API of Python 3.11
 * (Py_LIMITED_API=0x030B0000: one _core.abi3.so for 3.11 and later; 3.10
 * lacks Py_buffer in the limited API and gets a version-specific build).
 * The few full-API macros the binding uses are spelt here with their
 * limited-API functions; the full-API build keeps the macros. */
#ifdef Py_LIMITED_API
/* CPython's 3.12 and 3.13 headers before gh-134989 (mid-2025) return
 * Py_None, Py_True and Py_False without a new reference whatever the
 * limited API asked for: immortal from 3.12 on, they are not on 3.11, where
 * an abi3 build made with those headers frees None ("deallocating None").
 * Spelt here as the fixed headers spell them. */
#undef Py_RETURN_NONE
#define Py_RETURN_NONE return Py_NewRef(Py_None)
#undef Py_RETURN_TRUE
#define Py_RETURN_TRUE return Py_NewRef(Py_True)
#undef Py_RETURN_FALSE
#define Py_RETURN_FALSE return Py_NewRef(Py_False)
#undef Py_RETURN_NOTIMPLEMENTED
#define Py_RETURN_NOTIMPLEMENTED return Py_NewRef(Py_NotImplemented)
#undef PyBytes_AS_STRING
#define PyBytes_AS_STRING(o) PyBytes_AsString(o)
#undef PyTuple_GET_SIZE
#define PyTuple_GET_SIZE(t) PyTuple_Size(t)
#undef PyTuple_GET_ITEM
#define PyTuple_GET_ITEM(t, i) PyTuple_GetItem((t), (i))
#undef PyTuple_SET_ITEM /* only ever on a fresh tuple: cannot fail */
#define PyTuple_SET_ITEM(t, i, v) ((void)PyTuple_SetItem((t), (i), (v)))
#undef PySequence_Fast_GET_SIZE
#define PySequence_Fast_GET_SIZE(o) PySequence_Size(o)
#undef PySequence_Fast_GET_ITEM /* borrowed, as the macro's */
#define PySequence_Fast_GET_ITEM(o, i) \
    (PyList_Check(o) ? PyList_GetItem((o), (i)) : PyTuple_GetItem((o), (i)))
#undef Py_XSETREF
#define Py_XSETREF(dst, src)                   \
    do {                                       \
        PyObject *sl_old_ = (PyObject *)(dst); \
        (dst) = (src);                         \
        Py_XDECREF(sl_old_);                   \
    } while (0)
#endif

/* bytes *b shortened to n bytes (n <= its size): 0, or -1 with *b NULL and
 * an exception set (as _PyBytes_Resize, which is not in the limited API). */
static inline int sl_bytes_shrink(PyObject **b, Py_ssize_t n) {
#ifdef Py_LIMITED_API
    PyObject *s = PyBytes_FromStringAndSize(PyBytes_AsString(*b), n);
    Py_DECREF(*b);
    *b = s;
    return s ? 0 : -1;
#else
    return _PyBytes_Resize(b, n);
#endif
}

/* A heap type's tp_alloc / tp_free (PyTypeObject is opaque in the limited API). */
static inline PyObject *sl_type_alloc(PyTypeObject *tp) {
#ifdef Py_LIMITED_API
    return ((allocfunc)PyType_GetSlot(tp, Py_tp_alloc))(tp, 0);
#else
    return tp->tp_alloc(tp, 0);
#endif
}

static inline void sl_type_free(PyTypeObject *tp, PyObject *obj) {
#ifdef Py_LIMITED_API
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(obj);
#else
    tp->tp_free(obj);
#endif
}

/* ---- module.c: the module state (PEP 489 multi-phase init) ------------- */

/* What a module object owns: its heap types (PyType_FromModuleAndSpec).
 * A method reaches it through its own type: sl_state_of(self).  The
 * exception classes are not cached: sl_error_type finds them in
 * shmlink.errors (sys.modules) when one is raised. */
typedef struct {
    PyTypeObject *View, *Memory, *Ring, *Topic, *Subscriber;
} sl_state;

static inline sl_state *sl_state_of(PyObject *obj) {
    return (sl_state *)PyType_GetModuleState(Py_TYPE(obj));
}

/* THE mapping from a return code to an exception (every C call of the
 * binding that fails ends here): rc is -1 (a Python exception is already
 * set: kept) or a negative errno from the header:
 *   -ECANCELED  SegmentClosed (the handle was closed while the call waited)
 *   -EPIPE      SegmentClosed (the handle is closed)
 *   -ETIMEDOUT  Timeout            -EBADMSG  CorruptSegment
 *   -EPROTO     IncompatibleSegment  -EMSGSIZE MessageTooLarge
 *   -ENOSPC     TooManyParticipants  -EINVAL   InvalidArgument
 *   -EBUSY      SegmentBusy          -EPERM    NotOwner
 *   other       OSError(errno)
 * `what` and `label` name the object ("queue", its name) in the message;
 * sl_raisef adds a printf-style detail (PyUnicode_FromFormat).  Both
 * return -1; sl_raise_null is the NULL-returning form for methods. */
int sl_raise(int rc, const char *what, PyObject *label);
int sl_raisef(int rc, const char *fmt, ...);
static inline PyObject *sl_raise_null(int rc, const char *what, PyObject *label) {
    sl_raise(rc, what, label);
    return NULL;
}
PyObject *sl_error_type(int rc); /* new reference, or NULL with an exception */

int raise_closed(const char *what, PyObject *label);
int raise_closed_while_waiting(const char *what, PyObject *label);
int raise_views_alive(const char *what, int n);

/* ---- module.c: this process's identity, recomputed lazily after fork ----- */
extern uint32_t self_pid;
extern uint64_t self_start;

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

/* ---- module.c: arguments ------------------------------------------------- */
struct timespec *parse_deadline(PyObject *obj, struct timespec *ts, int *err);
int parse_timeout(PyObject *obj, struct timespec *ts, struct timespec **deadline);
int parse_timeout_seconds(PyObject *obj, double *seconds);
int kw_only_timeout(const char *sig, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames, Py_ssize_t npos, PyObject **timeout);
int fast_wait_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t i,
                   struct timespec *ts, struct timespec **deadline, long long *spin);
int parse_wait(PyObject *dl, long long spin, struct timespec *ts,
               struct timespec **deadline);
extern const struct timespec zero_deadline;

static inline int no_wait(const struct timespec *d) {
    return d && d->tv_sec == 0 && d->tv_nsec == 0;
}

/* A batch of bytes-like objects viewed without copying (send_many and
 * publish_many).  batch_gather takes a buffer of every item and checks each
 * length with len_ok; batch_release undoes it, also after a failure. */
struct buffer_batch {
    PyObject *fast;
    Py_buffer *bufs;
    Py_ssize_t n, got;
};
int batch_gather(struct buffer_batch *b, PyObject *seq, const char *what,
                 int (*len_ok)(void *, Py_ssize_t), void *obj);
void batch_release(struct buffer_batch *b);

/* ---- time and wake-ups --------------------------------------------------- */
static inline uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* Wake every sleeper on a shared word (ours, and spuriously other
 * processes': every waiter re-checks its condition). */
static inline void wake_word(uint32_t *p) { shmlink_futex_wake(p, INT_MAX); }

/* Before waiting again after an attempt found nothing to do (a full ring,
 * an empty one): 1 when the deadline has passed, -1 when a signal handler
 * raised, else 0.  The waits check both only after their condition, so a
 * segment whose locked path and lock-free condition disagree (damaged by a
 * peer) would otherwise loop without ever reaching them.  Slow path only. */
static inline int sl_retry_check(const struct timespec *deadline) {
    if (PyErr_CheckSignals() < 0)
        return -1;
    return deadline && shmlink_deadline_passed(deadline) ? 1 : 0;
}

/* ---- wait.c -------------------------------------------------------------- */

/* Longest a futex sleep lasts before the GIL is taken back to run signal
 * handlers.  A signal that arrives *during* the futex syscall interrupts it
 * (EINTR); one that arrives between two syscalls would otherwise only be
 * noticed at the deadline.  This bounds Ctrl-C latency in every wait. */
#define SIGNAL_SLICE_S 0.1
/* The same bound for the topic's waits. */
#define TOPIC_SIGNAL_SLICE_S 0.25

/* Lock-free hint that a wait may end; the caller re-checks under its lock. */
typedef shmlink_ready_fn wait_cond;

int lock_acquire_blocking(struct shmlink_lock *l, const struct timespec *deadline,
                          int64_t spin_ns, const int *cancel);
int mutex_lock_blocking(struct shmlink_mutex *m, const struct timespec *deadline,
                        int64_t spin_ns, const int *cancel);
/* The one event-count wait (the header's shmlink_ec_wait_for, with the GIL
 * released while spinning and sleeping and signal handlers run between
 * slices): 0 (re-check), -ETIMEDOUT, -ECANCELED (*closing) or -1 (a signal
 * handler raised).  slice_s bounds a sleep; sl_ec_wait uses SIGNAL_SLICE_S,
 * topic_wait TOPIC_SIGNAL_SLICE_S. */
int sl_ec_wait_slice(struct shmlink_eventcount *ec, wait_cond cond, void *obj, uint64_t arg,
                     const struct timespec *deadline, int64_t spin_ns, const int *closing,
                     double slice_s);
int sl_ec_wait(struct shmlink_eventcount *ec, wait_cond cond, void *obj, uint64_t arg,
               const struct timespec *deadline, int64_t spin_ns, const int *closing);
int topic_wait(struct shmlink_eventcount *ec, wait_cond cond, void *obj, uint64_t arg,
               const struct timespec *until, long long spin_ns, const int *cancel);

/* ---- guard.c: surviving a truncated file (see guard.c) ------------------ */
extern int sl_guard_faults;
int sl_guard_install(void);
/* Register [base, base + len) (a handle's mapping): a token > 0, or 0 (the
 * table is full: this handle is not guarded; a zeroed handle holds 0).
 * Unregister when the handle lets go of the mapping. */
int sl_guard_register(const void *base, Py_ssize_t len);
void sl_guard_unregister(int token);
int sl_guard_slot_hit(int token);
int sl_guard_addr_hit(const void *addr);
/* CorruptSegment: "<what> <label>: its file was truncated ..."; -1. */
int sl_raise_truncated(const char *what, PyObject *label);
/* Was the handle's mapping hit by a truncation?  One relaxed load while no
 * fault ever happened in this process: the hot path's whole cost. */
static inline int sl_guard_hit(int token) {
    return SHMLINK_LOAD_RELAXED(&sl_guard_faults) != 0 && sl_guard_slot_hit(token);
}
/* The result of a call whose handle was hit: CorruptSegment instead
 * (what it read were zeros; what it wrote went nowhere).  A
 * KeyboardInterrupt already raised stays. */
static inline PyObject *sl_guard_result(PyObject *res, const char *what, PyObject *label) {
    if (!res && PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return NULL;
    Py_XDECREF(res);
    PyErr_Clear();
    sl_raise_truncated(what, label);
    return NULL;
}

/* ---- memory.c ------------------------------------------------------------ */
int memory_add_types(PyObject *m, sl_state *st);
PyObject *make_view(PyObject *mapped, Py_ssize_t off, Py_ssize_t len, int readonly,
                    PyObject *owner, int *live);
/* _core.EVENT_LAYOUT and _core.BOARD_LAYOUT (event.h, board.h offsets). */
int memory_register_layouts(PyObject *m);

/* ---- ring.c / topic.c ---------------------------------------------------- */
int ring_register(PyObject *m, sl_state *st);
int doorbell_register(PyObject *m);
int topic_register(PyObject *m, sl_state *st);

/* ---- layout.c ------------------------------------------------------------ */
int layout_register(PyObject *m);

#endif
