/*
 * shmlink/topic.h -- the topic of shmlink.Topic: one-to-many broadcast.
 *
 * One byte ring, written by publishers (serialised on pub_lock, robust) and
 * read by every subscriber at its own pace: a subscriber owns a cursor in
 * its slot of the subscriber table and takes nothing out of the ring.
 *
 * Positions.  tail, head and cursors are monotonically increasing byte
 * positions; position p lives at data[p % capacity].  [head, tail) holds
 * whole entries, oldest first: a record (16-byte header: length, check,
 * 64-bit sequence number; the payload padded to 16 bytes) or a WRAP marker
 * that fills the rest of the ring.  Entries never wrap.  Always
 * head <= tail <= SHMLINK_TOPIC_POS_LIMIT (2^63: positions never wrap
 * around 2^64, as in ring.h), tail - head <= capacity, and both are
 * multiples of 16.  Anything else is -EBADMSG; so is an entry that would
 * end past the limit (an exhausted topic).
 *
 * Publishing.  An entry ending at `end` has room when head >= end -
 * capacity.  The publisher moves head forward over whole entries until it
 * does, stores head (release) and issues a release fence BEFORE it
 * overwrites a byte, writes the entry, then stores `published` and
 * releases tail.  Lossless mode: head may not pass `floor`, a lower bound
 * of every active subscriber's cursor; lacking room, the publisher waits
 * on space_ec and, in liveness slices, evicts the subscribers holding it
 * back whose process died (PID + start time).  Latest mode: head moves
 * freely; the publisher never waits for subscribers.
 *
 * Reading (a seqlock on head).  A subscriber acquires tail, copies the
 * entry at its cursor, then issues an acquire fence and loads head.  head
 * > cursor means a publisher may have overwritten the entry during the
 * copy: the copy is thrown away and the subscriber resumes at head, the
 * oldest entry still held.  Sequence numbers say how many it missed:
 * missed += seq - next_seq.  No torn message is ever delivered.
 *
 * Crash safety.  A publisher killed before its tail store leaves no entry
 * (head may have moved on: readers count what it overwrote as missed);
 * the next publisher takes pub_lock over and re-derives `published` from
 * the last committed record.  A subscriber killed at any point leaves an
 * active slot: lossless publishers evict it, and subscribe reuses it.
 *
 * Return codes: 0 / length done; -EAGAIN would block (nothing new; lossless
 * publish: no room); -EBUSY (try_ publish only) another live publisher holds
 * pub_lock; -ETIMEDOUT; -EINTR; -EMSGSIZE too large (receive: the message
 * is skipped and counted as missed); -ENOSPC no free subscriber slot;
 * -EPROTO not a topic or another version; -EBADMSG corrupt.
 */
#ifndef SHMLINK_TOPIC_H
#define SHMLINK_TOPIC_H

#include "atomic.h"
#include "doorbell.h"
#include "eventcount.h"
#include "liveness.h"
#include "lock.h"
#include "ring.h" /* the record check word and the WRAP marker */
#include "wait.h"

SHMLINK_BEGIN_DECLS

#define SHMLINK_TOPIC_MAGIC 0x43504f54u /* "TOPC" */
#define SHMLINK_TOPIC_VERSION 2u /* 2: doorbell tables beside the event counts */
#define SHMLINK_TOPIC_LOSSLESS 1u
#define SHMLINK_TOPIC_LATEST 2u
#define SHMLINK_TOPIC_RECORD_HEADER 16u
#define SHMLINK_TOPIC_MIN_CAPACITY 64u
#define SHMLINK_TOPIC_MAX_SUBSCRIBERS 1024u
#define SHMLINK_TOPIC_MAX_MESSAGE 0xFFFFFFF0u /* lengths are 32-bit; WRAP is reserved */

struct shmlink_topic_record {
    uint32_t length; /* payload bytes, or SHMLINK_RECORD_WRAP */
    uint32_t check;  /* length ^ SHMLINK_RECORD_CHECK */
    uint64_t seq;    /* 0, 1, 2 ... in publishing order (0 in a wrap marker) */
};
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_topic_record) == SHMLINK_TOPIC_RECORD_HEADER,
                      "a topic record header is 16 bytes");

/* One subscriber.  Each on its own cache line: its owner writes its cursor
 * after every receive, and must not slow the others down. */
struct shmlink_topic_sub {
    uint32_t pid;        /* 0 = free; claimed by CAS with pub_lock held */
    uint32_t active;     /* the claim's generation (never 0) while it reads */
    uint64_t start_time; /* the owner's process start time */
    uint64_t cursor;     /* SYNC: released by the owner after it copied;
                          * acquired by lossless publishers before they overwrite */
    uint64_t next_seq;   /* sequence number of the next message it expects */
    uint64_t missed;     /* messages it never got (overwritten first) */
    uint64_t received;
    uint8_t pad[SHMLINK_CACHE_LINE - 48];
};
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_topic_sub) == SHMLINK_CACHE_LINE,
                      "one subscriber slot per cache line");

struct shmlink_topic {
    /* line 0: constants, written by the creator before the segment is ready */
    uint32_t magic;
    uint32_t version;
    uint32_t mode;            /* SHMLINK_TOPIC_LOSSLESS or SHMLINK_TOPIC_LATEST */
    uint32_t max_subscribers; /* slots in the table, 1..1024 */
    uint64_t capacity;        /* ring bytes: a multiple of 16, >= 64 */
    uint64_t max_message;     /* largest payload: <= capacity - 16 */
    uint64_t subs_offset;     /* subscriber table, from the start of this struct */
    uint64_t data_offset;     /* ring, from the start of this struct */
    uint8_t pad0[SHMLINK_CACHE_LINE - 48];
    /* line 1: touched by publishers only (and subscribe), with pub_lock held.
     * Apart from the positions: subscribers spin on those, and every write
     * to a line they read costs the writer a cache miss. */
    struct shmlink_lock pub_lock;
    uint64_t floor;   /* lossless: <= every active cursor (0 forces a rescan) */
    uint32_t sub_hwm; /* slots [0, sub_hwm) have been claimed at some time */
    uint32_t claims;  /* the last claim generation handed out */
    uint64_t evicted; /* subscribers evicted because their process died */
    uint8_t pad1[SHMLINK_CACHE_LINE - 40];
    /* line 2: the positions, written by publishers (pub_lock held), read by all */
    uint64_t tail;      /* SYNC: released by publishers, acquired by subscribers */
    uint64_t head;      /* SYNC: released (and fenced) by publishers before they
                         * overwrite; loaded after an acquire fence by subscribers */
    uint64_t published; /* sequence number of the next message */
    uint8_t pad2[SHMLINK_CACHE_LINE - 24];
    /* line 3: publishers wake subscribers here (see shmlink_ec_*) */
    struct shmlink_eventcount data_ec;
    struct shmlink_bells data_bells;  /* fd-waiters for messages (doorbell.h) */
    /* line 4: subscribers wake lossless publishers here */
    struct shmlink_eventcount space_ec;
    struct shmlink_bells space_bells; /* fd-waiters for room (lossless) */
};
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_topic) == 5 * SHMLINK_CACHE_LINE,
                      "topic control block is five cache lines");
