/*
 * shmlink/lock.h -- the robust lock.
 *
 * The owner word holds the holder's PID (0 = free).  Taking it is one CAS
 * 0 -> pid; releasing is a store of 0 and a futex wake if someone sleeps.
 * A waiter sleeps in liveness slices (SHMLINK_LIVENESS_SLICE_S); after each
 * it checks that the owner (PID and start time) is alive and, if not, takes
 * the lock over by CAS and is told so (return 1): the data the lock guards
 * may be half-written.  The lock algorithm is here; how a thread sleeps is
 * the platform file's futex.
 *
 * Return codes: 0 taken; 1 taken over from a holder that died; -EBUSY held
 * by a live process (non-blocking forms); -ETIMEDOUT; -EINTR.
 */
#ifndef SHMLINK_LOCK_H
#define SHMLINK_LOCK_H

#include "atomic.h"
#include "liveness.h"
#include "platform.h"
#include "wait.h"

SHMLINK_BEGIN_DECLS

struct shmlink_lock {
    uint32_t owner;       /* PID of the holder, 0 = free (futex word) */
    uint32_t waiters;     /* processes sleeping on `owner` */
    uint64_t owner_start; /* holder's start time, written after taking it */
};
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_lock) == 16, "lock is 16 bytes");
SHMLINK_STATIC_ASSERT(offsetof(struct shmlink_lock, owner_start) == 8,
                      "the owner's start time follows the two words");

/* How long a waiter sleeps before it checks that the owner is alive. */
#ifndef SHMLINK_LIVENESS_SLICE_S
#define SHMLINK_LIVENESS_SLICE_S 0.02
#endif

/* How long shmlink_lock_acquire spins before it sleeps (the lock is held
 * for a memcpy at a time). */
#ifndef SHMLINK_LOCK_SPIN_NS
#define SHMLINK_LOCK_SPIN_NS 20000u
#endif

/* 0 if taken, -EBUSY if held by someone. */
static inline int shmlink_lock_try(struct shmlink_lock *l, uint32_t self_pid,
                                   uint64_t self_start) {
    uint32_t expected = 0;
    /* The CAS is the acquire partner of the previous holder's release. */
    if (SHMLINK_CAS(&l->owner, &expected, self_pid)) {
        /* relaxed: only liveness checks read it, and they accept 0 (not
         * recorded yet) as "judge by the PID alone" */
        SHMLINK_STORE_RELAXED(&l->owner_start, self_start);
        return 0;
    }
    return -EBUSY;
}

/* Take over a lock whose owner `dead` (with start time dead_start) died.
 * 1 if this caller now holds it, 0 if someone else changed it first. */
static inline int shmlink_lock_steal(struct shmlink_lock *l, uint32_t dead,
                                     uint64_t dead_start, uint32_t self_pid,
                                     uint64_t self_start) {
    /* First clear the dead owner's start time (0 = "unknown: judge by PID
     * alone"), then take the owner word, then record ours.  A waiter that
     * sees us in `owner` therefore reads 0 or our start time, never the
     * dead owner's, and cannot judge us dead.  The CAS on owner_start also
     * makes one stealer win when several noticed the death together. */
    uint64_t expected_start = dead_start;
    if (!SHMLINK_CAS(&l->owner_start, &expected_start, (uint64_t)0))
        return 0;
    uint32_t expected = dead;
    if (SHMLINK_CAS(&l->owner, &expected, self_pid)) {
        /* SYNC: pairs with the seq_cst load of owner_start in
         * shmlink_lock_wait_once: a waiter that reads our PID in owner
         * reads 0 or our start time here. */
        SHMLINK_STORE_SEQ_CST(&l->owner_start, self_start);
        return 1;
    }
    return 0;
}

/* Take the lock without sleeping, from a free or a dead holder: 0 taken,
 * 1 taken over from a holder that died, -EBUSY held by a live process
 * (reads /proc when held: not for a spin loop).  The _from form also
 * stores the PID of the holder that died in *dead (may be NULL) when it
 * returns 1: the PID the take-over CAS replaced, so it names the process
 * that died even if it died before recording itself anywhere else. */
static inline int shmlink_lock_try_or_steal_from(struct shmlink_lock *l, uint32_t pid,
                                                 uint64_t start, uint32_t *dead) {
    if (shmlink_lock_try(l, pid, start) == 0)
        return 0;
    uint32_t owner = SHMLINK_LOAD_ACQUIRE(&l->owner);
    uint64_t owner_start = SHMLINK_LOAD_SEQ_CST(&l->owner_start);
    if (owner != 0 && SHMLINK_LOAD_ACQUIRE(&l->owner) == owner &&
        !shmlink_process_alive(owner, owner_start) &&
        shmlink_lock_steal(l, owner, owner_start, pid, start)) {
        if (dead)
            *dead = owner;
        return 1;
    }
    return -EBUSY;
}

static inline int shmlink_lock_try_or_steal(struct shmlink_lock *l, uint32_t pid,
                                            uint64_t start) {
    return shmlink_lock_try_or_steal_from(l, pid, start, NULL);
}

/* One bounded sleep on a held lock, then a liveness check.  Returns 0 (try
 * again), 1 (the lock is now ours, its owner had died), -ETIMEDOUT or
 * -EINTR.  On 1, *dead (may be NULL) is the PID of the holder that died. */
