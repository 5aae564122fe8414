/* aa_floor_run: the throughput floor, graph runs waited for in C with no Python in the loop.
 * The benchmarks measure the async layer against it (cdefs/support.h). */
#include <stdlib.h>

#include "../ascend_async.h"

int64_t aa_floor_run(aa_session *session, uint32_t graph_id, aclrtStream stream, const aa_tensor *inputs,
                     size_t n_inputs, aa_tensor *outputs, size_t n_outputs, uint32_t n_runs, uint32_t window,
                     uint64_t *elapsed_ns) {
    if (!window) window = 1;
    aclrtEvent *ev = calloc(window, sizeof(aclrtEvent));
    if (!ev) return ACL_ERROR_BAD_ALLOC; /* ../alloc_policy.h */
    int64_t rc = 0;
    uint32_t made = 0;
    for (; made < window; made++) {
        rc = aclrtCreateEvent(&ev[made]);
        if (rc) goto out;
    }
    uint64_t t0 = aa_monotonic_ns();
    for (uint32_t i = 0; i < n_runs; i++) {
        uint32_t slot = i % window;
        if (i >= window && (rc = aclrtSynchronizeEvent(ev[slot]))) goto out;
        aa_status st = aa_session_run_graph_with_stream_async(session, graph_id, stream, inputs, n_inputs, outputs,
                                                              n_outputs);
        if (st) {
            rc = (int64_t)st;
            goto out;
        }
        if ((rc = aclrtRecordEvent(ev[slot], stream))) goto out;
    }
    rc = aclrtSynchronizeStream(stream);
    if (elapsed_ns) *elapsed_ns = aa_monotonic_ns() - t0;
out:
    for (uint32_t i = 0; i < made; i++) aclrtDestroyEvent(ev[i]);
    free(ev);
    return rc;
}
