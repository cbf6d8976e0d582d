/*
 * shmlink/mutex.h -- the named mutex of shmlink.Mutex, from C.
 *
 * A segment of kind SHMLINK_KIND_MUTEX whose data area starts with struct
 * shmlink_mutex: the robust lock (shmlink/lock.h) plus an "inconsistent"
 * flag, as POSIX's EOWNERDEAD.  When a holder dies holding it, the next
 * locker takes it over and is told (-EOWNERDEAD); so is every later
 * locker, until one of them repairs the data it protects and calls
 * shmlink_mutex_mark_consistent.  The sequences live here once, on a
 * control block (shmlink_mutex_block_*); Python's Mutex calls them through
 * the binding (Memory.mutex_*), C programs through the named-mutex forms
 * (shmlink_mutex_open/lock/...): same words, same code.
 *
 * Return codes: 0 taken / done; -EOWNERDEAD taken, but a holder died
 * holding it (repair, mark consistent, unlock; or unlock and the next
 * locker is told too); -EBUSY (trylock) held by a live process;
 * -ETIMEDOUT; -EINTR; -ECANCELED (a hooks cancel word); -EPERM unlock/mark_consistent by a process that does
 * not hold it; -EPROTO not a mutex; -EBADMSG a control block too small.
 */
#ifndef SHMLINK_MUTEX_H
#define SHMLINK_MUTEX_H

#include "atomic.h"
#include "lock.h"
#include "segment.h"

SHMLINK_BEGIN_DECLS

/* The data area of a mutex segment (_core.LAYOUT["mutex"] for Python). */
struct shmlink_mutex {
    struct shmlink_lock lock; /*  0 */
    uint32_t inconsistent;    /* 16 1 after a holder died, until mark_consistent */
    uint32_t holder;          /* 20 PID of the last holder (kept after it dies) */
    uint32_t dead;            /* 24 PID of the holder that died */
    uint32_t reserved;        /* 28 */
    uint64_t acquisitions;    /* 32 how many times it was taken, by anyone */
    uint8_t pad[SHMLINK_CACHE_LINE - 40];
};
#define SHMLINK_MUTEX_SIZE 64u
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_mutex) == SHMLINK_MUTEX_SIZE,
                      "a mutex control block is one cache line");
SHMLINK_STATIC_ASSERT(offsetof(struct shmlink_mutex, inconsistent) == 16 &&
                          offsetof(struct shmlink_mutex, holder) == 20 &&
                          offsetof(struct shmlink_mutex, dead) == 24 &&
                          offsetof(struct shmlink_mutex, acquisitions) == 32,
                      "the offsets C peers of older shmlink versions use");

struct shmlink_mutex_handle {
    struct shmlink_segment seg;
    struct shmlink_mutex *m;
};

/* Open the named mutex.  0, or what shmlink_segment_open returns, or
 * -EPROTO (the segment is not a mutex) or -EBADMSG (too small). */
static inline int shmlink_mutex_open(struct shmlink_mutex_handle *mh, const char *name) {
    int rc = shmlink_segment_open(&mh->seg, name);
    if (rc != 0)
        return rc;
    if (mh->seg.kind != SHMLINK_KIND_MUTEX)
        rc = -EPROTO;
    else if (mh->seg.size < SHMLINK_MUTEX_SIZE)
        rc = -EBADMSG;
    if (rc != 0) {
        shmlink_segment_close(&mh->seg);
        return rc;
    }
    mh->m = (struct shmlink_mutex *)mh->seg.data;
    return 0;
}

static inline void shmlink_mutex_close(struct shmlink_mutex_handle *mh) {
    shmlink_segment_close(&mh->seg);
    mh->m = NULL;
}

/* ---- the sequences, on a control block (the binding calls these) ------- */

/* After the lock was taken (dead: the PID of the holder it was taken over
 * from, 0 if it was free): the bookkeeping, then 0 or -EOWNERDEAD.  The
 * dead holder is recorded from the lock word the take-over replaced, not
 * from `holder`: a holder that died between its CAS and its bookkeeping
 * never wrote `holder`. */
static inline int shmlink_mutex_taken(struct shmlink_mutex *m, uint32_t pid, uint32_t dead) {
    /* relaxed: these words are written only under the lock, whose CAS and
     * release order them */
    if (dead) {
        SHMLINK_STORE_RELAXED(&m->dead, dead);
        SHMLINK_STORE_RELAXED(&m->inconsistent, 1u);
    }
    SHMLINK_STORE_RELAXED(&m->holder, pid);
    SHMLINK_FETCH_ADD(&m->acquisitions, 1);
    return SHMLINK_LOAD_RELAXED(&m->inconsistent) ? -EOWNERDEAD : 0;
}

/* Take the mutex at m: shmlink_lock_acquire_from (spin up to spin_ns, sleep
 * liveness slices, take over from a holder that died; hooks may be NULL),
 * then the bookkeeping.  0, -EOWNERDEAD (taken; shmlink_mutex_block_dead_pid
 * says who died), -ETIMEDOUT, -ECANCELED, the hooks' poll code, or (no
 * hooks) -EINTR.  When it returns a code < 0 other than -EOWNERDEAD the
 * caller does not hold the mutex. */