SHMLINK_STATIC_ASSERT(offsetof(struct shmlink_topic, pub_lock) % 64 == 0 &&
                          offsetof(struct shmlink_topic, tail) % 64 == 0 &&
                          offsetof(struct shmlink_topic, data_ec) % 64 == 0 &&
                          offsetof(struct shmlink_topic, space_ec) % 64 == 0,
                      "the lock, the positions and each event count on their own lines");
#define SHMLINK_TOPIC_SUBS_OFFSET ((uint64_t)sizeof(struct shmlink_topic))

#define SHMLINK_TOPIC_POS_LIMIT SHMLINK_RING_POS_LIMIT

/* head and tail (as loaded once) obey the rules above. */
static inline int shmlink_topic_positions_ok(uint64_t capacity, uint64_t head, uint64_t tail) {
    return head <= tail && tail <= SHMLINK_TOPIC_POS_LIMIT && tail - head <= capacity &&
           ((head | tail) & 15u) == 0;
}

static inline uint64_t shmlink_topic_record_size(uint64_t len) {
    return SHMLINK_TOPIC_RECORD_HEADER + ((len + 15u) & ~(uint64_t)15u);
}

/* Bytes a topic needs, control block and subscriber table included. */
static inline uint64_t shmlink_topic_footprint(uint64_t capacity, uint32_t max_subscribers) {
    return SHMLINK_TOPIC_SUBS_OFFSET + (uint64_t)max_subscribers * SHMLINK_CACHE_LINE + capacity;
}

/* Lay out an empty topic in `mem` (size bytes), before the segment is
 * ready.  The ring gets what the control block and table leave (rounded
 * down to 16).  max_message 0 means capacity - 16.  0 or -EINVAL. */
static inline int shmlink_topic_init(void *mem, uint64_t size, uint32_t mode,
                                     uint64_t max_message, uint32_t max_subscribers) {
    struct shmlink_topic *t = (struct shmlink_topic *)mem;
    if ((mode != SHMLINK_TOPIC_LOSSLESS && mode != SHMLINK_TOPIC_LATEST) ||
        max_subscribers == 0 || max_subscribers > SHMLINK_TOPIC_MAX_SUBSCRIBERS)
        return -EINVAL;
    uint64_t data_offset = SHMLINK_TOPIC_SUBS_OFFSET + (uint64_t)max_subscribers * SHMLINK_CACHE_LINE;
    if (size < data_offset + SHMLINK_TOPIC_MIN_CAPACITY)
        return -EINVAL;
    uint64_t capacity = (size - data_offset) & ~(uint64_t)15u;
    if (max_message == 0 || max_message > capacity - SHMLINK_TOPIC_RECORD_HEADER)
        max_message = capacity - SHMLINK_TOPIC_RECORD_HEADER;
    if (max_message > SHMLINK_TOPIC_MAX_MESSAGE)
        max_message = SHMLINK_TOPIC_MAX_MESSAGE;
    memset(t, 0, (size_t)data_offset);
    t->version = SHMLINK_TOPIC_VERSION;
    t->mode = mode;
    t->max_subscribers = max_subscribers;
    t->capacity = capacity;
    t->max_message = max_message;
    t->subs_offset = SHMLINK_TOPIC_SUBS_OFFSET;
    t->data_offset = data_offset;
    /* SYNC: pairs with the acquire of magic in shmlink_topic_attach. */
    SHMLINK_STORE_RELEASE(&t->magic, SHMLINK_TOPIC_MAGIC);
    return 0;
}

/* What a handle records at attach, checked once and never re-read. */
struct shmlink_topic_handle {
    struct shmlink_topic *topic;
    struct shmlink_topic_sub *subs;
    uint8_t *data;
    uint64_t capacity;
    uint64_t max_message;
    uint32_t mode;
    uint32_t max_subscribers;
};

/* -EPROTO: not a topic, or another version; -EBADMSG: inconsistent. */
static inline int shmlink_topic_attach(struct shmlink_topic_handle *h, void *mem,
                                       uint64_t size) {
    struct shmlink_topic *t = (struct shmlink_topic *)mem;
    if (size < SHMLINK_TOPIC_SUBS_OFFSET)
        return -EBADMSG;
    if (SHMLINK_LOAD_ACQUIRE(&t->magic) != SHMLINK_TOPIC_MAGIC ||
        SHMLINK_LOAD_RELAXED(&t->version) != SHMLINK_TOPIC_VERSION)
        return -EPROTO;
    uint32_t mode = SHMLINK_LOAD_RELAXED(&t->mode);
    uint32_t max_subs = SHMLINK_LOAD_RELAXED(&t->max_subscribers);
    uint64_t capacity = SHMLINK_LOAD_RELAXED(&t->capacity);
    uint64_t max_message = SHMLINK_LOAD_RELAXED(&t->max_message);
    uint64_t subs_offset = SHMLINK_LOAD_RELAXED(&t->subs_offset);
    uint64_t data_offset = SHMLINK_LOAD_RELAXED(&t->data_offset);
    if ((mode != SHMLINK_TOPIC_LOSSLESS && mode != SHMLINK_TOPIC_LATEST) ||
        max_subs == 0 || max_subs > SHMLINK_TOPIC_MAX_SUBSCRIBERS ||
        subs_offset != SHMLINK_TOPIC_SUBS_OFFSET ||
        data_offset != subs_offset + (uint64_t)max_subs * SHMLINK_CACHE_LINE ||
        data_offset > size || capacity < SHMLINK_TOPIC_MIN_CAPACITY || capacity % 16 != 0 ||
        capacity > size - data_offset || max_message == 0 ||
        max_message > capacity - SHMLINK_TOPIC_RECORD_HEADER ||
        max_message > SHMLINK_TOPIC_MAX_MESSAGE)
        return -EBADMSG;
    h->topic = t;
    h->subs = (struct shmlink_topic_sub *)((uint8_t *)mem + subs_offset);
    h->data = (uint8_t *)mem + data_offset;
    h->capacity = capacity;
    h->max_message = max_message;
    h->mode = mode;
    h->max_subscribers = max_subs;
    return 0;
}

