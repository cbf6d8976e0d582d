/*
 * shmlink/connection.h -- shmlink.Connection and shmlink.Listener from C:
 * the two segment layouts, the frames, connecting, accepting, sending,
 * receiving, request/response, peer-death detection and close.
 *
 * The protocol (the same words and rules as src/shmlink/connection/):
 *
 *   Listener segment (kind SHMLINK_KIND_LISTENER, lifetime "auto"): struct
 *   shmlink_listener_block at the data area (server PID + start time, a
 *   closed flag, the capacity/max frame/backlog/mode every connection gets,
 *   a count of accepted connections), then at data + 128 the *accept ring*
 *   (shmlink/ring.h) whose records are exactly SHMLINK_ACCEPT_NAME (24)
 *   bytes: the suffix of a pending connection's name, NUL-padded.
 *
 *   Connection segment (kind SHMLINK_KIND_CONNECTION, lifetime "auto"),
 *   created by the client as "<listener>.c<pid>-<8 hex>": struct
 *   shmlink_conn_block (ring size; client PID, closed flag, start time;
 *   server PID, closed flag, start time; the accept state), then at data +
 *   256 two rings of ring_size bytes each: client->server, server->client.
 *
 *   Connecting: the client creates its segment (accept state PENDING),
 *   posts the suffix on the accept ring and sleeps on the state word.  The
 *   server takes the suffix, opens the segment, writes its identity and
 *   CASes PENDING -> ACCEPTED, then wakes the word.  A client that gives up
 *   (or finds the server dead) CASes PENDING -> ABANDONED; a listener that
 *   closes CASes pending ones PENDING -> REFUSED.  Exactly one CAS wins.
 *
 *   Frames: every ring message is a frame: an 8-byte little-endian header
 *   `id << 8 | kind`, then the payload.  Kinds: MSG (id 0), REQ (id >= 1),
 *   RESP and ERR (the request's id; ERR's payload is the handler's
 *   traceback, UTF-8), CLOSE (id 0, in-band end of stream), WAKE (id 0,
 *   posted by a process to its *own* inbound ring to interrupt its reader;
 *   ignored here).  A response's header is the request's + 1, an error's
 *   + 2.  No chunking: a frame is one ring record, at most the ring's
 *   max_message bytes (payload <= max_message - 8).
 *
 *   Closing: set this side's closed flag, then send CLOSE (it wakes a
 *   blocked peer at once, behind the messages sent before).  The side that
 *   finds the peer closed or dead removes the name; the last to close an
 *   "auto" segment does too.  A peer that is gone is noticed by a waiter at
 *   every slice end (SHMLINK_WAIT_SLICE_S, 0.1 s): its closed flag, or its
 *   PID + start time no longer alive.  Frames it sent before are still
 *   delivered first; then -ECONNRESET.
 *
 * Return codes (besides those of shmlink/segment.h and shmlink/ring.h):
 *   -ECONNRESET    the peer closed its side or died (established
 *                  connection), after everything it sent was received
 *   -ECONNREFUSED  connect: the listener was closed or its server is dead,
 *                  or it refused this connection (closed before accepting)
 *   -ENOENT        connect: nothing listens on that name
 *   -ETIMEDOUT     the deadline passed (nothing was sent / nothing taken)
 *   -EINTR         a signal interrupted a sleep (call again; connect
 *                  abandons its attempt first, so call connect again)
 *   -EMSGSIZE      a payload larger than the connection's maximum, or a
 *                  frame larger than the caller's buffer (it stays queued)
 *   -EBADMSG       a frame or a segment that breaks the protocol (a buggy
 *                  or hostile peer): nothing outside it was read or written
 *   -EPROTO        not a listener/connection, or another layout version
 *   -EREMOTEIO     request: the peer's handler failed (its text is in the
 *                  response buffer)
 *
 * Threads: a handle is used by one thread at a time (it owns two scratch
 * buffers); use one handle per thread, or a lock.
 */
#ifndef SHMLINK_CONNECTION_H
#define SHMLINK_CONNECTION_H

#include "atomic.h"
#include "eventcount.h"
#include "liveness.h"
#include "platform.h"
#include "ring.h"
#include "segment.h"
#include "wait.h"

SHMLINK_BEGIN_DECLS

/* ---- frames ----------------------------------------------------------- */

#define SHMLINK_FRAME_HEADER 8u
enum shmlink_frame_kind {
    SHMLINK_FRAME_MSG = 0,   /* plain message, id 0 */
    SHMLINK_FRAME_REQ = 1,   /* request, id >= 1 */
    SHMLINK_FRAME_RESP = 2,  /* response: request header + 1 */
    SHMLINK_FRAME_ERR = 3,   /* handler error: request header + 2, UTF-8 text */
    SHMLINK_FRAME_CLOSE = 4, /* end of stream, id 0 */
    SHMLINK_FRAME_WAKE = 5,  /* wakes one's own reader, id 0 */
};
#define SHMLINK_FRAME_KIND_MAX 5u
#define SHMLINK_FRAME_ID_MAX ((UINT64_C(1) << 56) - 1u)

/* A decoded frame: payload points into the buffer that was decoded. */
struct shmlink_frame {
    uint32_t kind;
    uint64_t id;
    const uint8_t *payload;
    uint64_t len;
};

/* 1 if a (kind, id) pair is one the protocol allows: a known kind; MSG,
 * CLOSE and WAKE carry id 0, REQ, RESP and ERR an id in 1 ..
 * SHMLINK_FRAME_ID_MAX.  The one statement of the rule: encode and decode
 * both check it (and so do Python's sends and receives, through them). */
static inline int shmlink_frame_valid(uint32_t kind, uint64_t id) {
    int with_id = kind == SHMLINK_FRAME_REQ || kind == SHMLINK_FRAME_RESP ||
                  kind == SHMLINK_FRAME_ERR;
    return kind <= SHMLINK_FRAME_KIND_MAX && id <= SHMLINK_FRAME_ID_MAX &&
           (with_id ? id != 0 : id == 0);
}

/* Write the 8-byte header of a (kind, id) frame at out.  0, or -EINVAL for
 * a kind/id pair the protocol does not allow (shmlink_frame_valid). */
