/*
 * mutex_peer: a C process on the same shmlink.Mutex as Python processes,
 * for tests/test_c_peers.py.  Exit 0 on success, 1 on failure, 2 on usage.
 *
 *   mutex_peer count MUTEX COUNTER N   N times: lock, read the u64 at the
 *                                      start of segment COUNTER, pause, write
 *                                      it + 1, unlock (not atomic: only the
 *                                      mutex keeps increments from being lost)
 *   mutex_peer hold MUTEX              lock, print "held", sleep (the test
 *                                      SIGKILLs it holding the mutex)
 *   mutex_peer take MUTEX              lock: print "ok", or "owner-died PID"
 *                                      and mark consistent; then unlock
 *   mutex_peer trylock MUTEX           print trylock's result (0, EBUSY ...)
 */
#include "shmlink.h"

#include <stdlib.h>

static const char *code(int rc) {
    static char buf[32];
    switch (rc) {
    case 0: return "0";
    case -EBUSY: return "EBUSY";
    case -EOWNERDEAD: return "EOWNERDEAD";
    case -ETIMEDOUT: return "ETIMEDOUT";
    case -EPERM: return "EPERM";
    case -EPROTO: return "EPROTO";
    }
    snprintf(buf, sizeof buf, "%d", rc);
    return buf;
}

static int lock(struct shmlink_mutex_handle *m, uint32_t pid, uint64_t start) {
    struct timespec deadline;
    shmlink_deadline_after(&deadline, 20.0);
    int rc;
    do
        rc = shmlink_mutex_lock(m, pid, start, &deadline);
    while (rc == -EINTR);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    uint32_t pid;
    uint64_t start;
    shmlink_self(&pid, &start);
    struct shmlink_mutex_handle m;
    int rc = shmlink_mutex_open(&m, argv[2]);
    if (rc != 0) {
        printf("open: %s\n", code(rc));
        return 1;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "count") == 0 && argc == 5) {
        struct shmlink_segment counter;
        rc = shmlink_segment_open(&counter, argv[3]);
        if (rc != 0 || counter.size < 8) {
            printf("open counter: %s\n", code(rc));
            return 1;
        }
        volatile uint64_t *c = (volatile uint64_t *)counter.data;
        long n = atol(argv[4]);
        for (long i = 0; i < n; i++) {
            rc = lock(&m, pid, start);
            if (rc != 0) {
                printf("lock %ld: %s\n", i, code(rc));
                return 1;
            }
            uint64_t v = *c;
            for (int k = 0; k < 200; k++) /* widen the window a lost update needs */
                SHMLINK_CPU_RELAX();
            *c = v + 1;
            if (shmlink_mutex_unlock(&m, pid) != 0)
                return 1;
        }
        printf("counted %ld\n", n);
        shmlink_segment_close(&counter);
    } else if (strcmp(cmd, "hold") == 0) {
        rc = lock(&m, pid, start);
        if (rc != 0 && rc != -EOWNERDEAD)
            return 1;
        printf("held\n");
        sleep(120);
    } else if (strcmp(cmd, "take") == 0) {
        rc = lock(&m, pid, start);
        if (rc == -EOWNERDEAD) {
            printf("owner-died %u\n", shmlink_mutex_dead_pid(&m));
            if (shmlink_mutex_mark_consistent(&m, pid) != 0)
                return 1;
        } else if (rc == 0) {
            printf("ok\n");
        } else {
            printf("lock: %s\n", code(rc));
            return 1;
        }
        if (shmlink_mutex_unlock(&m, pid) != 0)
            return 1;
        /* unlocking again is refused: we do not hold it any more */
        if (shmlink_mutex_unlock(&m, pid) != -EPERM)
            return 1;
    } else if (strcmp(cmd, "trylock") == 0) {
        rc = shmlink_mutex_trylock(&m, pid, start);
        printf("%s\n", code(rc));
        if (rc == 0 || rc == -EOWNERDEAD)
            shmlink_mutex_unlock(&m, pid);
    } else {
        return 2;
    }
    shmlink_mutex_close(&m);
    return 0;
}