/* The entry at pos (a multiple of 16): 0 for a record (*len, *seq), 1 for a
 * wrap marker, -EBADMSG for a header that cannot be right.  *size is the
 * entry's size in the ring; it never runs past the end of the ring.  The
 * header is copied once, then checked: a publisher may be overwriting it. */
static inline int shmlink_topic_entry(const struct shmlink_topic_handle *h, uint64_t pos,
                                      uint64_t *size, uint64_t *len, uint64_t *seq) {
    uint64_t off = pos % h->capacity;
    struct shmlink_topic_record rec;
    *size = *len = *seq = 0;
    if (off > h->capacity - sizeof rec) /* a misaligned position: never read past the ring */
        return -EBADMSG;
    memcpy(&rec, h->data + off, sizeof rec);
    if ((rec.length ^ SHMLINK_RECORD_CHECK) != rec.check)
        return -EBADMSG;
    if (rec.length == SHMLINK_RECORD_WRAP) {
        *size = h->capacity - off;
        *len = 0;
        *seq = 0;
        return 1;
    }
    uint64_t sz = shmlink_topic_record_size(rec.length);
    if (rec.length > h->max_message || sz > h->capacity - off)
        return -EBADMSG;
    *size = sz;
    *len = rec.length;
    *seq = rec.seq;
    return 0;
}

static inline const uint8_t *shmlink_topic_payload(const struct shmlink_topic_handle *h,
                                                   uint64_t pos) {
    return h->data + (pos % h->capacity) + SHMLINK_TOPIC_RECORD_HEADER;
}

static inline void shmlink_topic_write_entry(const struct shmlink_topic_handle *h,
                                             uint64_t pos, const void *payload,
                                             uint32_t len, uint64_t seq) {
    uint8_t *at = h->data + (pos % h->capacity);
    struct shmlink_topic_record rec = {len, len ^ SHMLINK_RECORD_CHECK, seq};
    memcpy(at, &rec, sizeof rec);
    if (payload && len && len != SHMLINK_RECORD_WRAP)
        memcpy(at + SHMLINK_TOPIC_RECORD_HEADER, payload, len);
}

/* With pub_lock held: move *head_io forward over whole entries until it is
 * at least target.  limit is the committed tail: head never passes it.
 * 0 or -EBADMSG. */
static inline int shmlink_topic_advance(const struct shmlink_topic_handle *h,
                                        uint64_t *head_io, uint64_t target, uint64_t limit) {
    uint64_t head = *head_io;
    while (head < target) {
        uint64_t size, len, seq;
        if (head >= limit || shmlink_topic_entry(h, head, &size, &len, &seq) < 0 ||
            size > limit - head)
            return -EBADMSG;
        head += size;
    }
    *head_io = head;
    return 0;
}

/* Lossless: the smallest cursor of the active subscribers, or UINT64_MAX
 * when there are none.  -EBADMSG if a cursor cannot be right (past tail,
 * more than capacity behind it, misaligned).
 *
 * A cursor on a committed wrap marker has read every message: it counts as
 * past the marker, and with `fix` (pub_lock held) it is moved past it, by
 * CAS so that a subscriber that moves meanwhile wins.  That is safe: a
 * subscriber leaving that position only ever stores a cursor at or past the
 * marker's end, and one that finds the marker overwritten sees head past
 * its cursor and resumes at the record that follows, losing nothing.
 * Without it, a record overlapping the marker would wait for a subscriber
 * that has nothing to read (and a single thread that publishes, then
 * receives, would wait for itself). */
static inline int shmlink_topic_scan_floor(const struct shmlink_topic_handle *h,
                                           uint64_t tail, uint64_t *floor_out, int fix) {
    uint32_t hwm = SHMLINK_LOAD_RELAXED(&h->topic->sub_hwm);
    if (hwm > h->max_subscribers)
        hwm = h->max_subscribers;
    uint64_t floor = UINT64_MAX;
    for (uint32_t i = 0; i < hwm; i++) {
        struct shmlink_topic_sub *s = &h->subs[i];
        if (SHMLINK_LOAD_ACQUIRE(&s->active) == 0)
            continue;
        /* SYNC: pairs with the subscriber's release of its cursor: its copy
         * of what lies below is done before we overwrite it. */
        uint64_t c = SHMLINK_LOAD_ACQUIRE(&s->cursor);
        if (c > tail || tail - c > h->capacity || (c & 15u))
            return -EBADMSG;
        uint64_t size, len, seq;
        if (c < tail && shmlink_topic_entry(h, c, &size, &len, &seq) == 1 && size <= tail - c) {
            uint64_t past = c + size;
            if (fix)
                SHMLINK_CAS(&s->cursor, &c, past);
            c = past;
        }
        if (c < floor)
            floor = c;
    }
    *floor_out = floor;
    return 0;
}

/* With pub_lock held: write one message at *tail_io (or first the wrap
 * marker it needs).  committed is the tail in shared memory: entries in
 * [committed, *tail_io) are written, not yet published.  *head_io is head
 * as stored; it moves (and is stored) when room is needed.  floor: no
 * active cursor lies below it (UINT64_MAX in latest mode).  Returns
 *   0            the record is written (*tail_io past it);
 *   1            a wrap marker was written: call again for the record;
 *   -EAGAIN      no room: floor holds head back (*required_out says where
 *                head must get to);
 *   -EINPROGRESS commit what is written first: head would pass it;
 *   -EBADMSG     the ring is inconsistent. */
