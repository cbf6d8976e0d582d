/*
 * shmlink/platform.h -- every operating-system call shmlink makes, and
 * nothing else.
 *
 * The protocol headers never call the OS themselves: they sleep and wake
 * through the futex pair here, read the clock here, find and map segment
 * files here and ask here whether a process lives.  A port to another
 * system (macOS: __ulock_wait/__ulock_wake or os_sync_wait_on_address,
 * Windows: WaitOnAddress and named file mappings) replaces this one file
 * and keeps every function's contract:
 *
 *   shmlink_futex_wait / shmlink_futex_wake   sleep on / wake a 32-bit word
 *                                             shared between processes
 *   shmlink_os_now                            the monotonic clock
 *   shmlink_os_getpid, shmlink_os_pid_exists  process identity
 *   shmlink_process_start_time                when a process started (so a
 *                                             reused PID is told apart)
 *   shmlink_os_yield                          give the CPU away once
 *   shmlink_os_shm_dir, shmlink_os_segment_path   where named segments live
 *                                             ($SHMLINK_DIR, as Python's
 *                                             shmlink.segment.shm_dir())
 *   shmlink_os_open_shared, shmlink_os_map, shmlink_os_unmap,
 *   shmlink_os_close                          open a segment file holding a
 *                                             shared file lock, map it
 *   shmlink_os_create_excl, shmlink_os_link, shmlink_os_unlink(_if_same),
 *   shmlink_os_try_lock_exclusive             create a segment file, name
 *                                             it, remove it when last
 *   shmlink_os_realtime_ns, shmlink_os_random32   creation time, fresh names
 *   shmlink_os_bell_bind, shmlink_os_bell_send,
 *   shmlink_os_bell_drain                     doorbells (shmlink/doorbell.h):
 *                                             a descriptor another process
 *                                             makes readable by an id
 *
 * All return 0 (or a value) on success and a negative errno value on
 * failure, like the rest of shmlink.  Linux implementation.
 */
#ifndef SHMLINK_PLATFORM_H
#define SHMLINK_PLATFORM_H

#include "atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

SHMLINK_BEGIN_DECLS

/* ---- futex: the only place a thread sleeps ----------------------------- */

/* Sleep while *addr == expected, until woken or until the absolute
 * monotonic deadline (NULL = forever).  The deadline is absolute so that
 * retrying after EINTR never extends it.  Returns 0 when woken (maybe
 * spuriously), -EAGAIN when *addr != expected already, -ETIMEDOUT, or -EINTR
 * when a signal arrived (the caller handles the signal, then decides). */
static inline int shmlink_futex_wait(uint32_t *addr, uint32_t expected,
                                     const struct timespec *deadline) {
    /* Not FUTEX_PRIVATE_FLAG: waiters and wakers are different processes.
     * FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline. */
    long rc = syscall(SYS_futex, addr, FUTEX_WAIT_BITSET, expected, deadline,
                      NULL, FUTEX_BITSET_MATCH_ANY);
    if (rc == 0)
        return 0;
    return -errno;
}

/* Wake up to n sleepers of addr.  Returns how many were woken, or -errno. */
static inline int shmlink_futex_wake(uint32_t *addr, int n) {
    long rc = syscall(SYS_futex, addr, FUTEX_WAKE, n, NULL, NULL, 0);
    return rc < 0 ? -errno : (int)rc;
}

/* ---- time and scheduling ------------------------------------------------ */

/* The monotonic clock, the one every shmlink deadline is measured on. */
static inline void shmlink_os_now(struct timespec *ts) {
    clock_gettime(CLOCK_MONOTONIC, ts);
}

/* Let another runnable thread have this CPU (the holder of a lock we want
 * may be waiting for it). */
static inline void shmlink_os_yield(void) {
    sched_yield();
}

/* ---- processes ---------------------------------------------------------- */

static inline uint32_t shmlink_os_getpid(void) {
    return (uint32_t)getpid();
}

/* 0 if no process has this PID, 1 if one may (it exists, or we may not
 * signal it). */
static inline int shmlink_os_pid_exists(uint32_t pid) {
    if (pid == 0 || pid > (uint32_t)INT_MAX)
        return 0;
    return !(kill((pid_t)pid, 0) != 0 && errno == ESRCH);
}

/* Start time of pid in clock ticks since boot (/proc/PID/stat field 22), or
 * 0 if the process does not exist, is a zombie, or /proc is unreadable. */
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
    char *state = strrchr(buf, ')');
    if (!state)
        return 0;
    /* a zombie has exited: it will never release anything */
    if (state[1] == ' ' && (state[2] == 'Z' || state[2] == 'X'))
        return 0;
    char *p = state + 1;
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
    return (uint64_t)st;
}

