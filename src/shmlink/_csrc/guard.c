/*
 * The truncation guard: a process that maps a segment must survive another
 * process truncating its file (anyone who may write the file can).  Without
 * it, the first load or copy that touches a page past the new end of the
 * file raises SIGBUS and kills the process: a consumer blocked in recv, a
 * board reader, a segment reader.
 *
 * How.  Every handle of the binding (Memory, Ring, Topic, Subscriber)
 * registers the range of the mapping it uses (sl_guard_register).  A
 * process-wide SIGBUS handler, installed when _core loads, looks the
 * faulting address up in those ranges.  Inside one, it maps anonymous
 * zero pages over the rest of that mapping (MAP_FIXED: the faulting page to
 * the end of the range), marks every registered range that contains the
 * address as hit, and returns: the faulting load or copy runs again and
 * reads zeros.  Outside every range, the signal goes to the handler that
 * was installed before (faulthandler, say), or kills the process as it
 * would have.  This is what Wayland compositors do for client buffers.
 *
 * Why not sigsetjmp/siglongjmp around each copy: a fault can happen in any
 * load of a control block, with the GIL released (a wait's condition), or
 * inside a callback that holds Python objects (deliver_record); jumping out
 * would leak references, leave the GIL released or a lock word half-taken.
 * Zero pages let every sequence run to its end; nothing is torn, since
 * the zeros are then caught by the checks every value from shared memory
 * already goes through, and the hit flag turns the result into an error:
 *   - each call checks its handle's flag when it returns (sl_guard_hit: one
 *     load of a process-wide counter while no fault ever happened) and
 *     raises CorruptSegment instead of returning what it read;
 *   - a wait checks between slices whether the word it sleeps on lies in a
 *     hit range (sl_guard_addr_hit), so a blocked consumer wakes with
 *     CorruptSegment within a slice or two (no wake-up ever reaches the
 *     private zero page).
 * Cost on the hot path: one relaxed load and a predictable branch per call.
 *
 * What is not covered: a view the user holds (memoryview, numpy array) of
 * a truncated segment reads zeros once a shmlink call touched the same
 * page range, and raises SIGBUS otherwise -- as any mmap does -- until the
 * handle is closed (its range is then unregistered).  C programs that use
 * the header directly get SIGBUS as before; they can install the same kind
 * of handler.  A handler installed after _core (faulthandler.enable()) is
 * chained below ours again when the next handle registers.
 */
#include "internal.h"

#include <signal.h>
#include <sys/mman.h>

#define GUARD_SLOTS 4096

struct guard_range {
    uintptr_t base, end; /* [base, end) */
    int used;            /* SYNC: released when the range is set, acquired by the handler */
    int hit;             /* set by the handler: the file was truncated under it */
};

static struct guard_range ranges[GUARD_SLOTS];
static int ranges_hwm; /* slots [0, hwm) may be in use; only grows */
static pthread_mutex_t ranges_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction previous;
static int installed;
static uintptr_t page_mask; /* set before the handler is installed */
int sl_guard_faults; /* faults the handler turned into zero pages */

static void guard_chain(int sig, siginfo_t *si, void *uc) {
    /* Not ours: what would have happened without us. */
    if ((previous.sa_flags & SA_SIGINFO) && previous.sa_sigaction) {
        previous.sa_sigaction(sig, si, uc);
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN &&
               previous.sa_handler != NULL) {
        previous.sa_handler(sig);
    }
    /* Still alive: die of it.  A fault re-executes and meets the default
     * action; a signal sent with kill/raise is raised again. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    if (si == NULL || si->si_code <= 0)
        raise(sig);
}

static void guard_handler(int sig, siginfo_t *si, void *uc) {
    int saved = errno;
    if (si && si->si_code > 0) { /* raised by the kernel for a memory access */
        uintptr_t a = (uintptr_t)si->si_addr, end = 0;
        int hwm = SHMLINK_LOAD_ACQUIRE(&ranges_hwm);
        for (int i = 0; i < hwm; i++) {
            struct guard_range *g = &ranges[i];
            if (!SHMLINK_LOAD_ACQUIRE(&g->used))
                continue;
            uintptr_t b = SHMLINK_LOAD_RELAXED(&g->base), e = SHMLINK_LOAD_RELAXED(&g->end);
            if (a >= b && a < e) {
                SHMLINK_STORE_RELAXED(&g->hit, 1);
                if (e > end)
                    end = e;
            }
        }
        if (end) {
            uintptr_t page = a & page_mask;
            /* mmap is a plain system call on Linux: safe in a handler. */
            void *p = mmap((void *)page, (size_t)(end - page), PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            if (p != MAP_FAILED) {
                SHMLINK_FETCH_ADD(&sl_guard_faults, 1);
                errno = saved;
                return; /* the access runs again, on zeros */
            }
        }
    }
    guard_chain(sig, si, uc);
    errno = saved;
}