static inline int shmlink_topic_put(const struct shmlink_topic_handle *h, uint64_t *tail_io,
                                    uint64_t committed, uint64_t *head_io, uint64_t floor,
                                    const void *payload, uint32_t len, uint64_t seq,
                                    uint64_t *required_out) {
    struct shmlink_topic *t = h->topic;
    uint64_t cap = h->capacity, tail = *tail_io, head = *head_io;
    uint64_t need = shmlink_topic_record_size(len);
    if (tail > SHMLINK_TOPIC_POS_LIMIT || need > SHMLINK_TOPIC_POS_LIMIT - tail)
        return -EBADMSG; /* exhausted (or damaged): the entry would end past the limit */
    uint64_t to_end = cap - tail % cap;
    int wrap = need > to_end;
    uint64_t end = tail + (wrap ? to_end : need);
    uint64_t required = end > cap ? end - cap : 0;
    *required_out = required;
    if (required > head) {
        if (required > floor)
            return -EAGAIN;
        if (required > committed)
            return -EINPROGRESS;
        if (shmlink_topic_advance(h, &head, required, committed) < 0)
            return -EBADMSG;
        /* SYNC: the release store and the fence pair with the acquire fence a
         * subscriber issues after its copy, before it loads head: a copy that
         * saw any byte written below also sees head past its cursor. */
        SHMLINK_STORE_RELEASE(&t->head, head);
        /* SYNC: pairs with the acquire fence in shmlink_topic_overtaken. */
        SHMLINK_FENCE_RELEASE();
        *head_io = head;
    }
    if (wrap) {
        shmlink_topic_write_entry(h, tail, NULL, SHMLINK_RECORD_WRAP, 0);
        *tail_io = end;
        return 1;
    }
    shmlink_topic_write_entry(h, tail, payload, len, seq);
    *tail_io = end;
    return 0;
}

/* With pub_lock held: publish everything written up to tail; next_seq is
 * the sequence number the next message will get. */
static inline void shmlink_topic_commit(const struct shmlink_topic_handle *h, uint64_t tail,
                                        uint64_t next_seq) {
    struct shmlink_topic *t = h->topic;
    /* published before tail: a subscriber that acquires tail sees a
     * `published` above every sequence number below tail. */
    SHMLINK_STORE_RELAXED(&t->published, next_seq);
    /* SYNC: publishes the entries; pairs with the subscribers' acquire of
     * tail in shmlink_topic_try_recv, shmlink_topic_resume and the binding. */
    SHMLINK_STORE_RELEASE(&t->tail, tail);
}

/* With pub_lock taken over from a publisher that died: re-derive
 * `published` from the last committed record (the dead one may have
 * stored it before its tail) and make the floor be rescanned.  0 or
 * -EBADMSG. */
static inline int shmlink_topic_repair(const struct shmlink_topic_handle *h) {
    struct shmlink_topic *t = h->topic;
    uint64_t tail = SHMLINK_LOAD_RELAXED(&t->tail), head = SHMLINK_LOAD_RELAXED(&t->head);
    if (!shmlink_topic_positions_ok(h->capacity, head, tail))
        return -EBADMSG;
    uint64_t p = head, last = 0;
    int have = 0;
    while (p < tail) {
        uint64_t size, len, seq;
        int kind = shmlink_topic_entry(h, p, &size, &len, &seq);
        if (kind < 0 || size > tail - p)
            return -EBADMSG;
        if (kind == 0) {
            if (have && seq != last + 1)
                return -EBADMSG;
            last = seq;
            have = 1;
        }
        p += size;
    }
    if (have)
        SHMLINK_STORE_RELAXED(&t->published, last + 1);
    else if (tail == 0)
        SHMLINK_STORE_RELAXED(&t->published, 0);
    SHMLINK_STORE_RELAXED(&t->floor, 0);
    return 0;
}

/* Lossless, with pub_lock held and no room: evict the active subscribers
 * whose cursor lies below `required` and whose process died.  Returns how
 * many were evicted. */
static inline int shmlink_topic_evict_dead(const struct shmlink_topic_handle *h,
                                           uint64_t required) {
    struct shmlink_topic *t = h->topic;
    uint32_t hwm = SHMLINK_LOAD_RELAXED(&t->sub_hwm);
    if (hwm > h->max_subscribers)
        hwm = h->max_subscribers;
    int n = 0;
    for (uint32_t i = 0; i < hwm; i++) {
        struct shmlink_topic_sub *s = &h->subs[i];
        uint32_t gen = SHMLINK_LOAD_ACQUIRE(&s->active);
        if (gen == 0 || SHMLINK_LOAD_ACQUIRE(&s->cursor) >= required)
            continue;
        uint32_t pid = SHMLINK_LOAD_RELAXED(&s->pid);
        if (shmlink_process_alive(pid, SHMLINK_LOAD_RELAXED(&s->start_time)))
            continue;
        if (SHMLINK_CAS(&s->active, &gen, 0)) {
            SHMLINK_CAS(&s->pid, &pid, 0);
            SHMLINK_STORE_RELAXED(&t->evicted, SHMLINK_LOAD_RELAXED(&t->evicted) + 1);
            n++;
        }
    }
    return n;
}

/* Subscribe, with pub_lock held: claim a slot for (pid, start), reading
 * from the next message published (oldest = 0) or from the oldest one still
 * held (oldest = 1).  A free slot is preferred; else one whose owner died.
 * Returns the slot index (*gen_out, *cursor_out, *seq_out set), -ENOSPC
 * (every slot is held by a live process) or -EBADMSG. */