static inline int shmlink_frame_encode(void *out, uint32_t kind, uint64_t id) {
    if (!shmlink_frame_valid(kind, id))
        return -EINVAL;
    uint64_t h = id << 8 | kind;
    uint8_t *p = (uint8_t *)out;
    for (unsigned i = 0; i < 8; i++)
        p[i] = (uint8_t)(h >> (8 * i)); /* little-endian on every host */
    return 0;
}

/* Write a whole frame at out (SHMLINK_FRAME_HEADER + len bytes): the
 * header of (kind, id), then len bytes of payload.  0 or -EINVAL (as
 * shmlink_frame_encode; nothing is written then). */
static inline int shmlink_frame_build(void *out, uint32_t kind, uint64_t id, const void *payload,
                                      uint64_t len) {
    int rc = shmlink_frame_encode(out, kind, id);
    if (rc == 0 && len)
        memcpy((uint8_t *)out + SHMLINK_FRAME_HEADER, payload, (size_t)len);
    return rc;
}

/* Parse and check the header of a frame of n bytes: hdr holds its first
 * min(n, 8) bytes (a private copy: the bytes are read once).  0 with
 * *kind and *id set, or -EBADMSG: shorter than a header, an unknown kind,
 * or a kind/id pair the protocol does not allow (shmlink_frame_valid). */
static inline int shmlink_frame_decode_header(const void *hdr, uint64_t n, uint32_t *kind,
                                              uint64_t *id) {
    if (n < SHMLINK_FRAME_HEADER)
        return -EBADMSG;
    const uint8_t *p = (const uint8_t *)hdr;
    uint64_t h = 0;
    for (unsigned i = 0; i < 8; i++)
        h |= (uint64_t)p[i] << (8 * i);
    if (!shmlink_frame_valid((uint32_t)(h & 255u), h >> 8))
        return -EBADMSG;
    *kind = (uint32_t)(h & 255u);
    *id = h >> 8;
    return 0;
}

/* Parse and check a frame of n bytes at buf.  The bytes are read once
 * (copy the frame out of shared memory first: the ring receive does).  0,
 * or -EBADMSG (see shmlink_frame_decode_header). */
static inline int shmlink_frame_decode(const void *buf, uint64_t n, struct shmlink_frame *f) {
    uint32_t kind;
    uint64_t id;
    int rc = shmlink_frame_decode_header(buf, n, &kind, &id);
    if (rc != 0)
        return rc;
    f->kind = kind;
    f->id = id;
    f->payload = (const uint8_t *)buf + SHMLINK_FRAME_HEADER;
    f->len = n - SHMLINK_FRAME_HEADER;
    return 0;
}

/* ---- the connection segment ------------------------------------------ */

#define SHMLINK_CONN_MAGIC 0x4E4E4F43u /* "CONN" */
#define SHMLINK_CONN_VERSION 1u
#define SHMLINK_CONN_RINGS 256u /* data-area offset of the client->server ring */

enum shmlink_conn_state {
    SHMLINK_CONN_PENDING = 0,
    SHMLINK_CONN_ACCEPTED = 1,
    SHMLINK_CONN_REFUSED = 2,   /* the listener closed before accepting */
    SHMLINK_CONN_ABANDONED = 3, /* the client gave up or died first */
};

struct shmlink_conn_block {
    /* line 0: constants, written by the client before the segment is ready */
    uint32_t magic;     /*   0 SHMLINK_CONN_MAGIC */
    uint32_t version;   /*   4 SHMLINK_CONN_VERSION */
    uint64_t ring_size; /*   8 bytes of each ring region (control block included) */
    uint8_t pad0[SHMLINK_CACHE_LINE - 16];
    /* line 1: the client's */
    uint32_t client_pid;    /*  64 */
    uint32_t client_closed; /*  68 1 once the client closed its side */
    uint64_t client_start;  /*  72 */
    uint8_t pad1[SHMLINK_CACHE_LINE - 16];
    /* line 2: the server's, written before the accept CAS */
    uint32_t server_pid;    /* 128 */
    uint32_t server_closed; /* 132 */
    uint64_t server_start;  /* 136 */
    uint8_t pad2[SHMLINK_CACHE_LINE - 16];
    /* line 3: the accept state (futex word) */
    uint32_t state; /* 192 enum shmlink_conn_state */
    uint8_t pad3[SHMLINK_CACHE_LINE - 4];
};
/* connection/_layout.py's _C_* offsets (relative to the data area) */
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_conn_block) == SHMLINK_CONN_RINGS,
                      "the rings follow the connection block (_C_RINGS)");
SHMLINK_STATIC_ASSERT(offsetof(struct shmlink_conn_block, ring_size) == 8 &&
                          offsetof(struct shmlink_conn_block, client_pid) == 64 &&
                          offsetof(struct shmlink_conn_block, client_closed) == 68 &&
                          offsetof(struct shmlink_conn_block, client_start) == 72 &&
                          offsetof(struct shmlink_conn_block, server_pid) == 128 &&
                          offsetof(struct shmlink_conn_block, server_closed) == 132 &&
                          offsetof(struct shmlink_conn_block, server_start) == 136 &&
                          offsetof(struct shmlink_conn_block, state) == 192,
                      "the offsets of connection/_layout.py");

/* Bytes of one ring region for a capacity (_layout._ring_size). */
static inline uint64_t shmlink_conn_ring_size(uint64_t capacity) {
    return (SHMLINK_RING_DATA_OFFSET + capacity + 63u) & ~(uint64_t)63u;
}

/* ---- the listener segment ---------------------------------------------- */

#define SHMLINK_LISTENER_MAGIC 0x524E534Cu /* "LSNR" */
#define SHMLINK_LISTENER_VERSION 1u
#define SHMLINK_LISTENER_RING 128u /* data-area offset of the accept ring */
#define SHMLINK_ACCEPT_NAME 24u    /* an accept record: the suffix, NUL-padded */
#define SHMLINK_ACCEPT_RECORD (SHMLINK_RECORD_HEADER + SHMLINK_ACCEPT_NAME)
/* "c" + up to 10 digits + "-" + 8 hex digits, and the dot before it */
#define SHMLINK_CONN_SUFFIX_MAX 21u
#define SHMLINK_LISTENER_NAME_MAX (SHMLINK_NAME_MAX - SHMLINK_CONN_SUFFIX_MAX)

