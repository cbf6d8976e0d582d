/*
 * shmlink/ring.h -- the message ring of shmlink.Queue: lossless,
 * variable-length, many producers and many consumers.
 *
 * Producers serialise on prod_lock, consumers on cons_lock (both robust,
 * shmlink/lock.h).  head and tail are monotonically increasing byte
 * positions; the byte at position p lives at data[p % capacity].  A record
 * is an 8-byte header (length, check) followed by the payload padded to 8
 * bytes.  A record never wraps: a producer that lacks contiguous room
 * commits a WRAP marker that fills the rest of the ring, then writes at
 * position 0.
 *
 * Crash safety: a producer publishes a record by one release store of tail;
 * killed before it, the record never existed.  A consumer consumes by one
 * release store of head; killed before it, the record stays for others.  A
 * lock whose holder died is taken over by the next waiter; nothing needs
 * repair.
 *
 * Return codes of the send/receive functions:
 *   0 / length  done
 *   -EAGAIN     would block: the ring is full (send) or empty (receive)
 *   -EBUSY      try_ forms only: another live producer (consumer) holds the
 *               lock; the blocking forms wait for the lock instead
 *   -ETIMEDOUT  the deadline passed (blocking forms)
 *   -EINTR      a signal interrupted a sleep (blocking forms): handle it,
 *               call again with the same deadline
 *   -EMSGSIZE   the message is larger than max_message (send) or than the
 *               caller's buffer (receive: the message stays queued)
 *   -EPROTO     not a ring, or another layout version (attach)
 *   -EBADMSG    the ring in shared memory is corrupt
 */
#ifndef SHMLINK_RING_H
#define SHMLINK_RING_H

#include "atomic.h"
#include "doorbell.h"
#include "eventcount.h"
#include "lock.h"
#include "wait.h"

SHMLINK_BEGIN_DECLS

#define SHMLINK_RING_MAGIC 0x474e4952u /* "RING" */
#define SHMLINK_RING_VERSION 3u /* 2: armed event counts; 3: doorbell tables */
#define SHMLINK_RECORD_HEADER 8u
#define SHMLINK_RECORD_WRAP 0xFFFFFFFFu /* length field of a wrap marker */
#define SHMLINK_RECORD_CHECK 0x5A17C0DEu /* check = length ^ this */
/* Lengths are 32-bit and WRAP is reserved: the largest payload a ring
 * record can say it holds, whatever the capacity. */
#define SHMLINK_RING_MAX_MESSAGE 0xFFFFFFF8u

struct shmlink_ring {
    /* line 0: constants, written by the creator before the segment is ready */
    uint32_t magic;
    uint32_t version;
    uint64_t capacity;    /* bytes in the data area, multiple of 8, >= 64 */
    uint64_t max_message; /* largest payload; <= capacity - 8, <= SHMLINK_RING_MAX_MESSAGE */
    uint64_t data_offset; /* from the start of this struct */
    uint8_t pad0[SHMLINK_CACHE_LINE - 32];
    /* line 1: written by producers (under prod_lock) */
    struct shmlink_lock prod_lock;
    uint64_t tail;  /* SYNC: released by producers, acquired by consumers */
    uint64_t sent;  /* messages committed */
    uint8_t pad1[SHMLINK_CACHE_LINE - 32];
    /* line 2: written by consumers (under cons_lock) */
    struct shmlink_lock cons_lock;
    uint64_t head;  /* SYNC: released by consumers, acquired by producers */
    uint64_t received;
    uint8_t pad2[SHMLINK_CACHE_LINE - 32];
    /* line 3: producers notify consumers here */
    struct shmlink_eventcount data_ec;
    struct shmlink_bells data_bells;  /* fd-waiters for data (doorbell.h) */
    /* line 4: consumers notify producers here */
    struct shmlink_eventcount space_ec;
    struct shmlink_bells space_bells; /* fd-waiters for room */
};
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_ring) == 5 * SHMLINK_CACHE_LINE,
                      "ring control block is five cache lines");