static inline int shmlink_topic_claim(const struct shmlink_topic_handle *h, uint32_t pid,
                                      uint64_t start, int oldest, uint32_t *gen_out,
                                      uint64_t *cursor_out, uint64_t *seq_out) {
    struct shmlink_topic *t = h->topic;
    uint64_t tail = SHMLINK_LOAD_RELAXED(&t->tail), head = SHMLINK_LOAD_RELAXED(&t->head);
    uint64_t published = SHMLINK_LOAD_RELAXED(&t->published);
    if (!shmlink_topic_positions_ok(h->capacity, head, tail))
        return -EBADMSG;
    uint64_t cursor = tail, seq = published;
    if (oldest) {
        /* the first record at or after head gives the sequence number */
        uint64_t p = head;
        cursor = head;
        for (int hops = 0; hops < 2 && p < tail; hops++) {
            uint64_t size, len, s;
            int kind = shmlink_topic_entry(h, p, &size, &len, &s);
            if (kind < 0 || size > tail - p)
                return -EBADMSG;
            if (kind == 0) {
                if (s >= published)
                    return -EBADMSG;
                seq = s;
                break;
            }
            p += size;
        }
    }
    int slot = -1;
    for (int pass = 0; pass < 2 && slot < 0; pass++) {
        for (uint32_t i = 0; i < h->max_subscribers; i++) {
            struct shmlink_topic_sub *s = &h->subs[i];
            uint32_t cur = SHMLINK_LOAD_ACQUIRE(&s->pid);
            if (cur == 0 ? pass != 0
                         : (pass == 0 ||
                            shmlink_process_alive(cur, SHMLINK_LOAD_RELAXED(&s->start_time))))
                continue;
            if (SHMLINK_CAS(&s->pid, &cur, pid)) {
                if (SHMLINK_LOAD_RELAXED(&s->active) != 0)
                    SHMLINK_STORE_RELAXED(&t->evicted, SHMLINK_LOAD_RELAXED(&t->evicted) + 1);
                slot = (int)i;
                break;
            }
        }
    }
    if (slot < 0)
        return -ENOSPC;
    struct shmlink_topic_sub *s = &h->subs[slot];
    SHMLINK_STORE_RELAXED(&s->active, 0);
    SHMLINK_STORE_RELAXED(&s->start_time, start);
    SHMLINK_STORE_RELAXED(&s->cursor, cursor);
    SHMLINK_STORE_RELAXED(&s->next_seq, seq);
    SHMLINK_STORE_RELAXED(&s->missed, 0);
    SHMLINK_STORE_RELAXED(&s->received, 0);
    uint32_t gen = SHMLINK_LOAD_RELAXED(&t->claims) + 1;
    if (gen == 0)
        gen = 1;
    SHMLINK_STORE_RELAXED(&t->claims, gen);
    if ((uint32_t)slot + 1 > SHMLINK_LOAD_RELAXED(&t->sub_hwm))
        SHMLINK_STORE_RELAXED(&t->sub_hwm, (uint32_t)slot + 1);
    if (h->mode == SHMLINK_TOPIC_LOSSLESS && SHMLINK_LOAD_RELAXED(&t->floor) > cursor)
        SHMLINK_STORE_RELAXED(&t->floor, cursor);
    /* SYNC: pairs with the publishers' acquire of active in
     * shmlink_topic_scan_floor: the cursor is set before the slot counts. */
    SHMLINK_STORE_RELEASE(&s->active, gen);
    *gen_out = gen;
    *cursor_out = cursor;
    *seq_out = seq;
    return slot;
}

/* Unsubscribe (no lock needed): free the slot if it still holds this claim,
 * then wake lossless publishers that may be waiting for it. */
static inline void shmlink_topic_release_slot(const struct shmlink_topic_handle *h, int slot,
                                              uint32_t pid, uint32_t gen) {
    if (slot < 0 || (uint32_t)slot >= h->max_subscribers)
        return;
    struct shmlink_topic_sub *s = &h->subs[slot];
    uint32_t g = gen;
    if (SHMLINK_CAS(&s->active, &g, 0)) {
        uint32_t p = pid;
        SHMLINK_CAS(&s->pid, &p, 0);
    }
    shmlink_ec_notify_bells(&h->topic->space_ec, &h->topic->space_bells);
}

/* Subscriber: record its progress in its slot (and wake lossless
 * publishers that wait for room). */
static inline void shmlink_topic_progress(const struct shmlink_topic_handle *h, int slot,
                                          uint64_t cursor, uint64_t next_seq,
                                          uint64_t missed, uint64_t received) {
    struct shmlink_topic_sub *s = &h->subs[slot];
    SHMLINK_STORE_RELAXED(&s->next_seq, next_seq);
    SHMLINK_STORE_RELAXED(&s->missed, missed);
    SHMLINK_STORE_RELAXED(&s->received, received);
    /* SYNC: pairs with the publishers' acquire of cursor in
     * shmlink_topic_scan_floor: our copies are done before they overwrite. */
    SHMLINK_STORE_RELEASE(&s->cursor, cursor);
    if (h->mode == SHMLINK_TOPIC_LOSSLESS)
        shmlink_ec_notify_bells(&h->topic->space_ec, &h->topic->space_bells);
}

/* Subscriber: 1 if a publisher may have overwritten the entry at pos since
 * the subscriber last acquired tail (its copy must then be thrown away). */
static inline int shmlink_topic_overtaken(const struct shmlink_topic_handle *h, uint64_t pos) {
    /* SYNC: pairs with the publishers' release fence after their head store
     * in shmlink_topic_put: the copy's loads are done before head is read. */
    SHMLINK_FENCE_ACQUIRE();
    return SHMLINK_LOAD_RELAXED(&h->topic->head) > pos;
}

/* Subscriber, with tail acquired: the entry at *cursor_io.  Returns the
 * payload length (*seq set; the payload at shmlink_topic_payload(h,
 * *cursor_io)), -EAGAIN (nothing new), -ESTALE (overtaken: resume at head)
 * or -EBADMSG.  Wrap markers are confirmed, then skipped.  A returned
 * record must be copied and then confirmed with shmlink_topic_overtaken()
 * before it is used. */
static inline int64_t shmlink_topic_peek(const struct shmlink_topic_handle *h,
                                         uint64_t *cursor_io, uint64_t tail, uint64_t *seq) {
    for (int hops = 0; hops < 2; hops++) {
        uint64_t c = *cursor_io;
        if (tail > SHMLINK_TOPIC_POS_LIMIT || c > tail || (c & 15u))
            return -EBADMSG;
        if (c == tail)
            return -EAGAIN;
        if (tail - c > h->capacity)
            return -ESTALE;
        uint64_t size, len;
        int kind = shmlink_topic_entry(h, c, &size, &len, seq);
        if (kind == 0 && size <= tail - c)
            return (int64_t)len;
        if (shmlink_topic_overtaken(h, c))
            return -ESTALE;
        if (kind < 0 || size > tail - c)
            return -EBADMSG;
        *cursor_io = c + size; /* a wrap marker, still in place */
    }
    return -EBADMSG; /* two wrap markers in a row */
}

/* Subscriber, overtaken: move *cursor_io to head, the oldest entry still
 * held, and *tail_io to a tail acquired with it.  0 or -EBADMSG. */
