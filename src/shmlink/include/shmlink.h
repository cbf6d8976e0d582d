/*
 * shmlink.h -- the shmlink shared-memory protocol, for C and C++ programs.
 *
 * This header has no Python in it.  A C or C++ program that includes it can
 * open a shmlink segment (a file in /dev/shm named "shmlink.<name>", or a
 * regular file), check its header, and speak the same protocol as Python
 * peers: the robust lock, futex wait/wake, and the message ring used by
 * shmlink.Queue.
 *
 * Conventions (see DESIGN.md):
 *   - shared memory holds fixed-width integers and offsets, never pointers;
 *   - words written by producers and by consumers sit on separate 64-byte
 *     cache lines;
 *   - shared words are touched only through the SHM_* macros below;
 *   - each release store carries a "SYNC:" comment naming its acquire partner;
 *   - internal functions return 0 or a negative errno value;
 *   - every index and length read from shared memory is loaded once into a
 *     local, checked, then used: a peer may be buggy or hostile.
 *
 * Linux only (futex).  Requires GCC or Clang (__atomic builtins).
 */
#ifndef SHMLINK_H
#define SHMLINK_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#define SHMLINK_STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define SHMLINK_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

/* ------------------------------------------------------------------------ */
/* Ordering vocabulary.  Defined once; everything below uses only these.    */
/* ------------------------------------------------------------------------ */

/* A word this side owns, or a value whose ordering does not matter. */
#define SHM_LOAD_RELAXED(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define SHM_STORE_RELAXED(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
/* Reads the other side's published index: what it wrote before its release
 * store is visible after this load. */
#define SHM_LOAD_ACQUIRE(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
/* Publishes: everything written before is visible to an acquire load that
 * sees the new value. */
#define SHM_STORE_RELEASE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
/* Read-modify-write with full ordering (locks, counters, waiter counts). */
#define SHM_CAS(p, expected_ptr, desired)                                      \
    __atomic_compare_exchange_n((p), (expected_ptr), (desired), 0,             \
                                __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)
#define SHM_FETCH_ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#define SHM_EXCHANGE(p, v) __atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)
#define SHM_LOAD_SEQ_CST(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define SHM_STORE_SEQ_CST(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
/* Store-load ordering between "I announced myself" and "I re-check". */
#define SHM_FENCE() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define SHM_FENCE_ACQUIRE() __atomic_thread_fence(__ATOMIC_ACQUIRE)

#if defined(__x86_64__) || defined(__i386__)
#define SHM_CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define SHM_CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define SHM_CPU_RELAX() __asm__ __volatile__("" ::: "memory")
#endif

#define SHMLINK_CACHE_LINE 64

/* ------------------------------------------------------------------------ */
/* Segment header.  Sits at offset 0 of every segment; the data area starts  */
/* at SHMLINK_DATA_OFFSET (one page, so the data is page-aligned).          */
/* ------------------------------------------------------------------------ */

#define SHMLINK_MAGIC 0x4b4e494c4d485301ULL /* "\x01SHMLINK" little-endian */
#define SHMLINK_LAYOUT_VERSION 1u
#define SHMLINK_DATA_OFFSET 4096u
#define SHMLINK_MAX_PARTICIPANTS 128u
#define SHMLINK_NAME_PREFIX "shmlink."

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

/* ------------------------------------------------------------------------ */
/* Futex wait and wake.  The only place a thread sleeps.                    */
/* ------------------------------------------------------------------------ */

/* Sleep while *addr == expected, until woken or until the absolute
 * CLOCK_MONOTONIC deadline (NULL = forever).  The deadline is absolute so
 * that retrying after EINTR never extends it.  Returns 0 when woken (maybe
 * spuriously), -EAGAIN when *addr != expected, -ETIMEDOUT, or -EINTR when a
 * signal arrived (the caller handles the signal, then decides). */
static inline int shmlink_futex_wait(uint32_t *addr, uint32_t expected,
                                     const struct timespec *deadline) {
    /* Not FUTEX_PRIVATE_FLAG: waiters and wakers are different processes. */
    long rc = syscall(SYS_futex, addr, FUTEX_WAIT_BITSET, expected, deadline,
                      NULL, FUTEX_BITSET_MATCH_ANY);
    if (rc == 0)
        return 0;
    return -errno;
}

/* Wake up to n waiters of addr.  Returns how many were woken, or -errno. */
static inline int shmlink_futex_wake(uint32_t *addr, int n) {
    long rc = syscall(SYS_futex, addr, FUTEX_WAKE, n, NULL, NULL, 0);
    return rc < 0 ? -errno : (int)rc;
}

static inline void shmlink_deadline_after(struct timespec *ts, double seconds) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    if (seconds < 0)
        seconds = 0;
    if (seconds > 1e9)
        seconds = 1e9;
    long long whole = (long long)seconds;
    ts->tv_sec += (time_t)whole;
    ts->tv_nsec += (long)((seconds - (double)whole) * 1e9);
    while (ts->tv_nsec >= 1000000000L) {
        ts->tv_nsec -= 1000000000L;
        ts->tv_sec += 1;
    }
}

/* 1 if now is at or past *deadline (NULL never passes). */
static inline int shmlink_deadline_passed(const struct timespec *deadline) {
    struct timespec now;
    if (!deadline)
        return 0;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline->tv_sec ||
           (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

/* The earlier of *deadline and now + seconds, into *out. */
static inline void shmlink_deadline_min(struct timespec *out,
                                        const struct timespec *deadline,
                                        double seconds) {
    shmlink_deadline_after(out, seconds);
    if (deadline && (deadline->tv_sec < out->tv_sec ||
                     (deadline->tv_sec == out->tv_sec &&
                      deadline->tv_nsec < out->tv_nsec)))
        *out = *deadline;
}

/* ------------------------------------------------------------------------ */
/* Process identity: a PID plus its start time, so a reused PID is not       */
/* mistaken for the process that died.                                      */
/* ------------------------------------------------------------------------ */

/* Start time of pid in clock ticks since boot (/proc/PID/stat field 22), or
 * 0 if the process does not exist (or /proc is unreadable). */
static inline uint64_t shmlink_process_start_time(uint32_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and ')': skip to the last
     * ')', then count fields 3..22. */
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p++;
    int field = 2;
    while (*p && field < 22) {
        if (*p == ' ') {
            field++;
            while (*p == ' ')
                p++;
            continue;
        }
        p++;
    }
    if (field != 22)
        return 0;
    unsigned long long st = 0;
    if (sscanf(p, "%llu", &st) != 1)
        return 0;
    /* a zombie has exited: it will never release anything */
    char *state = strrchr(buf, ')');
    if (state && state[1] == ' ' && (state[2] == 'Z' || state[2] == 'X'))
        return 0;
    return (uint64_t)st;
}

/* 1 if the process (pid, start_time) is alive.  start_time 0 means "not
 * recorded yet": then the PID alone decides. */
static inline int shmlink_process_alive(uint32_t pid, uint64_t start_time) {
    if (pid == 0)
        return 0;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return 0;
    uint64_t now = shmlink_process_start_time(pid);
    if (now == 0)
        return 0; /* gone, or a zombie */
    return start_time == 0 || now == start_time;
}

/* ------------------------------------------------------------------------ */
/* Robust lock.  The word holds the owner's PID (0 = free).  A waiter that   */
/* has slept for a slice checks whether the owner is still alive (PID and    */
/* start time); if it died, the waiter takes the lock over by CAS and is     */
/* told (return 1).  Lock algorithm here; sleeping is shmlink_futex_wait.   */
/* ------------------------------------------------------------------------ */

struct shmlink_lock {
    uint32_t owner;       /* PID of the holder, 0 = free (futex word) */
    uint32_t waiters;     /* processes sleeping on `owner` */
    uint64_t owner_start; /* holder's start time, written after taking it */
};
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_lock) == 16, "lock is 16 bytes");

