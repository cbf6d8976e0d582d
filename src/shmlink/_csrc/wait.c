/*
 * The waits of the binding: spinning with the GIL released, sleeping on an
 * event count or a lock in slices, and coming back between slices to run
 * signal handlers and to notice that the handle is closing.
 */
#include "internal.h"

/* ---- the binding's hooks for the header's waits (include/shmlink/wait.h) */

struct gil_hooks {
    PyThreadState *ts;
    const void *word; /* the shared word the wait sleeps on */
};

static void hook_leave(void *ctx) { ((struct gil_hooks *)ctx)->ts = PyEval_SaveThread(); }
static void hook_enter(void *ctx) { PyEval_RestoreThread(((struct gil_hooks *)ctx)->ts); }
/* Between slices, with the GIL: run signal handlers (KeyboardInterrupt and
 * friends end the wait with -1); a handler that closed the handle is seen
 * through hooks.cancel right after. */
static int hook_poll(void *ctx) {
    if (PyErr_CheckSignals() < 0)
        return -1;
    /* The file under the word was truncated (guard.c): no wake-up will
     * ever reach the zero page the wait now sleeps on. */
    const void *word = ((struct gil_hooks *)ctx)->word;
    if (SHMLINK_LOAD_RELAXED(&sl_guard_faults) && word && sl_guard_addr_hit(word))
        return sl_raise_truncated("segment", NULL);
    return 0;
}

/* Take a robust lock: the header's shmlink_lock_acquire_hooked with the
 * binding's hooks.  Returns 0 (taken), 1 (taken from a dead owner),
 * -ETIMEDOUT, -ECANCELED (*cancel) or -1 with a Python exception set (a
 * signal handler raised).  Called with the GIL. */
int lock_acquire_blocking(struct shmlink_lock *l, const struct timespec *deadline,
                          int64_t spin_ns, const int *cancel) {
    uint32_t pid;
    uint64_t start;
    identity(&pid, &start);
    if (shmlink_lock_try(l, pid, start) == 0) /* the uncontended path: no hooks set up */
        return 0;
    struct gil_hooks g = {NULL, &l->owner};
    struct shmlink_wait_hooks hooks = {hook_leave, hook_enter, hook_poll, cancel, &g};
    return shmlink_lock_acquire_hooked(l, pid, start, deadline, spin_ns, &hooks);
}

/* Take a mutex: the header's shmlink_mutex_block_lock with the binding's
 * hooks.  0, -EOWNERDEAD (taken), -ETIMEDOUT, -ECANCELED (*cancel) or -1
 * with a Python exception set (a signal handler raised; not taken).
 * Called with the GIL. */
int mutex_lock_blocking(struct shmlink_mutex *m, const struct timespec *deadline,
                        int64_t spin_ns, const int *cancel) {
    uint32_t pid;
    uint64_t start;
    identity(&pid, &start);
    struct gil_hooks g = {NULL};
    struct shmlink_wait_hooks hooks = {hook_leave, hook_enter, hook_poll, cancel, &g};
    return shmlink_mutex_block_lock(m, pid, start, deadline, spin_ns, &hooks);
}

/* The one event-count wait of the binding: the header's shmlink_ec_wait_for
 * with the GIL released while spinning and sleeping, signal handlers run
 * between slices, and `closing` (set by close() from another thread or a
 * signal handler, which also wakes the word) ending the wait. */
int sl_ec_wait_slice(struct shmlink_eventcount *ec, wait_cond cond, void *obj, uint64_t arg,
                     const struct timespec *deadline, int64_t spin_ns, const int *closing,
                     double slice_s) {
    struct gil_hooks g = {NULL, &ec->seq};
    struct shmlink_wait_hooks hooks = {hook_leave, hook_enter, hook_poll, closing, &g};
    return shmlink_ec_wait_for(ec, cond, obj, arg, deadline, spin_ns, slice_s, &hooks);
}

int sl_ec_wait(struct shmlink_eventcount *ec, wait_cond cond, void *obj, uint64_t arg,
               const struct timespec *deadline, int64_t spin_ns, const int *closing) {
    return sl_ec_wait_slice(ec, cond, obj, arg, deadline, spin_ns, closing, SIGNAL_SLICE_S);
}

int topic_wait(struct shmlink_eventcount *ec, wait_cond cond, void *obj, uint64_t arg,
               const struct timespec *until, long long spin_ns, const int *cancel) {
    return sl_ec_wait_slice(ec, cond, obj, arg, until, spin_ns, cancel, TOPIC_SIGNAL_SLICE_S);
}