static inline int shmlink_topic_resume(const struct shmlink_topic_handle *h,
                                       uint64_t *cursor_io, uint64_t *tail_io) {
    struct shmlink_topic *t = h->topic;
    for (int tries = 0; tries < 1000; tries++) {
        /* SYNC: pairs with the publishers' release of head: the tail that
         * covered it when it was stored is visible to the next load. */
        uint64_t head = SHMLINK_LOAD_ACQUIRE(&t->head);
        uint64_t tail = SHMLINK_LOAD_ACQUIRE(&t->tail);
        if (head > tail || tail > SHMLINK_TOPIC_POS_LIMIT || (head & 15u) || head < *cursor_io)
            return -EBADMSG;
        if (tail - head > h->capacity)
            continue; /* lapped again between the two loads */
        *cursor_io = head;
        *tail_io = tail;
        return 0;
    }
    return -EBADMSG;
}

/* A subscriber's private state, for C programs (the binding keeps its own). */
struct shmlink_topic_reader {
    int slot;
    uint32_t pid, gen;
    uint64_t cursor, next_seq, missed, received;
};

/* Where a batch receive puts what it reads.  copy gets the payload of the
 * record at the reader's cursor and copies it out; the copy may be torn (a
 * latest-mode publisher may be overwriting it), so keep then says whether
 * to keep it (1: the record was intact) or drop it (0).  Both return 0, or
 * a negative code that stops the receive before the record (the binding:
 * -1, an exception): it stays for the next receive. */
struct shmlink_topic_sink {
    int (*copy)(void *ctx, const uint8_t *payload, uint64_t len);
    int (*keep)(void *ctx, int keep);
    void *ctx;
};

/* Take up to max messages without waiting, in order, into sink: records
 * overwritten before they could be read (latest mode) are skipped and
 * counted in r->missed, a reader overtaken resumes at the oldest record
 * held.  The reader's position is published once at the end
 * (shmlink_topic_progress).  Returns how many were taken (0: nothing new),
 * -EBADMSG (corrupt positions or record), or copy's code; an error wins
 * over a count (the records taken before it stay taken). */
static inline int64_t shmlink_topic_recv_many(const struct shmlink_topic_handle *h,
                                              struct shmlink_topic_reader *r,
                                              const struct shmlink_topic_sink *sink,
                                              uint64_t max) {
    struct shmlink_topic *t = h->topic;
    uint64_t cursor = r->cursor, next_seq = r->next_seq, missed = r->missed;
    /* SYNC: pairs with the publishers' release of tail in shmlink_topic_commit. */
    uint64_t tail = SHMLINK_LOAD_ACQUIRE(&t->tail);
    uint64_t published = SHMLINK_LOAD_RELAXED(&t->published);
    uint64_t got = 0;
    int err = 0;
    while (got < max) {
        uint64_t seq;
        int stale = 0;
        int64_t len = shmlink_topic_peek(h, &cursor, tail, &seq);
        if (len == -EAGAIN)
            break;
        if (len == -ESTALE) {
            stale = 1;
        } else if (len < 0) {
            err = -EBADMSG;
            break;
        } else {
            int c = sink->copy(sink->ctx, shmlink_topic_payload(h, cursor), (uint64_t)len);
            if (c < 0) {
                err = c;
                break;
            }
            if (shmlink_topic_overtaken(h, cursor)) {
                sink->keep(sink->ctx, 0); /* maybe torn: never delivered */
                stale = 1;
            } else if (seq < next_seq || seq >= published) {
                sink->keep(sink->ctx, 0);
                err = -EBADMSG;
                break;
            } else {
                int k = sink->keep(sink->ctx, 1);
                if (k < 0) {
                    err = k;
                    break;
                }
                missed += seq - next_seq;
                next_seq = seq + 1;
                cursor += shmlink_topic_record_size((uint64_t)len);
                got++;
            }
        }
        if (stale) {
            if (shmlink_topic_resume(h, &cursor, &tail) < 0) {
                err = -EBADMSG;
                break;
            }
            published = SHMLINK_LOAD_RELAXED(&t->published);
        }
    }
    if (cursor != r->cursor) {
        r->cursor = cursor;
        r->next_seq = next_seq;
        r->missed = missed;
        r->received += got;
        shmlink_topic_progress(h, r->slot, cursor, next_seq, missed, r->received);
    }
    return err ? err : (int64_t)got;
}

/* Zero-copy receive, first half: find the next intact record without
 * copying it.  Returns its length with *pos (its position: the payload is
 * shmlink_topic_payload(h, *pos)) and *seq set; r->cursor stays before it
 * until shmlink_topic_view_end.  Lossless: publishers cannot overwrite it
 * meanwhile; latest: they can, and view_end says whether they did.
 * Otherwise -EAGAIN (nothing new; wrap markers and overtaken records passed
 * are published as progress) or -EBADMSG. */
static inline int64_t shmlink_topic_view_begin(const struct shmlink_topic_handle *h,
                                               struct shmlink_topic_reader *r, uint64_t *pos,
                                               uint64_t *seq) {
    struct shmlink_topic *t = h->topic;
    uint64_t cursor = r->cursor;
    /* SYNC: pairs with the publishers' release of tail in shmlink_topic_commit. */
    uint64_t tail = SHMLINK_LOAD_ACQUIRE(&t->tail);
    uint64_t published = SHMLINK_LOAD_RELAXED(&t->published);
    int64_t len;
    for (;;) {
        len = shmlink_topic_peek(h, &cursor, tail, seq);
        /* the header must be intact before its length is handed out */
        if (len >= 0 && shmlink_topic_overtaken(h, cursor))
            len = -ESTALE;
        if (len != -ESTALE)
            break;
        if (shmlink_topic_resume(h, &cursor, &tail) < 0) {
            len = -EBADMSG;
            break;
        }
        published = SHMLINK_LOAD_RELAXED(&t->published);
    }
    if (len >= 0 && (*seq < r->next_seq || *seq >= published))
        len = -EBADMSG;
    if (len >= 0) {
        *pos = cursor;
        return len;
    }
    if (cursor != r->cursor) { /* skipped a wrap marker, or resumed */
        r->cursor = cursor;
        shmlink_topic_progress(h, r->slot, cursor, r->next_seq, r->missed, r->received);
    }
    return len;
}

