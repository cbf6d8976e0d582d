/*
 * shmlink/segment.h -- the segment header every shmlink object starts
 * with, and opening a segment by name from C.
 *
 * A segment is one file: "shmlink.<name>" in /dev/shm (or $SHMLINK_DIR),
 * or a regular file.  The header sits at offset 0; the data area starts at
 * SHMLINK_DATA_OFFSET (one page, so the data is page-aligned) and holds the
 * kind's own control block (ring.h, topic.h, board.h, mutex.h ...).
 */
#ifndef SHMLINK_SEGMENT_H
#define SHMLINK_SEGMENT_H

#include "atomic.h"
#include "liveness.h"
#include "platform.h"

SHMLINK_BEGIN_DECLS

#define SHMLINK_MAGIC 0x4b4e494c4d485301ULL /* "\x01SHMLINK" little-endian */
#define SHMLINK_LAYOUT_VERSION 1u
#define SHMLINK_DATA_OFFSET 4096u
#define SHMLINK_MAX_PARTICIPANTS 128u
#define SHMLINK_NAME_PREFIX "shmlink."
#define SHMLINK_NAME_MAX 200u

enum shmlink_kind {
    SHMLINK_KIND_RAW = 1,    /* plain Segment: the data area is the user's */
    SHMLINK_KIND_MUTEX = 2,
    SHMLINK_KIND_EVENT = 3,
    SHMLINK_KIND_QUEUE = 4,
    SHMLINK_KIND_TOPIC = 5,
    SHMLINK_KIND_BOARD = 6,
    SHMLINK_KIND_LISTENER = 7,
    SHMLINK_KIND_CONNECTION = 8,
};
#define SHMLINK_KIND_MAX 8

/* header.flags */
#define SHMLINK_FLAG_UNLINK_ON_LAST_CLOSE 0x1u /* lifetime policy "auto" */

/* The ready word's values.  A creator holds an exclusive flock() on the file
 * while it initialises; openers wait (futex on `ready`) until it is 1. */
#define SHMLINK_NOT_READY 0u
#define SHMLINK_READY 1u

struct shmlink_participant {
    uint32_t pid;        /* 0 = free slot; claimed by CAS 0 -> pid */
    uint32_t reserved;
    uint64_t start_time; /* /proc/PID/stat field 22; 0 while being claimed */
};

struct shmlink_header {
    uint64_t magic;          /*  0 SHMLINK_MAGIC */
    uint32_t layout_version; /*  8 SHMLINK_LAYOUT_VERSION */
    uint32_t kind;           /* 12 enum shmlink_kind */
    uint64_t data_offset;    /* 16 SHMLINK_DATA_OFFSET */
    uint64_t data_size;      /* 24 exact size the creator asked for */
    uint64_t total_size;     /* 32 data_offset + data_size == file size */
    uint32_t creator_pid;    /* 40 */
    uint32_t flags;          /* 44 SHMLINK_FLAG_* */
    uint64_t creator_start;  /* 48 creator's process start time */
    uint64_t created_ns;     /* 56 CLOCK_REALTIME at creation, nanoseconds */
    uint32_t ready;          /* 64 futex word: SHMLINK_NOT_READY / _READY */
    uint32_t max_participants; /* 68 SHMLINK_MAX_PARTICIPANTS */
    uint32_t kind_version;   /* 72 layout version of the kind's own block */
    uint32_t reserved0;      /* 76 */
    uint8_t reserved1[128 - 80];
    struct shmlink_participant participants[SHMLINK_MAX_PARTICIPANTS]; /* 128 */
};

SHMLINK_STATIC_ASSERT(offsetof(struct shmlink_header, ready) == 64,
                      "the ready word starts the second cache line");
SHMLINK_STATIC_ASSERT(offsetof(struct shmlink_header, participants) == 128,
                      "participants table at a fixed offset for all versions");
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_header) <= SHMLINK_DATA_OFFSET,
                      "header must fit before the page-aligned data area");
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_participant) == 16,
                      "participant slots are 16 bytes in every language");

/* 0 if `name` is a valid segment name (the rule of Python's
 * shmlink.segment.validate_name: 1-200 characters of [A-Za-z0-9_.-], not
 * starting with '.' or '-', without ".."), else -EINVAL. */
static inline int shmlink_name_check(const char *name) {
    size_t n = 0;
    if (!name || name[0] == '\0' || name[0] == '.' || name[0] == '-')
        return -EINVAL;
    for (const char *p = name; *p; p++, n++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
        if (!ok || n >= SHMLINK_NAME_MAX || (c == '.' && p[1] == '.'))
            return -EINVAL;
    }
    return 0;
}

/* An open segment, from C.  Holds a shared flock for as long as it is open,
 * which is how shmlink knows a process uses the segment (`shmlink gc` never
 * removes it meanwhile).  Does not take a participant slot. */
