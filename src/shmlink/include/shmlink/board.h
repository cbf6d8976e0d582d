/*
 * shmlink/board.h -- the board of shmlink.Board: a shared latest value,
 * double-buffered; read without locks, written under a robust lock,
 * watched through the armed event count.  Python's Board calls these same
 * functions through its binding.
 *
 * Write (shmlink_board_write_unlock, holding `lock`): version v = published
 * + 1 lives in slot v % 2, the slot nobody points to.  Its seq goes to
 * 2v - 1 (odd: being written), the length and bytes are copied, seq goes to
 * 2v (release), then `version` is published (release), the lock released,
 * and `changed` notified -- a futex wake only if a waiter armed it.
 *
 * Read (shmlink_board_try_read): load version v, check its slot's seq is
 * 2v, copy, fence, re-read seq: unchanged means the copy is whole.
 * Readers never take the lock, so a writer killed mid-write never blocks
 * them (it only spoiled the unpublished slot; the next writer takes its
 * lock over and writes that slot again).  A reader overtaken `tries` times
 * (writers came round to its slot twice during each copy) reads under the
 * lock instead (shmlink_board_read_unlock), so a read always finishes.
 *
 * Wait for change (shmlink_board_wait_change): shmlink/wait.h's discipline
 * on `changed` with the attempt "version != since".  No sleeper is
 * counted: a waiter killed asleep costs the next write one futex wake,
 * then nothing.  `wakes` counts the futex wakes writers made.
 *
 * Every constant (capacity, slot offsets) is loaded once at attach,
 * checked against the mapping, and kept in the handle; every length read
 * later is checked against the recorded capacity.
 *
 * Layout history: version 1 counted sleepers in `change`/`waiters`;
 * version 2 arms an event count in their place; version 3 (this) adds line
 * 3, the doorbell table (doorbell.h) rung with `changed`.  Each side refuses
 * the other (-EPROTO here, IncompatibleSegment in Python).
 *
 * Return codes: lengths and 0 as documented; -EAGAIN (try forms)
 * overtaken by writers / no change; -EMSGSIZE a value larger than the
 * buffer or the board; -ETIMEDOUT; -EINTR; -ECANCELED (the caller's cancel
 * word); -EPROTO not a board of this version; -EBADMSG corrupt.
 */
#ifndef SHMLINK_BOARD_H
#define SHMLINK_BOARD_H

#include "atomic.h"
#include "doorbell.h"
#include "eventcount.h"
#include "lock.h"
#include "segment.h"
#include "wait.h"

#include <errno.h>
#include <string.h>

SHMLINK_BEGIN_DECLS

#define SHMLINK_BOARD_MAGIC 0x44524F42u /* "BORD" */
#define SHMLINK_BOARD_VERSION 3u /* also the segment header's kind_version */
#define SHMLINK_BOARD_SLOT_HEADER 64u
#define SHMLINK_BOARD_MAX_CAPACITY ((uint64_t)1 << 44)
/* Lock-free read attempts before shmlink_board_read reads under the lock. */
#ifndef SHMLINK_BOARD_READ_TRIES
#define SHMLINK_BOARD_READ_TRIES 32
#endif

struct shmlink_board {
    /* line 0: constants, written before the segment is ready */
    uint32_t magic;
    uint32_t layout_version;
    uint64_t capacity;     /* largest value, bytes */
    uint64_t slot0_offset; /* from the start of this struct */
    uint64_t slot_stride;
    uint8_t pad0[SHMLINK_CACHE_LINE - 32];
    /* line 1: writers (under lock) */
    struct shmlink_lock lock;
    uint64_t takeovers;       /* writes/locked reads that took the lock from a dead holder */
    uint32_t last_writer_pid;
    uint32_t pad1a;
    uint8_t pad1[SHMLINK_CACHE_LINE - 32];
    /* line 2: published */
    uint64_t version;                  /* SYNC: released by writers, acquired by readers */
    struct shmlink_eventcount changed; /* armed by waiters, notified by writers */
    uint64_t wakes;                    /* writes that made a futex wake system call */
    uint8_t pad2[SHMLINK_CACHE_LINE - 24];
    /* line 3: fd-waiters for changes (doorbell.h), rung with `changed` */
    struct shmlink_bells bells;
    uint8_t pad3[SHMLINK_CACHE_LINE - 56];
};
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_board) == 4 * SHMLINK_CACHE_LINE,
                      "board control block is four cache lines, slots follow");