/* How long a waiter sleeps before it checks that the owner is alive. */
#ifndef SHMLINK_LIVENESS_SLICE_S
#define SHMLINK_LIVENESS_SLICE_S 0.02
#endif

/* 0 if taken, -EBUSY if held by someone. */
static inline int shmlink_lock_try(struct shmlink_lock *l, uint32_t self_pid,
                                   uint64_t self_start) {
    uint32_t expected = 0;
    if (SHM_CAS(&l->owner, &expected, self_pid)) {
        SHM_STORE_RELAXED(&l->owner_start, self_start);
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
    if (!SHM_CAS(&l->owner_start, &expected_start, (uint64_t)0))
        return 0;
    uint32_t expected = dead;
    if (SHM_CAS(&l->owner, &expected, self_pid)) {
        SHM_STORE_SEQ_CST(&l->owner_start, self_start);
        return 1;
    }
    return 0;
}

/* One bounded attempt to sleep on a held lock, then a liveness check.
 * Returns 0 (try again), 1 (the lock is now ours, its owner had died),
 * -ETIMEDOUT or -EINTR. */
static inline int shmlink_lock_wait_once(struct shmlink_lock *l,
                                         uint32_t self_pid, uint64_t self_start,
                                         const struct timespec *deadline) {
    uint32_t owner = SHM_LOAD_ACQUIRE(&l->owner);
    if (owner == 0)
        return 0;
    uint64_t owner_start = SHM_LOAD_RELAXED(&l->owner_start);
    struct timespec slice;
    shmlink_deadline_min(&slice, deadline, SHMLINK_LIVENESS_SLICE_S);
    SHM_FETCH_ADD(&l->waiters, 1);
    int rc = shmlink_futex_wait(&l->owner, owner, &slice);
    SHM_FETCH_ADD(&l->waiters, (uint32_t)-1);
    if (rc == -EINTR)
        return -EINTR;
    if (rc == -ETIMEDOUT) {
        /* Re-read both words now: the owner may have changed hands during
         * the slice, and only a fresh start time belongs to it. */
        owner = SHM_LOAD_ACQUIRE(&l->owner);
        owner_start = SHM_LOAD_SEQ_CST(&l->owner_start);
        if (owner != 0 && SHM_LOAD_ACQUIRE(&l->owner) == owner &&
            !shmlink_process_alive(owner, owner_start) &&
            shmlink_lock_steal(l, owner, owner_start, self_pid, self_start))
            return 1;
        if (shmlink_deadline_passed(deadline))
            return -ETIMEDOUT;
    }
    return 0;
}

static inline void shmlink_lock_release(struct shmlink_lock *l) {
    SHM_STORE_RELAXED(&l->owner_start, 0);
    /* SYNC: pairs with the CAS in shmlink_lock_try of the next owner: the
     * data written under the lock is visible to it. */
    SHM_STORE_SEQ_CST(&l->owner, 0);
    if (SHM_LOAD_SEQ_CST(&l->waiters) != 0)
        shmlink_futex_wake(&l->owner, 1);
}

/* ------------------------------------------------------------------------ */
/* Event count: "sleep until something changes" without lost wake-ups.      */
/* Bit 0 of seq says "a waiter sleeps on this value"; a waker that finds it  */
/* clear makes no system call, so wakers pay one futex wake per sleep, not   */
/* one per event.  A waiter killed while armed costs one spurious wake, then */
/* nothing: there is no count to leak.                                       */
/*   waiter: v = shmlink_ec_arm(ec); if (!condition) shmlink_ec_wait(ec, v)  */
/*   waker:  make the condition true; shmlink_ec_notify(ec)                  */
/* Either the waker's load sees the armed bit (and wakes), or the waiter's   */
/* re-check after arming sees the condition (seq_cst on both sides).         */
/* ------------------------------------------------------------------------ */

struct shmlink_eventcount {
    uint32_t seq;
    uint32_t waiters; /* unused: kept so the layouts stay as they are */
};

static inline uint32_t shmlink_ec_arm(struct shmlink_eventcount *ec) {
    for (;;) {
        uint32_t v = SHM_LOAD_ACQUIRE(&ec->seq);
        if (v & 1u)
            return v;
        if (SHM_CAS(&ec->seq, &v, v | 1u)) {
            SHM_FENCE(); /* the arming before the caller's re-check */
            return v | 1u;
        }
    }
}

static inline void shmlink_ec_notify(struct shmlink_eventcount *ec) {
    SHM_FENCE(); /* the condition's stores before the load of seq */
    uint32_t v = SHM_LOAD_RELAXED(&ec->seq);
    if ((v & 1u) && SHM_CAS(&ec->seq, &v, v + 1u))
        shmlink_futex_wake(&ec->seq, INT_MAX);
}

/* Wake every waiter, armed or not (a handle being closed or interrupted). */
static inline void shmlink_ec_wake_all(struct shmlink_eventcount *ec) {
    uint32_t v = SHM_LOAD_RELAXED(&ec->seq);
    while (!SHM_CAS(&ec->seq, &v, (v | 1u) + 1u))
        ;
    shmlink_futex_wake(&ec->seq, INT_MAX);
}

/* Sleep until seq moves past `armed` (from shmlink_ec_arm) or the deadline.
 * Returns 0 (re-check), -ETIMEDOUT or -EINTR. */
static inline int shmlink_ec_wait(struct shmlink_eventcount *ec, uint32_t armed,
                                  const struct timespec *deadline) {
    int rc = shmlink_futex_wait(&ec->seq, armed, deadline);
    return rc == -EAGAIN ? 0 : rc;
}

/* ------------------------------------------------------------------------ */
/* Opening a segment from C.  Holds a shared flock for as long as it is      */
/* open, which is how shmlink knows a process uses the segment (`shmlink gc` */
/* never removes it meanwhile).  Does not take a participant slot.          */
/* ------------------------------------------------------------------------ */

struct shmlink_segment {
    int fd;
    uint8_t *base;     /* the mapping: header at base, data at base + 4096 */
    uint64_t total;    /* mapped bytes */
    uint64_t size;     /* data bytes */
    uint32_t kind;
    uint8_t *data;
};

/* Open "/dev/shm/shmlink.<name>" read-write.  Returns 0, -errno from the
 * system (-ENOENT: no such segment), -EPROTO (not a shmlink segment, or
 * another layout version), -EBADMSG (inconsistent header), -EINPROGRESS
 * (its creator has not marked it ready yet: try again). */
static inline int shmlink_segment_open(struct shmlink_segment *seg, const char *name) {
    char path[512];
    if (snprintf(path, sizeof path, "/dev/shm/" SHMLINK_NAME_PREFIX "%s", name) >=
        (int)sizeof path)
        return -ENAMETOOLONG;
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    int rc = 0;
    struct stat st;
    uint8_t *base = NULL;
    struct shmlink_header *h;
    uint64_t data_size;
    if (flock(fd, LOCK_SH) != 0 || fstat(fd, &st) != 0) {
        rc = -errno;
        goto fail;
    }
    if ((uint64_t)st.st_size < SHMLINK_DATA_OFFSET + 1) {
        rc = -EPROTO;
        goto fail;
    }
    base = (uint8_t *)mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                           fd, 0);
    if (base == MAP_FAILED) {
        rc = -errno;
        goto fail;
    }
    h = (struct shmlink_header *)base;
    data_size = h->data_size; /* each field loaded once, then checked */
    if (h->magic != SHMLINK_MAGIC || h->layout_version != SHMLINK_LAYOUT_VERSION)
        rc = -EPROTO;
    else if (h->data_offset != SHMLINK_DATA_OFFSET || data_size == 0 ||
             h->total_size != (uint64_t)st.st_size ||
             data_size != (uint64_t)st.st_size - SHMLINK_DATA_OFFSET ||
             h->kind == 0 || h->kind > SHMLINK_KIND_MAX)
        rc = -EBADMSG;
    else if (SHM_LOAD_ACQUIRE(&h->ready) != SHMLINK_READY) /* SYNC: creator's ready store */
        rc = -EINPROGRESS;
    if (rc != 0) {
        munmap(base, (size_t)st.st_size);
        goto fail;
    }
    seg->fd = fd;
    seg->base = base;
    seg->total = (uint64_t)st.st_size;
    seg->size = data_size;
    seg->kind = h->kind;
    seg->data = base + SHMLINK_DATA_OFFSET;
    return 0;
fail:
    close(fd);
    return rc;
}

