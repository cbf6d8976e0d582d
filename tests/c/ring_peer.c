/*
 * ring_peer: drives the header's queue and topic helpers against Python
 * peers, for tests/test_c_peers.py.  Prints one line per result; exit 0 on
 * success, 1 on failure, 2 on usage errors.
 *
 *   ring_peer trysend QUEUE            shmlink_ring_try_send of "x": prints
 *                                      the return code (0, EAGAIN, EBUSY ...)
 *   ring_peer tryrecv QUEUE            shmlink_ring_try_recv: the same
 *   ring_peer hold QUEUE prod|cons     take that lock, print "held", sleep
 *                                      (the test kills it)
 *   ring_peer recv QUEUE TIMEOUT       one blocking receive: prints
 *                                      "got <message> cpu <seconds>"
 *   ring_peer send QUEUE N             N blocking sends of "<i>"
 *   ring_peer echo IN OUT N            N times: blocking receive from IN,
 *                                      blocking send of the same bytes to OUT
 *   ring_peer publish TOPIC N          N blocking publishes of "<i>"
 *   ring_peer subscribe TOPIC N        subscribe (oldest), print "ready",
 *                                      N blocking receives, checked in order
 *   ring_peer clamp                    lay out a ring bigger than 4 GiB:
 *                                      prints its max_message
 */
#include "shmlink.h"

#include <stdlib.h>
#include <sys/resource.h>