/* Zero-copy receive, second half, for the record of len bytes at pos with
 * sequence number seq (from shmlink_topic_view_begin): consume it (consume
 * = 1) or leave it for the next receive.  Returns 1 if it was intact, 0 if
 * a publisher may have overwritten it meanwhile (latest mode: then it is
 * not consumed, and the next receive resumes past it, counting it missed). */
static inline int shmlink_topic_view_end(const struct shmlink_topic_handle *h,
                                         struct shmlink_topic_reader *r, uint64_t pos,
                                         uint64_t seq, uint64_t len, int consume) {
    int intact = !shmlink_topic_overtaken(h, pos);
    if (consume && intact) {
        r->missed += seq - r->next_seq;
        r->next_seq = seq + 1;
        r->cursor = pos + shmlink_topic_record_size(len);
        r->received++;
    } else {
        r->cursor = pos; /* left for the next receive (it resumes if it is gone) */
    }
    shmlink_topic_progress(h, r->slot, r->cursor, r->next_seq, r->missed, r->received);
    return intact;
}

/* Receive one message without waiting into buf (cap bytes).  Returns its
 * length, -EAGAIN (nothing new), -EMSGSIZE (larger than cap: it is
 * skipped and counted as missed), or -EBADMSG. */
static inline int64_t shmlink_topic_try_recv(const struct shmlink_topic_handle *h,
                                             struct shmlink_topic_reader *r, void *buf,
                                             uint64_t cap) {
    struct shmlink_topic *t = h->topic;
    uint64_t cursor = r->cursor;
    uint64_t tail = SHMLINK_LOAD_ACQUIRE(&t->tail); /* SYNC: publishers' tail release */
    uint64_t published = SHMLINK_LOAD_RELAXED(&t->published);
    int64_t rc;
    for (;;) {
        uint64_t seq;
        rc = shmlink_topic_peek(h, &cursor, tail, &seq);
        if (rc == -ESTALE) {
            if (shmlink_topic_resume(h, &cursor, &tail) < 0)
                return -EBADMSG;
            published = SHMLINK_LOAD_RELAXED(&t->published);
            continue;
        }
        if (rc < 0)
            break;
        if ((uint64_t)rc <= cap)
            memcpy(buf, shmlink_topic_payload(h, cursor), (size_t)rc);
        if (shmlink_topic_overtaken(h, cursor)) {
            if (shmlink_topic_resume(h, &cursor, &tail) < 0)
                return -EBADMSG;
            published = SHMLINK_LOAD_RELAXED(&t->published);
            continue;
        }
        if (seq < r->next_seq || seq >= published)
            return -EBADMSG;
        cursor += shmlink_topic_record_size((uint64_t)rc);
        if ((uint64_t)rc > cap) {
            r->missed += seq + 1 - r->next_seq;
            rc = -EMSGSIZE;
        } else {
            r->missed += seq - r->next_seq;
            r->received++;
        }
        r->next_seq = seq + 1;
        break;
    }
    if (cursor != r->cursor) {
        r->cursor = cursor;
        shmlink_topic_progress(h, r->slot, r->cursor, r->next_seq, r->missed, r->received);
    }
    return rc;
}

/* Gather callback of a batch publish: the i-th message (0 <= i < n). */
typedef void (*shmlink_topic_gather_fn)(void *ctx, uint64_t i, const void **data,
                                        uint64_t *len);

/* With pub_lock held by the caller: publish messages *done .. n - 1 in
 * order while there is room (committing whenever a record must wait for
 * its place), then release pub_lock and wake subscribers if anything was
 * committed.  *done counts the messages published (start it at 0).  With
 * evict_dead, a lossless topic without room first evicts the subscribers
 * holding it back whose process died (it reads /proc: not on every spin).
 * Returns 0 (all published), -EAGAIN (lossless: no room now; wait on
 * space_ec until every active cursor is at or past *required, retake the
 * lock and call again), -EMSGSIZE (message *done is larger than
 * max_message) or -EBADMSG. */
static inline int shmlink_topic_publish_many_unlock(const struct shmlink_topic_handle *h,
                                                    shmlink_topic_gather_fn gather, void *ctx,
                                                    uint64_t n, uint64_t *done,
                                                    int evict_dead, uint64_t *required) {
    struct shmlink_topic *t = h->topic;
    /* relaxed: tail, head, published and floor are ours under pub_lock */
    uint64_t committed = SHMLINK_LOAD_RELAXED(&t->tail), tail = committed;
    uint64_t head = SHMLINK_LOAD_RELAXED(&t->head), seq = SHMLINK_LOAD_RELAXED(&t->published);
    uint64_t floor = h->mode == SHMLINK_TOPIC_LOSSLESS ? SHMLINK_LOAD_RELAXED(&t->floor)
                                                       : UINT64_MAX;
    int rc = 0, rescanned = 0, any = 0;
    *required = 0;
    if (!shmlink_topic_positions_ok(h->capacity, head, tail))
        rc = -EBADMSG;
    while (rc == 0 && *done < n) {
        const void *data;
        uint64_t len;
        gather(ctx, *done, &data, &len);
        if (len > h->max_message) {
            rc = -EMSGSIZE;
            break;
        }
        int r = shmlink_topic_put(h, &tail, committed, &head, floor, data, (uint32_t)len, seq,
                                  required);
        if (r == 0) {
            seq++;
            (*done)++;
            rescanned = 0;
        } else if (r == 1) {
            /* a wrap marker: the record goes at the start of the ring */
        } else if (r == -EINPROGRESS) {
            shmlink_topic_commit(h, tail, seq);
            committed = tail;
            any = 1;
        } else if (r == -EAGAIN && !rescanned) {
            rescanned = 1;
            if (evict_dead) {
                shmlink_topic_evict_dead(h, *required);
                evict_dead = 0;
            }
            if (shmlink_topic_scan_floor(h, committed, &floor, 1) < 0)
                rc = -EBADMSG;
            else
                SHMLINK_STORE_RELAXED(&t->floor, floor);
        } else {
            rc = r;
        }
    }
    if (tail != committed) {
        shmlink_topic_commit(h, tail, seq);
        any = 1;
    }
    shmlink_lock_release(&t->pub_lock);
    if (any)
        shmlink_ec_notify_bells(&t->data_ec, &t->data_bells);
    return rc;
}

struct shmlink_topic_one_ {
    const void *data;
    uint64_t len;
};