static inline void shmlink_segment_close(struct shmlink_segment *seg) {
    if (seg->base)
        munmap(seg->base, (size_t)seg->total);
    if (seg->fd >= 0)
        close(seg->fd); /* drops the flock */
    seg->base = NULL;
    seg->fd = -1;
}

/* ------------------------------------------------------------------------ */
/* Message ring (shmlink.Queue): lossless, variable-length, many producers   */
/* and many consumers.                                                      */
/*                                                                          */
/* Producers serialise on prod_lock, consumers on cons_lock (both robust).   */
/* head and tail are monotonically increasing byte positions; the byte at    */
/* position p lives at data[p % capacity].  A record is an 8-byte header     */
/* (length, check) followed by the payload padded to 8 bytes.  A record      */
/* never wraps: a producer that lacks contiguous room commits a WRAP marker  */
/* that fills the rest of the ring, then writes at position 0.              */
/*                                                                          */
/* Crash safety: a producer publishes a record by one release store of tail; */
/* killed before it, the record never existed.  A consumer consumes by one   */
/* release store of head; killed before it, the record stays for others.    */
/* A lock whose holder died is taken over by the next waiter.               */
/* ------------------------------------------------------------------------ */

#define SHMLINK_RING_MAGIC 0x474e4952u /* "RING" */
#define SHMLINK_RING_VERSION 2u /* 2: armed event counts */
#define SHMLINK_RECORD_HEADER 8u
#define SHMLINK_RECORD_WRAP 0xFFFFFFFFu /* length field of a wrap marker */
#define SHMLINK_RECORD_CHECK 0x5A17C0DEu /* check = length ^ this */

struct shmlink_ring {
    /* line 0: constants, written by the creator before the segment is ready */
    uint32_t magic;
    uint32_t version;
    uint64_t capacity;    /* bytes in the data area, multiple of 8, >= 64 */
    uint64_t max_message; /* largest payload; <= capacity - 8 */
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
    uint8_t pad3[SHMLINK_CACHE_LINE - 8];
    /* line 4: consumers notify producers here */
    struct shmlink_eventcount space_ec;
    uint8_t pad4[SHMLINK_CACHE_LINE - 8];
};
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_ring) == 5 * SHMLINK_CACHE_LINE,
                      "ring control block is five cache lines");
SHMLINK_STATIC_ASSERT(offsetof(struct shmlink_ring, prod_lock) % 64 == 0 &&
                          offsetof(struct shmlink_ring, cons_lock) % 64 == 0,
                      "producer and consumer words on separate cache lines");
#define SHMLINK_RING_DATA_OFFSET ((uint64_t)sizeof(struct shmlink_ring))

static inline uint64_t shmlink_ring_record_size(uint64_t len) {
    return SHMLINK_RECORD_HEADER + ((len + 7u) & ~(uint64_t)7u);
}

/* Bytes a ring of the given capacity needs, control block included. */
static inline uint64_t shmlink_ring_footprint(uint64_t capacity) {
    return SHMLINK_RING_DATA_OFFSET + capacity;
}

