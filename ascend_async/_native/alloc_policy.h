/* The one allocation-failure policy of ascend_async's C and C++ (sim/, common/, cann/), and the
 * two helpers it needs. Private: not part of the ABI (not a cdef file).
 *
 * 1. Every allocation is checked (malloc, calloc, realloc, posix_memalign, strdup, new), and so
 *    is every pthread_create; a size product is checked before it reaches an allocator (calloc
 *    and aa_grow do it).
 * 2. Where the function can return an error, it returns the documented one, having changed
 *    nothing the caller can see (no half-made object, nothing leaked):
 *    - AscendCL calls (acl*, sim/rt_*.c) and the sim's internal runtime (runtime.h):
 *      ACL_ERROR_BAD_ALLOC (200000) for host memory, with a message for aclGetRecentErrMsg;
 *      device memory that runs out stays ACL_ERROR_RT_MEMORY_ALLOCATION (207001);
 *    - the session ABI (aa_session_*): GE's FAILED with "out of host memory" in GE's error text
 *      (aa_ge_get_error_msg), as GE reports its own allocation failures;
 *    - a task body on a device thread: ACL_ERROR_BAD_ALLOC as the task's code (the stream
 *      faults, and the run fails with that code);
 *    - helpers that return an aclError (aa_watch_add, aa_floor_run) or report one (aa_run_submit's
 *      acl_error, aa_pool_alloc's *error): ACL_ERROR_BAD_ALLOC;
 *    - constructors that return a pointer (aa_watch_create, aa_pool_create, aa_pool_lane_open):
 *      NULL, which the Python layer turns into MemoryError.
 * 3. Where no error can be returned, the process stops loudly: aa_oom_abort() names what could
 *    not be had on stderr and aborts. That is the completion queues of aa_watch (a completion
 *    that is dropped would leave its waiter hanging forever, with nothing to tell it) and
 *    nothing else; everything else allocates before its point of no return (aclrtLaunchCallback
 *    makes the report item, so that a device thread never allocates).
 * 4. Never `p = realloc(p, n)`: an array grows through aa_grow(), which leaves the old block
 *    and its capacity as they were when it fails.
 * 5. C++ (cann/ge_shim.cpp): `new (std::nothrow)`, or std containers inside guarded(), which
 *    turns std::bad_alloc into GE's FAILED with "out of host memory"; no exception crosses an
 *    extern "C" function or a callback GE calls.
 *
 * ARCHITECTURE.md ("Host memory") says the same in one paragraph.
 */
#ifndef AA_ALLOC_POLICY_H
#define AA_ALLOC_POLICY_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Rule 3: no error can be returned and going on would lose work. Never returns. */
__attribute__((noreturn, cold)) static inline void aa_oom_abort(const char *what, size_t bytes) {
    fprintf(stderr,
            "ascend_async: out of host memory for %s (%zu bytes); it cannot be reported to a caller, stopping\n", what,
            bytes);
    abort();
}

/* Rule 4: an array of `elem`-byte items at `v` with capacity *cap, grown to twice *cap (or to
 * `first` when it is 0). Returns the new array (*cap updated, the items kept), or NULL with `v`
 * and *cap untouched when the size overflows or host memory ran out. */
static inline void *aa_grow(void *v, size_t *cap, size_t elem, size_t first) {
    size_t n = *cap ? *cap : first;
    if (*cap && n > SIZE_MAX / 2) return NULL;
    if (*cap) n *= 2;
    if (!elem || n > SIZE_MAX / elem) return NULL;
    void *nv = realloc(v, n * elem);
    if (nv) *cap = n;
    return nv;
}

#endif /* AA_ALLOC_POLICY_H */