SHMLINK_STATIC_ASSERT(offsetof(struct shmlink_ring, prod_lock) % 64 == 0 &&
                          offsetof(struct shmlink_ring, cons_lock) % 64 == 0,
                      "producer and consumer words on separate cache lines");
SHMLINK_STATIC_ASSERT(offsetof(struct shmlink_ring, tail) == 80 &&
                          offsetof(struct shmlink_ring, head) == 144 &&
                          offsetof(struct shmlink_ring, data_ec) == 192 &&
                          offsetof(struct shmlink_ring, space_ec) == 256,
                      "the wire layout Python peers use");
#define SHMLINK_RING_DATA_OFFSET ((uint64_t)sizeof(struct shmlink_ring))

static inline uint64_t shmlink_ring_record_size(uint64_t len) {
    return SHMLINK_RECORD_HEADER + ((len + 7u) & ~(uint64_t)7u);
}

/* Bytes a ring of the given capacity needs, control block included. */
static inline uint64_t shmlink_ring_footprint(uint64_t capacity) {
    return SHMLINK_RING_DATA_OFFSET + capacity;
}

/* Initialise a ring in `mem` (size bytes), before the segment is ready.
 * max_message 0 means "as large as the ring allows"; any value is clamped
 * to capacity - 8 and to SHMLINK_RING_MAX_MESSAGE (a record's length is 32
 * bits).  0 or -EINVAL. */
static inline int shmlink_ring_init(void *mem, uint64_t size,
                                    uint64_t max_message) {
    struct shmlink_ring *r = (struct shmlink_ring *)mem;
    if (size < SHMLINK_RING_DATA_OFFSET + 64)
        return -EINVAL;
    uint64_t capacity = (size - SHMLINK_RING_DATA_OFFSET) & ~(uint64_t)7u;
    if (max_message == 0 || max_message > capacity - SHMLINK_RECORD_HEADER)
        max_message = capacity - SHMLINK_RECORD_HEADER;
    if (max_message > SHMLINK_RING_MAX_MESSAGE)
        max_message = SHMLINK_RING_MAX_MESSAGE;
    memset(r, 0, sizeof *r);
    r->version = SHMLINK_RING_VERSION;
    r->capacity = capacity;
    r->max_message = max_message;
    r->data_offset = SHMLINK_RING_DATA_OFFSET;
    /* SYNC: pairs with the acquire of magic in shmlink_ring_attach. */
    SHMLINK_STORE_RELEASE(&r->magic, SHMLINK_RING_MAGIC);
    return 0;
}

/* The constants a handle records at open, checked once against the mapping
 * and never re-read from shared memory afterwards. */
struct shmlink_ring_handle {
    struct shmlink_ring *ring;
    uint8_t *data;
    uint64_t capacity;
    uint64_t max_message;
};

/* 0; -EPROTO: not a ring or another version; -EBADMSG: inconsistent. */
static inline int shmlink_ring_attach(struct shmlink_ring_handle *h, void *mem,
                                      uint64_t size) {
    struct shmlink_ring *r = (struct shmlink_ring *)mem;
    if (size < SHMLINK_RING_DATA_OFFSET + 64)
        return -EBADMSG;
    /* SYNC: pairs with the release of magic in shmlink_ring_init. */
    if (SHMLINK_LOAD_ACQUIRE(&r->magic) != SHMLINK_RING_MAGIC ||
        SHMLINK_LOAD_RELAXED(&r->version) != SHMLINK_RING_VERSION)
        return -EPROTO;
    uint64_t capacity = SHMLINK_LOAD_RELAXED(&r->capacity);
    uint64_t max_message = SHMLINK_LOAD_RELAXED(&r->max_message);
    uint64_t data_offset = SHMLINK_LOAD_RELAXED(&r->data_offset);
    if (data_offset != SHMLINK_RING_DATA_OFFSET || capacity < 64 ||
        capacity % 8 != 0 || capacity > size - SHMLINK_RING_DATA_OFFSET ||
        max_message == 0 || max_message > capacity - SHMLINK_RECORD_HEADER ||
        max_message > SHMLINK_RING_MAX_MESSAGE)
        return -EBADMSG;
    h->ring = r;
    h->data = (uint8_t *)mem + data_offset;
    h->capacity = capacity;
    h->max_message = max_message;
    return 0;
}

