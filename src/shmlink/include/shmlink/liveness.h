/*
 * shmlink/liveness.h -- is the process that holds something still alive?
 *
 * A process is named by its PID *and* its start time (clock ticks since
 * boot), so that a PID the kernel reused is not mistaken for the process
 * that died.  The start time is what the platform file reads from /proc.
 */
#ifndef SHMLINK_LIVENESS_H
#define SHMLINK_LIVENESS_H

#include "atomic.h"
#include "platform.h"

SHMLINK_BEGIN_DECLS

/* 1 if the process (pid, start_time) is alive.  start_time 0 means "not
 * recorded yet": then the PID alone decides.  A zombie counts as dead. */
static inline int shmlink_process_alive(uint32_t pid, uint64_t start_time) {
    if (pid == 0 || !shmlink_os_pid_exists(pid))
        return 0;
    uint64_t now = shmlink_process_start_time(pid);
    if (now == 0)
        return 0; /* gone, or a zombie */
    return start_time == 0 || now == start_time;
}

/* This process's identity, as the lock and ring functions take it.  Call it
 * again in a child after fork(). */
static inline void shmlink_self(uint32_t *pid, uint64_t *start) {
    *pid = shmlink_os_getpid();
    *start = shmlink_process_start_time(*pid);
}

SHMLINK_END_DECLS

#endif /* SHMLINK_LIVENESS_H */