/* ---- where named segments live ------------------------------------------ */

/* $SHMLINK_DIR, or /dev/shm when it is unset: the same rule as
 * shmlink.segment.shm_dir().  Set but empty, it is "" (a mistake, not the
 * default: shmlink_os_segment_path refuses it). */
static inline const char *shmlink_os_shm_dir(void) {
    const char *d = getenv("SHMLINK_DIR");
    return d ? d : "/dev/shm";
}

/* The file of the segment called `prefixed` (already "shmlink.<name>"),
 * joined like Python's os.path.join(shm_dir(), prefixed).  0,
 * -ENAMETOOLONG, or -ENOENT when $SHMLINK_DIR is set but empty (Python
 * raises BadDirectory then; a missing directory or one that is a file shows
 * as -ENOENT / -ENOTDIR from the call that uses the path). */
static inline int shmlink_os_segment_path(char *buf, size_t cap, const char *prefixed) {
    const char *dir = shmlink_os_shm_dir();
    size_t n = strlen(dir);
    if (n == 0)
        return -ENOENT;
    const char *sep = dir[n - 1] == '/' ? "" : "/";
    int w = snprintf(buf, cap, "%s%s%s", dir, sep, prefixed);
    return (w < 0 || (size_t)w >= cap) ? -ENAMETOOLONG : 0;
}

/* ---- segment files ------------------------------------------------------- */

/* Open an existing segment file read-write and take a shared flock on it
 * (held until shmlink_os_close: that is how shmlink knows a process uses
 * the segment).  *size_out is the file's size.  0 or -errno. */
static inline int shmlink_os_open_shared(const char *path, int *fd_out, uint64_t *size_out) {
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (flock(fd, LOCK_SH) != 0 || fstat(fd, &st) != 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    *fd_out = fd;
    *size_out = (uint64_t)st.st_size;
    return 0;
}

/* Map size bytes of fd shared, read-write.  0 or -errno. */
static inline int shmlink_os_map(int fd, uint64_t size, void **base_out) {
    if (size > (uint64_t)SIZE_MAX)
        return -EFBIG;
    void *base = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return -errno;
    *base_out = base;
    return 0;
}

static inline void shmlink_os_unmap(void *base, uint64_t size) {
    munmap(base, (size_t)size);
}

/* Close a segment file (which drops its flock). */
static inline void shmlink_os_close(int fd) {
    close(fd);
}

/* ---- creating and removing segment files (shmlink/segment.h) ------------ */

/* Create a new file at path (fails with -EEXIST if the name is taken) with
 * exactly these permission bits (the umask neither narrows nor widens
 * them), reserve size bytes (posix_fallocate: a full /dev/shm is an error
 * here, not a SIGBUS on first touch) and take a shared flock on it.
 * 0 or -errno; on failure nothing is left at path. */
static inline int shmlink_os_create_excl(const char *path, uint32_t mode, uint64_t size,
                                         int *fd_out) {
    if (size > (uint64_t)INT64_MAX)
        return -EFBIG;
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, (mode_t)(mode & 0777u));
    if (fd < 0)
        return -errno;
    int rc = fchmod(fd, (mode_t)(mode & 0777u)) != 0 ? -errno : 0;
    if (rc == 0) {
        int e = posix_fallocate(fd, 0, (off_t)size);
        if (e == EOPNOTSUPP || e == EINVAL)
            e = ftruncate(fd, (off_t)size) != 0 ? errno : 0;
        rc = -e;
    }
    if (rc == 0 && flock(fd, LOCK_SH) != 0)
        rc = -errno;
    if (rc != 0) {
        unlink(path);
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return 0;
}

/* Give the file at `from` a second name `to` (fails with -EEXIST if taken:
 * this is what makes creation exclusive).  0 or -errno. */
static inline int shmlink_os_link(const char *from, const char *to) {
    return link(from, to) == 0 ? 0 : -errno;
}

/* Remove the name path.  0 or -errno. */
static inline int shmlink_os_unlink(const char *path) {
    return unlink(path) == 0 ? 0 : -errno;
}

/* Remove the name path only if it still names the file open as fd (not a
 * newer segment created under the same name since).  0, or -errno. */
static inline int shmlink_os_unlink_if_same(const char *path, int fd) {
    struct stat a, b;
    if (stat(path, &a) != 0)
        return -errno;
    if (fstat(fd, &b) != 0)
        return -errno;
    if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
        return -ESTALE;
    return shmlink_os_unlink(path);
}

/* Try to turn our shared flock into an exclusive one without waiting:
 * 0 when nobody else holds the file open (we are its last user),
 * -EWOULDBLOCK when someone does. */
static inline int shmlink_os_try_lock_exclusive(int fd) {
    return flock(fd, LOCK_EX | LOCK_NB) == 0 ? 0 : -errno;
}

/* Wall-clock time in nanoseconds (the header's created_ns). */
static inline uint64_t shmlink_os_realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* 32 unpredictable bits (names of temporary and connection segments). */
static inline uint32_t shmlink_os_random32(void) {
    uint32_t v = 0;
#ifdef SYS_getrandom
    if (syscall(SYS_getrandom, &v, sizeof v, 0) == (long)sizeof v)
        return v;
#endif
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    v = (uint32_t)ts.tv_nsec ^ ((uint32_t)getpid() << 16) ^ (uint32_t)(uintptr_t)&v;
    return v * 2654435761u;
}

/* ---- doorbells: descriptors other processes make readable -------------- */

/* A doorbell is an AF_UNIX datagram socket bound in the abstract namespace
 * under "\0shmlink-bell-<16 hex digits of id>".  Nothing reaches the file
 * system, so nothing is left behind when its process dies: the name goes
 * with the socket, and a send to it fails with ECONNREFUSED. */
static inline socklen_t shmlink_os_bell_addr_(struct sockaddr_un *a, uint64_t id) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    /* sun_path[0] stays 0: the abstract namespace */
    int n = snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "shmlink-bell-%016llx",
                     (unsigned long long)id);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

