/*
 * The waits of the binding: spinning with the GIL released, sleeping on an
 * event count or a lock in slices, and coming back between slices to run
 * signal handlers and to notice that the handle is closing.
 */
#include "internal.h"

/* Spin on a lock for up to spin_ns, then sleep in liveness-checked slices.
 * Returns 0 (taken), 1 (taken from a dead owner), -ETIMEDOUT, or -1 with a
 * Python exception set (a signal handler raised).  Called with the GIL. */
int lock_acquire_blocking(struct shmlink_lock *l,
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
            if (SHMLINK_LOAD_RELAXED(&l->owner) == 0 &&
                shmlink_lock_try(l, pid, start) == 0) {
                rc = 0;
                break;
            }
            if (SHMLINK_LOAD_RELAXED(cancel))
                break;
            if (i < 64)
                SHMLINK_CPU_RELAX();
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
        if (SHMLINK_LOAD_RELAXED(cancel))
            return -ECANCELED;
        Py_BEGIN_ALLOW_THREADS
        if (shmlink_lock_try(l, pid, start) == 0)
            taken = 1;
        else if (!SHMLINK_LOAD_RELAXED(cancel))
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

/* The spin phase of every wait: poll cond(obj, arg) with the GIL released,
 * coming back every millisecond to let signal handlers run, for up to
 * spin_ns (-1: until the deadline).  Spin ~a microsecond, then keep polling
 * but hand the CPU to anyone else runnable on it: when the peer shares our
 * core, pure spinning only delays it (measured: 110 us round trips instead
 * of 1 us); sched_yield returns at once when nobody else can run.
 * Returns 1 (cond met), 0 (spin budget spent: sleep next), -ETIMEDOUT,
 * -ECANCELED (*cancel set) or -1 (a signal handler raised). */
int spin_phase(wait_cond cond, void *obj, uint64_t arg, const struct timespec *until,
                      long long spin_ns, const int *cancel) {
    if (spin_ns == 0)
        return 0;
    uint64_t start = now_ns();
    for (;;) {
        int met = 0;
        uint64_t slice_end = now_ns() + 1000000;
        Py_BEGIN_ALLOW_THREADS
        for (unsigned i = 0;; i++) {
            if (cond(obj, arg) || SHMLINK_LOAD_RELAXED(cancel)) {
                met = 1;
                break;
            }
            if (i < 64)
                SHMLINK_CPU_RELAX();
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
        if (SHMLINK_LOAD_RELAXED(cancel))
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
 * Returns 0 (try again), -ETIMEDOUT, -ECANCELED (*closing) or -1 (exception). */
int sl_ec_wait(struct shmlink_eventcount *ec, wait_cond cond, void *obj, uint64_t arg,
                 const struct timespec *deadline, int64_t spin_ns, const int *closing) {
    int met = 0;
    int sp = spin_phase(cond, obj, arg, deadline, spin_ns, closing);
    if (sp != 0)
        return sp == 1 ? 0 : sp;
    for (;;) {
        int rc = 0;
        Py_BEGIN_ALLOW_THREADS
        uint32_t seq = shmlink_ec_arm(ec);
        if (cond(obj, arg)) {
            met = 1;
        } else if (SHMLINK_LOAD_RELAXED(closing)) {
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
        if (*closing)
            return -ECANCELED;
        if (rc == -EINTR) {
            if (PyErr_CheckSignals() < 0)
                return -1;
            if (*closing) /* a signal handler closed this handle */
                return -ECANCELED;
            if (cond(obj, arg))
                return 0;
            continue;
        }
        if (rc == -ETIMEDOUT)
            return -ETIMEDOUT;
        return 0;
    }
}

/* Wait on an event count until cond(obj, arg), *cancel, or `until`; spin
 * first (GIL released, back every millisecond for signal handlers).  cond
 * is a lock-free hint: the caller re-checks.  Returns 0 (re-check),
 * -ETIMEDOUT, -ECANCELED or -1 (a signal handler raised). */

/* Longest single futex sleep: the bound on how late a signal that slipped
 * in just before the sleep is handled. */

int topic_wait(struct shmlink_eventcount *ec, wait_cond cond, void *obj, uint64_t arg,
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
        if (cond(obj, arg) || SHMLINK_LOAD_RELAXED(cancel))
            met = 1;
        else
            rc = shmlink_futex_wait(&ec->seq, seen, &slice);
        Py_END_ALLOW_THREADS
        if (SHMLINK_LOAD_RELAXED(cancel))
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


