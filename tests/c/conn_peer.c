/*
 * conn_peer: drives shmlink/connection.h against Python peers, for
 * tests/test_c_connection.py.  Prints one line per result; exit 0 on
 * success, 1 on failure, 2 on usage errors.  Every wait has a deadline.
 *
 *   conn_peer layout                 the offsets and constants, "key value"
 *   conn_peer connect LISTENER       one connect with a 2 s deadline: prints
 *                                    its return code (0, ENOENT, ...)
 *   conn_peer client LISTENER N      connect, N requests of varied sizes (up
 *                                    to the maximum), each response checked
 *                                    to be the request reversed; "ok N max M"
 *   conn_peer death LISTENER recv|send
 *                                    connect, print "connected"; then block:
 *                                    recv: in a request the server never
 *                                    answers; send: sending into a ring the
 *                                    server no longer reads.  Prints the code
 *                                    that ended the wait (ECONNRESET)
 *   conn_peer frames LISTENER K      connect, print "connected", wait for a
 *                                    line on stdin, then K receives: "msg
 *                                    <payload>" or the error code each
 *   conn_peer server LISTENER CAP    listen, print "ready", accept one client,
 *                                    answer its requests with the request
 *                                    reversed until it closes: "served N"
 */
#include "shmlink.h"

#include <stdlib.h>

static const char *code(int64_t rc) {
    static char buf[32];
    switch (rc) {
    case 0: return "0";
    case -EAGAIN: return "EAGAIN";
    case -ETIMEDOUT: return "ETIMEDOUT";
    case -EINTR: return "EINTR";
    case -EMSGSIZE: return "EMSGSIZE";
    case -EBADMSG: return "EBADMSG";
    case -EPROTO: return "EPROTO";
    case -ENOENT: return "ENOENT";
    case -ECONNRESET: return "ECONNRESET";
    case -ECONNREFUSED: return "ECONNREFUSED";
    case -ECONNABORTED: return "ECONNABORTED";
    case -EREMOTEIO: return "EREMOTEIO";
    case -EEXIST: return "EEXIST";
    case -EINVAL: return "EINVAL";
    }
    snprintf(buf, sizeof buf, "%lld", (long long)rc);
    return buf;
}

static void after(struct timespec *d, double s) { shmlink_deadline_after(d, s); }

static int die(const char *what, int64_t rc) {
    printf("%s: %s\n", what, code(rc));
    fflush(stdout);
    return 1;
}

static int layout(void) {
#define P(k, v) printf("%s %llu\n", k, (unsigned long long)(v))
    P("DATA_OFFSET", SHMLINK_DATA_OFFSET);
    P("RING_HEADER", SHMLINK_RING_DATA_OFFSET);
    P("_C_MAGIC_VALUE", SHMLINK_CONN_MAGIC);
    P("_C_VERSION", SHMLINK_CONN_VERSION);
    P("_C_RING_SIZE", offsetof(struct shmlink_conn_block, ring_size));
    P("_C_CLIENT_PID", offsetof(struct shmlink_conn_block, client_pid));
    P("_C_CLIENT_CLOSED", offsetof(struct shmlink_conn_block, client_closed));
    P("_C_CLIENT_START", offsetof(struct shmlink_conn_block, client_start));
    P("_C_SERVER_PID", offsetof(struct shmlink_conn_block, server_pid));
    P("_C_SERVER_CLOSED", offsetof(struct shmlink_conn_block, server_closed));
    P("_C_SERVER_START", offsetof(struct shmlink_conn_block, server_start));
    P("_C_STATE", offsetof(struct shmlink_conn_block, state));
    P("_C_RINGS", SHMLINK_CONN_RINGS);
    P("_ST_PENDING", SHMLINK_CONN_PENDING);
    P("_ST_ACCEPTED", SHMLINK_CONN_ACCEPTED);
    P("_ST_REFUSED", SHMLINK_CONN_REFUSED);
    P("_ST_ABANDONED", SHMLINK_CONN_ABANDONED);
    P("_EC_OFFSET", offsetof(struct shmlink_ring, data_ec));
    P("_L_MAGIC_VALUE", SHMLINK_LISTENER_MAGIC);
    P("_L_VERSION", SHMLINK_LISTENER_VERSION);
    P("_L_PID", offsetof(struct shmlink_listener_block, pid));
    P("_L_CLOSED", offsetof(struct shmlink_listener_block, closed));
    P("_L_START", offsetof(struct shmlink_listener_block, start));
    P("_L_CAPACITY", offsetof(struct shmlink_listener_block, capacity));
    P("_L_MAX_MESSAGE", offsetof(struct shmlink_listener_block, max_message));
    P("_L_BACKLOG", offsetof(struct shmlink_listener_block, backlog));
    P("_L_MODE", offsetof(struct shmlink_listener_block, mode));
    P("_L_ACCEPTED", offsetof(struct shmlink_listener_block, accepted));
    P("_L_RING", SHMLINK_LISTENER_RING);
    P("_ACCEPT_NAME", SHMLINK_ACCEPT_NAME);
    P("_ACCEPT_RECORD", SHMLINK_ACCEPT_RECORD);
    P("_FRAME_SIZE", SHMLINK_FRAME_HEADER);
    P("_MSG", SHMLINK_FRAME_MSG);
    P("_REQ", SHMLINK_FRAME_REQ);
    P("_RESP", SHMLINK_FRAME_RESP);
    P("_ERR", SHMLINK_FRAME_ERR);
    P("_CLOSE", SHMLINK_FRAME_CLOSE);
    P("_WAKE", SHMLINK_FRAME_WAKE);
    P("LISTENER_NAME_MAX", SHMLINK_LISTENER_NAME_MAX);
#undef P
    return 0;
}

