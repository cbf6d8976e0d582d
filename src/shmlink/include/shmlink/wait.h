/*
 * shmlink/wait.h -- deadlines, and the one way shmlink waits for a
 * condition another process makes true.
 *
 * Deadlines are absolute points on the monotonic clock (shmlink_os_now),
 * computed once from a timeout: retrying after EINTR or a spurious wake
 * never extends them.  NULL means "forever".
 *
 * The discipline (shmlink_wait_until), used by every blocking helper:
 *   1. attempt the operation; done unless it says -EAGAIN ("the condition
 *      is false": full, empty, no room);
 *   2. optionally spin a little, attempting again (cheap when the other
 *      side is running on another CPU);
 *   3. arm the event count the other side notifies (shmlink_ec_arm);
 *   4. RE-CHECK: attempt again.  A change made between 1 and 3 is seen
 *      here, so no wake-up is lost;
 *   5. sleep on the armed value, at most one slice (SHMLINK_WAIT_SLICE_S);
 *      when woken, attempt once more before arming again (a wait that
 *      succeeds then leaves nothing armed), then start again at 3.  Every
 *      wake may be spurious.
 * The slice bounds what a notifier killed between its store and its
 * notify can cost a sleeper; it is not how progress is found.
 *
 * "Lock busy" is not "condition false": an attempt that finds the lock it
 * needs held waits for that lock (shmlink/lock.h: bounded, taking over from
 * a dead holder) inside the attempt, and never returns -EAGAIN for it.
 */
#ifndef SHMLINK_WAIT_H
#define SHMLINK_WAIT_H

#include "atomic.h"
#include "eventcount.h"
#include "platform.h"

SHMLINK_BEGIN_DECLS

/* Longest single sleep of a blocking helper on an event count. */
#ifndef SHMLINK_WAIT_SLICE_S
#define SHMLINK_WAIT_SLICE_S 0.1
#endif

/* *ts = now + seconds (clamped to [0, 1e9]). */
static inline void shmlink_deadline_after(struct timespec *ts, double seconds) {
    shmlink_os_now(ts);
    if (!(seconds > 0)) /* negative or NaN */
        seconds = 0;
    if (seconds > 1e9)
        seconds = 1e9;
    long long whole = (long long)seconds;
    ts->tv_sec += (time_t)whole;
    ts->tv_nsec += (long)((seconds - (double)whole) * 1e9);
    while (ts->tv_nsec >= 1000000000L) {
        ts->tv_nsec -= 1000000000L;
        ts->tv_sec += 1;
    }
}