/* Positions.  head and tail count bytes from 0 and never wrap: a valid
 * position is at most SHMLINK_RING_POS_LIMIT (2^63; at 10 GB/s a ring
 * reaches it after 29 years).  Every check below holds under uint64_t
 * arithmetic: tail - head > capacity catches tail < head (it wraps to a
 * huge difference), and nothing is added to a position before it is known
 * to be at most the limit, so no sum overflows.  A position past the limit,
 * misaligned, or more than capacity ahead of the other is corruption
 * (-EBADMSG); a ring whose next record would end past the limit is
 * exhausted and reports the same.  Positions travel in uint64_t
 * out-parameters, never in a return value shared with -errno. */
#define SHMLINK_RING_POS_LIMIT ((uint64_t)1 << 63)

static inline int shmlink_ring_positions_ok(const struct shmlink_ring_handle *h,
                                            uint64_t head, uint64_t tail) {
    return tail <= SHMLINK_RING_POS_LIMIT && tail - head <= h->capacity &&
           ((head | tail) & 7u) == 0;
}

/* Space check and placement for one record of len bytes (len <=
 * max_message), with prod_lock held.  0 with *pos_out the position to write
 * at (>= tail) and *wrap set when a wrap marker must first fill [tail,
 * *pos_out); -EAGAIN when the ring lacks room now (*pos_out, *wrap still
 * say where the record would go); -EBADMSG when head/tail are inconsistent
 * or the record would end past SHMLINK_RING_POS_LIMIT. */
static inline int shmlink_ring_place(const struct shmlink_ring_handle *h, uint64_t tail,
                                     uint64_t head, uint64_t len, uint64_t *pos_out,
                                     int *wrap) {
    uint64_t cap = h->capacity;
    *wrap = 0;
    *pos_out = tail;
    if (!shmlink_ring_positions_ok(h, head, tail))
        return -EBADMSG;
    uint64_t need = shmlink_ring_record_size(len);
    uint64_t to_end = cap - (tail % cap);
    uint64_t pos = tail;
    if (need > to_end) {
        pos = tail + to_end; /* tail <= 2^63 and to_end <= cap < 2^63: no overflow */
        *wrap = 1;
    }
    *pos_out = pos;
    if (pos > SHMLINK_RING_POS_LIMIT || need > SHMLINK_RING_POS_LIMIT - pos)
        return -EBADMSG; /* exhausted: the record would end past the limit */
    if (pos + need - head > cap)
        return -EAGAIN;
    return 0;
}

/* Write a record (or a wrap marker when payload == NULL and len ==
 * SHMLINK_RECORD_WRAP) at pos.  Caller holds prod_lock and has checked room. */
static inline void shmlink_ring_write_record(const struct shmlink_ring_handle *h,
                                             uint64_t pos, const void *payload,
                                             uint32_t len) {
    uint8_t *at = h->data + (pos % h->capacity);
    uint32_t hdr[2] = {len, len ^ SHMLINK_RECORD_CHECK};
    memcpy(at, hdr, sizeof hdr);
    if (payload && len)
        memcpy(at + SHMLINK_RECORD_HEADER, payload, len);
}

/* Read and check the record header at head (with cons_lock held, tail
 * acquired).  0 with *len_out the payload length, or -EAGAIN when empty, or
 * -EBADMSG for a corrupt ring.  Wrap markers are skipped (*head_io
 * advances). */
