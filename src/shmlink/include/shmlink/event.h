/*
 * shmlink/event.h -- the named event of shmlink.Event, from C.
 *
 * A segment of kind SHMLINK_KIND_EVENT (header kind_version
 * SHMLINK_EVENT_VERSION) whose data area starts with struct shmlink_event:
 * a state word (0 clear, 1 set) and the armed event count of
 * shmlink/eventcount.h.  Python's Event calls these same functions through
 * its binding, so C and Python processes set, wait on and consume the same
 * event by the same rules.
 *
 *   set:   state = 1 (seq_cst), then notify the event count: a futex wake
 *          only if a waiter armed it since the last notify;
 *   wait:  the discipline of shmlink/wait.h on the event count, with the
 *          attempt "is it set?" -- for an auto-reset event "CAS state
 *          1 -> 0", so each set is consumed by exactly one waiter and a
 *          set can never be lost between a read and a reset.
 *
 * No sleeper is counted: a waiter killed asleep leaves at most the armed
 * bit, which the next set() clears with one futex wake; later sets make
 * no system call until someone waits again.  `wakes` counts the futex
 * wakes set() made, so tests (and `shmlink info`) can see that cost.
 *
 * Layout history: version 1 (recorded as kind_version 0) counted sleepers
 * in the word after the sequence; version 2 arms the event count instead;
 * version 3 adds a second line with the doorbell table (doorbell.h) that
 * set() rings with the event count.
 * The two cannot share an event: opening a version-1 event is -EPROTO
 * here and IncompatibleSegment in Python.
 *
 * Return codes: 0 set / consumed / done; -EAGAIN (try_wait) not set;
 * -ETIMEDOUT; -EINTR (a signal: handle it, call again with the same
 * deadline); -ECANCELED (the caller's cancel word was set); -EPROTO not an
 * event, or another layout version; -EBADMSG a control block too small.
 */
#ifndef SHMLINK_EVENT_H
#define SHMLINK_EVENT_H

#include "atomic.h"
#include "doorbell.h"
#include "eventcount.h"
#include "segment.h"
#include "wait.h"

SHMLINK_BEGIN_DECLS

#define SHMLINK_EVENT_VERSION 3u /* the segment header's kind_version */
#define SHMLINK_EVENT_SIZE 128u

/* The data area of an event segment. */
struct shmlink_event {
    uint32_t state;                /*  0 0 clear, 1 set. SYNC: see set/try_wait */
    uint32_t auto_reset;           /*  4 1: a returning wait consumes the set (constant;
                                          any other value: manual reset) */
    struct shmlink_eventcount ec;  /*  8 armed by waiters, notified by set() */
    uint64_t sets;                 /* 16 set() calls, by anyone */
    uint64_t wakes;                /* 24 set() calls that made a futex wake system call */
    uint8_t pad[SHMLINK_CACHE_LINE - 32];
    struct shmlink_bells bells;    /* 64 fd-waiters (doorbell.h), rung with ec */
    uint8_t pad1[SHMLINK_CACHE_LINE - 56];
};
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_event) == SHMLINK_EVENT_SIZE,
                      "an event control block is two cache lines");
SHMLINK_STATIC_ASSERT(offsetof(struct shmlink_event, auto_reset) == 4 &&
                          offsetof(struct shmlink_event, ec) == 8 &&
                          offsetof(struct shmlink_event, sets) == 16 &&
                          offsetof(struct shmlink_event, wakes) == 24 &&
                          offsetof(struct shmlink_event, bells) == 64,
                      "the offsets _core exports to shmlink/sync.py");

/* What a handle records at attach and never re-reads. */
struct shmlink_event_handle {
    struct shmlink_event *e;
    uint32_t auto_reset;
};

/* Lay out a new event (a shmlink_segment_init_fn: arg points to a uint32_t
 * auto_reset flag).  0 or -EINVAL. */
static inline int shmlink_event_init(void *arg, uint8_t *data, uint64_t size) {
    if (size < SHMLINK_EVENT_SIZE)
        return -EINVAL;
    struct shmlink_event *e = (struct shmlink_event *)data;
    memset(e, 0, sizeof *e);
    /* published with the segment (its ready store) */
    e->auto_reset = (arg && *(const uint32_t *)arg) ? 1u : 0u;
    return 0;
}

/* Attach to the event block at `data` (size bytes) of a segment whose
 * header says kind_version.  0, -EPROTO or -EBADMSG. */
static inline int shmlink_event_attach(struct shmlink_event_handle *h, void *data,
                                       uint64_t size, uint32_t kind_version) {
    if (kind_version != SHMLINK_EVENT_VERSION)
        return -EPROTO;
    if (size < SHMLINK_EVENT_SIZE)
        return -EBADMSG;
    struct shmlink_event *e = (struct shmlink_event *)data;
    h->e = e;
    /* loaded once; any value but 1 means manual reset */
    h->auto_reset = SHMLINK_LOAD_RELAXED(&e->auto_reset) == 1u;
    return 0;
}

/* Open the named event.  0, what shmlink_segment_open returns, -EPROTO
 * (not an event, or another layout version) or -EBADMSG. */
static inline int shmlink_event_open(struct shmlink_segment *seg,
                                     struct shmlink_event_handle *h, const char *name) {
    int rc = shmlink_segment_open(seg, name);
    if (rc != 0)
        return rc;
    if (seg->kind != SHMLINK_KIND_EVENT)
        rc = -EPROTO;
    else
        rc = shmlink_event_attach(
            h, seg->data, seg->size,
            SHMLINK_LOAD_RELAXED(&((struct shmlink_header *)seg->base)->kind_version));
    if (rc != 0)
        shmlink_segment_close(seg);
    return rc;
}

