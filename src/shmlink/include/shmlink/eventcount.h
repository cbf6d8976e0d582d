/*
 * shmlink/eventcount.h -- "sleep until something changes", without lost
 * wake-ups and without counting sleepers.
 *
 * Bit 0 of seq says "a waiter sleeps on this value".  A waker that finds it
 * clear makes no system call, so wakers pay one futex wake per sleep, not
 * one per event.  A waiter killed while armed costs one spurious wake, then
 * nothing: there is no count to leak.
 *
 *   waiter: v = shmlink_ec_arm(ec); RE-CHECK the condition;
 *           if still false: shmlink_ec_wait(ec, v, deadline)
 *   waker:  make the condition true; shmlink_ec_notify(ec)
 *
 * Either the waker's load of seq sees the armed bit (and wakes), or the
 * waiter's re-check after arming sees the condition: the arming CAS and the
 * fence after it, and the waker's fence before its load, are seq_cst, so the
 * two cannot both miss.  shmlink/wait.h wraps this in the one waiting loop
 * (spin, arm, re-check, sleep) that every blocking helper uses.
 */
#ifndef SHMLINK_EVENTCOUNT_H
#define SHMLINK_EVENTCOUNT_H

#include "atomic.h"
#include "platform.h"

SHMLINK_BEGIN_DECLS

struct shmlink_eventcount {
    uint32_t seq;     /* futex word; bit 0 = armed */
    uint32_t waiters; /* unused: kept so the layouts stay as they are */
};
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_eventcount) == 8, "an event count is 8 bytes");

/* Announce a sleeper.  Returns the armed value to pass to shmlink_ec_wait;
 * the caller must re-check its condition after this returns. */
static inline uint32_t shmlink_ec_arm(struct shmlink_eventcount *ec) {
    for (;;) {
        uint32_t v = SHMLINK_LOAD_ACQUIRE(&ec->seq);
        if (v & 1u)
            return v;
        if (SHMLINK_CAS(&ec->seq, &v, v | 1u)) {
            SHMLINK_FENCE(); /* the arming before the caller's re-check */
            return v | 1u;
        }
    }
}

/* After making a condition true: wake every sleeper, if one is armed.
 * Returns 1 when it made the futex wake system call, 0 when nobody was
 * armed (no system call): callers may count the 1s to show what waking
 * costs (Event and Board do, in their `wakes` counters). */
static inline int shmlink_ec_notify(struct shmlink_eventcount *ec) {
    SHMLINK_FENCE(); /* the condition's stores before the load of seq */
    /* relaxed is enough: the fence above orders it, and the CAS re-reads */
    uint32_t v = SHMLINK_LOAD_RELAXED(&ec->seq);
    if ((v & 1u) && SHMLINK_CAS(&ec->seq, &v, v + 1u)) {
        shmlink_futex_wake(&ec->seq, INT_MAX);
        return 1;
    }
    return 0;
}

/* Wake every waiter, armed or not (a handle being closed or interrupted). */
static inline void shmlink_ec_wake_all(struct shmlink_eventcount *ec) {
    uint32_t v = SHMLINK_LOAD_RELAXED(&ec->seq);
    while (!SHMLINK_CAS(&ec->seq, &v, (v | 1u) + 1u))
        ;
    shmlink_futex_wake(&ec->seq, INT_MAX);
}

/* Sleep until seq moves past `armed` (from shmlink_ec_arm) or the absolute
 * monotonic deadline (NULL = forever).  Returns 0 (re-check: woken, maybe
 * spuriously, or seq had moved already), -ETIMEDOUT or -EINTR. */
static inline int shmlink_ec_wait(struct shmlink_eventcount *ec, uint32_t armed,
                                  const struct timespec *deadline) {
    int rc = shmlink_futex_wait(&ec->seq, armed, deadline);
    return rc == -EAGAIN ? 0 : rc;
}

SHMLINK_END_DECLS

#endif /* SHMLINK_EVENTCOUNT_H */