/* Initialise a ring in `mem` (size bytes).  Before the segment is ready. */
static inline int shmlink_ring_init(void *mem, uint64_t size,
                                    uint64_t max_message) {
    struct shmlink_ring *r = (struct shmlink_ring *)mem;
    if (size < SHMLINK_RING_DATA_OFFSET + 64)
        return -EINVAL;
    uint64_t capacity = (size - SHMLINK_RING_DATA_OFFSET) & ~(uint64_t)7u;
    if (max_message == 0 || max_message > capacity - SHMLINK_RECORD_HEADER)
        max_message = capacity - SHMLINK_RECORD_HEADER;
    memset(r, 0, sizeof *r);
    r->version = SHMLINK_RING_VERSION;
    r->capacity = capacity;
    r->max_message = max_message;
    r->data_offset = SHMLINK_RING_DATA_OFFSET;
    SHM_STORE_RELEASE(&r->magic, SHMLINK_RING_MAGIC);
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

/* -EPROTO: not a ring or another version; -EBADMSG: inconsistent. */
static inline int shmlink_ring_attach(struct shmlink_ring_handle *h, void *mem,
                                      uint64_t size) {
    struct shmlink_ring *r = (struct shmlink_ring *)mem;
    if (size < SHMLINK_RING_DATA_OFFSET + 64)
        return -EBADMSG;
    if (SHM_LOAD_ACQUIRE(&r->magic) != SHMLINK_RING_MAGIC ||
        SHM_LOAD_RELAXED(&r->version) != SHMLINK_RING_VERSION)
        return -EPROTO;
    uint64_t capacity = SHM_LOAD_RELAXED(&r->capacity);
    uint64_t max_message = SHM_LOAD_RELAXED(&r->max_message);
    uint64_t data_offset = SHM_LOAD_RELAXED(&r->data_offset);
    if (data_offset != SHMLINK_RING_DATA_OFFSET || capacity < 64 ||
        capacity % 8 != 0 || capacity > size - SHMLINK_RING_DATA_OFFSET ||
        max_message == 0 || max_message > capacity - SHMLINK_RECORD_HEADER)
        return -EBADMSG;
    h->ring = r;
    h->data = (uint8_t *)mem + data_offset;
    h->capacity = capacity;
    h->max_message = max_message;
    return 0;
}

/* Space check and placement for one record of len bytes, with prod_lock
 * held.  Returns the position to write at (>= tail), with *wrap set when a
 * wrap marker must first fill [tail, pos); or -EAGAIN when the ring lacks
 * room now; or -EBADMSG when head/tail are inconsistent. */
static inline int64_t shmlink_ring_place(const struct shmlink_ring_handle *h,
                                         uint64_t tail, uint64_t head,
                                         uint64_t len, int *wrap) {
    uint64_t cap = h->capacity;
    if (tail - head > cap || (tail & 7u) || (head & 7u))
        return -EBADMSG;
    uint64_t need = shmlink_ring_record_size(len);
    uint64_t to_end = cap - (tail % cap);
    uint64_t pos = tail;
    *wrap = 0;
    if (need > to_end) {
        pos = tail + to_end;
        *wrap = 1;
    }
    if (pos + need - head > cap)
        return -EAGAIN;
    return (int64_t)pos;
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
 * acquired).  Returns the payload length, or -EAGAIN when empty, or -EBADMSG
 * for a corrupt ring.  Wrap markers are skipped (*head_io advances). */
static inline int64_t shmlink_ring_peek(const struct shmlink_ring_handle *h,
                                        uint64_t *head_io, uint64_t tail) {
    uint64_t cap = h->capacity;
    for (int hops = 0; hops < 2; hops++) {
        uint64_t head = *head_io;
        if (tail == head)
            return -EAGAIN;
        if (tail - head > cap || (head & 7u) || (tail & 7u))
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
        return (int64_t)len;
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
    uint64_t head = SHM_LOAD_ACQUIRE(&r->head); /* SYNC: consumers' head release */
    int wrap;
    int64_t pos = shmlink_ring_place(h, tail, head, len, &wrap);
    if (pos == -EAGAIN && wrap) {
        /* No room for the record, but the wrap marker alone may fit: commit
         * it, so that once consumers drain, the record fits at position 0.
         * Without this, a record longer than the room left before the end
         * of an empty ring would wait forever. */
        uint64_t to_end = h->capacity - (tail % h->capacity);
        if (tail + to_end - head <= h->capacity) {
            shmlink_ring_write_record(h, tail, NULL, SHMLINK_RECORD_WRAP);
            *tail_io = tail + to_end;
        }
    }
    if (pos < 0)
        return (int)pos;
    if (wrap)
        shmlink_ring_write_record(h, tail, NULL, SHMLINK_RECORD_WRAP);
    shmlink_ring_write_record(h, (uint64_t)pos, data, (uint32_t)len);
    *tail_io = (uint64_t)pos + shmlink_ring_record_size(len);
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
    if (SHM_LOAD_ACQUIRE(&r->head) != wrap_at)
        return 0;
    if (shmlink_lock_try(&r->cons_lock, pid, start) != 0)
        return 0;
    int moved = 0;
    if (SHM_LOAD_RELAXED(&r->head) == wrap_at) {
        /* SYNC: as a consumer's head release; producers acquire head. */
        SHM_STORE_RELEASE(&r->head, tail);
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
    SHM_STORE_RELEASE(&r->tail, tail);
    /* Counted after the commit: a producer killed in between leaves `sent`
     * lagging (len() reads low), never counting a message that is not there. */
    SHM_STORE_RELAXED(&r->sent, SHM_LOAD_RELAXED(&r->sent) + count);
}

/* Take a ring lock without sleeping: 0 if taken (from a free or a dead
 * holder), -EBUSY if a live process holds it. */
static inline int shmlink_ring_lock_try(struct shmlink_lock *l, uint32_t pid,
                                        uint64_t start) {
    if (shmlink_lock_try(l, pid, start) == 0)
        return 0;
    uint32_t owner = SHM_LOAD_ACQUIRE(&l->owner);
    uint64_t owner_start = SHM_LOAD_RELAXED(&l->owner_start);
    if (owner != 0 && !shmlink_process_alive(owner, owner_start) &&
        shmlink_lock_steal(l, owner, owner_start, pid, start))
        return 0;
    return -EBUSY;
}

/* Send one message without waiting.  pid/start identify the caller
 * (getpid() and shmlink_process_start_time(getpid())).  Returns 0, -EAGAIN
 * (full, or the producer lock is busy: try again), -EMSGSIZE, -EBADMSG. */
static inline int shmlink_ring_try_send(const struct shmlink_ring_handle *h,
                                        const void *data, uint64_t len,
                                        uint32_t pid, uint64_t start) {
    struct shmlink_ring *r = h->ring;
    if (len > h->max_message)
        return -EMSGSIZE;
    if (shmlink_ring_lock_try(&r->prod_lock, pid, start) != 0)
        return -EAGAIN;
    uint64_t tail0 = SHM_LOAD_RELAXED(&r->tail), tail = tail0;
    int rc = shmlink_ring_push_locked(h, &tail, data, len);
    if (rc == -EAGAIN && tail != tail0) {
        /* only a wrap marker went in: publish it, and step over it if the
         * ring was drained up to it, then try once more */
        shmlink_ring_commit(h, tail, 0);
        if (shmlink_ring_consume_wrap(h, tail0, tail, pid, start)) {
            tail0 = tail;
            rc = shmlink_ring_push_locked(h, &tail, data, len);
        }
    }
    if (tail != tail0)
        shmlink_ring_commit(h, tail, rc == 0 ? 1 : 0);
    shmlink_lock_release(&r->prod_lock);
    if (tail != tail0)
        shmlink_ec_notify(&r->data_ec);
    return rc;
}

/* Receive one message without waiting into buf (cap bytes).  Returns its
 * length, -EAGAIN (empty or the consumer lock is busy), -EMSGSIZE (the
 * message is larger than cap; it stays queued), or -EBADMSG. */
static inline int64_t shmlink_ring_try_recv(const struct shmlink_ring_handle *h,
                                            void *buf, uint64_t cap,
                                            uint32_t pid, uint64_t start) {
    struct shmlink_ring *r = h->ring;
    if (shmlink_ring_lock_try(&r->cons_lock, pid, start) != 0)
        return -EAGAIN;
    uint64_t head0 = SHM_LOAD_RELAXED(&r->head), head = head0;
    /* SYNC: pairs with the producers' release of tail in shmlink_ring_commit. */
    uint64_t tail = SHM_LOAD_ACQUIRE(&r->tail);
    int64_t len = shmlink_ring_peek(h, &head, tail);
    if (len >= 0 && (uint64_t)len > cap) {
        len = -EMSGSIZE;
    } else if (len >= 0) {
        memcpy(buf, h->data + (head % h->capacity) + SHMLINK_RECORD_HEADER, (size_t)len);
        head += shmlink_ring_record_size((uint64_t)len);
        /* Counted before the commit: a consumer killed in between leaves
         * `received` ahead (len() reads low), like a producer's `sent`
         * lagging; len() never reports a message that is not there. */
        SHM_STORE_RELAXED(&r->received, SHM_LOAD_RELAXED(&r->received) + 1);
    }
    if (len != -EBADMSG && head != head0)
        SHM_STORE_RELEASE(&r->head, head); /* SYNC: producers' acquire of head */
    shmlink_lock_release(&r->cons_lock);
    if (head != head0)
        shmlink_ec_notify(&r->space_ec);
    return len;
}

/* Blocking receive for C programs: waits (futex, no spinning) until a
 * message arrives or the deadline.  Returns like shmlink_ring_try_recv, or
 * -ETIMEDOUT / -EINTR. */
static inline int64_t shmlink_ring_recv(const struct shmlink_ring_handle *h,
                                        void *buf, uint64_t cap, uint32_t pid,
                                        uint64_t start,
                                        const struct timespec *deadline) {
    struct shmlink_ring *r = h->ring;
    for (;;) {
        int64_t n = shmlink_ring_try_recv(h, buf, cap, pid, start);
        if (n != -EAGAIN)
            return n;
        uint32_t seen = shmlink_ec_arm(&r->data_ec);
        int rc = 0;
        if (SHM_LOAD_ACQUIRE(&r->tail) == SHM_LOAD_ACQUIRE(&r->head)) {
            struct timespec slice; /* bounded, so a dead lock holder is noticed */
            shmlink_deadline_min(&slice, deadline, SHMLINK_LIVENESS_SLICE_S * 5);
            rc = shmlink_ec_wait(&r->data_ec, seen, &slice);
            if (rc == -ETIMEDOUT && !shmlink_deadline_passed(deadline))
                rc = 0;
        }
        if (rc != 0)
            return rc;
    }
}

/* Blocking send for C programs: waits while the queue is full. */
static inline int shmlink_ring_send(const struct shmlink_ring_handle *h,
                                    const void *data, uint64_t len, uint32_t pid,
                                    uint64_t start, const struct timespec *deadline) {
    struct shmlink_ring *r = h->ring;
    for (;;) {
        int rc = shmlink_ring_try_send(h, data, len, pid, start);
        if (rc != -EAGAIN)
            return rc;
        uint32_t seen = shmlink_ec_arm(&r->space_ec);
        struct timespec slice;
        shmlink_deadline_min(&slice, deadline, SHMLINK_LIVENESS_SLICE_S * 5);
        rc = shmlink_ec_wait(&r->space_ec, seen, &slice);
        if (rc == -ETIMEDOUT && !shmlink_deadline_passed(deadline))
            rc = 0;
        if (rc != 0)
            return rc;
    }
}

/* ------------------------------------------------------------------------ */
/* Topic (shmlink.Topic): one-to-many broadcast.                             */
/*                                                                          */
/* One byte ring, written by publishers (serialised on pub_lock, robust) and */
/* read by every subscriber at its own pace: a subscriber owns a cursor in   */
/* its slot of the subscriber table and takes nothing out of the ring.      */
/*                                                                          */
/* Positions.  tail, head and cursors are monotonically increasing byte     */
/* positions; position p lives at data[p % capacity].  [head, tail) holds    */
/* whole entries, oldest first: a record (16-byte header: length, check,    */
/* 64-bit sequence number; the payload padded to 16 bytes) or a WRAP marker  */
/* that fills the rest of the ring.  Entries never wrap.  Always            */
/* head <= tail, tail - head <= capacity, and both are multiples of 16.     */
/*                                                                          */
/* Publishing.  An entry ending at `end` has room when head >= end -         */
/* capacity.  The publisher moves head forward over whole entries until it  */
/* does, stores head (release) and issues a release fence BEFORE it         */
/* overwrites a byte, writes the entry, then stores `published` and         */
/* releases tail.  Lossless mode: head may not pass `floor`, a lower bound   */
/* of every active subscriber's cursor; lacking room, the publisher waits   */
/* on space_ec and, in liveness slices, evicts the subscribers holding it   */
/* back whose process died (PID + start time).  Latest mode: head moves     */
/* freely; the publisher never waits for subscribers.                      */
/*                                                                          */
/* Reading (a seqlock on head).  A subscriber acquires tail, copies the     */
/* entry at its cursor, then issues an acquire fence and loads head.  head  */
/* > cursor means a publisher may have overwritten the entry during the     */
/* copy: the copy is thrown away and the subscriber resumes at head, the    */
/* oldest entry still held.  Sequence numbers say how many it missed:       */
/* missed += seq - next_seq.  No torn message is ever delivered.            */
/*                                                                          */
/* Crash safety.  A publisher killed before its tail store leaves no entry  */
/* (head may have moved on: readers count what it overwrote as missed);     */
/* the next publisher takes pub_lock over and re-derives `published` from    */
/* the last committed record.  A subscriber killed at any point leaves an   */
/* active slot: lossless publishers evict it, and subscribe reuses it.      */
/* ------------------------------------------------------------------------ */

#define SHMLINK_TOPIC_MAGIC 0x43504f54u /* "TOPC" */
#define SHMLINK_TOPIC_VERSION 1u
#define SHMLINK_TOPIC_LOSSLESS 1u
#define SHMLINK_TOPIC_LATEST 2u
#define SHMLINK_TOPIC_RECORD_HEADER 16u
#define SHMLINK_TOPIC_MIN_CAPACITY 64u
#define SHMLINK_TOPIC_MAX_SUBSCRIBERS 1024u
#define SHMLINK_TOPIC_MAX_MESSAGE 0xFFFFFFF0u /* lengths are 32-bit; WRAP is reserved */

/* Stores after the fence are not visible before the stores ahead of it:
 * head's store is seen before any byte the publisher then overwrites. */
#define SHM_FENCE_RELEASE() __atomic_thread_fence(__ATOMIC_RELEASE)

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
    uint8_t pad3[SHMLINK_CACHE_LINE - 8];
    /* line 4: subscribers wake lossless publishers here */
    struct shmlink_eventcount space_ec;
    uint8_t pad4[SHMLINK_CACHE_LINE - 8];
};
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_topic) == 5 * SHMLINK_CACHE_LINE,
                      "topic control block is five cache lines");
