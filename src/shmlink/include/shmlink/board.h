/*
 * shmlink/board.h -- the board of shmlink.Board: a shared latest value,
 * double-buffered.
 *
 * Version v lives in slot v % 2.  A writer (holding `lock`) fills the slot
 * nobody points to with seq = 2v - 1 while writing and 2v when complete,
 * then publishes `version`.  A reader loads version v, checks its slot's
 * seq is 2v, copies, fences and re-reads seq: unchanged means the copy is
 * whole.  Readers never take the lock, so a writer killed mid-write never
 * blocks them (it only spoiled the unpublished slot).
 *
 * The writer's sequence and the change wait still live in the binding
 * (_core.c / board.py), with a waiter count in `change`/`waiters`; a later
 * phase moves them here, onto the armed event count, with a new
 * SHMLINK_BOARD_VERSION.  The layout below is the one Python uses today.
 */
#ifndef SHMLINK_BOARD_H
#define SHMLINK_BOARD_H

#include "atomic.h"
#include "lock.h"

#include <errno.h>
#include <string.h>

SHMLINK_BEGIN_DECLS

#define SHMLINK_BOARD_MAGIC 0x44524F42u /* "BORD" */
#define SHMLINK_BOARD_VERSION 1u
#define SHMLINK_BOARD_SLOT_HEADER 64u

struct shmlink_board {
    /* line 0: constants, written before the segment is ready */
    uint32_t magic;
    uint32_t layout_version;
    uint64_t capacity;     /* largest value, bytes */
    uint64_t slot0_offset; /* from the start of this struct */
    uint64_t slot_stride;
    uint8_t pad0[SHMLINK_CACHE_LINE - 32];
    /* line 1: writers */
    struct shmlink_lock lock;
    uint64_t takeovers;       /* writes that took the lock from a dead writer */
    uint32_t last_writer_pid;
    uint32_t pad1a;
    uint8_t pad1[SHMLINK_CACHE_LINE - 32];
    /* line 2: published */
    uint64_t version; /* SYNC: released by writers, acquired by readers */
    uint32_t change;  /* futex word: low 32 bits of the version */
    uint32_t waiters;
    uint8_t pad2[SHMLINK_CACHE_LINE - 16];
};
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_board) == 3 * SHMLINK_CACHE_LINE,
                      "board control block is three cache lines, slots follow");
SHMLINK_STATIC_ASSERT(offsetof(struct shmlink_board, version) == 128,
                      "board.py reads the version at offset 128");

struct shmlink_board_slot {
    uint64_t seq;    /* 2v - 1 while version v is written, 2v when complete */
    uint64_t length; /* bytes of the value */
    uint8_t pad[SHMLINK_BOARD_SLOT_HEADER - 16];
    /* the value follows */
};

/* Read the board's current value into buf (cap bytes) without locking.
 * Returns its length, with *version_out set; -EMSGSIZE when cap is too small
 * (*version_out and the needed length via *need are set); -EBADMSG when the
 * board is inconsistent; -EPROTO for a foreign layout; -EAGAIN when writers
 * kept overwriting the slot for `tries` attempts (call again). */
static inline int64_t shmlink_board_read(const void *mem, uint64_t size, void *buf,
                                         uint64_t cap, uint64_t *version_out,
                                         uint64_t *need, int tries) {
    const struct shmlink_board *b = (const struct shmlink_board *)mem;
    if (size < sizeof *b)
        return -EBADMSG;
    if (SHMLINK_LOAD_ACQUIRE(&b->magic) != SHMLINK_BOARD_MAGIC ||
        SHMLINK_LOAD_RELAXED(&b->layout_version) != SHMLINK_BOARD_VERSION)
        return -EPROTO;
    /* the constants, loaded once and checked: the board is untrusted */
    uint64_t capacity = SHMLINK_LOAD_RELAXED(&b->capacity);
    uint64_t slot0 = SHMLINK_LOAD_RELAXED(&b->slot0_offset);
    uint64_t stride = SHMLINK_LOAD_RELAXED(&b->slot_stride);
    if (slot0 < sizeof *b || slot0 > size || capacity > size ||
        stride > (size - slot0) / 2 || stride < SHMLINK_BOARD_SLOT_HEADER + capacity)
        return -EBADMSG;
    for (int t = 0; t < tries; t++) {
        /* SYNC: pairs with the writer's release of version. */
        uint64_t v = SHMLINK_LOAD_ACQUIRE(&b->version);
        const struct shmlink_board_slot *sl = (const struct shmlink_board_slot *)(
            (const uint8_t *)mem + slot0 + (v % 2) * stride);
        uint64_t seq = SHMLINK_LOAD_ACQUIRE(&sl->seq);
        if (seq != 2 * v)
            continue; /* a writer came round to this slot: try again */
        uint64_t len = SHMLINK_LOAD_RELAXED(&sl->length);
        if (len > capacity)
            return -EBADMSG;
        if (len > cap) {
            if (version_out)
                *version_out = v;
            if (need)
                *need = len;
            return -EMSGSIZE;
        }
        memcpy(buf, (const uint8_t *)sl + SHMLINK_BOARD_SLOT_HEADER, (size_t)len);
        /* SYNC: the copy happens before the re-check; pairs with the writer
         * marking the slot 2v - 1 before it writes the value. */
        SHMLINK_FENCE_ACQUIRE();
        if (SHMLINK_LOAD_RELAXED(&sl->seq) != seq)
            continue; /* a writer started on this slot during the copy */
        if (version_out)
            *version_out = v;
        return (int64_t)len;
    }
    return -EAGAIN;
}

SHMLINK_END_DECLS

#endif /* SHMLINK_BOARD_H */