struct shmlink_segment {
    int fd;
    uint8_t *base;     /* the mapping: header at base, data at base + 4096 */
    uint64_t total;    /* mapped bytes */
    uint64_t size;     /* data bytes */
    uint32_t kind;
    uint8_t *data;
};

/* Open the named segment ("shmlink.<name>" in $SHMLINK_DIR, default
 * /dev/shm) read-write.  Returns 0, -EINVAL (not a valid name), -errno from
 * the system (-ENOENT: no such segment), -EPROTO (not a shmlink segment, or
 * another layout version), -EBADMSG (inconsistent header), -EINPROGRESS
 * (its creator has not marked it ready yet: try again). */
static inline int shmlink_segment_open(struct shmlink_segment *seg, const char *name) {
    char path[4096];
    int fd = -1;
    uint64_t file_size = 0;
    void *mem = NULL;
    seg->fd = -1;
    seg->base = NULL;
    int rc = shmlink_name_check(name);
    if (rc == 0)
        rc = shmlink_os_segment_path(path, sizeof path, SHMLINK_NAME_PREFIX);
    if (rc == 0 && strlen(path) + strlen(name) >= sizeof path)
        rc = -ENAMETOOLONG;
    if (rc != 0)
        return rc;
    strcat(path, name);
    rc = shmlink_os_open_shared(path, &fd, &file_size);
    if (rc != 0)
        return rc;
    if (file_size < SHMLINK_DATA_OFFSET + 1) {
        shmlink_os_close(fd);
        return -EPROTO;
    }
    rc = shmlink_os_map(fd, file_size, &mem);
    if (rc != 0) {
        shmlink_os_close(fd);
        return rc;
    }
    struct shmlink_header *h = (struct shmlink_header *)mem;
    /* each field loaded once, then checked: the file is untrusted */
    uint64_t magic = SHMLINK_LOAD_RELAXED(&h->magic);
    uint32_t version = SHMLINK_LOAD_RELAXED(&h->layout_version);
    uint64_t data_offset = SHMLINK_LOAD_RELAXED(&h->data_offset);
    uint64_t data_size = SHMLINK_LOAD_RELAXED(&h->data_size);
    uint64_t total_size = SHMLINK_LOAD_RELAXED(&h->total_size);
    uint32_t kind = SHMLINK_LOAD_RELAXED(&h->kind);
    if (magic != SHMLINK_MAGIC || version != SHMLINK_LAYOUT_VERSION)
        rc = -EPROTO;
    else if (data_offset != SHMLINK_DATA_OFFSET || data_size == 0 ||
             total_size != file_size || data_size != file_size - SHMLINK_DATA_OFFSET ||
             kind == 0 || kind > SHMLINK_KIND_MAX)
        rc = -EBADMSG;
    /* SYNC: pairs with the creator's release store of ready (segment.py
     * writes the whole file before it is linked under its name; C creators
     * lay it out in place, then store ready). */
    else if (SHMLINK_LOAD_ACQUIRE(&h->ready) != SHMLINK_READY)
        rc = -EINPROGRESS;
    if (rc != 0) {
        shmlink_os_unmap(mem, file_size);
        shmlink_os_close(fd);
        return rc;
    }
    seg->fd = fd;
    seg->base = (uint8_t *)mem;
    seg->total = file_size;
    seg->size = data_size;
    seg->kind = kind;
    seg->data = seg->base + SHMLINK_DATA_OFFSET;
    return 0;
}

/* Unmap and close (drops the flock).  Idempotent. */
static inline void shmlink_segment_close(struct shmlink_segment *seg) {
    if (seg->base)
        shmlink_os_unmap(seg->base, seg->total);
    if (seg->fd >= 0)
        shmlink_os_close(seg->fd);
    seg->base = NULL;
    seg->data = NULL;
    seg->fd = -1;
}

/* ---- creating a segment, and removing its name ------------------------------ */

/* Lays out the kind's control block in a segment being created (data is
 * the data area, zero-filled, size bytes).  0 or -errno (creation fails). */
typedef int (*shmlink_segment_init_fn)(void *arg, uint8_t *data, uint64_t size);

/* The file the segment `name` lives in ($SHMLINK_DIR or /dev/shm).  0,
 * -EINVAL (not a valid name), -ENAMETOOLONG, or -ENOENT ($SHMLINK_DIR set
 * but empty). */
static inline int shmlink_segment_path(char *buf, size_t cap, const char *name) {
    char prefixed[SHMLINK_NAME_MAX + sizeof SHMLINK_NAME_PREFIX];
    int rc = shmlink_name_check(name);
    if (rc != 0)
        return rc;
    snprintf(prefixed, sizeof prefixed, "%s%s", SHMLINK_NAME_PREFIX, name);
    return shmlink_os_segment_path(buf, cap, prefixed);
}