static inline int shmlink_ring_peek(const struct shmlink_ring_handle *h, uint64_t *head_io,
                                    uint64_t tail, uint64_t *len_out) {
    uint64_t cap = h->capacity;
    for (int hops = 0; hops < 2; hops++) {
        uint64_t head = *head_io;
        if (tail == head && tail <= SHMLINK_RING_POS_LIMIT)
            return -EAGAIN;
        if (!shmlink_ring_positions_ok(h, head, tail))
            return -EBADMSG;
        uint64_t off = head % cap;
        uint32_t hdr[2];
        memcpy(hdr, h->data + off, sizeof hdr);
        if ((hdr[0] ^ SHMLINK_RECORD_CHECK) != hdr[1])
            return -EBADMSG;
        if (hdr[0] == SHMLINK_RECORD_WRAP) {
            uint64_t skip = cap - off;
            if (skip > tail - head)
                return -EBADMSG;
            *head_io = head + skip;
            continue;
        }
        uint64_t len = hdr[0];
        uint64_t rec = shmlink_ring_record_size(len);
        if (len > h->max_message || rec > tail - head || rec > cap - off)
            return -EBADMSG;
        *len_out = len;
        return 0;
    }
    return -EBADMSG; /* two wrap markers in a row */
}

/* With prod_lock held: append one record at *tail_io (not yet published).
 * Returns 0, -EAGAIN (no room now; *tail_io may have advanced past a wrap
 * marker, which the caller must still commit), or -EBADMSG. */
static inline int shmlink_ring_push_locked(const struct shmlink_ring_handle *h,
                                           uint64_t *tail_io, const void *data,
                                           uint64_t len) {
    struct shmlink_ring *r = h->ring;
    uint64_t tail = *tail_io;
    uint64_t head = SHMLINK_LOAD_ACQUIRE(&r->head); /* SYNC: consumers' head release */
    int wrap;
    uint64_t pos;
    int rc = shmlink_ring_place(h, tail, head, len, &pos, &wrap);
    if (rc == -EAGAIN && wrap) {
        /* No room for the record, but the wrap marker alone may fit: commit
         * it, so that once consumers drain, the record fits at position 0.
         * Without this, a record longer than the room left before the end
         * of an empty ring would wait forever.  (place checked pos <= the
         * limit, so pos - head cannot wrap around.) */
        if (pos - head <= h->capacity) {
            shmlink_ring_write_record(h, tail, NULL, SHMLINK_RECORD_WRAP);
            *tail_io = pos;
        }
    }
    if (rc < 0)
        return rc;
    if (wrap)
        shmlink_ring_write_record(h, tail, NULL, SHMLINK_RECORD_WRAP);
    shmlink_ring_write_record(h, pos, data, (uint32_t)len);
    *tail_io = pos + shmlink_ring_record_size(len);
    return 0;
}

/* With prod_lock held, after committing a wrap marker that starts at wrap_at
 * and ends at tail: if consumers have read everything before it (head ==
 * wrap_at) and none is busy, step head over the marker ourselves.  Without
 * this, a record that needs the ring's start waits for a consumer even when
 * the ring is empty.  Lock order is always prod_lock then cons_lock, and
 * cons_lock is only tried, so this cannot deadlock.  1 if head moved. */
static inline int shmlink_ring_consume_wrap(const struct shmlink_ring_handle *h,
                                            uint64_t wrap_at, uint64_t tail,
                                            uint32_t pid, uint64_t start) {
    struct shmlink_ring *r = h->ring;
    if (SHMLINK_LOAD_ACQUIRE(&r->head) != wrap_at)
        return 0;
    if (shmlink_lock_try(&r->cons_lock, pid, start) != 0)
        return 0;
    int moved = 0;
    if (SHMLINK_LOAD_RELAXED(&r->head) == wrap_at) {
        /* SYNC: as a consumer's head release; producers acquire head. */
        SHMLINK_STORE_RELEASE(&r->head, tail);
        moved = 1;
    }
    shmlink_lock_release(&r->cons_lock);
    return moved;
}

/* With prod_lock held: publish everything up to tail (count new messages). */
static inline void shmlink_ring_commit(const struct shmlink_ring_handle *h,
                                       uint64_t tail, uint64_t count) {
    struct shmlink_ring *r = h->ring;
    /* SYNC: publishes the records; pairs with the consumers' acquire of
     * tail in shmlink_ring_try_recv and the binding's pop paths. */
    SHMLINK_STORE_RELEASE(&r->tail, tail);
    /* Counted after the commit: a producer killed in between leaves `sent`
     * lagging (len() reads low), never counting a message that is not there. */
    SHMLINK_STORE_RELAXED(&r->sent, SHMLINK_LOAD_RELAXED(&r->sent) + count);
}