static inline int shmlink_mutex_block_lock(struct shmlink_mutex *m, uint32_t pid,
                                           uint64_t start, const struct timespec *deadline,
                                           int64_t spin_ns,
                                           const struct shmlink_wait_hooks *hooks) {
    uint32_t dead = 0;
    int rc = shmlink_lock_acquire_from(&m->lock, pid, start, deadline, spin_ns, hooks, &dead);
    if (rc < 0)
        return rc;
    return shmlink_mutex_taken(m, pid, rc == 1 ? dead : 0);
}

/* Take the mutex at m if it is free now, or its holder died.  0,
 * -EOWNERDEAD or -EBUSY. */
static inline int shmlink_mutex_block_trylock(struct shmlink_mutex *m, uint32_t pid,
                                              uint64_t start) {
    uint32_t dead = 0;
    int rc = shmlink_lock_try_or_steal_from(&m->lock, pid, start, &dead);
    if (rc < 0)
        return rc;
    return shmlink_mutex_taken(m, pid, rc == 1 ? dead : 0);
}

/* Release the mutex at m (held by process pid).  0 or -EPERM.  An
 * inconsistent mutex stays inconsistent: the next locker is told. */
static inline int shmlink_mutex_block_unlock(struct shmlink_mutex *m, uint32_t pid) {
    if (SHMLINK_LOAD_RELAXED(&m->lock.owner) != pid)
        return -EPERM;
    shmlink_lock_release(&m->lock); /* SYNC: its release store publishes the words above */
    return 0;
}

/* Declare the protected data repaired, holding the mutex.  0 or -EPERM. */
static inline int shmlink_mutex_block_mark_consistent(struct shmlink_mutex *m, uint32_t pid) {
    if (SHMLINK_LOAD_RELAXED(&m->lock.owner) != pid)
        return -EPERM;
    SHMLINK_STORE_RELAXED(&m->inconsistent, 0u); /* published by the unlock */
    return 0;
}

/* PID of the holder that died (meaningful after -EOWNERDEAD, read while
 * holding the mutex). */
static inline uint32_t shmlink_mutex_block_dead_pid(const struct shmlink_mutex *m) {
    return SHMLINK_LOAD_RELAXED(&m->dead);
}

/* A snapshot for stats (each word loaded once; not under the lock). */
struct shmlink_mutex_stats {
    uint32_t owner;        /* PID holding it now, 0 = free */
    uint32_t inconsistent; /* 1 after a holder died, until mark_consistent */
    uint32_t holder;       /* PID of the last holder */
    uint32_t dead;         /* PID of the last holder that died holding it */
    uint64_t acquisitions;
};

static inline void shmlink_mutex_block_stats(const struct shmlink_mutex *m,
                                             struct shmlink_mutex_stats *st) {
    st->owner = SHMLINK_LOAD_ACQUIRE(&m->lock.owner);
    st->inconsistent = SHMLINK_LOAD_ACQUIRE(&m->inconsistent) != 0;
    st->holder = SHMLINK_LOAD_RELAXED(&m->holder);
    st->dead = SHMLINK_LOAD_RELAXED(&m->dead);
    st->acquisitions = SHMLINK_LOAD_RELAXED(&m->acquisitions);
}

/* ---- the named mutex, from C ------------------------------------------ */

/* Take the mutex, waiting until the absolute deadline (NULL = forever).
 * 0, -EOWNERDEAD (taken: see above; shmlink_mutex_dead_pid says who died),
 * -ETIMEDOUT or -EINTR. */
static inline int shmlink_mutex_lock(struct shmlink_mutex_handle *mh, uint32_t pid,
                                     uint64_t start, const struct timespec *deadline) {
    return shmlink_mutex_block_lock(mh->m, pid, start, deadline, SHMLINK_LOCK_SPIN_NS, NULL);
}

/* Take the mutex if it is free now, or its holder died.  0, -EOWNERDEAD or
 * -EBUSY. */
static inline int shmlink_mutex_trylock(struct shmlink_mutex_handle *mh, uint32_t pid,
                                        uint64_t start) {
    return shmlink_mutex_block_trylock(mh->m, pid, start);
}

/* Release the mutex (held by this process).  0 or -EPERM. */
static inline int shmlink_mutex_unlock(struct shmlink_mutex_handle *mh, uint32_t pid) {
    return shmlink_mutex_block_unlock(mh->m, pid);
}

/* Declare the protected data repaired after -EOWNERDEAD, holding the
 * mutex.  0 or -EPERM. */
static inline int shmlink_mutex_mark_consistent(struct shmlink_mutex_handle *mh, uint32_t pid) {
    return shmlink_mutex_block_mark_consistent(mh->m, pid);
}

/* PID of the holder that died (meaningful after -EOWNERDEAD). */
static inline uint32_t shmlink_mutex_dead_pid(const struct shmlink_mutex_handle *mh) {
    return shmlink_mutex_block_dead_pid(mh->m);
}

SHMLINK_END_DECLS

#endif /* SHMLINK_MUTEX_H */
