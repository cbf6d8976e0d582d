/*
 * echo_upper: a C program on the same queues as Python.
 *
 * Receives messages from the shmlink queue IN, upper-cases them, and sends
 * them to the queue OUT, until it receives an empty message (or 10 s pass
 * without one).  Build:
 *
 *   cc -O2 -Wall -Wextra -Werror -I src/shmlink/include examples/c/echo_upper.c -o echo_upper
 *
 * Python side: see examples/c_interop.py.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

#include "shmlink.h"

static int open_queue(struct shmlink_segment *seg, struct shmlink_ring_handle *q,
                      const char *name) {
    int rc = shmlink_segment_open(seg, name);
    if (rc != 0) {
        fprintf(stderr, "echo_upper: cannot open %s: %s\n", name, strerror(-rc));
        return rc;
    }
    if (seg->kind != SHMLINK_KIND_QUEUE) {
        fprintf(stderr, "echo_upper: %s is not a queue (kind %u)\n", name, seg->kind);
        return -EPROTO;
    }
    rc = shmlink_ring_attach(q, seg->data, seg->size);
    if (rc != 0)
        fprintf(stderr, "echo_upper: %s: bad ring (%s)\n", name, strerror(-rc));
    return rc;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: echo_upper IN OUT\n");
        return 2;
    }
    struct shmlink_segment in_seg = {.fd = -1}, out_seg = {.fd = -1};
    struct shmlink_ring_handle in, out;
    if (open_queue(&in_seg, &in, argv[1]) != 0 || open_queue(&out_seg, &out, argv[2]) != 0)
        return 1;
    uint32_t pid;
    uint64_t start;
    shmlink_self(&pid, &start); /* who we are, for the robust locks */
    char *buf = malloc(in.max_message ? in.max_message : 1);
    long count = 0;
    for (;;) {
        struct timespec deadline;
        shmlink_deadline_after(&deadline, 10.0);
        int64_t n = shmlink_ring_recv(&in, buf, in.max_message, pid, start, &deadline);
        if (n == -EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "echo_upper: receive failed: %s\n", strerror((int)-n));
            return 1;
        }
        if (n == 0)
            break;
        for (int64_t i = 0; i < n; i++)
            buf[i] = (char)toupper((unsigned char)buf[i]);
        shmlink_deadline_after(&deadline, 10.0);
        int rc = shmlink_ring_send(&out, buf, (uint64_t)n, pid, start, &deadline);
        if (rc != 0) {
            fprintf(stderr, "echo_upper: send failed: %s\n", strerror(-rc));
            return 1;
        }
        count++;
    }
    printf("echo_upper: echoed %ld messages\n", count);
    free(buf);
    shmlink_segment_close(&in_seg);
    shmlink_segment_close(&out_seg);
    return 0;
}