/* ---- batches: the one home of the ring's send and receive sequences ---- */

/* Gather callback of a batch send: the i-th message (0 <= i < n). */
typedef void (*shmlink_ring_gather_fn)(void *ctx, uint64_t i, const void **data,
                                       uint64_t *len);

/* With prod_lock held by the caller: append messages *done, *done + 1, ...
 * n - 1 while there is room (as few commits as wrap markers allow), then
 * release prod_lock and wake consumers if anything was committed.  *done
 * counts the messages sent (across calls: start it at 0).  Returns 0 (all
 * sent), -EAGAIN (full: wait for space_ec and call again with the lock
 * retaken), -EMSGSIZE (message *done is larger than max_message) or
 * -EBADMSG (head/tail inconsistent).  A wrap marker alone is committed when
 * the record does not fit before the end; if the ring was drained up to it,
 * the producer steps head over it itself (shmlink_ring_consume_wrap). */
static inline int shmlink_ring_send_many_unlock(const struct shmlink_ring_handle *h,
                                                shmlink_ring_gather_fn gather, void *ctx,
                                                uint64_t n, uint64_t *done, uint32_t pid,
                                                uint64_t start) {
    struct shmlink_ring *r = h->ring;
    /* relaxed: tail is ours while we hold prod_lock */
    uint64_t tail0 = SHMLINK_LOAD_RELAXED(&r->tail), tail = tail0;
    const uint64_t round_start = tail0;
    uint64_t before = *done;
    int rc = 0;
    while (*done < n) {
        const void *data;
        uint64_t len;
        gather(ctx, *done, &data, &len);
        if (len > h->max_message) {
            rc = -EMSGSIZE;
            break;
        }
        uint64_t at = tail;
        rc = shmlink_ring_push_locked(h, &tail, data, len);
        if (rc == -EAGAIN && tail != at) {
            /* Only a wrap marker went in: publish what we have, and if the
             * ring was drained up to the marker, step over it and retry. */
            shmlink_ring_commit(h, tail, *done - before);
            before = *done;
            tail0 = tail;
            if (shmlink_ring_consume_wrap(h, at, tail, pid, start))
                continue;
        }
        if (rc < 0)
            break;
        (*done)++;
    }
    if (tail != tail0)
        shmlink_ring_commit(h, tail, *done - before);
    shmlink_lock_release(&r->prod_lock);
    if (tail != round_start)
        shmlink_ec_notify_bells(&r->data_ec, &r->data_bells);
    return rc;
}

/* Deliver callback of a batch receive: the payload of one record, valid
 * only during the call (the caller still holds cons_lock).  Returns 0 to
 * consume it and go on, or a negative code to stop before it (the record
 * stays queued): -EMSGSIZE (it does not fit the caller's buffer) or the
 * caller's own error (-1: a Python exception, in the binding). */
typedef int (*shmlink_ring_deliver_fn)(void *ctx, const uint8_t *payload, uint64_t len);

/* With cons_lock held by the caller: hand up to max records to deliver, in
 * order, then publish the new head (records and wrap markers passed), count
 * them in `received`, release cons_lock and wake producers if head moved.
 * Returns how many were taken (0: empty), or a negative code when none
 * was: -EBADMSG (the record at head is corrupt; it stays there and the next
 * receive reports it), or deliver's code.  A code after some records were
 * taken is reported as the count, except deliver's own errors (< 0 and not
 * -EMSGSIZE), returned as they are (the records taken stay taken). */