/* Create the segment `name` with `size` data bytes, as Python's
 * Segment._create_kind does: the whole file (header, then the kind's block
 * through init) is written under a temporary name
 * "shmlink..new.<pid>.<hex>.<name>", marked ready, then link()ed to its
 * real name, so no opener ever sees it half-made; a creator killed half-way
 * leaves only the temporary file, which `shmlink gc` removes.  flags:
 * SHMLINK_FLAG_UNLINK_ON_LAST_CLOSE for lifetime "auto".  The segment stays
 * open, its shared flock held.  Takes no participant slot.  0, -EEXIST (the
 * name is taken), -EINVAL, -ENAMETOOLONG, what init returned, or -errno
 * from the system (-ENOSPC: no room in the directory). */
static inline int shmlink_segment_create(struct shmlink_segment *seg, const char *name,
                                         uint32_t kind, uint32_t kind_version, uint64_t size,
                                         uint32_t mode, uint32_t flags,
                                         shmlink_segment_init_fn init, void *arg) {
    char final[4096], tmp[4096], tmpname[SHMLINK_NAME_MAX + 64];
    seg->fd = -1;
    seg->base = NULL;
    seg->data = NULL;
    if (size == 0 || size > ((uint64_t)1 << 46) || kind == 0 || kind > SHMLINK_KIND_MAX)
        return -EINVAL;
    int rc = shmlink_segment_path(final, sizeof final, name);
    if (rc != 0)
        return rc;
    uint32_t pid;
    uint64_t start;
    shmlink_self(&pid, &start);
    snprintf(tmpname, sizeof tmpname, "%s.new.%u.%08x.%s", SHMLINK_NAME_PREFIX, pid,
             shmlink_os_random32(), name);
    rc = shmlink_os_segment_path(tmp, sizeof tmp, tmpname);
    if (rc != 0)
        return rc;
    uint64_t total = SHMLINK_DATA_OFFSET + size;
    int fd = -1;
    void *mem = NULL;
    rc = shmlink_os_create_excl(tmp, mode, total, &fd);
    if (rc != 0)
        return rc;
    rc = shmlink_os_map(fd, total, &mem);
    if (rc == 0) {
        /* nobody else can see the file yet: plain stores, published below */
        struct shmlink_header *h = (struct shmlink_header *)mem;
        h->magic = SHMLINK_MAGIC;
        h->layout_version = SHMLINK_LAYOUT_VERSION;
        h->kind = kind;
        h->data_offset = SHMLINK_DATA_OFFSET;
        h->data_size = size;
        h->total_size = total;
        h->creator_pid = pid;
        h->flags = flags;
        h->creator_start = start;
        h->created_ns = shmlink_os_realtime_ns();
        h->max_participants = SHMLINK_MAX_PARTICIPANTS;
        h->kind_version = kind_version;
        if (init)
            rc = init(arg, (uint8_t *)mem + SHMLINK_DATA_OFFSET, size);
    }
    if (rc == 0) {
        /* SYNC: pairs with the acquire load of ready in shmlink_segment_open
         * (and Python's _wait_ready): the header and block are visible to
         * whoever sees ready == 1. */
        SHMLINK_STORE_SEQ_CST(&((struct shmlink_header *)mem)->ready, SHMLINK_READY);
        rc = shmlink_os_link(tmp, final);
    }
    shmlink_os_unlink(tmp);
    if (rc != 0) {
        if (mem)
            shmlink_os_unmap(mem, total);
        shmlink_os_close(fd);
        return rc;
    }
    seg->fd = fd;
    seg->base = (uint8_t *)mem;
    seg->total = total;
    seg->size = size;
    seg->kind = kind;
    seg->data = seg->base + SHMLINK_DATA_OFFSET;
    return 0;
}

/* Remove the name `name` if it still names this open segment (not a newer
 * one made under the same name).  0, -ENOENT (already gone), -ESTALE (the
 * name now names another segment) or -errno. */
static inline int shmlink_segment_unlink(const struct shmlink_segment *seg, const char *name) {
    char path[4096];
    int rc = shmlink_segment_path(path, sizeof path, name);
    return rc != 0 ? rc : shmlink_os_unlink_if_same(path, seg->fd);
}

/* Close, and for lifetime "auto" (SHMLINK_FLAG_UNLINK_ON_LAST_CLOSE) remove
 * the name when no other process holds the segment open: the rule of
 * Python's Segment.close.  Idempotent. */
static inline void shmlink_segment_close_auto(struct shmlink_segment *seg, const char *name) {
    if (seg->base && seg->fd >= 0 &&
        (SHMLINK_LOAD_RELAXED(&((struct shmlink_header *)seg->base)->flags) &
         SHMLINK_FLAG_UNLINK_ON_LAST_CLOSE) &&
        shmlink_os_try_lock_exclusive(seg->fd) == 0)
        shmlink_segment_unlink(seg, name);
    shmlink_segment_close(seg);
}

SHMLINK_END_DECLS

#endif /* SHMLINK_SEGMENT_H */
