/* aa_session_resolve_outputs on the simulated device (cdefs/ge_session.h).
 *
 * A dynamic-shape run on the sim leaves its slots empty at submit; the device thread that
 * executes the run places each output and writes the caller's slot array before the run's task
 * ends (sim/session.c, stream_exec), so before any event recorded after it completes. By the
 * time the ABI allows this call (the stream passed the run), the slots are described: there is
 * nothing left to do. Kept in its own file so the sim and the CANN shim implement the same
 * declaration side by side; the CANN shim does the real work here (cann/ge_shim.cpp). */
#include "../ascend_async.h"

aa_status aa_session_resolve_outputs(aa_tensor *outputs, size_t n_outputs) {
    /* The one check the CANN shim makes too: an array that cannot be the one submit filled. */
    if (n_outputs > 0 && !outputs) return AA_GE_PARAM_INVALID;
    return AA_GE_SUCCESS;
}