static inline int64_t shmlink_ring_recv_many_unlock(const struct shmlink_ring_handle *h,
                                                    shmlink_ring_deliver_fn deliver,
                                                    void *ctx, uint64_t max) {
    struct shmlink_ring *r = h->ring;
    /* relaxed: head is ours while we hold cons_lock */
    uint64_t head0 = SHMLINK_LOAD_RELAXED(&r->head), head = head0;
    /* SYNC: pairs with the producers' release of tail in shmlink_ring_commit. */
    uint64_t tail = SHMLINK_LOAD_ACQUIRE(&r->tail);
    uint64_t taken = 0;
    int64_t result = 0;
    while (taken < max) {
        uint64_t len;
        int pk = shmlink_ring_peek(h, &head, tail, &len);
        if (pk == -EAGAIN)
            break;
        if (pk < 0) {
            result = -EBADMSG;
            break;
        }
        const uint8_t *src = h->data + (head % h->capacity) + SHMLINK_RECORD_HEADER;
        int d = deliver(ctx, src, len);
        if (d < 0) {
            result = d;
            break;
        }
        head += shmlink_ring_record_size(len);
        taken++;
    }
    if (head != head0) {
        /* Counted before the commit: a consumer killed in between leaves
         * `received` ahead (len() reads low), like a producer's `sent`
         * lagging; len() never reports a message that is not there. */
        SHMLINK_STORE_RELAXED(&r->received, SHMLINK_LOAD_RELAXED(&r->received) + taken);
        /* SYNC: frees the space; pairs with the producers' acquire of head
         * in shmlink_ring_push_locked: our copies are done before they
         * overwrite. */
        SHMLINK_STORE_RELEASE(&r->head, head);
    }
    shmlink_lock_release(&r->cons_lock);
    if (head != head0)
        shmlink_ec_notify_bells(&r->space_ec, &r->space_bells);
    if (result < 0 && (taken == 0 || (result != -EBADMSG && result != -EMSGSIZE)))
        return result;
    return (int64_t)taken;
}

struct shmlink_ring_one_ {
    const void *data;
    uint64_t len;
};

static inline void shmlink_ring_gather_one_(void *ctx, uint64_t i, const void **data,
                                            uint64_t *len) {
    const struct shmlink_ring_one_ *one = (const struct shmlink_ring_one_ *)ctx;
    (void)i;
    *data = one->data;
    *len = one->len;
}

/* With prod_lock held by the caller: append one message and publish it,
 * then release prod_lock and wake consumers.  Returns 0, -EAGAIN (full:
 * a wrap marker may have been committed, which is progress all the same),
 * -EMSGSIZE or -EBADMSG. */
static inline int shmlink_ring_send_unlock(const struct shmlink_ring_handle *h,
                                           const void *data, uint64_t len,
                                           uint32_t pid, uint64_t start) {
    struct shmlink_ring_one_ one = {data, len};
    uint64_t done = 0;
    return shmlink_ring_send_many_unlock(h, shmlink_ring_gather_one_, &one, 1, &done, pid,
                                         start);
}

struct shmlink_ring_copy_ {
    void *buf;
    uint64_t cap, len;
};

static inline int shmlink_ring_copy_out_(void *ctx, const uint8_t *payload, uint64_t len) {
    struct shmlink_ring_copy_ *c = (struct shmlink_ring_copy_ *)ctx;
    c->len = len;
    if (len > c->cap)
        return -EMSGSIZE;
    memcpy(c->buf, payload, (size_t)len);
    return 0;
}

/* With cons_lock held by the caller: take one message into buf (cap
 * bytes), then release cons_lock and wake producers.  Returns its length,
 * -EAGAIN (empty), -EMSGSIZE (larger than cap; it stays queued) or
 * -EBADMSG. */
static inline int64_t shmlink_ring_recv_unlock(const struct shmlink_ring_handle *h,
                                               void *buf, uint64_t cap) {
    struct shmlink_ring_copy_ c = {buf, cap, 0};
    int64_t n = shmlink_ring_recv_many_unlock(h, shmlink_ring_copy_out_, &c, 1);
    if (n == 0)
        return -EAGAIN;
    return n < 0 ? n : (int64_t)c.len;
}

/* ---- zero-copy receive: the record stays in place, cons_lock held ------ */

/* With cons_lock held by the caller: find the next record.  Returns its
 * length, with *view_head (its position, after any wrap markers) and
 * *view_next (the head after it) set, cons_lock STILL HELD: read the
 * payload at h->data + *view_head % capacity + SHMLINK_RECORD_HEADER, then
 * call shmlink_ring_view_end.  Otherwise cons_lock is released: -EAGAIN
 * (empty; wrap markers passed are consumed) or -EBADMSG. */
