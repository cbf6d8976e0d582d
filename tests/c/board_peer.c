/*
 * board_peer: a C process on the same shmlink.Board as Python processes,
 * for tests/test_c_events.py.  Exit 0 on success, 1 on failure, 2 on usage.
 *
 * Values follow one rule, so that a reader can tell a whole value from a
 * torn one and check it against its version: version v holds
 * value_len(v, capacity) bytes, each (v % 251) + 1 (see expect_value).
 *
 *   board_peer create NAME CAPACITY   create the board (lifetime persist)
 *   board_peer write NAME N           N times: write the value of the next
 *                                     version (the only writer); "wrote N"
 *   board_peer check NAME N           read N times; every value must be
 *                                     whole, match its version, and
 *                                     versions never go back; print
 *                                     "N whole reads, K versions"
 *   board_peer wait NAME SINCE SECS   print "waiting"; wait for a version
 *                                     other than SINCE: "version V" or
 *                                     "timeout"
 *   board_peer pong NAME OTHER ROUNDS ROUNDS times: wait for a change of
 *                                     NAME, copy its value to OTHER; print
 *                                     "ponged ROUNDS"
 *   board_peer stats NAME             print "version V wakes W armed A"
 */
#include "shmlink.h"

#include <stdlib.h>

static uint64_t value_len(uint64_t v, uint64_t capacity) {
    return v == 0 ? 0 : 1 + (v * 37u) % capacity;
}

static void make_value(uint8_t *buf, uint64_t v, uint64_t capacity) {
    memset(buf, (int)(v % 251u) + 1, (size_t)value_len(v, capacity));
}

static int expect_value(const uint8_t *buf, int64_t n, uint64_t v, uint64_t capacity) {
    if ((uint64_t)n != value_len(v, capacity))
        return 0;
    for (int64_t k = 0; k < n; k++)
        if (buf[k] != (uint8_t)(v % 251u + 1))
            return 0;
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *cmd = argv[1];
    struct shmlink_segment seg;
    struct shmlink_board_handle h;
    uint32_t pid;
    uint64_t start;
    shmlink_self(&pid, &start);
    int rc;
    if (strcmp(cmd, "create") == 0 && argc == 4) {
        rc = shmlink_board_create(&seg, &h, argv[2], (uint64_t)atoll(argv[3]), 0600, 0);
        if (rc != 0) {
            printf("create: %d\n", rc);
            return 1;
        }
        printf("created\n");
        shmlink_segment_close(&seg);
        return 0;
    }
    rc = shmlink_board_open(&seg, &h, argv[2]);
    if (rc != 0) {
        printf("open: %s\n", rc == -EPROTO ? "EPROTO" : strerror(-rc));
        return 1;
    }
    uint8_t *buf = malloc(h.capacity);
    if (!buf)
        return 1;
    if (strcmp(cmd, "write") == 0 && argc == 4) {
        long n = atol(argv[3]);
        for (long i = 0; i < n; i++) {
            uint64_t v = shmlink_board_version(&h) + 1, got = 0;
            make_value(buf, v, h.capacity);
            rc = shmlink_board_write(&h, buf, value_len(v, h.capacity), pid, start, NULL, &got);
            if (rc != 0 || got != v) {
                printf("write %ld: rc %d version %llu, expected %llu\n", i, rc,
                       (unsigned long long)got, (unsigned long long)v);
                return 1;
            }
        }
        printf("wrote %ld\n", n);
    } else if (strcmp(cmd, "check") == 0 && argc == 4) {
        long n = atol(argv[3]), versions = 0;
        uint64_t last = 0;
        for (long i = 0; i < n; i++) {
            uint64_t v = 0, need = 0;
            int64_t len = shmlink_board_read(&h, buf, h.capacity, &v, &need, pid, start, NULL);
            if (len < 0) {
                printf("read %ld: %lld\n", i, (long long)len);
                return 1;
            }
            if (v < last) {
                printf("version went back from %llu to %llu\n", (unsigned long long)last,
                       (unsigned long long)v);
                return 1;
            }
            if (!expect_value(buf, len, v, h.capacity)) {
                printf("torn or wrong value at version %llu (%lld bytes)\n",
                       (unsigned long long)v, (long long)len);
                return 1;
            }
            versions += v != last;
            last = v;
        }
        printf("%ld whole reads, %ld versions\n", n, versions);
    } else if (strcmp(cmd, "wait") == 0 && argc == 5) {
        uint64_t since = (uint64_t)strtoull(argv[3], NULL, 10), v = 0;
        struct timespec deadline;
        shmlink_deadline_after(&deadline, atof(argv[4]));
        printf("waiting\n");
        do
            rc = shmlink_board_wait_change(&h, since, &v, &deadline);
        while (rc == -EINTR);
        if (rc == 0)
            printf("version %llu\n", (unsigned long long)v);
        else
            printf("%s\n", rc == -ETIMEDOUT ? "timeout" : "error");
    } else if (strcmp(cmd, "pong") == 0 && argc == 5) {
        struct shmlink_segment oseg;
        struct shmlink_board_handle other;
        rc = shmlink_board_open(&oseg, &other, argv[3]);
        if (rc != 0 || other.capacity < h.capacity) {
            printf("open other: %d\n", rc);
            return 1;
        }
        long rounds = atol(argv[4]);
        uint64_t seen = 0;
        for (long i = 0; i < rounds; i++) {
            struct timespec deadline;
            shmlink_deadline_after(&deadline, 20.0);
            do
                rc = shmlink_board_wait_change(&h, seen, &seen, &deadline);
            while (rc == -EINTR);
            if (rc != 0) {
                printf("round %ld: wait %d\n", i, rc);
                return 1;
            }
            uint64_t v = 0, need = 0;
            int64_t n = shmlink_board_read(&h, buf, h.capacity, &v, &need, pid, start, NULL);
            if (n < 0 || shmlink_board_write(&other, buf, (uint64_t)n, pid, start, NULL, NULL) != 0) {
                printf("round %ld: copy failed\n", i);
                return 1;
            }
        }
        printf("ponged %ld\n", rounds);
        shmlink_segment_close(&oseg);
    } else if (strcmp(cmd, "stats") == 0 && argc == 3) {
        printf("version %llu wakes %llu armed %u\n",
               (unsigned long long)shmlink_board_version(&h),
               (unsigned long long)SHMLINK_LOAD_RELAXED(&h.b->wakes),
               SHMLINK_LOAD_RELAXED(&h.b->changed.seq) & 1u);
    } else {
        return 2;
    }
    free(buf);
    shmlink_segment_close(&seg);
    return 0;
}