static const char *code(int64_t rc) {
    static char buf[32];
    switch (rc) {
    case 0: return "0";
    case -EAGAIN: return "EAGAIN";
    case -EBUSY: return "EBUSY";
    case -ETIMEDOUT: return "ETIMEDOUT";
    case -EINTR: return "EINTR";
    case -EMSGSIZE: return "EMSGSIZE";
    case -EBADMSG: return "EBADMSG";
    case -EPROTO: return "EPROTO";
    }
    snprintf(buf, sizeof buf, "%lld", (long long)rc);
    return buf;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

static int open_kind(struct shmlink_segment *seg, const char *name, uint32_t kind) {
    int rc = shmlink_segment_open(seg, name);
    if (rc != 0) {
        fprintf(stderr, "ring_peer: cannot open %s: %s\n", name, strerror(-rc));
        exit(1);
    }
    if (seg->kind != kind) {
        fprintf(stderr, "ring_peer: %s has kind %u\n", name, seg->kind);
        exit(1);
    }
    return 0;
}

static void open_queue(struct shmlink_segment *seg, struct shmlink_ring_handle *q,
                       const char *name) {
    open_kind(seg, name, SHMLINK_KIND_QUEUE);
    int rc = shmlink_ring_attach(q, seg->data, seg->size);
    if (rc != 0) {
        fprintf(stderr, "ring_peer: %s: bad ring (%s)\n", name, code(rc));
        exit(1);
    }
}

static void open_topic(struct shmlink_segment *seg, struct shmlink_topic_handle *t,
                       const char *name) {
    open_kind(seg, name, SHMLINK_KIND_TOPIC);
    int rc = shmlink_topic_attach(t, seg->data, seg->size);
    if (rc != 0) {
        fprintf(stderr, "ring_peer: %s: bad topic (%s)\n", name, code(rc));
        exit(1);
    }
}

int main(int argc, char **argv) {
    uint32_t pid;
    uint64_t start;
    shmlink_self(&pid, &start);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2)
        return 2;
    const char *cmd = argv[1];
    struct shmlink_segment seg = {.fd = -1}, seg2 = {.fd = -1};
    struct shmlink_ring_handle q, q2;
    struct shmlink_topic_handle t;
    struct timespec deadline;
    char buf[4096];

    if (strcmp(cmd, "clamp") == 0) {
        uint64_t size = (8ull << 30) + 4096; /* only the control block is touched */
        void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (mem == MAP_FAILED)
            return 1;
        int rc = shmlink_ring_init(mem, size, 0);
        struct shmlink_ring_handle h;
        int arc = shmlink_ring_attach(&h, mem, size);
        printf("init %s attach %s max_message %llu\n", code(rc), code(arc),
               (unsigned long long)((struct shmlink_ring *)mem)->max_message);
        return 0;
    }
    if (argc < 3)
        return 2;
    if (strcmp(cmd, "trysend") == 0 || strcmp(cmd, "tryrecv") == 0) {
        open_queue(&seg, &q, argv[2]);
        int64_t rc = cmd[3] == 's' ? shmlink_ring_try_send(&q, "x", 1, pid, start)
                                   : shmlink_ring_try_recv(&q, buf, sizeof buf, pid, start);
        printf("%s\n", rc > 0 ? "0" : code(rc));
        return 0;
    }
    if (strcmp(cmd, "hold") == 0 && argc == 4) {
        open_queue(&seg, &q, argv[2]);
        struct shmlink_lock *l = strcmp(argv[3], "prod") == 0 ? &q.ring->prod_lock
                                                              : &q.ring->cons_lock;
        if (shmlink_lock_try_or_steal(l, pid, start) < 0)
            return 1;
        printf("held\n");
        sleep(120);
        return 0;
    }
    if (strcmp(cmd, "recv") == 0 && argc == 4) {
        open_queue(&seg, &q, argv[2]);
        shmlink_deadline_after(&deadline, atof(argv[3]));
        double cpu0 = cpu_seconds();
        int64_t n;
        do
            n = shmlink_ring_recv(&q, buf, sizeof buf, pid, start, &deadline);
        while (n == -EINTR);
        if (n < 0) {
            printf("%s\n", code(n));
            return 1;
        }
        printf("got %.*s cpu %.3f\n", (int)n, buf, cpu_seconds() - cpu0);
        return 0;
    }
    if (strcmp(cmd, "send") == 0 && argc == 4) {
        open_queue(&seg, &q, argv[2]);
        long n = atol(argv[3]);
        for (long i = 0; i < n; i++) {
            int len = snprintf(buf, sizeof buf, "%ld", i);
            shmlink_deadline_after(&deadline, 30.0);
            int rc;
            do
                rc = shmlink_ring_send(&q, buf, (uint64_t)len, pid, start, &deadline);
            while (rc == -EINTR);
            if (rc != 0) {
                printf("send %ld: %s\n", i, code(rc));
                return 1;
            }
        }
        printf("sent %ld\n", n);
        return 0;
    }
    if (strcmp(cmd, "echo") == 0 && argc == 5) {
        open_queue(&seg, &q, argv[2]);
        open_queue(&seg2, &q2, argv[3]);
        long n = atol(argv[4]);
        for (long i = 0; i < n; i++) {
            shmlink_deadline_after(&deadline, 30.0);
            int64_t len;
            do
                len = shmlink_ring_recv(&q, buf, sizeof buf, pid, start, &deadline);
            while (len == -EINTR);
            if (len < 0) {
                printf("recv %ld: %s\n", i, code(len));
                return 1;
            }
            int rc;
            do
                rc = shmlink_ring_send(&q2, buf, (uint64_t)len, pid, start, &deadline);
            while (rc == -EINTR);
            if (rc != 0) {
                printf("send %ld: %s\n", i, code(rc));
                return 1;
            }
        }
        printf("echoed %ld\n", n);
        return 0;
    }
    if (strcmp(cmd, "publish") == 0 && argc == 4) {
        open_topic(&seg, &t, argv[2]);
        long n = atol(argv[3]);
        for (long i = 0; i < n; i++) {
            int len = snprintf(buf, sizeof buf, "%ld", i);
            shmlink_deadline_after(&deadline, 30.0);
            int rc;
            do
                rc = shmlink_topic_publish(&t, buf, (uint64_t)len, pid, start, &deadline);
            while (rc == -EINTR);
            if (rc != 0) {
                printf("publish %ld: %s\n", i, code(rc));
                return 1;
            }
        }
        printf("published %ld\n", n);
        return 0;
    }
    if (strcmp(cmd, "subscribe") == 0 && argc == 4) {
        open_topic(&seg, &t, argv[2]);
        struct shmlink_topic_reader r;
        shmlink_deadline_after(&deadline, 10.0);
        int rc = shmlink_topic_subscribe(&t, &r, pid, start, 1, &deadline);
        if (rc != 0) {
            printf("subscribe: %s\n", code(rc));
            return 1;
        }
        printf("ready\n");
        long n = atol(argv[3]);
        for (long i = 0; i < n; i++) {
            shmlink_deadline_after(&deadline, 30.0);
            int64_t len;
            do
                len = shmlink_topic_recv(&t, &r, buf, sizeof buf - 1, &deadline);
            while (len == -EINTR);
            if (len < 0) {
                printf("recv %ld: %s\n", i, code(len));
                return 1;
            }
            buf[len] = '\0';
            if (atol(buf) != i) {
                printf("recv %ld: got %s\n", i, buf);
                return 1;
            }
        }
        shmlink_topic_unsubscribe(&t, &r);
        printf("received %ld missed %llu\n", n, (unsigned long long)r.missed);
        return 0;
    }
    return 2;
}