/* Create the named event (flags: SHMLINK_FLAG_UNLINK_ON_LAST_CLOSE for
 * lifetime "auto").  As shmlink_segment_create, then attached. */
static inline int shmlink_event_create(struct shmlink_segment *seg,
                                       struct shmlink_event_handle *h, const char *name,
                                       int auto_reset, uint32_t mode, uint32_t flags) {
    uint32_t ar = auto_reset ? 1u : 0u;
    int rc = shmlink_segment_create(seg, name, SHMLINK_KIND_EVENT, SHMLINK_EVENT_VERSION,
                                    SHMLINK_EVENT_SIZE, mode, flags, shmlink_event_init, &ar);
    if (rc != 0)
        return rc;
    return shmlink_event_attach(h, seg->data, seg->size, SHMLINK_EVENT_VERSION);
}

/* Set the event and wake its waiters (all of them: for an auto-reset
 * event one consumes the set and the others sleep again -- waking only one
 * could pick a waiter that dies before it consumes).  Returns 1 when it
 * made a futex wake system call, else 0. */
static inline int shmlink_event_set(const struct shmlink_event_handle *h) {
    struct shmlink_event *e = h->e;
    /* SYNC: seq_cst; pairs with the acquire load / CAS of state in
     * shmlink_event_try_wait (what the setter wrote before set() is
     * visible to whoever sees 1), and with the waiters' arming through
     * shmlink_ec_notify's fence. */
    SHMLINK_STORE_SEQ_CST(&e->state, 1u);
    SHMLINK_FETCH_ADD(&e->sets, 1); /* statistics */
    int woke = shmlink_ec_notify_bells(&e->ec, &e->bells);
    if (woke)
        SHMLINK_FETCH_ADD(&e->wakes, 1);
    return woke;
}

/* Reset the event (no one is woken). */
static inline void shmlink_event_clear(const struct shmlink_event_handle *h) {
    /* SYNC: release; a later set() is ordered after it by the state word. */
    SHMLINK_STORE_SEQ_CST(&h->e->state, 0u);
}

/* 1 if the event is set now, else 0 (consumes nothing). */
static inline int shmlink_event_is_set(const struct shmlink_event_handle *h) {
    /* SYNC: acquire; pairs with the store in shmlink_event_set. */
    return SHMLINK_LOAD_ACQUIRE(&h->e->state) == 1u;
}

/* Without waiting: 0 if the event is set -- and, for an auto-reset event,
 * this caller consumed it (state 1 -> 0 in one CAS: of several callers
 * exactly one wins each set) -- or -EAGAIN. */
static inline int shmlink_event_try_wait(const struct shmlink_event_handle *h) {
    struct shmlink_event *e = h->e;
    if (h->auto_reset) {
        uint32_t expected = 1u;
        /* SYNC: the CAS acquires; pairs with the store in shmlink_event_set. */
        return SHMLINK_CAS(&e->state, &expected, 0u) ? 0 : -EAGAIN;
    }
    /* SYNC: acquire; pairs with the store in shmlink_event_set. */
    return SHMLINK_LOAD_ACQUIRE(&e->state) == 1u ? 0 : -EAGAIN;
}

/* The attempt a blocking wait hands to shmlink_wait_until.  `cancel`, when
 * not NULL, is a word another thread sets (then futex-wakes ec.seq) to make
 * the wait return -ECANCELED: when a binding closes its handle. */
struct shmlink_event_op {
    const struct shmlink_event_handle *h;
    const int *cancel;
};

static inline int64_t shmlink_event_wait_attempt(void *arg, int slice_expired) {
    const struct shmlink_event_op *op = (const struct shmlink_event_op *)arg;
    (void)slice_expired;
    if (op->cancel && SHMLINK_LOAD_RELAXED(op->cancel))
        return -ECANCELED;
    return shmlink_event_try_wait(op->h);
}

/* Wait until the event is set (consuming it, for auto-reset), spinning
 * spin_ns first, then sleeping on the armed event count in slices of at
 * most slice_s seconds, until the absolute deadline (NULL = forever).
 * 0, -ETIMEDOUT, -EINTR or -ECANCELED. */
static inline int shmlink_event_wait_cancellable(const struct shmlink_event_handle *h,
                                                 uint64_t spin_ns, double slice_s,
                                                 const struct timespec *deadline,
                                                 const int *cancel) {
    struct shmlink_event_op op = {h, cancel};
    return (int)shmlink_wait_until(&h->e->ec, shmlink_event_wait_attempt, &op, spin_ns,
                                   slice_s, deadline);
}

/* Wait until the event is set: 0, -ETIMEDOUT or -EINTR. */
static inline int shmlink_event_wait(const struct shmlink_event_handle *h,
                                     const struct timespec *deadline) {
    return shmlink_event_wait_cancellable(h, 0, SHMLINK_WAIT_SLICE_S, deadline, NULL);
}

/* Counters (relaxed snapshots). */
static inline uint64_t shmlink_event_sets(const struct shmlink_event_handle *h) {
    return SHMLINK_LOAD_RELAXED(&h->e->sets);
}
static inline uint64_t shmlink_event_wakes(const struct shmlink_event_handle *h) {
    return SHMLINK_LOAD_RELAXED(&h->e->wakes);
}
/* 1 while a waiter has armed the event count and no set() has notified it
 * since (a waiter sleeps now, or one was killed asleep). */
static inline int shmlink_event_armed(const struct shmlink_event_handle *h) {
    return (int)(SHMLINK_LOAD_RELAXED(&h->e->ec.seq) & 1u);
}

SHMLINK_END_DECLS

#endif /* SHMLINK_EVENT_H */
