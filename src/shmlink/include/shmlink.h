/*
 * shmlink.h -- the shmlink shared-memory protocol, for C and C++ programs.
 *
 * This umbrella includes every protocol header; a program may also include
 * only the ones it uses (each compiles alone).  No Python in any of them.
 * A C or C++ program that includes it opens shmlink segments by name and
 * speaks the same protocol as Python peers, on the same memory.
 *
 *   shmlink/atomic.h      the ordering vocabulary (SHMLINK_LOAD_ACQUIRE ...),
 *                         the only way shared words are touched
 *   shmlink/platform.h    every OS call: futex, clock, /proc start times,
 *                         $SHMLINK_DIR, open/flock/mmap.  A port replaces
 *                         this one file
 *   shmlink/eventcount.h  "sleep until something changes", no lost wake-ups
 *   shmlink/doorbell.h    readiness by file descriptor: doorbell tables
 *                         beside the event counts, rung by notifiers that
 *                         find a waiter armed (select/epoll/event loops)
 *   shmlink/wait.h        deadlines; the one waiting loop (attempt, spin,
 *                         arm, re-check, sleep) of every blocking helper
 *   shmlink/liveness.h    a process = PID + start time; is it alive?
 *   shmlink/lock.h        the robust lock (taken over from a dead holder)
 *   shmlink/segment.h     the segment header; opening a segment by name
 *   shmlink/ring.h        the lossless MPMC ring of shmlink.Queue
 *   shmlink/topic.h       the broadcast ring of shmlink.Topic
 *   shmlink/board.h       the double-buffered value of shmlink.Board:
 *                         read, write, wait for change
 *   shmlink/mutex.h       shmlink.Mutex: the robust lock + "inconsistent"
 *   shmlink/event.h       shmlink.Event: set, clear, wait (auto-reset
 *                         consumes atomically), on the armed event count
 *   shmlink/connection.h  shmlink.Connection/Listener: the two segments,
 *                         the frames, connect/accept, request, close
 *
 * Conventions (see DESIGN.md and docs/design.md):
 *   - shared memory holds fixed-width integers and offsets, never pointers;
 *   - words written by producers and by consumers sit on separate 64-byte
 *     cache lines;
 *   - shared words are touched only through the SHMLINK_* macros of
 *     shmlink/atomic.h;
 *   - each release store carries a "SYNC:" comment naming its acquire
 *     partner;
 *   - functions return 0 (or a length) or a negative errno value, the same
 *     value for the same condition everywhere:
 *       -EAGAIN     would block: full, empty, no room, nothing new
 *       -EBUSY      a live process holds the lock this try_ form needs
 *                   (blocking forms wait for the lock instead)
 *       -ETIMEDOUT  the deadline passed
 *       -EINTR      a signal interrupted a sleep: handle it, call again
 *                   with the same (absolute) deadline
 *       -ECANCELED  the caller's cancel word was set (when a binding closes its handle)
 *       -EMSGSIZE   a message larger than the ring or the buffer allows
 *       -EOWNERDEAD a lock taken over from a holder that died (mutex)
 *       -EPROTO     not this kind of object, or another layout version
 *       -EBADMSG    the shared memory is corrupt (a peer is buggy or
 *                   hostile): nothing was read or written outside it
 *       -EINPROGRESS  the segment's creator has not marked it ready yet
 *   - every index and length read from shared memory is loaded once into a
 *     local, checked, then used.
 *
 * Linux only today (futex; see shmlink/platform.h).  GCC or Clang.  Include
 * it first in a translation unit (it selects _DEFAULT_SOURCE), or build
 * with -std=gnu11 / -D_GNU_SOURCE.
 */
#ifndef SHMLINK_H
#define SHMLINK_H

#include "shmlink/atomic.h"
#include "shmlink/platform.h"
#include "shmlink/eventcount.h"
#include "shmlink/doorbell.h"
#include "shmlink/wait.h"
#include "shmlink/liveness.h"
#include "shmlink/lock.h"
#include "shmlink/segment.h"
#include "shmlink/ring.h"
#include "shmlink/topic.h"
#include "shmlink/board.h"
#include "shmlink/mutex.h"
#include "shmlink/event.h"
#include "shmlink/connection.h"

#endif /* SHMLINK_H */