static inline int shmlink_lock_wait_once(struct shmlink_lock *l,
                                         uint32_t self_pid, uint64_t self_start,
                                         const struct timespec *deadline, uint32_t *dead) {
    uint32_t owner = SHMLINK_LOAD_ACQUIRE(&l->owner);
    if (owner == 0)
        return 0;
    struct timespec slice;
    shmlink_deadline_min(&slice, deadline, SHMLINK_LIVENESS_SLICE_S);
    SHMLINK_FETCH_ADD(&l->waiters, 1);
    int rc = shmlink_futex_wait(&l->owner, owner, &slice);
    SHMLINK_FETCH_ADD(&l->waiters, (uint32_t)-1);
    if (rc == -EINTR)
        return -EINTR;
    if (rc == -ETIMEDOUT) {
        /* Re-read both words now: the owner may have changed hands during
         * the slice, and only a fresh start time belongs to it. */
        owner = SHMLINK_LOAD_ACQUIRE(&l->owner);
        uint64_t owner_start = SHMLINK_LOAD_SEQ_CST(&l->owner_start);
        if (owner != 0 && SHMLINK_LOAD_ACQUIRE(&l->owner) == owner &&
            !shmlink_process_alive(owner, owner_start) &&
            shmlink_lock_steal(l, owner, owner_start, self_pid, self_start)) {
            if (dead)
                *dead = owner;
            return 1;
        }
        if (shmlink_deadline_passed(deadline))
            return -ETIMEDOUT;
    }
    return 0;
}

/* Take the lock, waiting until the absolute deadline (NULL = forever):
 * spin (up to spin_ns; -1: a millisecond), sleep one liveness slice (or
 * until the holder releases), spin again, ...  Spinning after each wake
 * matters: a holder that releases and retakes the lock in a loop would
 * otherwise win every time against a waiter that needs a futex wake-up to
 * run.  A holder that died is taken over (at once if already dead, else
 * after its liveness slice).  hooks (shmlink/wait.h; may be NULL) run
 * around each spin-and-sleep round and poll after it; hooks->cancel ends
 * the wait.  Returns 0, 1 (taken over from a holder that died),
 * -ETIMEDOUT, -ECANCELED, poll's code, or (no hooks) -EINTR.  On 1, *dead
 * (may be NULL) is the PID of the holder that died (see
 * shmlink_lock_try_or_steal_from). */
static inline int shmlink_lock_acquire_from(struct shmlink_lock *l, uint32_t pid,
                                            uint64_t start, const struct timespec *deadline,
                                            int64_t spin_ns,
                                            const struct shmlink_wait_hooks *hooks,
                                            uint32_t *dead) {
    if (shmlink_lock_try(l, pid, start) == 0)
        return 0;
    int rc = shmlink_lock_try_or_steal_from(l, pid, start, dead); /* a holder dead already */
    while (rc == -EBUSY) {
        if (shmlink_hook_cancelled_(hooks))
            return -ECANCELED;
        int taken = 0;
        shmlink_hook_leave_(hooks);
        if (shmlink_lock_try(l, pid, start) == 0) /* freed since: no spin, no sleep */
            taken = 1;
        else if (spin_ns != 0) {
            uint64_t until = shmlink_now_ns() + (uint64_t)(spin_ns < 0 ? 1000000 : spin_ns);
            for (unsigned round = 0;; round++) {
                if (SHMLINK_LOAD_RELAXED(&l->owner) == 0 && shmlink_lock_try(l, pid, start) == 0) {
                    taken = 1;
                    break;
                }
                if (shmlink_hook_cancelled_(hooks))
                    break;
                if ((round & 15u) == 15u && shmlink_now_ns() >= until)
                    break;
                shmlink_spin_pause(round);
            }
        }
        if (!taken && !shmlink_hook_cancelled_(hooks))
            rc = shmlink_lock_wait_once(l, pid, start, deadline, dead);
        shmlink_hook_enter_(hooks);
        if (taken)
            return 0;
        if (shmlink_hook_cancelled_(hooks))
            return -ECANCELED;
        if (rc == 1 || rc == -ETIMEDOUT)
            return rc;
        if (rc == -EINTR && !hooks)
            return -EINTR;
        int p = shmlink_hook_poll_(hooks); /* once per slice or signal */
        if (p)
            return p;
        rc = -EBUSY;
    }
    return rc;
}

/* shmlink_lock_acquire_from without the dead holder's PID. */
static inline int shmlink_lock_acquire_hooked(struct shmlink_lock *l, uint32_t pid,
                                              uint64_t start, const struct timespec *deadline,
                                              int64_t spin_ns,
                                              const struct shmlink_wait_hooks *hooks) {
    return shmlink_lock_acquire_from(l, pid, start, deadline, spin_ns, hooks, NULL);
}

/* shmlink_lock_acquire_hooked with a short spin and no hooks: the form C
 * programs use.  0, 1 (taken over from a holder that died), -ETIMEDOUT or
 * -EINTR. */
static inline int shmlink_lock_acquire(struct shmlink_lock *l, uint32_t pid,
                                       uint64_t start, const struct timespec *deadline) {
    return shmlink_lock_acquire_hooked(l, pid, start, deadline, SHMLINK_LOCK_SPIN_NS, NULL);
}

static inline void shmlink_lock_release(struct shmlink_lock *l) {
    /* relaxed: the release store of owner below publishes it */
    SHMLINK_STORE_RELAXED(&l->owner_start, 0);
    /* SYNC: pairs with the CAS in shmlink_lock_try of the next owner: the
     * data written under the lock is visible to it.  seq_cst, not release:
     * the load of waiters after it must not move before it. */
    SHMLINK_STORE_SEQ_CST(&l->owner, 0);
    if (SHMLINK_LOAD_SEQ_CST(&l->waiters) != 0)
        shmlink_futex_wake(&l->owner, 1);
}

SHMLINK_END_DECLS

#endif /* SHMLINK_LOCK_H */