static int connect_to(struct shmlink_conn *c, const char *name, double timeout) {
    struct timespec d;
    after(&d, timeout);
    return shmlink_conn_connect(c, name, &d);
}

/* The size of request i: every boundary near the maximum, empty and tiny
 * ones, and a spread in between. */
static uint64_t size_of(uint64_t i, uint64_t max) {
    switch (i % 50) {
    case 0: return max;
    case 1: return max - 1;
    case 2: return max - 7;
    case 3: return max - 8;
    case 4: return 0;
    case 5: return 1;
    case 6: return (i * 104729u) % (max + 1);
    default: return (i * 7919u) % 2048u;
    }
}

static int client(const char *name, uint64_t n) {
    struct shmlink_conn c;
    int rc = connect_to(&c, name, 20);
    if (rc != 0)
        return die("connect", rc);
    uint64_t max = shmlink_conn_max_payload(&c);
    uint8_t *req = (uint8_t *)malloc((size_t)max + 1);
    uint8_t *resp = (uint8_t *)malloc((size_t)max + 1);
    if (!req || !resp)
        return die("malloc", -ENOMEM);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = size_of(i, max);
        for (uint64_t j = 0; j < len; j++)
            req[j] = (uint8_t)(i + j * 31u);
        struct timespec d;
        after(&d, 20);
        int64_t got = shmlink_conn_request(&c, req, len, resp, max + 1, &d);
        if (got < 0) {
            printf("request %llu (%llu bytes): %s\n", (unsigned long long)i,
                   (unsigned long long)len, code(got));
            return 1;
        }
        if ((uint64_t)got != len) {
            printf("request %llu: %lld bytes back, not %llu\n", (unsigned long long)i,
                   (long long)got, (unsigned long long)len);
            return 1;
        }
        for (uint64_t j = 0; j < len; j++)
            if (resp[j] != req[len - 1 - j]) {
                printf("request %llu: byte %llu differs\n", (unsigned long long)i,
                       (unsigned long long)j);
                return 1;
            }
    }
    /* one byte over the maximum is refused before anything is sent */
    struct timespec d;
    after(&d, 5);
    int64_t over = shmlink_conn_request(&c, req, max + 1, resp, max + 1, &d);
    if (over != -EMSGSIZE)
        return die("oversized request", over);
    printf("ok %llu max %llu dropped %llu\n", (unsigned long long)n, (unsigned long long)max,
           (unsigned long long)c.dropped);
    free(req);
    free(resp);
    shmlink_conn_close(&c);
    return 0;
}

