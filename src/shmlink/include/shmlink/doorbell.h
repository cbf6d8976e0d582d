/*
 * shmlink/doorbell.h -- readiness by file descriptor: a table of doorbells
 * beside an event count, so that select/poll/epoll and event loops can wait
 * for what a futex waiter waits for.
 *
 * An fd-waiter owns a *doorbell*: an AF_UNIX datagram socket bound in the
 * Linux abstract namespace under a name derived from a 64-bit id
 * (platform.h: shmlink_os_bell_*).  Its descriptor is what fileno() hands
 * out.  Beside each event count that may have fd-waiters lies a table of
 * SHMLINK_BELL_SLOTS slots (struct shmlink_bells); a slot holds the id of a
 * registered doorbell, or 0.
 *
 *   waiter, once:   claim a slot (shmlink_bells_claim) with the doorbell's id
 *   waiter, before each wait on the descriptor:
 *                   drain it (shmlink_bell_drain); v = shmlink_ec_arm(ec);
 *                   RE-CHECK the condition; if true, don't wait (or ring
 *                   yourself: shmlink_bell_ring_self); else poll/epoll the fd
 *   notifier:       make the condition true; shmlink_ec_notify_bells(ec, t):
 *                   when the armed bit is set, the futex wake *and* one
 *                   non-blocking sendto() to every slot's id
 *   waiter, at close: release its slot (shmlink_bells_release)
 *
 * This is the event count's discipline with the doorbell as a second way to
 * sleep: the slot is claimed (seq_cst, then a fence) before the first arm,
 * and the notifier reads the slots only after its CAS on the armed seq, so
 * a notifier that must wake the waiter also sees its slot.  A notifier that
 * finds the armed bit clear makes no system call and reads no slot: a
 * process with no waiters pays what it paid before doorbells existed.
 *
 * A ring is one 1-byte datagram.  -EAGAIN from sendto means the doorbell's
 * queue is full: it is rung already.  -ECONNREFUSED/-ENOENT means nobody
 * holds that name (the waiter closed or died): the notifier clears the slot
 * (CAS id -> 0), so a dead waiter costs senders at most one wake.  Slots are
 * untrusted like everything else in shared memory: any 64-bit value names
 * at most a socket in the "shmlink-bell-" namespace, the send never blocks,
 * and a value nobody holds is cleared after one try.  Readiness may be
 * spurious (a ring for a change another receiver consumed, a late ring of
 * an earlier notify); it is never missed.
 *
 * Layouts: rings (ring.h, version 3) and topics (topic.h, version 2) keep
 * the table in the cache line of each event count (ec + 8); boards (board.h
 * version 3) and events (event.h version 3) in a line of their own.
 */
#ifndef SHMLINK_DOORBELL_H
#define SHMLINK_DOORBELL_H

#include "atomic.h"
#include "eventcount.h"
#include "platform.h"

SHMLINK_BEGIN_DECLS

#define SHMLINK_BELL_SLOTS 7u

/* The doorbells of one event count: 56 bytes, so that table and count share
 * one cache line where the layout has room. */
struct shmlink_bells {
    uint64_t slot[SHMLINK_BELL_SLOTS]; /* a doorbell id, or 0 (free) */
};
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_bells) == 56, "a doorbell table is 56 bytes");

/* Ring every registered doorbell once; clear the slots of doorbells that
 * are gone.  Returns how many were rung (or found rung already). */
static inline int shmlink_bells_ring(struct shmlink_bells *t) {
    int rung = 0;
    for (unsigned i = 0; i < SHMLINK_BELL_SLOTS; i++) {
        /* SYNC: pairs with the seq_cst CAS in shmlink_bells_claim (the
         * caller's CAS on the event count orders this load after it). */
        uint64_t id = SHMLINK_LOAD_ACQUIRE(&t->slot[i]);
        if (id == 0)
            continue;
        int rc = shmlink_os_bell_send(id);
        if (rc == 0 || rc == -EAGAIN)
            rung++;
        else if (rc == -ECONNREFUSED || rc == -ENOENT)
            SHMLINK_CAS(&t->slot[i], &id, UINT64_C(0)); /* gone: one wake, then nothing */
    }
    return rung;
}

