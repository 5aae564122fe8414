/* Fault and delay injection, stream gates: the sim-only test hooks (cdefs/sim.h). */
#define _GNU_SOURCE
#include "rt_internal.h"

#include <stdlib.h>

static aclError inject(aclrtStream stream, uint32_t nth, int32_t code, uint32_t us, const char *api) {
    sim_stream *s = rt_as_stream(stream);
    if (!s) FAIL(ACL_ERROR_INVALID_PARAM, "%s: invalid stream handle", api);
    if (!nth) FAIL(ACL_ERROR_INVALID_PARAM, "%s: nth counts from 1", api);
    sim_inject *in = calloc(1, sizeof *in);
    if (!in) FAIL(ACL_ERROR_BAD_ALLOC, "%s: out of host memory", api);
    in->code = code;
    in->delay_us = us;
    pthread_mutex_lock(&s->dev->lock);
    in->seq = s->submitted + nth;
    in->next = s->injects;
    s->injects = in;
    pthread_mutex_unlock(&s->dev->lock);
    return ACL_SUCCESS;
}

aclError aa_sim_inject_fault(aclrtStream stream, uint32_t nth, int32_t code) {
    if (!code) FAIL(ACL_ERROR_INVALID_PARAM, "aa_sim_inject_fault: code must be non-zero");
    return inject(stream, nth, code, 0, "aa_sim_inject_fault");
}

aclError aa_sim_inject_delay(aclrtStream stream, uint32_t nth, uint32_t us) {
    return inject(stream, nth, 0, us, "aa_sim_inject_delay");
}

static aclError set_hold(aclrtStream stream, int held) {
    sim_stream *s = rt_as_stream(stream);
    if (!s) FAIL(ACL_ERROR_INVALID_PARAM, "aa_sim_stream_hold/release: invalid stream handle");
    pthread_mutex_lock(&s->dev->lock);
    s->held = held;
    pthread_cond_broadcast(&s->dev->work_cv);
    pthread_mutex_unlock(&s->dev->lock);
    return ACL_SUCCESS;
}

aclError aa_sim_stream_hold(aclrtStream stream) { return set_hold(stream, 1); }
aclError aa_sim_stream_release(aclrtStream stream) { return set_hold(stream, 0); }