SHMLINK_STATIC_ASSERT(offsetof(struct shmlink_topic, pub_lock) % 64 == 0 &&
                          offsetof(struct shmlink_topic, tail) % 64 == 0 &&
                          offsetof(struct shmlink_topic, data_ec) % 64 == 0 &&
                          offsetof(struct shmlink_topic, space_ec) % 64 == 0,
                      "the lock, the positions and each event count on their own lines");
#define SHMLINK_TOPIC_SUBS_OFFSET ((uint64_t)sizeof(struct shmlink_topic))

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
    SHM_STORE_RELEASE(&t->magic, SHMLINK_TOPIC_MAGIC);
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
    if (SHM_LOAD_ACQUIRE(&t->magic) != SHMLINK_TOPIC_MAGIC ||
        SHM_LOAD_RELAXED(&t->version) != SHMLINK_TOPIC_VERSION)
        return -EPROTO;
    uint32_t mode = SHM_LOAD_RELAXED(&t->mode);
    uint32_t max_subs = SHM_LOAD_RELAXED(&t->max_subscribers);
    uint64_t capacity = SHM_LOAD_RELAXED(&t->capacity);
    uint64_t max_message = SHM_LOAD_RELAXED(&t->max_message);
    uint64_t subs_offset = SHM_LOAD_RELAXED(&t->subs_offset);
    uint64_t data_offset = SHM_LOAD_RELAXED(&t->data_offset);
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
    uint32_t hwm = SHM_LOAD_RELAXED(&h->topic->sub_hwm);
    if (hwm > h->max_subscribers)
        hwm = h->max_subscribers;
    uint64_t floor = UINT64_MAX;
    for (uint32_t i = 0; i < hwm; i++) {
        struct shmlink_topic_sub *s = &h->subs[i];
        if (SHM_LOAD_ACQUIRE(&s->active) == 0)
            continue;
        /* SYNC: pairs with the subscriber's release of its cursor: its copy
         * of what lies below is done before we overwrite it. */
        uint64_t c = SHM_LOAD_ACQUIRE(&s->cursor);
        if (c > tail || tail - c > h->capacity || (c & 15u))
            return -EBADMSG;
        uint64_t size, len, seq;
        if (c < tail && shmlink_topic_entry(h, c, &size, &len, &seq) == 1 && size <= tail - c) {
            uint64_t past = c + size;
            if (fix)
                SHM_CAS(&s->cursor, &c, past);
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
        SHM_STORE_RELEASE(&t->head, head);
        SHM_FENCE_RELEASE();
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
    SHM_STORE_RELAXED(&t->published, next_seq);
    /* SYNC: publishes the entries; pairs with the subscribers' acquire of
     * tail in shmlink_topic_try_recv, shmlink_topic_resume and the binding. */
    SHM_STORE_RELEASE(&t->tail, tail);
}

/* With pub_lock taken over from a publisher that died: re-derive
 * `published` from the last committed record (the dead one may have
 * stored it before its tail) and make the floor be rescanned.  0 or
 * -EBADMSG. */
static inline int shmlink_topic_repair(const struct shmlink_topic_handle *h) {
    struct shmlink_topic *t = h->topic;
    uint64_t tail = SHM_LOAD_RELAXED(&t->tail), head = SHM_LOAD_RELAXED(&t->head);
    if (head > tail || tail - head > h->capacity || ((head | tail) & 15u))
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
        SHM_STORE_RELAXED(&t->published, last + 1);
    else if (tail == 0)
        SHM_STORE_RELAXED(&t->published, 0);
    SHM_STORE_RELAXED(&t->floor, 0);
    return 0;
}

/* Lossless, with pub_lock held and no room: evict the active subscribers
 * whose cursor lies below `required` and whose process died.  Returns how
 * many were evicted. */
static inline int shmlink_topic_evict_dead(const struct shmlink_topic_handle *h,
                                           uint64_t required) {
    struct shmlink_topic *t = h->topic;
    uint32_t hwm = SHM_LOAD_RELAXED(&t->sub_hwm);
    if (hwm > h->max_subscribers)
        hwm = h->max_subscribers;
    int n = 0;
    for (uint32_t i = 0; i < hwm; i++) {
        struct shmlink_topic_sub *s = &h->subs[i];
        uint32_t gen = SHM_LOAD_ACQUIRE(&s->active);
        if (gen == 0 || SHM_LOAD_ACQUIRE(&s->cursor) >= required)
            continue;
        uint32_t pid = SHM_LOAD_RELAXED(&s->pid);
        if (shmlink_process_alive(pid, SHM_LOAD_RELAXED(&s->start_time)))
            continue;
        if (SHM_CAS(&s->active, &gen, 0)) {
            SHM_CAS(&s->pid, &pid, 0);
            SHM_STORE_RELAXED(&t->evicted, SHM_LOAD_RELAXED(&t->evicted) + 1);
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
    uint64_t tail = SHM_LOAD_RELAXED(&t->tail), head = SHM_LOAD_RELAXED(&t->head);
    uint64_t published = SHM_LOAD_RELAXED(&t->published);
    if (head > tail || tail - head > h->capacity || ((head | tail) & 15u))
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
            uint32_t cur = SHM_LOAD_ACQUIRE(&s->pid);
            if (cur == 0 ? pass != 0
                         : (pass == 0 ||
                            shmlink_process_alive(cur, SHM_LOAD_RELAXED(&s->start_time))))
                continue;
            if (SHM_CAS(&s->pid, &cur, pid)) {
                if (SHM_LOAD_RELAXED(&s->active) != 0)
                    SHM_STORE_RELAXED(&t->evicted, SHM_LOAD_RELAXED(&t->evicted) + 1);
                slot = (int)i;
                break;
            }
        }
    }
    if (slot < 0)
        return -ENOSPC;
    struct shmlink_topic_sub *s = &h->subs[slot];
    SHM_STORE_RELAXED(&s->active, 0);
    SHM_STORE_RELAXED(&s->start_time, start);
    SHM_STORE_RELAXED(&s->cursor, cursor);
    SHM_STORE_RELAXED(&s->next_seq, seq);
    SHM_STORE_RELAXED(&s->missed, 0);
    SHM_STORE_RELAXED(&s->received, 0);
    uint32_t gen = SHM_LOAD_RELAXED(&t->claims) + 1;
    if (gen == 0)
        gen = 1;
    SHM_STORE_RELAXED(&t->claims, gen);
    if ((uint32_t)slot + 1 > SHM_LOAD_RELAXED(&t->sub_hwm))
        SHM_STORE_RELAXED(&t->sub_hwm, (uint32_t)slot + 1);
    if (h->mode == SHMLINK_TOPIC_LOSSLESS && SHM_LOAD_RELAXED(&t->floor) > cursor)
        SHM_STORE_RELAXED(&t->floor, cursor);
    /* SYNC: pairs with the publishers' acquire of active in
     * shmlink_topic_scan_floor: the cursor is set before the slot counts. */
    SHM_STORE_RELEASE(&s->active, gen);
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
    if (SHM_CAS(&s->active, &g, 0)) {
        uint32_t p = pid;
        SHM_CAS(&s->pid, &p, 0);
    }
    shmlink_ec_notify(&h->topic->space_ec);
}

/* Subscriber: record its progress in its slot (and wake lossless
 * publishers that wait for room). */
static inline void shmlink_topic_progress(const struct shmlink_topic_handle *h, int slot,
                                          uint64_t cursor, uint64_t next_seq,
                                          uint64_t missed, uint64_t received) {
    struct shmlink_topic_sub *s = &h->subs[slot];
    SHM_STORE_RELAXED(&s->next_seq, next_seq);
    SHM_STORE_RELAXED(&s->missed, missed);
    SHM_STORE_RELAXED(&s->received, received);
    /* SYNC: pairs with the publishers' acquire of cursor in
     * shmlink_topic_scan_floor: our copies are done before they overwrite. */
    SHM_STORE_RELEASE(&s->cursor, cursor);
    if (h->mode == SHMLINK_TOPIC_LOSSLESS)
        shmlink_ec_notify(&h->topic->space_ec);
}

/* Subscriber: 1 if a publisher may have overwritten the entry at pos since
 * the subscriber last acquired tail (its copy must then be thrown away). */
static inline int shmlink_topic_overtaken(const struct shmlink_topic_handle *h, uint64_t pos) {
    /* SYNC: pairs with the publishers' release fence after their head store
     * in shmlink_topic_put: the copy's loads are done before head is read. */
    SHM_FENCE_ACQUIRE();
    return SHM_LOAD_RELAXED(&h->topic->head) > pos;
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
        if (c == tail)
            return -EAGAIN;
        if (c > tail || (c & 15u))
            return -EBADMSG;
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
        uint64_t head = SHM_LOAD_ACQUIRE(&t->head);
        uint64_t tail = SHM_LOAD_ACQUIRE(&t->tail);
        if (head > tail || (head & 15u) || head < *cursor_io)
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

/* Receive one message without waiting into buf (cap bytes).  Returns its
 * length, -EAGAIN (nothing new), -EMSGSIZE (larger than cap: it is
 * skipped and counted as missed), or -EBADMSG. */
static inline int64_t shmlink_topic_try_recv(const struct shmlink_topic_handle *h,
                                             struct shmlink_topic_reader *r, void *buf,
                                             uint64_t cap) {
    struct shmlink_topic *t = h->topic;
    uint64_t cursor = r->cursor;
    uint64_t tail = SHM_LOAD_ACQUIRE(&t->tail); /* SYNC: publishers' tail release */
    uint64_t published = SHM_LOAD_RELAXED(&t->published);
    int64_t rc;
    for (;;) {
        uint64_t seq;
        rc = shmlink_topic_peek(h, &cursor, tail, &seq);
        if (rc == -ESTALE) {
            if (shmlink_topic_resume(h, &cursor, &tail) < 0)
                return -EBADMSG;
            published = SHM_LOAD_RELAXED(&t->published);
            continue;
        }
        if (rc < 0)
            break;
        if ((uint64_t)rc <= cap)
            memcpy(buf, shmlink_topic_payload(h, cursor), (size_t)rc);
        if (shmlink_topic_overtaken(h, cursor)) {
            if (shmlink_topic_resume(h, &cursor, &tail) < 0)
                return -EBADMSG;
            published = SHM_LOAD_RELAXED(&t->published);
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

/* Publish one message without waiting for room.  With evict_dead, a
 * lossless topic without room first evicts the subscribers holding it back
 * whose process died (it reads /proc: not on every spin).  Returns 0,
 * -EAGAIN (lossless: no room now, or pub_lock busy), -EMSGSIZE, -EBADMSG. */
static inline int shmlink_topic_try_publish(const struct shmlink_topic_handle *h,
                                            const void *data, uint64_t len, uint32_t pid,
                                            uint64_t start, int evict_dead) {
    struct shmlink_topic *t = h->topic;
    if (len > h->max_message)
        return -EMSGSIZE;
    int lrc = shmlink_lock_try(&t->pub_lock, pid, start);
    if (lrc != 0) {
        uint32_t owner = SHM_LOAD_ACQUIRE(&t->pub_lock.owner);
        uint64_t owner_start = SHM_LOAD_RELAXED(&t->pub_lock.owner_start);
        if (owner == 0 || shmlink_process_alive(owner, owner_start) ||
            !shmlink_lock_steal(&t->pub_lock, owner, owner_start, pid, start))
            return -EAGAIN;
        if (shmlink_topic_repair(h) < 0) {
            shmlink_lock_release(&t->pub_lock);
            return -EBADMSG;
        }
    }
    uint64_t committed = SHM_LOAD_RELAXED(&t->tail), tail = committed;
    uint64_t head = SHM_LOAD_RELAXED(&t->head), seq = SHM_LOAD_RELAXED(&t->published);
    uint64_t floor = UINT64_MAX, required;
    int rc = -EBADMSG, rescanned = 0;
    if (head <= tail && tail - head <= h->capacity && !((head | tail) & 15u)) {
        if (h->mode == SHMLINK_TOPIC_LOSSLESS)
            floor = SHM_LOAD_RELAXED(&t->floor);
        for (;;) {
            rc = shmlink_topic_put(h, &tail, committed, &head, floor, data, (uint32_t)len,
                                   seq, &required);
            if (rc == 1)
                continue;
            if (rc == -EINPROGRESS) {
                shmlink_topic_commit(h, tail, seq);
                committed = tail;
                continue;
            }
            if (rc == -EAGAIN && !rescanned) {
                rescanned = 1;
                if (evict_dead)
                    shmlink_topic_evict_dead(h, required);
                if (shmlink_topic_scan_floor(h, committed, &floor, 1) < 0) {
                    rc = -EBADMSG;
                    break;
                }
                SHM_STORE_RELAXED(&t->floor, floor);
                continue;
            }
            break;
        }
    }
    if (rc == 0)
        seq++;
    if (tail != committed)
        shmlink_topic_commit(h, tail, seq);
    shmlink_lock_release(&t->pub_lock);
    if (tail != committed)
        shmlink_ec_notify(&t->data_ec);
    return rc;
}

/* Take pub_lock for C programs, sleeping until the deadline.  0, 1 (taken
 * over from a holder that died: call shmlink_topic_repair), -ETIMEDOUT or
 * -EINTR. */
static inline int shmlink_topic_lock(const struct shmlink_topic_handle *h, uint32_t pid,
                                     uint64_t start, const struct timespec *deadline) {
    struct shmlink_lock *l = &h->topic->pub_lock;
    for (;;) {
        if (shmlink_lock_try(l, pid, start) == 0)
            return 0;
        int rc = shmlink_lock_wait_once(l, pid, start, deadline);
        if (rc != 0)
            return rc;
    }
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
    int slot = -EBADMSG;
    if (rc == 0 || shmlink_topic_repair(h) == 0)
        slot = shmlink_topic_claim(h, pid, start, oldest, &r->gen, &r->cursor, &r->next_seq);
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

/* Blocking receive for C programs (futex, no spinning): like
 * shmlink_topic_try_recv, or -ETIMEDOUT / -EINTR. */
static inline int64_t shmlink_topic_recv(const struct shmlink_topic_handle *h,
                                         struct shmlink_topic_reader *r, void *buf,
                                         uint64_t cap, const struct timespec *deadline) {
    struct shmlink_topic *t = h->topic;
    for (;;) {
        int64_t n = shmlink_topic_try_recv(h, r, buf, cap);
        if (n != -EAGAIN)
            return n;
        uint32_t seen = shmlink_ec_arm(&t->data_ec);
        if (SHM_LOAD_ACQUIRE(&t->tail) != r->cursor)
            continue;
        int rc = shmlink_futex_wait(&t->data_ec.seq, seen, deadline);
        if (rc == -ETIMEDOUT || rc == -EINTR)
            return rc;
    }
}

/* Blocking publish for C programs: a lossless topic waits for room, and in
 * liveness slices evicts the dead subscribers holding it back.  0,
 * -EMSGSIZE, -EBADMSG, -ETIMEDOUT or -EINTR. */
static inline int shmlink_topic_publish(const struct shmlink_topic_handle *h, const void *data,
                                        uint64_t len, uint32_t pid, uint64_t start,
                                        const struct timespec *deadline) {
    struct shmlink_topic *t = h->topic;
    int evict = 0;
    for (;;) {
        int rc = shmlink_topic_try_publish(h, data, len, pid, start, evict);
        if (rc != -EAGAIN)
            return rc;
        uint32_t seen = shmlink_ec_arm(&t->space_ec);
        struct timespec slice;
        shmlink_deadline_min(&slice, deadline, SHMLINK_LIVENESS_SLICE_S);
        rc = shmlink_futex_wait(&t->space_ec.seq, seen, &slice);
        if (rc == -EINTR)
            return rc;
        evict = rc == -ETIMEDOUT;
        if (evict && shmlink_deadline_passed(deadline))
            return -ETIMEDOUT;
    }
}

/* ------------------------------------------------------------------------ */
/* Board (shmlink.Board): a shared latest value, double-buffered.            */
/*                                                                          */
/* Version v lives in slot v % 2.  A writer (holding `lock`) fills the slot  */
/* nobody points to with seq = 2v - 1 while writing and 2v when complete,    */
/* then publishes `version`.  A reader loads version v, checks its slot's    */
/* seq is 2v, copies, fences and re-reads seq: unchanged means the copy is   */
/* whole.  Readers never take the lock, so a writer killed mid-write never   */
/* blocks them (it only spoiled the unpublished slot).                      */
/* ------------------------------------------------------------------------ */

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
    if (SHM_LOAD_ACQUIRE(&b->magic) != SHMLINK_BOARD_MAGIC ||
        SHM_LOAD_RELAXED(&b->layout_version) != SHMLINK_BOARD_VERSION)
        return -EPROTO;
    uint64_t capacity = b->capacity, slot0 = b->slot0_offset, stride = b->slot_stride;
    if (slot0 < sizeof *b || stride < SHMLINK_BOARD_SLOT_HEADER + capacity ||
        slot0 > size || 2 * stride > size - slot0)
        return -EBADMSG;
    for (int t = 0; t < tries; t++) {
        /* SYNC: pairs with the writer's release of version. */
        uint64_t v = SHM_LOAD_ACQUIRE(&b->version);
        const struct shmlink_board_slot *sl = (const struct shmlink_board_slot *)(
            (const uint8_t *)mem + slot0 + (v % 2) * stride);
        uint64_t seq = SHM_LOAD_ACQUIRE(&sl->seq);
        if (seq != 2 * v)
            continue; /* a writer came round to this slot: try again */
        uint64_t len = SHM_LOAD_RELAXED(&sl->length);
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
        SHM_FENCE_ACQUIRE(); /* the copy happens before the re-check */
        if (SHM_LOAD_RELAXED(&sl->seq) != seq)
            continue; /* a writer started on this slot during the copy */
        if (version_out)
            *version_out = v;
        return (int64_t)len;
    }
    return -EAGAIN;
}

#ifdef __cplusplus
}
#endif
#endif /* SHMLINK_H */