/* A non-blocking, close-on-exec datagram socket bound to id's name: the
 * descriptor, or -EADDRINUSE (choose another id) or another -errno. */
static inline int shmlink_os_bell_bind(uint64_t id) {
    struct sockaddr_un a;
    socklen_t len = shmlink_os_bell_addr_(&a, id);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&a, len) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* The unbound socket this process sends rings from, made on first use and
 * kept (a forked child shares it: sending needs no state).  -errno when no
 * socket can be made.  Each translation unit keeps its own, unless the
 * program defines SHMLINK_BELL_SENDER_EXTERN before including shmlink
 * headers and defines `int shmlink_bell_sender_fd_ = -1;` once (the Python
 * binding does: one descriptor per process). */
#ifdef SHMLINK_BELL_SENDER_EXTERN
extern int shmlink_bell_sender_fd_;
#endif
static inline int shmlink_os_bell_sender_(int renew) {
#ifdef SHMLINK_BELL_SENDER_EXTERN
    int *slot = &shmlink_bell_sender_fd_;
#else
    static int sender = -1;
    int *slot = &sender;
#endif
    int fd = SHMLINK_LOAD_ACQUIRE(slot);
    if (fd >= 0 && !renew)
        return fd;
    int mine = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (mine < 0)
        return -errno;
    if (SHMLINK_CAS(slot, &fd, mine))
        return mine; /* an old one (renew: closed under us) is not ours to close */
    close(mine);     /* another thread made one first: use it */
    return fd;
}

/* Ring the doorbell named by id: one non-blocking datagram of one byte.
 * 0 rung; -EAGAIN its queue is full (it is rung already); -ECONNREFUSED or
 * -ENOENT nobody has that name (its waiter closed it or died); another
 * -errno otherwise.  Never blocks, whatever id is. */
static inline int shmlink_os_bell_send(uint64_t id) {
    struct sockaddr_un a;
    socklen_t len = shmlink_os_bell_addr_(&a, id);
    char b = 1;
    for (int tries = 0; tries < 2; tries++) {
        int fd = shmlink_os_bell_sender_(tries > 0);
        if (fd < 0)
            return fd;
        if (sendto(fd, &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&a, len) == 1)
            return 0;
        int e = errno;
        if (e == EINTR)
            continue;
        if (e != EBADF && e != ENOTSOCK)
            return -e;
        /* the process closed our sender (e.g. closed every descriptor): renew */
    }
    return -EBADF;
}

/* Read every datagram queued on a doorbell; returns how many (0: none). */
static inline int shmlink_os_bell_drain(int fd) {
    char buf[16];
    int n = 0;
    for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r >= 0) {
            n++;
            continue;
        }
        if (errno == EINTR)
            continue;
        return n;
    }
}

SHMLINK_END_DECLS

#endif /* SHMLINK_PLATFORM_H */