/* shmlink_ec_notify, ringing the doorbells too (bells may be NULL). */
static inline int shmlink_ec_notify_bells(struct shmlink_eventcount *ec,
                                          struct shmlink_bells *bells) {
    SHMLINK_FENCE(); /* the condition's stores before the load of seq */
    uint32_t v = SHMLINK_LOAD_RELAXED(&ec->seq);
    if ((v & 1u) && SHMLINK_CAS(&ec->seq, &v, v + 1u)) {
        shmlink_futex_wake(&ec->seq, INT_MAX);
        if (bells)
            shmlink_bells_ring(bells);
        return 1;
    }
    return 0;
}

/* shmlink_ec_wake_all, ringing the doorbells too (bells may be NULL). */
static inline void shmlink_ec_wake_all_bells(struct shmlink_eventcount *ec,
                                             struct shmlink_bells *bells) {
    shmlink_ec_wake_all(ec);
    if (bells)
        shmlink_bells_ring(bells);
}

/* Register doorbell id in a free slot.  A slot whose doorbell is gone is
 * reclaimed (probed with one ring).  Returns the slot index, or -ENOSPC
 * when every slot holds a live doorbell.  The id must not be 0. */
static inline int shmlink_bells_claim(struct shmlink_bells *t, uint64_t id) {
    for (int pass = 0; pass < 2; pass++) {
        for (unsigned i = 0; i < SHMLINK_BELL_SLOTS; i++) {
            uint64_t cur = SHMLINK_LOAD_RELAXED(&t->slot[i]);
            if (cur == id)
                return (int)i; /* registered already */
            if (cur == 0 && SHMLINK_CAS(&t->slot[i], &cur, id)) {
                /* SYNC: the claim before the caller's first arm and
                 * re-check; pairs with the notifier's fence + acquire load
                 * in shmlink_bells_ring. */
                SHMLINK_FENCE();
                return (int)i;
            }
        }
        if (pass == 0) {
            /* full: clear the slots of doorbells nobody holds any more */
            for (unsigned i = 0; i < SHMLINK_BELL_SLOTS; i++) {
                uint64_t cur = SHMLINK_LOAD_RELAXED(&t->slot[i]);
                int rc = cur ? shmlink_os_bell_send(cur) : 0;
                if (rc == -ECONNREFUSED || rc == -ENOENT)
                    SHMLINK_CAS(&t->slot[i], &cur, UINT64_C(0));
            }
        }
    }
    return -ENOSPC;
}

/* Unregister doorbell id (every slot holding it). */
static inline void shmlink_bells_release(struct shmlink_bells *t, uint64_t id) {
    for (unsigned i = 0; i < SHMLINK_BELL_SLOTS; i++) {
        uint64_t cur = id;
        SHMLINK_CAS(&t->slot[i], &cur, UINT64_C(0));
    }
}

/* ---- the waiter's side: one doorbell ----------------------------------- */

struct shmlink_bell {
    int fd;      /* readable when rung; -1 when closed */
    uint64_t id; /* (pid << 32) | 32 random bits, never 0 */
};

/* Make a doorbell: 0, or -errno (e.g. -EMFILE). */
static inline int shmlink_bell_open(struct shmlink_bell *b) {
    uint64_t pid = shmlink_os_getpid();
    for (int tries = 0; tries < 16; tries++) {
        uint64_t id = pid << 32 | shmlink_os_random32();
        if (id == 0)
            continue;
        int fd = shmlink_os_bell_bind(id);
        if (fd >= 0) {
            b->fd = fd;
            b->id = id;
            return 0;
        }
        if (fd != -EADDRINUSE)
            return fd;
    }
    return -EADDRINUSE;
}

/* Empty the doorbell (before arming again).  Returns how many rings. */
static inline int shmlink_bell_drain(const struct shmlink_bell *b) {
    return shmlink_os_bell_drain(b->fd);
}

/* Make one's own doorbell readable (the re-check found the condition true
 * and the descriptor must say so). */
static inline int shmlink_bell_ring_self(const struct shmlink_bell *b) {
    int rc = shmlink_os_bell_send(b->id);
    return rc == -EAGAIN ? 0 : rc;
}

static inline void shmlink_bell_close(struct shmlink_bell *b) {
    if (b->fd >= 0)
        shmlink_os_close(b->fd);
    b->fd = -1;
}

SHMLINK_END_DECLS

#endif /* SHMLINK_DOORBELL_H */