SHMLINK_STATIC_ASSERT(offsetof(struct shmlink_board, lock) == 64 &&
                          offsetof(struct shmlink_board, takeovers) == 80 &&
                          offsetof(struct shmlink_board, last_writer_pid) == 88 &&
                          offsetof(struct shmlink_board, version) == 128 &&
                          offsetof(struct shmlink_board, changed) == 136 &&
                          offsetof(struct shmlink_board, wakes) == 144,
                      "the offsets _core exports to shmlink/board.py");

struct shmlink_board_slot {
    uint64_t seq;    /* 2v - 1 while version v is written, 2v when complete */
    uint64_t length; /* bytes of the value */
    uint8_t pad[SHMLINK_BOARD_SLOT_HEADER - 16];
    /* the value follows */
};
#define SHMLINK_BOARD_SLOT0 ((uint64_t)sizeof(struct shmlink_board))

/* One slot: its header, then the capacity rounded up to 64 bytes. */
static inline uint64_t shmlink_board_stride(uint64_t capacity) {
    return SHMLINK_BOARD_SLOT_HEADER + ((capacity + 63u) & ~(uint64_t)63u);
}

/* Data-area bytes a board of this capacity needs (capacity <=
 * SHMLINK_BOARD_MAX_CAPACITY, so nothing overflows). */
static inline uint64_t shmlink_board_footprint(uint64_t capacity) {
    return SHMLINK_BOARD_SLOT0 + 2 * shmlink_board_stride(capacity);
}

/* Lay out a new, empty board in `data` (size bytes, zero-filled) before the
 * segment is ready; a shmlink_segment_init_fn with arg pointing to the
 * uint64_t capacity.  Version 0 is slot 0 with seq 0 and length 0: a
 * complete empty value.  0 or -EINVAL. */
static inline int shmlink_board_init(void *arg, uint8_t *data, uint64_t size) {
    uint64_t capacity = *(const uint64_t *)arg;
    if (capacity < 1 || capacity > SHMLINK_BOARD_MAX_CAPACITY ||
        shmlink_board_footprint(capacity) > size)
        return -EINVAL;
    struct shmlink_board *b = (struct shmlink_board *)data;
    /* nobody sees the segment yet: published by its ready store */
    b->layout_version = SHMLINK_BOARD_VERSION;
    b->capacity = capacity;
    b->slot0_offset = SHMLINK_BOARD_SLOT0;
    b->slot_stride = shmlink_board_stride(capacity);
    b->magic = SHMLINK_BOARD_MAGIC;
    return 0;
}

/* What a handle records at attach and never re-reads. */
struct shmlink_board_handle {
    struct shmlink_board *b;
    uint8_t *slot[2];
    uint64_t capacity;
};

/* Attach to the board block at `mem` (size bytes).  Every constant is
 * loaded once and checked.  0; -EPROTO: not a board, or another layout
 * version; -EBADMSG: constants that do not fit the mapping. */
static inline int shmlink_board_attach(struct shmlink_board_handle *h, void *mem,
                                       uint64_t size) {
    struct shmlink_board *b = (struct shmlink_board *)mem;
    if (size < SHMLINK_BOARD_SLOT0)
        return -EBADMSG;
    /* SYNC: the block is published by the segment's ready store, acquired
     * when the segment was opened; these loads need no more. */
    if (SHMLINK_LOAD_RELAXED(&b->magic) != SHMLINK_BOARD_MAGIC)
        return -EBADMSG;
    if (SHMLINK_LOAD_RELAXED(&b->layout_version) != SHMLINK_BOARD_VERSION)
        return -EPROTO;
    uint64_t capacity = SHMLINK_LOAD_RELAXED(&b->capacity);
    uint64_t slot0 = SHMLINK_LOAD_RELAXED(&b->slot0_offset);
    uint64_t stride = SHMLINK_LOAD_RELAXED(&b->slot_stride);
    if (capacity < 1 || capacity > SHMLINK_BOARD_MAX_CAPACITY || slot0 != SHMLINK_BOARD_SLOT0 ||
        stride != shmlink_board_stride(capacity) || shmlink_board_footprint(capacity) > size)
        return -EBADMSG;
    h->b = b;
    h->slot[0] = (uint8_t *)mem + slot0;
    h->slot[1] = (uint8_t *)mem + slot0 + stride;
    h->capacity = capacity;
    return 0;
}