/* 1 if now is at or past *deadline (NULL never passes). */
static inline int shmlink_deadline_passed(const struct timespec *deadline) {
    struct timespec now;
    if (!deadline)
        return 0;
    shmlink_os_now(&now);
    return now.tv_sec > deadline->tv_sec ||
           (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

/* The earlier of *deadline (NULL = forever) and now + seconds, into *out. */
static inline void shmlink_deadline_min(struct timespec *out,
                                        const struct timespec *deadline,
                                        double seconds) {
    shmlink_deadline_after(out, seconds);
    if (deadline && (deadline->tv_sec < out->tv_sec ||
                     (deadline->tv_sec == out->tv_sec &&
                      deadline->tv_nsec < out->tv_nsec)))
        *out = *deadline;
}

/* Nanoseconds on the monotonic clock (for spin budgets). */
static inline uint64_t shmlink_now_ns(void) {
    struct timespec ts;
    shmlink_os_now(&ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One step of a bounded spin: relax the CPU for the first rounds, then
 * yield it (the side we wait for may need this CPU).  `round` counts from
 * 0. */
static inline void shmlink_spin_pause(unsigned round) {
    if (round < 64)
        SHMLINK_CPU_RELAX();
    else
        shmlink_os_yield();
}

/* An attempt: returns -EAGAIN while the condition is false, anything else
 * to end the wait.  slice_expired is 1 on the first attempt after a sleep
 * that ran out its whole slice (a chance for liveness checks), else 0. */
typedef int64_t (*shmlink_attempt_fn)(void *arg, int slice_expired);

/* ---- hooks: how a host with its own rules (the Python binding) waits ---- */

/* A wait run by a host that must do something around each spin or sleep
 * (the Python binding: release the GIL before, take it back after) and
 * between two slices (run signal handlers, notice a handle closing).  Any
 * member may be NULL/0. */
struct shmlink_wait_hooks {
    void (*leave)(void *ctx); /* before spinning or sleeping */
    void (*enter)(void *ctx); /* after */
    /* Between leave/enter rounds (after enter), once per slice or signal:
     * 0 to go on, or a negative code that ends the wait with that code. */
    int (*poll)(void *ctx);
    /* Read (relaxed) while spinning and before each sleep: nonzero ends the
     * wait with -ECANCELED.  The host wakes the sleeper's word to make it
     * see this at once. */
    const int *cancel;
    void *ctx;
};

/* A lock-free hint that the condition may be true (the caller re-checks
 * under its lock afterwards). */
typedef int (*shmlink_ready_fn)(void *obj, uint64_t arg);

static inline int shmlink_hook_cancelled_(const struct shmlink_wait_hooks *k) {
    return k && k->cancel && SHMLINK_LOAD_RELAXED(k->cancel);
}
static inline void shmlink_hook_leave_(const struct shmlink_wait_hooks *k) {
    if (k && k->leave)
        k->leave(k->ctx);
}
static inline void shmlink_hook_enter_(const struct shmlink_wait_hooks *k) {
    if (k && k->enter)
        k->enter(k->ctx);
}
static inline int shmlink_hook_poll_(const struct shmlink_wait_hooks *k) {
    return k && k->poll ? k->poll(k->ctx) : 0;
}

/* Wait until ready(obj, arg) may be true, by the discipline above with a
 * readiness hint in place of the attempt:
 *   spin (spin_ns: 0 none, -1 until the deadline) polling ready, in rounds
 *   of at most a millisecond between leave/enter, relaxing the CPU then
 *   yielding it (a peer on our CPU must run: pure spinning costs it ~100
 *   us a round trip), with poll between rounds; then
 *   arm `ec`, RE-CHECK ready, sleep at most slice_s, and after a slice or
 *   a signal poll and re-check ready.
 * Returns 0 (ready, or woken: re-attempt), -ETIMEDOUT, -ECANCELED
 * (hooks->cancel) or poll's code. */
static inline int shmlink_ec_wait_for(struct shmlink_eventcount *ec, shmlink_ready_fn ready,
                                      void *obj, uint64_t arg,
                                      const struct timespec *deadline, int64_t spin_ns,
                                      double slice_s, const struct shmlink_wait_hooks *hooks) {
    if (spin_ns != 0) {
        uint64_t start = shmlink_now_ns();
        for (;;) {
            int met = 0;
            uint64_t round_end = shmlink_now_ns() + 1000000u;
            shmlink_hook_leave_(hooks);
            for (unsigned i = 0;; i++) {
                if (ready(obj, arg) || shmlink_hook_cancelled_(hooks)) {
                    met = 1;
                    break;
                }
                shmlink_spin_pause(i);
                if ((i & 31u) == 31u) {
                    uint64_t t = shmlink_now_ns();
                    if (t > round_end || (spin_ns > 0 && t - start > (uint64_t)spin_ns))
                        break;
                    if (shmlink_deadline_passed(deadline))
                        break;
                }
            }
            shmlink_hook_enter_(hooks);
            if (shmlink_hook_cancelled_(hooks))
                return -ECANCELED;
            if (met)
                return 0;
            int p = shmlink_hook_poll_(hooks);
            if (p)
                return p;
            if (shmlink_deadline_passed(deadline))
                return -ETIMEDOUT;
            if (spin_ns > 0 && shmlink_now_ns() - start > (uint64_t)spin_ns)
                break;
        }
    }
    for (;;) {
        int rc = 0, met = 0;
        shmlink_hook_leave_(hooks);
        uint32_t armed = shmlink_ec_arm(ec);
        if (ready(obj, arg)) { /* the re-check: after arming, before sleeping */
            met = 1;
        } else if (shmlink_hook_cancelled_(hooks)) {
            rc = -EINTR; /* seen below, after enter */
        } else {
            struct timespec slice;
            shmlink_deadline_min(&slice, deadline, slice_s);
            rc = shmlink_ec_wait(ec, armed, &slice);
            if (rc == -ETIMEDOUT && !shmlink_deadline_passed(deadline))
                rc = -EINTR; /* a slice ended: poll, re-check */
        }
        shmlink_hook_enter_(hooks);
        if (met)
            return 0;
        if (shmlink_hook_cancelled_(hooks))
            return -ECANCELED;
        if (rc == -ETIMEDOUT)
            return -ETIMEDOUT;
        if (rc != -EINTR)
            return 0; /* woken, or the count moved: re-attempt */
        int p = shmlink_hook_poll_(hooks);
        if (p)
            return p;
        if (shmlink_hook_cancelled_(hooks)) /* poll may have closed the handle */
            return -ECANCELED;
        if (ready(obj, arg))
            return 0;
    }
}

/* The discipline above: attempt, spin up to spin_ns attempting, arm `ec`,
 * attempt again, sleep one slice (at most slice_s seconds), repeat.
 * Returns the first attempt result other than -EAGAIN, or -ETIMEDOUT when
 * the deadline passes.  Without hooks, a signal that interrupts a sleep
 * returns -EINTR (the caller runs its handlers, then calls again with the
 * same deadline); with hooks, poll runs instead (after every sleep that a
 * signal or the slice ended) and a nonzero result ends the wait with it,
 * and hooks->cancel ends it with -ECANCELED.  Attempts run between
 * enter and leave (the binding: with the GIL). */
static inline int64_t shmlink_wait_until_hooked(struct shmlink_eventcount *ec,
                                                shmlink_attempt_fn attempt, void *arg,
                                                uint64_t spin_ns, double slice_s,
                                                const struct timespec *deadline,
                                                const struct shmlink_wait_hooks *hooks) {
    int64_t rc = attempt(arg, 0);
    if (rc != -EAGAIN)
        return rc;
    if (spin_ns) {
        uint64_t until = shmlink_now_ns() + spin_ns;
        for (unsigned round = 0;; round++) {
            shmlink_spin_pause(round);
            rc = attempt(arg, 0);
            if (rc != -EAGAIN)
                return rc;
            if ((round & 15u) == 15u && shmlink_now_ns() >= until)
                break;
        }
    }
    int expired = 0;
    for (;;) {
        uint32_t armed = shmlink_ec_arm(ec);
        rc = attempt(arg, expired); /* the re-check: after arming, before sleeping */
        if (rc != -EAGAIN)
            return rc;
        if (shmlink_deadline_passed(deadline))
            return -ETIMEDOUT;
        if (shmlink_hook_cancelled_(hooks))
            return -ECANCELED;
        struct timespec slice;
        shmlink_deadline_min(&slice, deadline, slice_s);
        shmlink_hook_leave_(hooks);
        int w = shmlink_ec_wait(ec, armed, &slice);
        shmlink_hook_enter_(hooks);
        expired = w == -ETIMEDOUT;
        if (w == -EINTR && !hooks)
            return -EINTR;
        if (w == -EINTR || expired) {
            int p = shmlink_hook_poll_(hooks);
            if (p)
                return p;
        }
        if (!expired) {
            /* Woken (the notifier cleared the armed bit): look before
             * arming again, so a wait that now succeeds leaves the bit
             * clear and the next notify makes no system call. */
            rc = attempt(arg, 0);
            if (rc != -EAGAIN)
                return rc;
        }
    }
}

/* shmlink_wait_until_hooked without hooks: the form C programs use. */
static inline int64_t shmlink_wait_until(struct shmlink_eventcount *ec,
                                         shmlink_attempt_fn attempt, void *arg,
                                         uint64_t spin_ns, double slice_s,
                                         const struct timespec *deadline) {
    return shmlink_wait_until_hooked(ec, attempt, arg, spin_ns, slice_s, deadline, NULL);
}

SHMLINK_END_DECLS

#endif /* SHMLINK_WAIT_H */
