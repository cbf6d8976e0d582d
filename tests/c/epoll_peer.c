/*
 * epoll_peer: a C program that waits for a queue's messages with epoll on a
 * doorbell (include/shmlink/doorbell.h), for tests/test_c_peers.py.
 *
 *   epoll_peer QUEUE N TIMEOUT   register a doorbell in the queue's data
 *                                table, print "ready", then receive N
 *                                messages "<i>" in order, sleeping only in
 *                                epoll_wait (at most TIMEOUT seconds each).
 *                                Prints "got N wakes W cpu S"; exit 0, or 1
 *                                on a timeout, a bad message or an error.
 *
 * The loop is the one the header documents: drain, arm, RE-CHECK, sleep.
 */
#include "shmlink.h"

#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: epoll_peer QUEUE N TIMEOUT\n");
        return 2;
    }
    long n = atol(argv[2]);
    int timeout_ms = (int)(atof(argv[3]) * 1000);
    struct shmlink_segment seg;
    struct shmlink_ring_handle q;
    int rc = shmlink_segment_open(&seg, argv[1]);
    if (rc != 0 || seg.kind != SHMLINK_KIND_QUEUE ||
        shmlink_ring_attach(&q, seg.data, seg.size) != 0) {
        fprintf(stderr, "epoll_peer: cannot open queue %s\n", argv[1]);
        return 1;
    }
    struct shmlink_bell bell;
    if (shmlink_bell_open(&bell) != 0 || shmlink_bells_claim(&q.ring->data_bells, bell.id) < 0) {
        fprintf(stderr, "epoll_peer: no doorbell\n");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data = {.fd = bell.fd}};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, bell.fd, &ev) != 0) {
        perror("epoll");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    uint32_t pid;
    uint64_t start;
    shmlink_self(&pid, &start);
    long got = 0, wakes = 0;
    char buf[64];
    while (got < n) {
        int64_t len = shmlink_ring_try_recv(&q, buf, sizeof buf - 1, pid, start);
        if (len >= 0) {
            buf[len] = 0;
            if (atol(buf) != got) {
                fprintf(stderr, "epoll_peer: message %ld is %s\n", got, buf);
                return 1;
            }
            got++;
            continue;
        }
        if (len != -EAGAIN && len != -EBUSY) {
            fprintf(stderr, "epoll_peer: receive failed: %lld\n", (long long)len);
            return 1;
        }
        shmlink_bell_drain(&bell);
        shmlink_ec_arm(&q.ring->data_ec);
        if (shmlink_ring_may_recv(&q)) /* the re-check, after arming */
            continue;
        struct epoll_event out;
        int k = epoll_wait(ep, &out, 1, timeout_ms);
        if (k == 0) {
            fprintf(stderr, "epoll_peer: nothing within %s s after %ld messages\n", argv[3], got);
            return 1;
        }
        if (k > 0)
            wakes++;
    }
    shmlink_bells_release(&q.ring->data_bells, bell.id);
    shmlink_bell_close(&bell);
    printf("got %ld wakes %ld cpu %.3f\n", got, wakes, cpu_seconds());
    shmlink_segment_close(&seg);
    return 0;
}