struct shmlink_listener_block {
    uint32_t magic;        /*  0 SHMLINK_LISTENER_MAGIC */
    uint32_t version;      /*  4 SHMLINK_LISTENER_VERSION */
    uint32_t pid;          /*  8 the server */
    uint32_t closed;       /* 12 1 once the server closed the listener */
    uint64_t start;        /* 16 the server's start time */
    uint64_t capacity;     /* 24 each connection's ring capacity, bytes */
    uint64_t max_message;  /* 32 largest frame (0 = capacity - 8) */
    uint32_t backlog;      /* 40 */
    uint32_t mode;         /* 44 permission bits of connection segments */
    uint64_t accepted;     /* 48 connections accepted so far */
    uint8_t pad[SHMLINK_LISTENER_RING - 56];
};
SHMLINK_STATIC_ASSERT(sizeof(struct shmlink_listener_block) == SHMLINK_LISTENER_RING,
                      "the accept ring follows the listener block (_L_RING)");
SHMLINK_STATIC_ASSERT(offsetof(struct shmlink_listener_block, pid) == 8 &&
                          offsetof(struct shmlink_listener_block, closed) == 12 &&
                          offsetof(struct shmlink_listener_block, start) == 16 &&
                          offsetof(struct shmlink_listener_block, capacity) == 24 &&
                          offsetof(struct shmlink_listener_block, max_message) == 32 &&
                          offsetof(struct shmlink_listener_block, backlog) == 40 &&
                          offsetof(struct shmlink_listener_block, mode) == 44 &&
                          offsetof(struct shmlink_listener_block, accepted) == 48,
                      "the offsets of connection/_layout.py");

/* 0 if s (n bytes, NUL-padded) is a connection suffix "c<1-10 digits>-<8
 * lowercase hex>" (_SUFFIX_RE), with its length in *len; else -EBADMSG. */
