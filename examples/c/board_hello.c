/*
 * board_hello: share a shmlink Board between C and Python.
 *
 *   board_hello NAME [TEXT]
 *
 * Opens the board NAME (creating it, 256 bytes, mode 0600, if it does not
 * exist), writes TEXT when given, then reads the current value and prints
 * "version N: VALUE".  A Python process sees the same board:
 * shmlink.Board.open(NAME).read().
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror -I src/shmlink/include \
 *           examples/c/board_hello.c -o board_hello
 */
#include "shmlink.h" /* first: it selects the POSIX features it needs */

#include <errno.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: board_hello NAME [TEXT]\n");
        return 2;
    }
    const char *name = argv[1];
    struct shmlink_segment seg = {.fd = -1};
    struct shmlink_board_handle board;
    int rc = shmlink_board_open(&seg, &board, name);
    if (rc == -ENOENT) /* none yet: make it (lifetime "persist": flags 0) */
        rc = shmlink_board_create(&seg, &board, name, 256, 0600, 0);
    if (rc == -EEXIST) /* somebody else made it meanwhile */
        rc = shmlink_board_open(&seg, &board, name);
    if (rc != 0) {
        fprintf(stderr, "board_hello: cannot open %s: %s\n", name, strerror(-rc));
        return 1;
    }
    uint32_t pid; /* who we are, for the robust writers' lock */
    uint64_t start;
    shmlink_self(&pid, &start);
    struct timespec deadline;
    shmlink_deadline_after(&deadline, 5.0);
    if (argc == 3) {
        rc = shmlink_board_write(&board, argv[2], strlen(argv[2]), pid, start, &deadline, NULL);
        if (rc != 0) {
            fprintf(stderr, "board_hello: write failed: %s\n", strerror(-rc));
            return 1;
        }
    }
    char value[256];
    uint64_t version = 0, need = 0;
    int64_t n = shmlink_board_read(&board, value, sizeof value, &version, &need, pid, start,
                                   &deadline); /* never torn, lock-free unless contended */
    if (n < 0) {
        fprintf(stderr, "board_hello: read failed: %s\n", strerror((int)-n));
        return 1;
    }
    printf("version %llu: %.*s\n", (unsigned long long)version, (int)n, value);
    shmlink_segment_close(&seg);
    return 0;
}