static inline int64_t shmlink_ring_view_begin_locked(const struct shmlink_ring_handle *h,
                                                     uint64_t *view_head,
                                                     uint64_t *view_next) {
    struct shmlink_ring *r = h->ring;
    uint64_t head0 = SHMLINK_LOAD_RELAXED(&r->head), head = head0;
    /* SYNC: pairs with the producers' release of tail in shmlink_ring_commit. */
    uint64_t tail = SHMLINK_LOAD_ACQUIRE(&r->tail);
    uint64_t len;
    int pk = shmlink_ring_peek(h, &head, tail, &len);
    if (pk == 0) {
        *view_head = head;
        *view_next = head + shmlink_ring_record_size(len);
        return (int64_t)len; /* <= SHMLINK_RING_MAX_MESSAGE: never taken for a code */
    }
    int moved = 0;
    if (pk == -EAGAIN && head != head0) {
        /* SYNC: consumed a wrap marker; pairs with the producers' head acquire. */
        SHMLINK_STORE_RELEASE(&r->head, head);
        moved = 1;
    }
    shmlink_lock_release(&r->cons_lock);
    if (moved)
        shmlink_ec_notify_bells(&r->space_ec, &r->space_bells);
    return pk;
}

/* End a zero-copy receive begun by shmlink_ring_view_begin_locked: consume
 * the record (consume = 1) or leave it for the next receive (wrap markers
 * before it stay consumed), release cons_lock, wake producers. */
static inline void shmlink_ring_view_end(const struct shmlink_ring_handle *h,
                                         uint64_t view_head, uint64_t view_next,
                                         int consume) {
    struct shmlink_ring *r = h->ring;
    if (consume) {
        SHMLINK_STORE_RELAXED(&r->received, SHMLINK_LOAD_RELAXED(&r->received) + 1);
        /* SYNC: frees the record; pairs with the producers' head acquire. */
        SHMLINK_STORE_RELEASE(&r->head, view_next);
    } else if (view_head != SHMLINK_LOAD_RELAXED(&r->head)) {
        /* SYNC: skipped wrap markers; pairs with the producers' head acquire. */
        SHMLINK_STORE_RELEASE(&r->head, view_head);
    }
    shmlink_lock_release(&r->cons_lock);
    shmlink_ec_notify_bells(&r->space_ec, &r->space_bells);
}

/* Lock-free hints for fd-waiters (doorbell.h), read after arming: 1 when a
 * receive may find a message now / a send of len bytes may find room now
 * (or fail at once: too large, or a corrupt ring), 0 when it would block.
 * A 1 may be wrong (the caller's try_ call decides); a 0 after arming is
 * safe, because whoever changes it notifies. */
static inline int shmlink_ring_may_recv(const struct shmlink_ring_handle *h) {
    /* SYNC: acquire; pairs with the producers' release of tail. */
    uint64_t tail = SHMLINK_LOAD_ACQUIRE(&h->ring->tail);
    return tail != SHMLINK_LOAD_ACQUIRE(&h->ring->head);
}

static inline int shmlink_ring_may_send(const struct shmlink_ring_handle *h, uint64_t len) {
    if (len > h->max_message)
        return 1;
    /* SYNC: acquire; pairs with the consumers' release of head. */
    uint64_t head = SHMLINK_LOAD_ACQUIRE(&h->ring->head);
    uint64_t tail = SHMLINK_LOAD_ACQUIRE(&h->ring->tail);
    uint64_t pos;
    int wrap;
    return shmlink_ring_place(h, tail, head, len, &pos, &wrap) != -EAGAIN;
}

/* Send one message without waiting.  pid/start identify the caller
 * (shmlink_self()).  Returns 0, -EAGAIN (full), -EBUSY (another live
 * producer holds the lock), -EMSGSIZE or -EBADMSG. */