/* Put our handler on top (keeping what was there to chain to).  With
 * ranges_lock held, or from the module's exec slot. */
static int guard_install_locked(void) {
    struct sigaction cur;
    if (!page_mask)
        page_mask = ~(uintptr_t)(sysconf(_SC_PAGESIZE) - 1);
    if (sigaction(SIGBUS, NULL, &cur) != 0)
        return -1;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == guard_handler)
        return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = guard_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    previous = cur;
    if (sigaction(SIGBUS, &sa, NULL) != 0)
        return -1;
    installed = 1;
    return 0;
}

int sl_guard_install(void) {
    pthread_mutex_lock(&ranges_lock);
    int rc = installed ? 0 : guard_install_locked();
    pthread_mutex_unlock(&ranges_lock);
    return rc;
}

int sl_guard_register(const void *base, Py_ssize_t len) {
    if (!base || len <= 0)
        return 0;
    int slot = -1;
    pthread_mutex_lock(&ranges_lock);
    (void)guard_install_locked(); /* again, if someone replaced it */
    for (int i = 0; i < GUARD_SLOTS; i++) {
        if (!SHMLINK_LOAD_RELAXED(&ranges[i].used)) {
            slot = i;
            break;
        }
    }
    if (slot >= 0) {
        struct guard_range *g = &ranges[slot];
        SHMLINK_STORE_RELAXED(&g->base, (uintptr_t)base);
        SHMLINK_STORE_RELAXED(&g->end, (uintptr_t)base + (uintptr_t)len);
        SHMLINK_STORE_RELAXED(&g->hit, 0);
        /* SYNC: pairs with the handler's acquire of used. */
        SHMLINK_STORE_RELEASE(&g->used, 1);
        if (slot + 1 > ranges_hwm)
            SHMLINK_STORE_RELEASE(&ranges_hwm, slot + 1);
    }
    pthread_mutex_unlock(&ranges_lock);
    return slot + 1; /* 0: the table is full, this handle goes unguarded */
}

void sl_guard_unregister(int token) {
    int slot = token - 1;
    if (slot < 0 || slot >= GUARD_SLOTS)
        return;
    pthread_mutex_lock(&ranges_lock);
    SHMLINK_STORE_RELEASE(&ranges[slot].used, 0);
    pthread_mutex_unlock(&ranges_lock);
}

int sl_guard_slot_hit(int token) {
    int slot = token - 1;
    return slot >= 0 && slot < GUARD_SLOTS && SHMLINK_LOAD_RELAXED(&ranges[slot].hit);
}

int sl_guard_addr_hit(const void *addr) {
    uintptr_t a = (uintptr_t)addr;
    int hwm = SHMLINK_LOAD_ACQUIRE(&ranges_hwm);
    for (int i = 0; i < hwm; i++) {
        struct guard_range *g = &ranges[i];
        if (SHMLINK_LOAD_ACQUIRE(&g->used) && SHMLINK_LOAD_RELAXED(&g->hit) &&
            a >= g->base && a < g->end)
            return 1;
    }
    return 0;
}

int sl_raise_truncated(const char *what, PyObject *label) {
    return sl_raisef(-EBADMSG,
                     "%s %R: its file was truncated by another process while mapped "
                     "(the pages past its new end read as zeros here); the %s is lost: "
                     "remove it and create it again",
                     what, label ? label : Py_None, what);
}
