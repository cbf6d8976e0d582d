/*
 * board_read: read a shmlink Board from C.
 *
 *   board_read NAME          print the current version and value
 *   board_read NAME check N  read N times while others write; every value
 *                            must be one byte repeated (a torn read would mix
 *                            two values); print how many reads were whole
 *
 * Build: cc -O2 -Wall -Wextra -Werror -I src/shmlink/include examples/c/board_read.c -o board_read
 */
#include <stdio.h>
#include <stdlib.h>

#include "shmlink.h"

int main(int argc, char **argv) {
    if (argc != 2 && !(argc == 4 && strcmp(argv[2], "check") == 0)) {
        fprintf(stderr, "usage: board_read NAME [check N]\n");
        return 2;
    }
    struct shmlink_segment seg = {.fd = -1};
    struct shmlink_board_handle board;
    int rc = shmlink_board_open(&seg, &board, argv[1]);
    if (rc != 0) {
        fprintf(stderr, "board_read: cannot open %s as a board: %s\n", argv[1], strerror(-rc));
        return 1;
    }
    uint32_t pid;
    uint64_t start;
    shmlink_self(&pid, &start);
    uint64_t cap = board.capacity; /* checked against the mapping at open */
    char *buf = malloc(cap);
    long reads = argc == 4 ? atol(argv[3]) : 1, whole = 0;
    for (long i = 0; i < reads; i++) {
        uint64_t version = 0, need = 0;
        /* lock-free; under the writers' lock if writers keep overtaking it */
        int64_t n = shmlink_board_read(&board, buf, cap, &version, &need, pid, start, NULL);
        if (n < 0) {
            fprintf(stderr, "board_read: %s\n", strerror((int)-n));
            return 1;
        }
        if (argc == 2) {
            printf("version %llu: %.*s\n", (unsigned long long)version, (int)n, buf);
            break;
        }
        int ok = 1;
        for (int64_t k = 1; k < n; k++)
            ok &= buf[k] == buf[0];
        if (!ok) {
            fprintf(stderr, "board_read: torn value at version %llu\n", (unsigned long long)version);
            return 1;
        }
        whole++;
    }
    if (argc == 4)
        printf("%ld whole reads\n", whole);
    free(buf);
    shmlink_segment_close(&seg);
    return 0;
}