/* Open the named board.  0, what shmlink_segment_open returns, -EPROTO or
 * -EBADMSG. */
static inline int shmlink_board_open(struct shmlink_segment *seg,
                                     struct shmlink_board_handle *h, const char *name) {
    int rc = shmlink_segment_open(seg, name);
    if (rc != 0)
        return rc;
    if (seg->kind != SHMLINK_KIND_BOARD)
        rc = -EPROTO;
    else
        rc = shmlink_board_attach(h, seg->data, seg->size);
    if (rc != 0)
        shmlink_segment_close(seg);
    return rc;
}

/* Create the named board (flags: SHMLINK_FLAG_UNLINK_ON_LAST_CLOSE for
 * lifetime "auto").  As shmlink_segment_create, then attached. */
static inline int shmlink_board_create(struct shmlink_segment *seg,
                                       struct shmlink_board_handle *h, const char *name,
                                       uint64_t capacity, uint32_t mode, uint32_t flags) {
    if (capacity < 1 || capacity > SHMLINK_BOARD_MAX_CAPACITY)
        return -EINVAL;
    int rc = shmlink_segment_create(seg, name, SHMLINK_KIND_BOARD, SHMLINK_BOARD_VERSION,
                                    shmlink_board_footprint(capacity), mode, flags,
                                    shmlink_board_init, &capacity);
    if (rc != 0)
        return rc;
    return shmlink_board_attach(h, seg->data, seg->size);
}

static inline struct shmlink_board_slot *shmlink_board_slot_of(
    const struct shmlink_board_handle *h, uint64_t v) {
    return (struct shmlink_board_slot *)h->slot[v & 1u];
}

/* Read the current value into buf (cap bytes) without locking; buf NULL:
 * only its length.  Returns the length, with *version_out set; -EMSGSIZE
 * when cap is too small (*version_out and the needed length *need set:
 * call again with a larger buffer); -EBADMSG when the board is corrupt;
 * -EAGAIN when writers kept overwriting the slot for `tries` attempts
 * (call again, or read under the lock). */
static inline int64_t shmlink_board_try_read(const struct shmlink_board_handle *h, void *buf,
                                             uint64_t cap, uint64_t *version_out,
                                             uint64_t *need, int tries) {
    struct shmlink_board *b = h->b;
    for (int t = 0; t < tries; t++) {
        if (t >= 4)
            shmlink_os_yield(); /* let the writer that keeps overtaking us finish */
        /* SYNC: acquire; pairs with the writer's release of version. */
        uint64_t v = SHMLINK_LOAD_ACQUIRE(&b->version);
        const struct shmlink_board_slot *sl = shmlink_board_slot_of(h, v);
        /* SYNC: acquire; pairs with the writer's release of seq = 2v. */
        uint64_t seq = SHMLINK_LOAD_ACQUIRE(&sl->seq);
        if (seq != 2 * v) {
            /* Nobody published since we looked, so nobody may have
             * touched this slot: a mismatch now is damage, not a race. */
            if (SHMLINK_LOAD_ACQUIRE(&b->version) == v)
                return -EBADMSG;
            continue; /* a writer came round to this slot: try again */
        }
        uint64_t len = SHMLINK_LOAD_RELAXED(&sl->length); /* loaded once */
        int fits = len <= h->capacity;
        if (fits && buf && len <= cap)
            memcpy(buf, (const uint8_t *)sl + SHMLINK_BOARD_SLOT_HEADER, (size_t)len);
        /* SYNC: the copy happens before the re-check; pairs with the
         * writer's release fence after it marked the slot 2v - 1. */
        SHMLINK_FENCE_ACQUIRE();
        if (SHMLINK_LOAD_RELAXED(&sl->seq) != seq)
            continue; /* a writer started on this slot during the copy */
        if (!fits)
            return -EBADMSG;
        if (version_out)
            *version_out = v;
        if (buf && len > cap) {
            if (need)
                *need = len;
            return -EMSGSIZE;
        }
        return (int64_t)len;
    }
    return -EAGAIN;
}