static inline int shmlink_ring_try_send(const struct shmlink_ring_handle *h,
                                        const void *data, uint64_t len,
                                        uint32_t pid, uint64_t start) {
    if (len > h->max_message)
        return -EMSGSIZE;
    if (shmlink_lock_try_or_steal(&h->ring->prod_lock, pid, start) < 0)
        return -EBUSY;
    return shmlink_ring_send_unlock(h, data, len, pid, start);
}

/* Receive one message without waiting into buf (cap bytes).  Returns its
 * length, -EAGAIN (empty), -EBUSY (another live consumer holds the lock,
 * e.g. with a zero-copy view open), -EMSGSIZE (larger than cap; it stays
 * queued) or -EBADMSG. */
static inline int64_t shmlink_ring_try_recv(const struct shmlink_ring_handle *h,
                                            void *buf, uint64_t cap,
                                            uint32_t pid, uint64_t start) {
    if (shmlink_lock_try_or_steal(&h->ring->cons_lock, pid, start) < 0)
        return -EBUSY;
    return shmlink_ring_recv_unlock(h, buf, cap);
}

/* The attempts the blocking forms hand to shmlink_wait_until: wait for the
 * lock (bounded by the deadline, taking over from a dead holder), then one
 * try under it.  -EAGAIN only for "full" / "empty". */
struct shmlink_ring_op {
    const struct shmlink_ring_handle *h;
    const void *src;
    void *dst;
    uint64_t len;
    uint32_t pid;
    uint64_t start;
    const struct timespec *deadline;
};

static inline int64_t shmlink_ring_send_attempt(void *arg, int slice_expired) {
    const struct shmlink_ring_op *op = (const struct shmlink_ring_op *)arg;
    (void)slice_expired;
    int rc = shmlink_lock_acquire(&op->h->ring->prod_lock, op->pid, op->start, op->deadline);
    if (rc < 0)
        return rc;
    return shmlink_ring_send_unlock(op->h, op->src, op->len, op->pid, op->start);
}

static inline int64_t shmlink_ring_recv_attempt(void *arg, int slice_expired) {
    const struct shmlink_ring_op *op = (const struct shmlink_ring_op *)arg;
    (void)slice_expired;
    int rc = shmlink_lock_acquire(&op->h->ring->cons_lock, op->pid, op->start, op->deadline);
    if (rc < 0)
        return rc;
    return shmlink_ring_recv_unlock(op->h, op->dst, op->len);
}

/* Blocking send: waits while another producer holds the lock (sleeping on
 * it, taking it over if its holder dies) and while the ring is full
 * (armed event count, re-checked before every sleep).  The deadline is
 * absolute on the monotonic clock (shmlink_deadline_after), NULL =
 * forever.  Returns 0, -ETIMEDOUT, -EINTR, -EMSGSIZE or -EBADMSG. */
static inline int shmlink_ring_send(const struct shmlink_ring_handle *h,
                                    const void *data, uint64_t len, uint32_t pid,
                                    uint64_t start, const struct timespec *deadline) {
    if (len > h->max_message)
        return -EMSGSIZE;
    struct shmlink_ring_op op = {h, data, NULL, len, pid, start, deadline};
    return (int)shmlink_wait_until(&h->ring->space_ec, shmlink_ring_send_attempt, &op, 0,
                                   SHMLINK_WAIT_SLICE_S, deadline);
}

/* Blocking receive into buf (cap bytes): waits, sleeping, while another
 * consumer holds the lock (a zero-copy view open in another process costs
 * no CPU here) and while the ring is empty.  Returns the length,
 * -ETIMEDOUT, -EINTR, -EMSGSIZE (the message stays queued) or -EBADMSG. */
static inline int64_t shmlink_ring_recv(const struct shmlink_ring_handle *h,
                                        void *buf, uint64_t cap, uint32_t pid,
                                        uint64_t start,
                                        const struct timespec *deadline) {
    struct shmlink_ring_op op = {h, NULL, buf, cap, pid, start, deadline};
    return shmlink_wait_until(&h->ring->data_ec, shmlink_ring_recv_attempt, &op, 0,
                              SHMLINK_WAIT_SLICE_S, deadline);
}

SHMLINK_END_DECLS

#endif /* SHMLINK_RING_H */
