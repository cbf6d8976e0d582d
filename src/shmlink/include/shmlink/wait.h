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

/* The discipline above: attempt, spin up to spin_ns attempting, arm `ec`,
 * attempt again, sleep one slice (at most slice_s seconds), repeat.
 * Returns the first attempt result other than -EAGAIN, or -ETIMEDOUT when
 * the deadline passes, or -EINTR when a signal interrupts a sleep (the
 * caller runs its handlers, then calls again with the same deadline). */
static inline int64_t shmlink_wait_until(struct shmlink_eventcount *ec,
                                         shmlink_attempt_fn attempt, void *arg,
                                         uint64_t spin_ns, double slice_s,
                                         const struct timespec *deadline) {
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
        struct timespec slice;
        shmlink_deadline_min(&slice, deadline, slice_s);
        int w = shmlink_ec_wait(ec, armed, &slice);
        if (w == -EINTR)
            return -EINTR;
        expired = w == -ETIMEDOUT;
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

SHMLINK_END_DECLS

#endif /* SHMLINK_WAIT_H */