/* Read holding `lock` (taken by the caller; taken_over: from a writer that
 * died), then release it.  No writer runs meanwhile, so the published slot
 * is whole.  As shmlink_board_try_read, never -EAGAIN. */
static inline int64_t shmlink_board_read_unlock(const struct shmlink_board_handle *h, void *buf,
                                                uint64_t cap, uint64_t *version_out,
                                                uint64_t *need, int taken_over) {
    struct shmlink_board *b = h->b;
    int64_t rc;
    if (taken_over)
        SHMLINK_FETCH_ADD(&b->takeovers, 1);
    uint64_t v = SHMLINK_LOAD_ACQUIRE(&b->version);
    const struct shmlink_board_slot *sl = shmlink_board_slot_of(h, v);
    uint64_t seq = SHMLINK_LOAD_ACQUIRE(&sl->seq);
    uint64_t len = SHMLINK_LOAD_RELAXED(&sl->length);
    if (seq != 2 * v || len > h->capacity) {
        rc = -EBADMSG;
    } else {
        if (version_out)
            *version_out = v;
        if (buf && len > cap) {
            if (need)
                *need = len;
            rc = -EMSGSIZE;
        } else {
            if (buf)
                memcpy(buf, (const uint8_t *)sl + SHMLINK_BOARD_SLOT_HEADER, (size_t)len);
            rc = (int64_t)len;
        }
    }
    shmlink_lock_release(&b->lock);
    return rc;
}

/* Read, never torn: SHMLINK_BOARD_READ_TRIES lock-free attempts, then under
 * the lock (waiting for it until the absolute deadline, NULL = forever;
 * taking it over from a writer that died).  As shmlink_board_try_read,
 * plus -ETIMEDOUT and -EINTR; never -EAGAIN. */
static inline int64_t shmlink_board_read(const struct shmlink_board_handle *h, void *buf,
                                         uint64_t cap, uint64_t *version_out, uint64_t *need,
                                         uint32_t pid, uint64_t start,
                                         const struct timespec *deadline) {
    int64_t rc = shmlink_board_try_read(h, buf, cap, version_out, need,
                                        SHMLINK_BOARD_READ_TRIES);
    if (rc != -EAGAIN)
        return rc;
    int lk = shmlink_lock_acquire(&h->b->lock, pid, start, deadline);
    if (lk < 0)
        return lk;
    return shmlink_board_read_unlock(h, buf, cap, version_out, need, lk == 1);
}

/* Write a new value holding `lock` (taken by the caller; taken_over: from
 * a writer that died mid-write -- it only touched the slot this write
 * overwrites), publish it, release the lock, and wake the waiters if one
 * is armed.  0 with *version_out set to the new version, or -EMSGSIZE
 * (len > capacity: nothing written, the lock released). */