static inline void shmlink_topic_gather_one_(void *ctx, uint64_t i, const void **data,
                                             uint64_t *len) {
    const struct shmlink_topic_one_ *one = (const struct shmlink_topic_one_ *)ctx;
    (void)i;
    *data = one->data;
    *len = one->len;
}

/* With pub_lock held by the caller: publish one message, then release
 * pub_lock and wake subscribers (shmlink_topic_publish_many_unlock with one
 * message).  Returns 0, -EAGAIN (lossless: no room now), -EMSGSIZE or
 * -EBADMSG. */
static inline int shmlink_topic_publish_unlock(const struct shmlink_topic_handle *h,
                                               const void *data, uint64_t len,
                                               int evict_dead) {
    struct shmlink_topic_one_ one = {data, len};
    uint64_t done = 0, required;
    return shmlink_topic_publish_many_unlock(h, shmlink_topic_gather_one_, &one, 1, &done,
                                             evict_dead, &required);
}

/* Take pub_lock, sleeping until the deadline; a lock taken over from a
 * publisher that died is repaired first (shmlink_topic_repair).  0,
 * -ETIMEDOUT, -EINTR, or -EBADMSG (the lock is released). */
static inline int shmlink_topic_lock(const struct shmlink_topic_handle *h, uint32_t pid,
                                     uint64_t start, const struct timespec *deadline) {
    int rc = shmlink_lock_acquire(&h->topic->pub_lock, pid, start, deadline);
    if (rc == 1 && shmlink_topic_repair(h) < 0) {
        shmlink_lock_release(&h->topic->pub_lock);
        return -EBADMSG;
    }
    return rc < 0 ? rc : 0;
}

/* Publish one message without waiting.  Returns 0, -EAGAIN (lossless: no
 * room now), -EBUSY (another live publisher holds pub_lock), -EMSGSIZE or
 * -EBADMSG.  evict_dead: see shmlink_topic_publish_unlock. */
static inline int shmlink_topic_try_publish(const struct shmlink_topic_handle *h,
                                            const void *data, uint64_t len, uint32_t pid,
                                            uint64_t start, int evict_dead) {
    if (len > h->max_message)
        return -EMSGSIZE;
    int rc = shmlink_lock_try_or_steal(&h->topic->pub_lock, pid, start);
    if (rc < 0)
        return -EBUSY;
    if (rc == 1 && shmlink_topic_repair(h) < 0) {
        shmlink_lock_release(&h->topic->pub_lock);
        return -EBADMSG;
    }
    return shmlink_topic_publish_unlock(h, data, len, evict_dead);
}

/* Subscribe from C: claim a slot for this process (pid, start as for the
 * ring functions), reading from the next message (oldest = 0) or the
 * oldest held (1).  0, -ENOSPC, -EBADMSG, -ETIMEDOUT or -EINTR. */
static inline int shmlink_topic_subscribe(const struct shmlink_topic_handle *h,
                                          struct shmlink_topic_reader *r, uint32_t pid,
                                          uint64_t start, int oldest,
                                          const struct timespec *deadline) {
    int rc = shmlink_topic_lock(h, pid, start, deadline);
    if (rc < 0)
        return rc;
    int slot = shmlink_topic_claim(h, pid, start, oldest, &r->gen, &r->cursor, &r->next_seq);
    shmlink_lock_release(&h->topic->pub_lock);
    if (slot < 0)
        return slot;
    r->slot = slot;
    r->pid = pid;
    r->missed = r->received = 0;
    return 0;
}

static inline void shmlink_topic_unsubscribe(const struct shmlink_topic_handle *h,
                                             struct shmlink_topic_reader *r) {
    shmlink_topic_release_slot(h, r->slot, r->pid, r->gen);
    r->slot = -1;
}

struct shmlink_topic_op {
    const struct shmlink_topic_handle *h;
    struct shmlink_topic_reader *reader;
    const void *src;
    void *dst;
    uint64_t len;
    uint32_t pid;
    uint64_t start;
    const struct timespec *deadline;
};

static inline int64_t shmlink_topic_recv_attempt(void *arg, int slice_expired) {
    const struct shmlink_topic_op *op = (const struct shmlink_topic_op *)arg;
    (void)slice_expired;
    return shmlink_topic_try_recv(op->h, op->reader, op->dst, op->len);
}

/* Waits for pub_lock (never -EBUSY); after a slice that ran out while the
 * topic had no room, evicts the dead subscribers holding it back. */
static inline int64_t shmlink_topic_publish_attempt(void *arg, int slice_expired) {
    const struct shmlink_topic_op *op = (const struct shmlink_topic_op *)arg;
    int rc = shmlink_topic_lock(op->h, op->pid, op->start, op->deadline);
    if (rc < 0)
        return rc;
    return shmlink_topic_publish_unlock(op->h, op->src, op->len, slice_expired);
}

/* Blocking receive into buf (cap bytes): sleeps while nothing new is
 * published (armed event count, re-checked before every sleep).  Like
 * shmlink_topic_try_recv, or -ETIMEDOUT / -EINTR. */
static inline int64_t shmlink_topic_recv(const struct shmlink_topic_handle *h,
                                         struct shmlink_topic_reader *r, void *buf,
                                         uint64_t cap, const struct timespec *deadline) {
    struct shmlink_topic_op op = {h, r, NULL, buf, cap, 0, 0, deadline};
    return shmlink_wait_until(&h->topic->data_ec, shmlink_topic_recv_attempt, &op, 0,
                              SHMLINK_WAIT_SLICE_S, deadline);
}

/* Blocking publish: waits for pub_lock while another publisher holds it,
 * and (lossless) for room while subscribers lag, evicting in liveness
 * slices the dead subscribers holding it back.  0, -EMSGSIZE, -EBADMSG,
 * -ETIMEDOUT or -EINTR. */
static inline int shmlink_topic_publish(const struct shmlink_topic_handle *h, const void *data,
                                        uint64_t len, uint32_t pid, uint64_t start,
                                        const struct timespec *deadline) {
    if (len > h->max_message)
        return -EMSGSIZE;
    struct shmlink_topic_op op = {h, NULL, data, NULL, len, pid, start, deadline};
    return (int)shmlink_wait_until(&h->topic->space_ec, shmlink_topic_publish_attempt, &op, 0,
                                   SHMLINK_LIVENESS_SLICE_S, deadline);
}

SHMLINK_END_DECLS

#endif /* SHMLINK_TOPIC_H */
