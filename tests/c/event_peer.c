/*
 * event_peer: a C process on the same shmlink.Event as Python processes,
 * for tests/test_c_events.py.  Exit 0 on success, 1 on failure, 2 on usage.
 *
 *   event_peer create NAME auto|manual   create the event (lifetime persist)
 *   event_peer set NAME [N]              set it N times (default 1); print
 *                                        "woke K": how many sets made a
 *                                        futex wake system call
 *   event_peer clear NAME                clear it
 *   event_peer state NAME                print "set" or "clear"
 *   event_peer wait NAME SECONDS         print "waiting", wait once: "ok"
 *                                        or "timeout"
 *   event_peer consume NAME IDLE         print "waiting", then wait again
 *                                        and again until a wait of IDLE
 *                                        seconds times out; print
 *                                        "consumed K"
 *   event_peer stats NAME                print "sets S wakes W armed A"
 */
#include "shmlink.h"

#include <stdlib.h>

static const char *code(int rc) {
    static char buf[32];
    switch (rc) {
    case 0: return "0";
    case -EAGAIN: return "EAGAIN";
    case -ETIMEDOUT: return "ETIMEDOUT";
    case -EPROTO: return "EPROTO";
    case -EBADMSG: return "EBADMSG";
    case -ENOENT: return "ENOENT";
    case -EEXIST: return "EEXIST";
    }
    snprintf(buf, sizeof buf, "%d", rc);
    return buf;
}

static int wait_for(const struct shmlink_event_handle *h, double seconds) {
    struct timespec deadline;
    shmlink_deadline_after(&deadline, seconds);
    int rc;
    do
        rc = shmlink_event_wait(h, &deadline);
    while (rc == -EINTR);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *cmd = argv[1];
    struct shmlink_segment seg;
    struct shmlink_event_handle h;
    int rc;
    if (strcmp(cmd, "create") == 0 && argc == 4) {
        rc = shmlink_event_create(&seg, &h, argv[2], strcmp(argv[3], "auto") == 0, 0600, 0);
        if (rc != 0) {
            printf("create: %s\n", code(rc));
            return 1;
        }
        printf("created\n");
        shmlink_segment_close(&seg);
        return 0;
    }
    rc = shmlink_event_open(&seg, &h, argv[2]);
    if (rc != 0) {
        printf("open: %s\n", code(rc));
        return 1;
    }
    if (strcmp(cmd, "set") == 0 && argc <= 4) {
        long n = argc == 4 ? atol(argv[3]) : 1, woke = 0;
        for (long i = 0; i < n; i++)
            woke += shmlink_event_set(&h);
        printf("woke %ld\n", woke);
    } else if (strcmp(cmd, "clear") == 0 && argc == 3) {
        shmlink_event_clear(&h);
    } else if (strcmp(cmd, "state") == 0 && argc == 3) {
        printf("%s\n", shmlink_event_is_set(&h) ? "set" : "clear");
    } else if (strcmp(cmd, "wait") == 0 && argc == 4) {
        printf("waiting\n");
        rc = wait_for(&h, atof(argv[3]));
        printf("%s\n", rc == 0 ? "ok" : rc == -ETIMEDOUT ? "timeout" : code(rc));
    } else if (strcmp(cmd, "consume") == 0 && argc == 4) {
        double idle = atof(argv[3]);
        long consumed = 0;
        printf("waiting\n");
        while ((rc = wait_for(&h, idle)) == 0)
            consumed++;
        if (rc != -ETIMEDOUT) {
            printf("wait: %s\n", code(rc));
            return 1;
        }
        printf("consumed %ld\n", consumed);
    } else if (strcmp(cmd, "stats") == 0 && argc == 3) {
        printf("sets %llu wakes %llu armed %d\n", (unsigned long long)shmlink_event_sets(&h),
               (unsigned long long)shmlink_event_wakes(&h), shmlink_event_armed(&h));
    } else {
        return 2;
    }
    shmlink_segment_close(&seg);
    return 0;
}