static inline int shmlink_conn_suffix_check(const char *s, size_t n, size_t *len) {
    size_t i = 0, digits = 0, hex = 0;
    if (n == 0 || s[0] != 'c')
        return -EBADMSG;
    for (i = 1; i < n && s[i] >= '0' && s[i] <= '9'; i++)
        digits++;
    if (digits < 1 || digits > 10 || i >= n || s[i] != '-')
        return -EBADMSG;
    for (i++; i < n && ((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')); i++)
        hex++;
    if (hex != 8)
        return -EBADMSG;
    *len = i;
    for (; i < n; i++) /* only NUL padding after it */
        if (s[i] != '\0')
            return -EBADMSG;
    return 0;
}

/* The name of a listener's connection: "<listener>.<suffix>" (n bytes of
 * suffix) into out (SHMLINK_NAME_MAX + 1 bytes).  0 or -ENAMETOOLONG. */
static inline int shmlink_conn_name(char *out, const char *listener, const char *suffix,
                                    size_t n) {
    size_t m = strlen(listener);
    if (m + 1 + n > SHMLINK_NAME_MAX)
        return -ENAMETOOLONG;
    memcpy(out, listener, m);
    out[m] = '.';
    memcpy(out + m + 1, suffix, n);
    out[m + 1 + n] = '\0';
    return 0;
}

/* ---- a connection end ---------------------------------------------------- */

enum shmlink_conn_role { SHMLINK_CONN_CLIENT = 1, SHMLINK_CONN_SERVER = 2 };

struct shmlink_conn {
    struct shmlink_segment seg;
    struct shmlink_conn_block *blk;
    struct shmlink_ring_handle out, in; /* ours to send on, ours to read */
    int role;
    int gone;           /* 1 once the peer is known to have closed or died */
    uint32_t pid;       /* this process (shmlink_self) */
    uint64_t start;
    uint32_t peer_pid;
    uint64_t peer_start;
    uint32_t *my_closed, *peer_closed;
    uint64_t next_id;   /* the next request id */
    uint64_t dropped;   /* frames request() read and could not deliver */
    uint8_t *sbuf, *rbuf; /* scratch frames, max_frame bytes each */
    uint64_t max_frame; /* largest frame (header included) */
    char name[SHMLINK_NAME_MAX + 1];
};

/* Largest payload send/request can carry on this connection. */
static inline uint64_t shmlink_conn_max_payload(const struct shmlink_conn *c) {
    return c->max_frame - SHMLINK_FRAME_HEADER;
}

struct shmlink_conn_init {
    uint64_t ring_size, max_frame;
    uint32_t pid;
    uint64_t start;
};

static inline int shmlink_conn_init_block(void *arg, uint8_t *data, uint64_t size) {
    const struct shmlink_conn_init *ci = (const struct shmlink_conn_init *)arg;
    struct shmlink_conn_block *b = (struct shmlink_conn_block *)data;
    if (size < SHMLINK_CONN_RINGS + 2 * ci->ring_size)
        return -EINVAL;
    b->magic = SHMLINK_CONN_MAGIC;
    b->version = SHMLINK_CONN_VERSION;
    b->ring_size = ci->ring_size;
    b->client_pid = ci->pid;
    b->client_start = ci->start;
    int rc = shmlink_ring_init(data + SHMLINK_CONN_RINGS, ci->ring_size, ci->max_frame);
    if (rc == 0)
        rc = shmlink_ring_init(data + SHMLINK_CONN_RINGS + ci->ring_size, ci->ring_size,
                               ci->max_frame);
    return rc;
}

/* Check an open connection segment and attach its two rings (role not yet
 * taken).  0, -EPROTO or -EBADMSG.  Every word is loaded once. */
static inline int shmlink_conn_attach(struct shmlink_conn *c) {
    struct shmlink_segment *s = &c->seg;
    if (s->kind != SHMLINK_KIND_CONNECTION)
        return -EPROTO;
    if (s->size < SHMLINK_CONN_RINGS)
        return -EBADMSG;
    struct shmlink_conn_block *b = (struct shmlink_conn_block *)s->data;
    uint32_t kind_version = SHMLINK_LOAD_RELAXED(&((struct shmlink_header *)s->base)->kind_version);
    if (kind_version != SHMLINK_CONN_VERSION ||
        SHMLINK_LOAD_RELAXED(&b->magic) != SHMLINK_CONN_MAGIC ||
        SHMLINK_LOAD_RELAXED(&b->version) != SHMLINK_CONN_VERSION)
        return -EPROTO;
    uint64_t ring_size = SHMLINK_LOAD_RELAXED(&b->ring_size);
    if (ring_size < SHMLINK_RING_DATA_OFFSET + 64 || ring_size % 64 != 0 ||
        ring_size > (s->size - SHMLINK_CONN_RINGS) / 2)
        return -EBADMSG;
    struct shmlink_ring_handle c2s, s2c;
    int rc = shmlink_ring_attach(&c2s, s->data + SHMLINK_CONN_RINGS, ring_size);
    if (rc == 0)
        rc = shmlink_ring_attach(&s2c, s->data + SHMLINK_CONN_RINGS + ring_size, ring_size);
    if (rc != 0)
        return rc;
    c->blk = b;
    c->out = c2s; /* the client's view; shmlink_conn_bind swaps for a server */
    c->in = s2c;
    return 0;
}

/* Take a side once accepted: which ring is ours, whose flags are whose; the
 * scratch buffers.  0 or -ENOMEM. */
static inline int shmlink_conn_bind(struct shmlink_conn *c, int role) {
    struct shmlink_conn_block *b = c->blk;
    c->role = role;
    if (role == SHMLINK_CONN_SERVER) {
        struct shmlink_ring_handle t = c->out;
        c->out = c->in;
        c->in = t;
        c->my_closed = &b->server_closed;
        c->peer_closed = &b->client_closed;
        /* written by the client before the segment was ready */
        c->peer_pid = SHMLINK_LOAD_RELAXED(&b->client_pid);
        c->peer_start = SHMLINK_LOAD_RELAXED(&b->client_start);
    } else {
        c->my_closed = &b->client_closed;
        c->peer_closed = &b->server_closed;
        /* relaxed: ordered by the acquire load of ACCEPTED in connect */
        c->peer_pid = SHMLINK_LOAD_RELAXED(&b->server_pid);
        c->peer_start = SHMLINK_LOAD_RELAXED(&b->server_start);
    }
    /* a frame we send must fit the peer's ring, one we read ours */
    c->max_frame = c->out.max_message;
    uint64_t rmax = c->in.max_message > c->max_frame ? c->in.max_message : c->max_frame;
    c->sbuf = (uint8_t *)malloc((size_t)c->max_frame);
    c->rbuf = (uint8_t *)malloc((size_t)rmax);
    if (!c->sbuf || !c->rbuf) {
        free(c->sbuf);
        free(c->rbuf);
        c->sbuf = c->rbuf = NULL;
        return -ENOMEM;
    }
    c->next_id = 1;
    c->dropped = 0;
    c->gone = 0;
    return 0;
}

/* 1 if the peer closed its side or is no longer alive (PID + start time). */
static inline int shmlink_conn_peer_gone(struct shmlink_conn *c) {
    if (c->gone)
        return 1;
    /* SYNC: pairs with the peer's seq_cst store of its closed flag in
     * shmlink_conn_close (and Python's close): its last frames, sent after
     * the flag, are looked for again by the caller before it gives up. */
    if (SHMLINK_LOAD_ACQUIRE(c->peer_closed) || !shmlink_process_alive(c->peer_pid, c->peer_start))
        c->gone = 1;
    return c->gone;
}

/* Send one frame of len bytes at frame (header already encoded), waiting
 * for room until the absolute deadline (NULL = forever), in slices that
 * re-check the peer.  Like a socket, a frame sent just as the peer dies
 * is lost.  0, -ECONNRESET (the peer is known to be gone: nothing sent),
 * -ETIMEDOUT, -EINTR, -EMSGSIZE or -EBADMSG. */
static inline int shmlink_conn_send_frame(struct shmlink_conn *c, const void *frame,
                                          uint64_t len, const struct timespec *deadline) {
    if (len < SHMLINK_FRAME_HEADER)
        return -EINVAL;
    if (len > c->max_frame)
        return -EMSGSIZE;
    /* SYNC: pairs with the peer's seq_cst store of its closed flag (a
     * load each send; its liveness, a read of /proc, once a slice) */
    if (c->gone || SHMLINK_LOAD_ACQUIRE(c->peer_closed))
        return -ECONNRESET;
    for (;;) {
        struct timespec slice;
        shmlink_deadline_min(&slice, deadline, SHMLINK_WAIT_SLICE_S);
        int rc = shmlink_ring_send(&c->out, frame, len, c->pid, c->start, &slice);
        if (rc != -ETIMEDOUT)
            return rc;
        if (shmlink_conn_peer_gone(c))
            return -ECONNRESET;
        if (shmlink_deadline_passed(deadline))
            return -ETIMEDOUT;
    }
}

/* Receive the next frame into buf (cap bytes), decoded into *f (payload
 * points into buf), waiting until the absolute deadline (NULL = forever).
 * Wake-up frames are skipped.  Returns the frame's length, -ECONNRESET
 * (the peer closed or died, and everything it sent before was received:
 * also for its CLOSE frame), -ETIMEDOUT, -EINTR, -EMSGSIZE (the frame is
 * larger than cap; it stays queued) or -EBADMSG (a frame or ring that
 * breaks the protocol). */
static inline int64_t shmlink_conn_recv_frame(struct shmlink_conn *c, void *buf, uint64_t cap,
                                              struct shmlink_frame *f,
                                              const struct timespec *deadline) {
    for (;;) {
        struct timespec slice;
        shmlink_deadline_min(&slice, deadline, SHMLINK_WAIT_SLICE_S);
        int64_t n = shmlink_ring_recv(&c->in, buf, cap, c->pid, c->start, &slice);
        if (n == -ETIMEDOUT) {
            if (shmlink_conn_peer_gone(c)) {
                /* what it sent before closing (or dying) is still delivered */
                n = shmlink_ring_try_recv(&c->in, buf, cap, c->pid, c->start);
                if (n == -EAGAIN || n == -EBUSY)
                    return -ECONNRESET;
            } else if (shmlink_deadline_passed(deadline)) {
                return -ETIMEDOUT;
            } else {
                continue;
            }
        }
        if (n < 0)
            return n;
        int rc = shmlink_frame_decode(buf, (uint64_t)n, f);
        if (rc != 0)
            return rc;
        if (f->kind == SHMLINK_FRAME_WAKE)
            continue;
        if (f->kind == SHMLINK_FRAME_CLOSE) {
            c->gone = 1;
            return -ECONNRESET;
        }
        return n;
    }
}

/* Send a frame of `kind` and `id` carrying len bytes of payload (copied
 * into the handle's scratch frame).  Returns what shmlink_conn_send_frame
 * returns, or -EINVAL for a kind/id pair the protocol forbids. */
static inline int shmlink_conn_send_kind(struct shmlink_conn *c, uint32_t kind, uint64_t id,
                                         const void *payload, uint64_t len,
                                         const struct timespec *deadline) {
    if (len > shmlink_conn_max_payload(c))
        return -EMSGSIZE;
    int rc = shmlink_frame_build(c->sbuf, kind, id, payload, len);
    if (rc != 0)
        return rc;
    return shmlink_conn_send_frame(c, c->sbuf, SHMLINK_FRAME_HEADER + len, deadline);
}

/* Send a plain message (Python's Connection.send).  See send_kind. */
static inline int shmlink_conn_send(struct shmlink_conn *c, const void *data, uint64_t len,
                                    const struct timespec *deadline) {
    return shmlink_conn_send_kind(c, SHMLINK_FRAME_MSG, 0, data, len, deadline);
}

/* Send a request and wait for its response, copied into resp (cap bytes).
 * Returns the response's length; -EREMOTEIO when the peer's handler failed
 * (its text, NUL-terminated and cut to fit, is in resp); -EMSGSIZE when the
 * request is too large or the response larger than cap (it is dropped);
 * -ECONNRESET, -ETIMEDOUT (a late response is dropped by the next call),
 * -EINTR (the request went out: a call again sends a new one) or -EBADMSG.
 * Responses to earlier requests that timed out are dropped; plain messages
 * and requests that arrive meanwhile are dropped too and counted in
 * c->dropped (a peer that mixes them in is read with recv_frame). */
static inline int64_t shmlink_conn_request(struct shmlink_conn *c, const void *req,
                                           uint64_t len, void *resp, uint64_t cap,
                                           const struct timespec *deadline) {
    uint64_t id = c->next_id;
    c->next_id = id >= SHMLINK_FRAME_ID_MAX ? 1 : id + 1;
    int rc = shmlink_conn_send_kind(c, SHMLINK_FRAME_REQ, id, req, len, deadline);
    if (rc != 0)
        return rc;
    uint64_t rcap = c->in.max_message > c->max_frame ? c->in.max_message : c->max_frame;
    for (;;) {
        struct shmlink_frame f;
        int64_t n = shmlink_conn_recv_frame(c, c->rbuf, rcap, &f, deadline);
        if (n < 0)
            return n;
        if ((f.kind != SHMLINK_FRAME_RESP && f.kind != SHMLINK_FRAME_ERR) || f.id != id) {
            if (f.kind == SHMLINK_FRAME_MSG || f.kind == SHMLINK_FRAME_REQ)
                c->dropped++;
            continue;
        }
        if (f.kind == SHMLINK_FRAME_ERR) {
            if (cap) {
                uint64_t k = f.len < cap - 1 ? f.len : cap - 1;
                memcpy(resp, f.payload, (size_t)k);
                ((char *)resp)[k] = '\0';
            }
            return -EREMOTEIO;
        }
        if (f.len > cap)
            return -EMSGSIZE;
        if (f.len)
            memcpy(resp, f.payload, (size_t)f.len);
        return (int64_t)f.len;
    }
}

/* Answer request `id` (server side).  See send_kind. */
static inline int shmlink_conn_reply(struct shmlink_conn *c, uint64_t id, const void *data,
                                     uint64_t len, const struct timespec *deadline) {
    return shmlink_conn_send_kind(c, SHMLINK_FRAME_RESP, id, data, len, deadline);
}

/* Close this end (idempotent on a zeroed or closed handle): set our closed
 * flag, send CLOSE (the peer's blocked reader wakes at once, after the
 * frames we sent before), wake a peer blocked sending to us, remove the
 * name if the peer is gone already, and unmap (removing the name too when
 * we were its last user). */
static inline void shmlink_conn_close(struct shmlink_conn *c) {
    if (!c->seg.base) {
        free(c->sbuf);
        free(c->rbuf);
        c->sbuf = c->rbuf = NULL;
        return;
    }
    if (c->role) {
        /* SYNC: pairs with the peer's acquire load of our closed flag
         * (shmlink_conn_peer_gone, Python's _peer_down).  seq_cst: the load
         * of the peer's flag below must not move before it, so of two ends
         * closing at once at least one sees the other's flag. */
        SHMLINK_STORE_SEQ_CST(c->my_closed, 1u);
        uint8_t fr[SHMLINK_FRAME_HEADER];
        shmlink_frame_encode(fr, SHMLINK_FRAME_CLOSE, 0);
        if (shmlink_ring_try_send(&c->out, fr, sizeof fr, c->pid, c->start) != 0)
            /* full: the peer re-checks the flag */
            shmlink_ec_wake_all_bells(&c->out.ring->data_ec, &c->out.ring->data_bells);
        shmlink_ec_wake_all_bells(&c->in.ring->space_ec, &c->in.ring->space_bells);
        if (SHMLINK_LOAD_SEQ_CST(c->peer_closed) ||
            !shmlink_process_alive(c->peer_pid, c->peer_start))
            shmlink_segment_unlink(&c->seg, c->name);
    }
    shmlink_segment_close_auto(&c->seg, c->name);
    free(c->sbuf);
    free(c->rbuf);
    c->sbuf = c->rbuf = NULL;
    c->blk = NULL;
    c->role = 0;
}

/* ---- the listener ---------------------------------------------------------- */

struct shmlink_listener {
    struct shmlink_segment seg;
    struct shmlink_listener_block *blk;
    struct shmlink_ring_handle ring; /* the accept ring */
    int owner;                       /* this process created it */
    uint32_t pid;
    uint64_t start;
    char name[SHMLINK_NAME_MAX + 1];
};

/* Check an open listener segment; attach its accept ring.  0, -EPROTO or
 * -EBADMSG. */
static inline int shmlink_listener_attach(struct shmlink_listener *l) {
    struct shmlink_segment *s = &l->seg;
    if (s->kind != SHMLINK_KIND_LISTENER)
        return -EPROTO;
    if (s->size <= SHMLINK_LISTENER_RING + SHMLINK_RING_DATA_OFFSET)
        return -EBADMSG;
    struct shmlink_listener_block *b = (struct shmlink_listener_block *)s->data;
    uint32_t kind_version = SHMLINK_LOAD_RELAXED(&((struct shmlink_header *)s->base)->kind_version);
    if (kind_version != SHMLINK_LISTENER_VERSION ||
        SHMLINK_LOAD_RELAXED(&b->magic) != SHMLINK_LISTENER_MAGIC ||
        SHMLINK_LOAD_RELAXED(&b->version) != SHMLINK_LISTENER_VERSION)
        return -EPROTO;
    int rc = shmlink_ring_attach(&l->ring, s->data + SHMLINK_LISTENER_RING,
                                 s->size - SHMLINK_LISTENER_RING);
    if (rc != 0)
        return rc;
    if (l->ring.max_message < SHMLINK_ACCEPT_NAME)
        return -EBADMSG;
    l->blk = b;
    return 0;
}

/* 1 if the listener was closed or its server died. */
static inline int shmlink_listener_gone(const struct shmlink_listener *l) {
    /* SYNC: pairs with the server's seq_cst store of closed in
     * shmlink_listener_close (and Python's Listener.close). */
    return SHMLINK_LOAD_ACQUIRE(&l->blk->closed) ||
           !shmlink_process_alive(SHMLINK_LOAD_RELAXED(&l->blk->pid),
                                  SHMLINK_LOAD_RELAXED(&l->blk->start));
}

/* Open the listener `name`, waiting (until deadline) for one still being
 * laid out.  0, -ENOENT, -EPROTO, -EBADMSG, -ETIMEDOUT, -EINVAL. */
static inline int shmlink_listener_open(struct shmlink_listener *l, const char *name,
                                        const struct timespec *deadline) {
    memset(l, 0, sizeof *l);
    l->seg.fd = -1;
    if (strlen(name) > SHMLINK_NAME_MAX)
        return -EINVAL;
    for (;;) {
        int rc = shmlink_segment_open(&l->seg, name);
        if (rc == -EINPROGRESS) {
            if (shmlink_deadline_passed(deadline))
                return -ETIMEDOUT;
            struct timespec pause;
            shmlink_deadline_min(&pause, deadline, 0.005);
            uint32_t zero = 0; /* a private word: this is a plain bounded sleep */
            shmlink_futex_wait(&zero, 0, &pause);
            continue;
        }
        if (rc != 0)
            return rc;
        break;
    }
    int rc = shmlink_listener_attach(l);
    if (rc != 0) {
        shmlink_segment_close(&l->seg);
        return rc;
    }
    shmlink_self(&l->pid, &l->start);
    strcpy(l->name, name);
    return 0;
}

/* Post the suffix of our connection on the accept ring, waiting for room
 * in slices that re-check the server.  0, -ECONNREFUSED, -ETIMEDOUT,
 * -EINTR, -EBADMSG. */
static inline int shmlink_listener_post(struct shmlink_listener *l, const char *suffix,
                                        const struct timespec *deadline) {
    char rec[SHMLINK_ACCEPT_NAME];
    memset(rec, 0, sizeof rec);
    memcpy(rec, suffix, strlen(suffix)); /* <= SHMLINK_CONN_SUFFIX_MAX - 1 < 24 */
    for (;;) {
        if (shmlink_listener_gone(l))
            return -ECONNREFUSED;
        struct timespec slice;
        shmlink_deadline_min(&slice, deadline, SHMLINK_WAIT_SLICE_S);
        int rc = shmlink_ring_send(&l->ring, rec, sizeof rec, l->pid, l->start, &slice);
        if (rc != -ETIMEDOUT)
            return rc;
        if (shmlink_deadline_passed(deadline))
            return -ETIMEDOUT;
    }
}

/* Connect to the listener `name` (a Python shmlink.listen() or a C
 * shmlink_listener_create) and wait until its server accepts, until the
 * absolute deadline (NULL = forever).  On success *c is the client end;
 * close it with shmlink_conn_close.  0, -ENOENT (nothing listens there),
 * -ECONNREFUSED (the listener is closed, its server died, or it closed
 * before accepting), -ETIMEDOUT (no room in the backlog, or no accept, in
 * time: the attempt is abandoned), -EINTR (abandoned as well), -EPROTO,
 * -EBADMSG (a corrupt listener or state), -ENOMEM, or -errno from creating
 * the segment.  On failure nothing is left in the segment directory. */
static inline int shmlink_conn_connect(struct shmlink_conn *c, const char *name,
                                       const struct timespec *deadline) {
    memset(c, 0, sizeof *c);
    c->seg.fd = -1;
    if (shmlink_name_check(name) != 0 || strlen(name) > SHMLINK_LISTENER_NAME_MAX)
        return -EINVAL;
    struct shmlink_listener l;
    int rc = shmlink_listener_open(&l, name, deadline);
    if (rc != 0)
        return rc;
    if (shmlink_listener_gone(&l)) {
        shmlink_segment_close(&l.seg);
        return -ECONNREFUSED;
    }
    /* each loaded once, then checked */
    uint64_t capacity = SHMLINK_LOAD_RELAXED(&l.blk->capacity);
    uint64_t max_frame = SHMLINK_LOAD_RELAXED(&l.blk->max_message);
    uint32_t mode = SHMLINK_LOAD_RELAXED(&l.blk->mode) & 0777u;
    if (capacity < 64 || capacity > ((uint64_t)1 << 40) || max_frame > capacity) {
        shmlink_segment_close(&l.seg);
        return -EBADMSG;
    }
    struct shmlink_conn_init ci;
    ci.ring_size = shmlink_conn_ring_size(capacity);
    ci.max_frame = max_frame;
    shmlink_self(&ci.pid, &ci.start);
    c->pid = ci.pid;
    c->start = ci.start;
    char suffix[SHMLINK_CONN_SUFFIX_MAX + 2];
    for (;;) {
        snprintf(suffix, sizeof suffix, "c%u-%08x", ci.pid, shmlink_os_random32());
        rc = shmlink_conn_name(c->name, name, suffix, strlen(suffix));
        if (rc != 0)
            break;
        rc = shmlink_segment_create(&c->seg, c->name, SHMLINK_KIND_CONNECTION,
                                    SHMLINK_CONN_VERSION,
                                    SHMLINK_CONN_RINGS + 2 * ci.ring_size, mode,
                                    SHMLINK_FLAG_UNLINK_ON_LAST_CLOSE,
                                    shmlink_conn_init_block, &ci);
        if (rc != -EEXIST)
            break;
    }
    if (rc == 0)
        rc = shmlink_conn_attach(c);
    if (rc == 0)
        rc = shmlink_listener_post(&l, suffix, deadline);
    uint32_t *state = rc == 0 ? &c->blk->state : NULL;
    while (rc == 0) {
        /* SYNC: pairs with the server's accept CAS, which follows its stores
         * of server_pid/server_start (Python _admit, shmlink_listener_accept). */
        uint32_t st = SHMLINK_LOAD_ACQUIRE(state);
        if (st == SHMLINK_CONN_ACCEPTED)
            break;
        if (st == SHMLINK_CONN_REFUSED) {
            rc = -ECONNREFUSED;
            break;
        }
        if (st != SHMLINK_CONN_PENDING) {
            rc = -EBADMSG;
            break;
        }
        int why = shmlink_listener_gone(&l) ? -ECONNREFUSED
                  : shmlink_deadline_passed(deadline) ? -ETIMEDOUT : 0;
        if (why) {
            uint32_t expected = SHMLINK_CONN_PENDING;
            if (SHMLINK_CAS(state, &expected, (uint32_t)SHMLINK_CONN_ABANDONED))
                rc = why;
            continue; /* else the server decided first: look again */
        }
        struct timespec slice;
        shmlink_deadline_min(&slice, deadline, SHMLINK_WAIT_SLICE_S);
        int w = shmlink_futex_wait(state, SHMLINK_CONN_PENDING, &slice);
        if (w == -EINTR) {
            uint32_t expected = SHMLINK_CONN_PENDING;
            if (SHMLINK_CAS(state, &expected, (uint32_t)SHMLINK_CONN_ABANDONED))
                rc = -EINTR;
        }
    }
    shmlink_segment_close(&l.seg);
    if (rc == 0)
        rc = shmlink_conn_bind(c, SHMLINK_CONN_CLIENT);
    if (rc != 0) {
        if (c->seg.base)
            shmlink_segment_unlink(&c->seg, c->name); /* nobody will use it */
        c->role = 0;
        shmlink_conn_close(c);
    }
    return rc;
}

struct shmlink_listener_init {
    uint32_t pid, backlog, mode;
    uint64_t start, capacity, max_frame, ring_bytes;
};

static inline int shmlink_listener_init_block(void *arg, uint8_t *data, uint64_t size) {
    const struct shmlink_listener_init *li = (const struct shmlink_listener_init *)arg;
    struct shmlink_listener_block *b = (struct shmlink_listener_block *)data;
    if (size < SHMLINK_LISTENER_RING + li->ring_bytes)
        return -EINVAL;
    b->magic = SHMLINK_LISTENER_MAGIC;
    b->version = SHMLINK_LISTENER_VERSION;
    b->pid = li->pid;
    b->start = li->start;
    b->capacity = li->capacity;
    b->max_message = li->max_frame;
    b->backlog = li->backlog;
    b->mode = li->mode;
    return shmlink_ring_init(data + SHMLINK_LISTENER_RING, li->ring_bytes, SHMLINK_ACCEPT_NAME);
}

/* Listen on `name` as Python's shmlink.listen does: each connection gets
 * `capacity` bytes per direction (rounded up to 8, >= 64), frames up to
 * max_payload + 8 bytes (0 = as large as the ring allows), `backlog`
 * pending connects (1 .. 2^20), permission bits `mode`.  A listener whose
 * server died (or that was closed) is taken over.  0, -EEXIST (a live
 * server listens there), -EINVAL, or -errno from creating the segment. */
static inline int shmlink_listener_create(struct shmlink_listener *l, const char *name,
                                          uint64_t capacity, uint32_t backlog,
                                          uint64_t max_payload, uint32_t mode) {
    memset(l, 0, sizeof *l);
    l->seg.fd = -1;
    if (shmlink_name_check(name) != 0 || strlen(name) > SHMLINK_LISTENER_NAME_MAX ||
        capacity < 64 || capacity > ((uint64_t)1 << 40) || backlog < 1 ||
        backlog > (1u << 20) || mode > 0777u)
        return -EINVAL;
    struct shmlink_listener_init li;
    li.capacity = (capacity + 7u) & ~(uint64_t)7u;
    if (max_payload > li.capacity - 16)
        return -EINVAL;
    li.max_frame = max_payload ? max_payload + SHMLINK_FRAME_HEADER : 0;
    li.backlog = backlog;
    li.mode = mode;
    li.ring_bytes = SHMLINK_RING_DATA_OFFSET +
                    ((uint64_t)backlog * SHMLINK_ACCEPT_RECORD > 64
                         ? (uint64_t)backlog * SHMLINK_ACCEPT_RECORD : 64);
    shmlink_self(&li.pid, &li.start);
    for (int tries = 0;; tries++) {
        int rc = shmlink_segment_create(&l->seg, name, SHMLINK_KIND_LISTENER,
                                        SHMLINK_LISTENER_VERSION,
                                        SHMLINK_LISTENER_RING + li.ring_bytes, mode,
                                        SHMLINK_FLAG_UNLINK_ON_LAST_CLOSE,
                                        shmlink_listener_init_block, &li);
        if (rc == 0) {
            rc = shmlink_listener_attach(l);
            if (rc != 0) {
                shmlink_segment_unlink(&l->seg, name);
                shmlink_segment_close(&l->seg);
                return rc;
            }
            l->owner = 1;
            l->pid = li.pid;
            l->start = li.start;
            strcpy(l->name, name);
            return 0;
        }
        if (rc != -EEXIST || tries >= 8)
            return rc;
        /* the name is taken: by a live server, or by a dead one's leftover */
        struct shmlink_listener old;
        rc = shmlink_listener_open(&old, name, NULL);
        if (rc == -ENOENT)
            continue;
        if (rc != 0)
            return -EEXIST; /* another kind of object, or not readable */
        int gone = shmlink_listener_gone(&old);
        if (gone)
            shmlink_segment_unlink(&old.seg, name); /* its server died: take the name over */
        shmlink_segment_close(&old.seg);
        if (!gone)
            return -EEXIST;
    }
}

/* Admit the connection whose suffix a client posted: 0 with *c the server
 * end, 1 when it is not one or its client is gone (nothing to do), or a
 * negative errno (-ENOMEM). */
static inline int shmlink_listener_admit(struct shmlink_listener *l, const char *rec,
                                         struct shmlink_conn *c) {
    size_t n;
    if (shmlink_conn_suffix_check(rec, SHMLINK_ACCEPT_NAME, &n) != 0)
        return 1; /* a wake-up (Python's close posts an empty record), or garbage */
    memset(c, 0, sizeof *c);
    c->seg.fd = -1;
    if (shmlink_conn_name(c->name, l->name, rec, n) != 0 ||
        shmlink_segment_open(&c->seg, c->name) != 0)
        return 1; /* the client gave up and its segment went away */
    if (shmlink_conn_attach(c) != 0) {
        shmlink_segment_close(&c->seg);
        return 1;
    }
    uint32_t *state = &c->blk->state;
    uint32_t expected = SHMLINK_CONN_PENDING;
    if (!shmlink_process_alive(SHMLINK_LOAD_RELAXED(&c->blk->client_pid),
                               SHMLINK_LOAD_RELAXED(&c->blk->client_start))) {
        SHMLINK_CAS(state, &expected, (uint32_t)SHMLINK_CONN_ABANDONED);
        shmlink_segment_unlink(&c->seg, c->name); /* nobody will use it */
        shmlink_segment_close(&c->seg);
        return 1;
    }
    c->pid = l->pid;
    c->start = l->start;
    /* relaxed: the accept CAS below (seq_cst) publishes them to the
     * client's acquire load of the state */
    SHMLINK_STORE_RELAXED(&c->blk->server_pid, c->pid);
    SHMLINK_STORE_RELAXED(&c->blk->server_start, c->start);
    if (!SHMLINK_CAS(state, &expected, (uint32_t)SHMLINK_CONN_ACCEPTED)) {
        shmlink_segment_unlink(&c->seg, c->name); /* the client gave up first */
        shmlink_segment_close(&c->seg);
        return 1;
    }
    shmlink_futex_wake(state, INT_MAX);
    SHMLINK_FETCH_ADD(&l->blk->accepted, 1);
    int rc = shmlink_conn_bind(c, SHMLINK_CONN_SERVER);
    if (rc != 0)
        shmlink_conn_close(c);
    return rc;
}

/* Wait for the next client until the absolute deadline (NULL = forever)
 * and make *c the server end of its connection.  0, -ETIMEDOUT, -EINTR,
 * -ECONNABORTED (the listener was closed), -ENOMEM or -EBADMSG (a corrupt
 * accept ring). */
static inline int shmlink_listener_accept(struct shmlink_listener *l, struct shmlink_conn *c,
                                          const struct timespec *deadline) {
    for (;;) {
        /* relaxed: our own flag, or the owner's, seen a slice late at most */
        if (SHMLINK_LOAD_RELAXED(&l->blk->closed))
            return -ECONNABORTED;
        char rec[SHMLINK_ACCEPT_NAME + 8];
        struct timespec slice;
        shmlink_deadline_min(&slice, deadline, SHMLINK_WAIT_SLICE_S);
        int64_t n = shmlink_ring_recv(&l->ring, rec, sizeof rec, l->pid, l->start, &slice);
        if (n == -ETIMEDOUT) {
            if (shmlink_deadline_passed(deadline))
                return -ETIMEDOUT;
            continue;
        }
        if (n < 0)
            return (int)n;
        if (n != SHMLINK_ACCEPT_NAME)
            continue; /* a wake-up record, or garbage */
        int rc = shmlink_listener_admit(l, rec, c);
        if (rc <= 0)
            return rc;
    }
}

/* Close the listener.  The owner's close marks it closed, removes its name
 * and refuses the connects still waiting (they fail at once); accepted
 * connections are not affected.  Idempotent on a closed handle. */
static inline void shmlink_listener_close(struct shmlink_listener *l) {
    if (!l->seg.base)
        return;
    if (l->owner) {
        /* SYNC: pairs with the acquire load of closed in
         * shmlink_listener_gone (and Python's _server_gone). */
        SHMLINK_STORE_SEQ_CST(&l->blk->closed, 1u);
        shmlink_segment_unlink(&l->seg, l->name);
        char rec[SHMLINK_ACCEPT_NAME + 8];
        while (shmlink_ring_try_recv(&l->ring, rec, sizeof rec, l->pid, l->start) ==
               (int64_t)SHMLINK_ACCEPT_NAME) {
            size_t n;
            struct shmlink_segment s;
            char cname[SHMLINK_NAME_MAX + 1];
            if (shmlink_conn_suffix_check(rec, SHMLINK_ACCEPT_NAME, &n) != 0)
                continue;
            if (shmlink_conn_name(cname, l->name, rec, n) != 0 ||
                shmlink_segment_open(&s, cname) != 0)
                continue;
            if (s.kind == SHMLINK_KIND_CONNECTION && s.size >= SHMLINK_CONN_RINGS) {
                uint32_t *state = &((struct shmlink_conn_block *)s.data)->state;
                uint32_t expected = SHMLINK_CONN_PENDING;
                if (SHMLINK_CAS(state, &expected, (uint32_t)SHMLINK_CONN_REFUSED))
                    shmlink_futex_wake(state, INT_MAX);
            }
            shmlink_segment_close(&s);
        }
    }
    shmlink_segment_close_auto(&l->seg, l->name);
    l->blk = NULL;
}

SHMLINK_END_DECLS

#endif /* SHMLINK_CONNECTION_H */
