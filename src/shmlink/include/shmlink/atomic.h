/*
 * shmlink/atomic.h -- the ordering vocabulary, defined once.
 *
 * Every shared word in every shmlink layout is touched only through the
 * macros below (after liburing's barrier.h).  Each says who must see what:
 *
 *   SHMLINK_LOAD_RELAXED / SHMLINK_STORE_RELAXED
 *       A word this side owns, a constant recorded at attach, or a value
 *       whose order against other memory does not matter (a statistic, a
 *       word whose publication a later release or fence covers).  Every use
 *       is enough because something else orders it; the comment beside a
 *       relaxed access that is not obviously one of these says what.
 *   SHMLINK_LOAD_ACQUIRE
 *       Reads a word another process published: what it wrote before its
 *       release store is visible after this load.
 *   SHMLINK_STORE_RELEASE
 *       Publishes: everything written before it is visible to an acquire
 *       load that sees the new value.  Every use carries a "SYNC:" comment
 *       naming the acquire load (or fence) that it pairs with.
 *   SHMLINK_CAS / SHMLINK_FETCH_ADD / SHMLINK_EXCHANGE
 *       Read-modify-writes with full (seq_cst) ordering: locks, claims,
 *       counters.  A successful CAS on a lock word is the acquire partner of
 *       the holder's release.
 *   SHMLINK_LOAD_SEQ_CST / SHMLINK_STORE_SEQ_CST / SHMLINK_FENCE
 *       Store-load ordering: "I announced myself (armed an event count,
 *       released a lock) and now I look at the other side's word".  Neither
 *       acquire nor release orders a store before a later load; seq_cst
 *       does.  Used by the event count (shmlink/eventcount.h) and the lock.
 *   SHMLINK_FENCE_ACQUIRE / SHMLINK_FENCE_RELEASE
 *       The topic's seqlock: a publisher's release fence after its head
 *       store pairs with a subscriber's acquire fence after its copy.
 *
 * This file also sets the feature macros the platform file needs and the
 * C/C++ glue every header shares, so it is included first by all of them.
 */
#ifndef SHMLINK_ATOMIC_H
#define SHMLINK_ATOMIC_H

/* The platform file needs POSIX.1-2008 and the BSD/SysV extras (syscall,
 * flock).  Effective only when a shmlink header is the first include of the
 * translation unit, or when the program is built with -std=gnu11 or
 * -D_GNU_SOURCE (C++ compilers define _GNU_SOURCE themselves). */
#if !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1
#endif

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define SHMLINK_STATIC_ASSERT(c, m) static_assert(c, m)
#define SHMLINK_BEGIN_DECLS extern "C" {
#define SHMLINK_END_DECLS }
#else
#define SHMLINK_STATIC_ASSERT(c, m) _Static_assert(c, m)
#define SHMLINK_BEGIN_DECLS
#define SHMLINK_END_DECLS
#endif

#if !defined(__GNUC__) && !defined(__clang__)
#error "shmlink needs GCC or Clang (__atomic builtins)"
#endif

/* Producer- and consumer-written words sit on separate lines of this size. */
#define SHMLINK_CACHE_LINE 64

/* A word this side owns, or a value whose ordering does not matter. */
#define SHMLINK_LOAD_RELAXED(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define SHMLINK_STORE_RELAXED(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
/* Reads the other side's published word: what it wrote before its release
 * store is visible after this load. */
#define SHMLINK_LOAD_ACQUIRE(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
/* Publishes: everything written before is visible to an acquire load that
 * sees the new value.  Name the partner in a SYNC: comment. */
#define SHMLINK_STORE_RELEASE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
/* Read-modify-write with full ordering (locks, claims, counters). */
#define SHMLINK_CAS(p, expected_ptr, desired)                                  \
    __atomic_compare_exchange_n((p), (expected_ptr), (desired), 0,             \
                                __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)
#define SHMLINK_FETCH_ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#define SHMLINK_EXCHANGE(p, v) __atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)
/* Store-load ordering: an announcement, then a look at the other side. */
#define SHMLINK_LOAD_SEQ_CST(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define SHMLINK_STORE_SEQ_CST(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define SHMLINK_FENCE() __atomic_thread_fence(__ATOMIC_SEQ_CST)
/* Loads before the fence are done before the loads after it (a seqlock
 * reader's copy before its re-check). */
#define SHMLINK_FENCE_ACQUIRE() __atomic_thread_fence(__ATOMIC_ACQUIRE)
/* Stores after the fence are not visible before the stores ahead of it (a
 * seqlock writer's head store before the bytes it then overwrites). */
#define SHMLINK_FENCE_RELEASE() __atomic_thread_fence(__ATOMIC_RELEASE)

/* A spinning CPU tells its sibling hyper-thread it may run. */
#if defined(__x86_64__) || defined(__i386__)
#define SHMLINK_CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define SHMLINK_CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define SHMLINK_CPU_RELAX() __asm__ __volatile__("" ::: "memory")
#endif

#endif /* SHMLINK_ATOMIC_H */