static int death(const char *name, const char *how) {
    struct shmlink_conn c;
    int rc = connect_to(&c, name, 20);
    if (rc != 0)
        return die("connect", rc);
    printf("connected\n");
    fflush(stdout);
    struct timespec d;
    after(&d, 30);
    int64_t r;
    if (strcmp(how, "recv") == 0) {
        char resp[64];
        r = shmlink_conn_request(&c, "block", 5, resp, sizeof resp, &d);
    } else {
        /* the server's handler blocks in this request: nobody reads */
        r = shmlink_conn_send_kind(&c, SHMLINK_FRAME_REQ, 1, "block", 5, &d);
        static char chunk[4096];
        for (uint64_t k = 0; r == 0; k++)
            r = shmlink_conn_send(&c, chunk, sizeof chunk, &d);
    }
    printf("%s\n", code(r));
    shmlink_conn_close(&c);
    return 0;
}

static int frames(const char *name, int k) {
    struct shmlink_conn c;
    int rc = connect_to(&c, name, 20);
    if (rc != 0)
        return die("connect", rc);
    printf("connected\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        return die("stdin", -EINVAL);
    uint8_t buf[256];
    for (int i = 0; i < k; i++) {
        struct shmlink_frame f;
        struct timespec d;
        after(&d, 10);
        int64_t n = shmlink_conn_recv_frame(&c, buf, sizeof buf, &f, &d);
        if (n < 0)
            printf("%s\n", code(n));
        else
            printf("%s %.*s\n", f.kind == SHMLINK_FRAME_MSG ? "msg" : "other", (int)f.len,
                   (const char *)f.payload);
        fflush(stdout);
        if (n == -ECONNRESET)
            break;
    }
    shmlink_conn_close(&c);
    return 0;
}

static int server(const char *name, uint64_t capacity) {
    struct shmlink_listener l;
    int rc = shmlink_listener_create(&l, name, capacity, 4, 0, 0600);
    if (rc != 0)
        return die("listen", rc);
    printf("ready\n");
    fflush(stdout);
    struct shmlink_conn c;
    struct timespec d;
    after(&d, 20);
    rc = shmlink_listener_accept(&l, &c, &d);
    shmlink_listener_close(&l);
    if (rc != 0)
        return die("accept", rc);
    uint64_t cap = c.in.max_message;
    uint8_t *buf = (uint8_t *)malloc((size_t)cap);
    uint8_t *out = (uint8_t *)malloc((size_t)cap);
    uint64_t served = 0;
    for (;;) {
        struct shmlink_frame f;
        after(&d, 30);
        int64_t n = shmlink_conn_recv_frame(&c, buf, cap, &f, &d);
        if (n == -ECONNRESET)
            break;
        if (n < 0)
            return die("recv", n);
        if (f.kind != SHMLINK_FRAME_REQ)
            continue;
        for (uint64_t j = 0; j < f.len; j++)
            out[j] = f.payload[f.len - 1 - j];
        after(&d, 30);
        rc = shmlink_conn_reply(&c, f.id, out, f.len, &d);
        if (rc != 0)
            return die("reply", rc);
        served++;
    }
    printf("served %llu\n", (unsigned long long)served);
    free(buf);
    free(out);
    shmlink_conn_close(&c);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "layout") == 0)
        return layout();
    if (argc == 3 && strcmp(argv[1], "connect") == 0) {
        struct shmlink_conn c;
        int rc = connect_to(&c, argv[2], 2);
        printf("%s\n", code(rc));
        if (rc == 0)
            shmlink_conn_close(&c);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "client") == 0)
        return client(argv[2], strtoull(argv[3], NULL, 10));
    if (argc == 4 && strcmp(argv[1], "death") == 0)
        return death(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "frames") == 0)
        return frames(argv[2], atoi(argv[3]));
    if (argc == 4 && strcmp(argv[1], "server") == 0)
        return server(argv[2], strtoull(argv[3], NULL, 10));
    fprintf(stderr, "usage: see the comment at the top of conn_peer.c\n");
    return 2;
}