static inline int shmlink_board_write_unlock(const struct shmlink_board_handle *h,
                                             const void *data, uint64_t len, uint32_t pid,
                                             int taken_over, uint64_t *version_out) {
    struct shmlink_board *b = h->b;
    if (len > h->capacity) {
        shmlink_lock_release(&b->lock);
        return -EMSGSIZE;
    }
    if (taken_over)
        SHMLINK_FETCH_ADD(&b->takeovers, 1);
    /* relaxed: only lock holders write it, and the lock orders them */
    uint64_t v = SHMLINK_LOAD_RELAXED(&b->version) + 1;
    struct shmlink_board_slot *sl = shmlink_board_slot_of(h, v);
    SHMLINK_STORE_RELAXED(&sl->seq, 2 * v - 1); /* odd: being written */
    /* SYNC: release fence; pairs with the readers' acquire fence before
     * their re-check: a reader that copied any byte written below sees
     * the odd seq (or a later one) and retries. */
    SHMLINK_FENCE_RELEASE();
    SHMLINK_STORE_RELAXED(&sl->length, len);
    memcpy((uint8_t *)sl + SHMLINK_BOARD_SLOT_HEADER, data, (size_t)len);
    /* SYNC: release; pairs with the readers' acquire of the slot's seq. */
    SHMLINK_STORE_RELEASE(&sl->seq, 2 * v);
    /* SYNC: seq_cst (a release, and ordered before the notify's load of
     * the armed bit); pairs with the readers' and waiters' acquire of
     * version. */
    SHMLINK_STORE_SEQ_CST(&b->version, v);
    SHMLINK_STORE_RELAXED(&b->last_writer_pid, pid);
    shmlink_lock_release(&b->lock);
    if (shmlink_ec_notify_bells(&b->changed, &b->bells))
        SHMLINK_FETCH_ADD(&b->wakes, 1);
    if (version_out)
        *version_out = v;
    return 0;
}

/* Write a new value: take the writers' lock (waiting until the absolute
 * deadline, NULL = forever; taking it over from a writer that died), then
 * shmlink_board_write_unlock.  0 (*version_out set), -EMSGSIZE,
 * -ETIMEDOUT or -EINTR. */
static inline int shmlink_board_write(const struct shmlink_board_handle *h, const void *data,
                                      uint64_t len, uint32_t pid, uint64_t start,
                                      const struct timespec *deadline, uint64_t *version_out) {
    if (len > h->capacity)
        return -EMSGSIZE;
    int lk = shmlink_lock_acquire(&h->b->lock, pid, start, deadline);
    if (lk < 0)
        return lk;
    return shmlink_board_write_unlock(h, data, len, pid, lk == 1, version_out);
}

/* The published version now. */
static inline uint64_t shmlink_board_version(const struct shmlink_board_handle *h) {
    /* SYNC: acquire; pairs with the writer's release of version. */
    return SHMLINK_LOAD_ACQUIRE(&h->b->version);
}

/* The attempt a wait for change hands to shmlink_wait_until.  `cancel`, when
 * not NULL, is a word another thread sets (then futex-wakes changed.seq) to
 * make the wait return -ECANCELED: when a binding closes its handle. */
struct shmlink_board_wait_op {
    const struct shmlink_board_handle *h;
    uint64_t since;
    uint64_t *version_out;
    const int *cancel;
};

static inline int64_t shmlink_board_wait_attempt(void *arg, int slice_expired) {
    const struct shmlink_board_wait_op *op = (const struct shmlink_board_wait_op *)arg;
    (void)slice_expired;
    if (op->cancel && SHMLINK_LOAD_RELAXED(op->cancel))
        return -ECANCELED;
    uint64_t v = shmlink_board_version(op->h);
    if (v == op->since)
        return -EAGAIN;
    if (op->version_out)
        *op->version_out = v;
    return 0;
}

/* Wait until the version differs from `since` (*version_out: the version
 * then), spinning spin_ns, then sleeping on the armed event count in slices
 * of at most slice_s seconds (a writer killed between publishing and
 * notifying costs a waiter one slice), until the absolute deadline (NULL =
 * forever).  0, -ETIMEDOUT, -EINTR or -ECANCELED. */
static inline int shmlink_board_wait_change_cancellable(
    const struct shmlink_board_handle *h, uint64_t since, uint64_t *version_out,
    uint64_t spin_ns, double slice_s, const struct timespec *deadline, const int *cancel) {
    struct shmlink_board_wait_op op = {h, since, version_out, cancel};
    return (int)shmlink_wait_until(&h->b->changed, shmlink_board_wait_attempt, &op, spin_ns,
                                   slice_s, deadline);
}

static inline int shmlink_board_wait_change(const struct shmlink_board_handle *h,
                                            uint64_t since, uint64_t *version_out,
                                            const struct timespec *deadline) {
    return shmlink_board_wait_change_cancellable(h, since, version_out, 0,
                                                 SHMLINK_WAIT_SLICE_S, deadline, NULL);
}

SHMLINK_END_DECLS

#endif /* SHMLINK_BOARD_H */
