/*
 * shmlink/mutex.h -- the named mutex of shmlink.Mutex, from C.
 *
 * A segment of kind SHMLINK_KIND_MUTEX whose data area starts with struct
 * shmlink_mutex: the robust lock (shmlink/lock.h) plus an "inconsistent"
 * flag, as POSIX's EOWNERDEAD.  When a holder dies holding it, the next
 * locker takes it over and is told (-EOWNERDEAD); so is every later
 * locker, until one of them repairs the data it protects and calls
 * shmlink_mutex_mark_consistent.  Python's Mutex and these functions
 * interoperate: same words, same rules.
 *
 * Return codes: 0 taken / done; -EOWNERDEAD taken, but a holder died
 * holding it (repair, mark consistent, unlock; or unlock and the next
 * locker is told too); -EBUSY (trylock) held by a live process;
 * -ETIMEDOUT; -EINTR; -EPERM unlock/mark_consistent by a process that does
 * not hold it; -EPROTO not a mutex; -EBADMSG a control block too small.
 */
#ifndef SHMLINK_MUTEX_H
#define SHMLINK_MUTEX_H

#include "atomic.h"
#include "lock.h"
#include "segment.h"

SHMLINK_BEGIN_DECLS

/* The data area of a mutex segment (sync.py's _M_* offsets). */
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
                      "the offsets shmlink/sync.py uses");

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

/* After the lock was taken (taken_over: from a holder that died): the
 * bookkeeping Python's Mutex does, then 0 or -EOWNERDEAD. */
static inline int shmlink_mutex_taken(struct shmlink_mutex *m, uint32_t pid, int taken_over) {
    /* relaxed: these words are written only under the lock, whose CAS and
     * release order them */
    uint32_t previous = SHMLINK_LOAD_RELAXED(&m->holder);
    SHMLINK_STORE_RELAXED(&m->holder, pid);
    SHMLINK_FETCH_ADD(&m->acquisitions, 1);
    if (taken_over) {
        SHMLINK_STORE_RELAXED(&m->dead, previous);
        SHMLINK_STORE_RELAXED(&m->inconsistent, 1u);
    }
    return SHMLINK_LOAD_RELAXED(&m->inconsistent) ? -EOWNERDEAD : 0;
}

/* Take the mutex, waiting until the absolute deadline (NULL = forever).
 * 0, -EOWNERDEAD (taken: see above; shmlink_mutex_dead_pid says who died),
 * -ETIMEDOUT or -EINTR. */
static inline int shmlink_mutex_lock(struct shmlink_mutex_handle *mh, uint32_t pid,
                                     uint64_t start, const struct timespec *deadline) {
    int rc = shmlink_lock_acquire(&mh->m->lock, pid, start, deadline);
    if (rc < 0)
        return rc;
    return shmlink_mutex_taken(mh->m, pid, rc == 1);
}

/* Take the mutex if it is free now, or its holder died.  0, -EOWNERDEAD or
 * -EBUSY. */
static inline int shmlink_mutex_trylock(struct shmlink_mutex_handle *mh, uint32_t pid,
                                        uint64_t start) {
    int rc = shmlink_lock_try_or_steal(&mh->m->lock, pid, start);
    if (rc < 0)
        return rc;
    return shmlink_mutex_taken(mh->m, pid, rc == 1);
}

/* Release the mutex (held by this process).  0 or -EPERM. */
static inline int shmlink_mutex_unlock(struct shmlink_mutex_handle *mh, uint32_t pid) {
    if (SHMLINK_LOAD_RELAXED(&mh->m->lock.owner) != pid)
        return -EPERM;
    shmlink_lock_release(&mh->m->lock);
    return 0;
}

/* Declare the protected data repaired after -EOWNERDEAD, holding the
 * mutex.  0 or -EPERM. */
static inline int shmlink_mutex_mark_consistent(struct shmlink_mutex_handle *mh, uint32_t pid) {
    if (SHMLINK_LOAD_RELAXED(&mh->m->lock.owner) != pid)
        return -EPERM;
    SHMLINK_STORE_RELAXED(&mh->m->inconsistent, 0u); /* published by the unlock */
    return 0;
}

/* PID of the holder that died (meaningful after -EOWNERDEAD). */
static inline uint32_t shmlink_mutex_dead_pid(const struct shmlink_mutex_handle *mh) {
    return SHMLINK_LOAD_RELAXED(&mh->m->dead);
}

SHMLINK_END_DECLS

#endif /* SHMLINK_MUTEX_H */
