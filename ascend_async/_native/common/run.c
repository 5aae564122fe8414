/* aa_run_submit / aa_run_release: a whole async run in one C call (cdefs/support.h).
 * Public ABI only, so it runs on both backends. Called on an event-loop thread whose current
 * context owns the stream; nothing here waits for the device. */
#include <stdlib.h>
#include <string.h>

#include "../ascend_async.h"
#include "run_internal.h"
#include "tensor.h"


int aa_run_stage_input(aa_run *run, aa_run_io *io) {
    aclError rc = 0;
    size_t n = io->nbytes, size = n ? n : 1;
    io->host_block = aa_pool_alloc(run->host_pool, size, &rc);
    if (!io->host_block) FAIL_ACL("aclrtMallocHost", rc);
    io->dev_block = aa_pool_alloc(run->device_pool, size, &rc);
    if (!io->dev_block) FAIL_ACL("aclrtMalloc", rc);
    if (n) {
        memcpy(io->host_block, io->host, n);
        rc = aclrtMemcpyAsync(io->dev_block, size, io->host_block, n, ACL_MEMCPY_HOST_TO_DEVICE, run->stream);
        if (rc) FAIL_ACL("aclrtMemcpyAsync", rc);
        run->enqueued = 1;
    }
    return 0;
}

int aa_run_read_back(aa_run *run, aa_run_io *io, const void *src) {
    aclError rc = 0;
    io->host_block = aa_pool_alloc(run->host_pool, io->nbytes ? io->nbytes : 1, &rc);
    if (!io->host_block) FAIL_ACL("aclrtMallocHost", rc);
    if (io->nbytes) {
        rc = aclrtMemcpyAsync(io->host_block, io->nbytes, src, io->nbytes, ACL_MEMCPY_DEVICE_TO_HOST, run->stream);
        if (rc) FAIL_ACL("aclrtMemcpyAsync", rc);
    }
    return 0;
}

int aa_run_submit(aa_run *run) {
    if (run->model) return aa_mdl_run_submit(run);
    run->failed_api = NULL;
    run->acl_error = 0;
    run->ge_status = 0;
    run->enqueued = 0;
    run->dynamic = 0;
    aclError rc = 0;
    if (run->stage_events[0]) {
        rc = aclrtRecordEvent(run->stage_events[0], run->stream);
        if (rc) FAIL_ACL("aclrtRecordEvent", rc);
        run->enqueued = 1;
    }
    for (size_t i = 0; i < run->n_inputs; i++) {
        aa_run_io *io = &run->inputs[i];
        if (!io->host) continue; /* a device tensor, described by the caller */
        if (aa_run_stage_input(run, io)) return -1;
        io->tensor.addr = io->dev_block;
        io->tensor.size = io->nbytes ? io->nbytes : 1;
        io->tensor.format = AA_FORMAT_ND;
        io->tensor.placement = AA_PLACEMENT_DEVICE_HBM;
        io->tensor.owner = NULL;
    }
    if (run->stage_events[1]) {
        rc = aclrtRecordEvent(run->stage_events[1], run->stream);
        if (rc) FAIL_ACL("aclrtRecordEvent", rc);
        run->enqueued = 1;
    }
    /* GE takes arrays of tensors: gather the inputs (few; the stack is fine). The output slots
     * are the caller's, since GE may fill them after this call returns. */
    if (!run->slots && run->n_outputs) {
        run->failed_api = "aa_run_submit";
        run->acl_error = ACL_ERROR_INVALID_PARAM;
        return -1;
    }
    aa_tensor in_stack[16];
    aa_tensor *tin = run->n_inputs <= 16 ? in_stack : calloc(run->n_inputs, sizeof(aa_tensor));
    if (!tin) FAIL_ACL("calloc", ACL_ERROR_BAD_ALLOC); /* ../alloc_policy.h */
    for (size_t i = 0; i < run->n_inputs; i++) tin[i] = run->inputs[i].tensor;
    if (run->n_outputs) memset(run->slots, 0, run->n_outputs * sizeof(aa_tensor));
    aa_status st = aa_session_run_graph_with_stream_async(run->session, run->graph_id, run->stream, tin,
                                                          run->n_inputs, run->slots, run->n_outputs);
    if (tin != in_stack) free(tin);
    if (st) {
        run->failed_api = "RunGraphWithStreamAsync";
        run->ge_status = st;
        return -1;
    }
    run->enqueued = 1;
    /* Pending slots (no address) belong to a dynamic-shape graph: GE describes its outputs when
     * the stream reaches the run, and nothing writes the slots until aa_run_collect asks
     * (cdefs/ge_session.h), so they are read here without a race and their copies wait. */
    for (size_t i = 0; i < run->n_outputs; i++)
        if (!run->slots[i].addr) run->dynamic = 1;
    if (run->stage_events[2]) {
        rc = aclrtRecordEvent(run->stage_events[2], run->stream);
        if (rc) FAIL_ACL("aclrtRecordEvent", rc);
    }
    for (size_t i = 0; i < run->n_outputs && !run->dynamic; i++) {
        aa_run_io *io = &run->outputs[i];
        io->tensor = run->slots[i];
        run->slots[i].owner = NULL; /* the io descriptor holds GE's block from here on */
        io->nbytes = aa_tensor_nbytes(&io->tensor);
        if (run->outputs_to_host && aa_run_read_back(run, io, io->tensor.addr)) return -1;
    }
    rc = aclrtRecordEvent(run->event, run->stream);
    if (rc) FAIL_ACL("aclrtRecordEvent", rc);
    rc = aa_watch_add(run->watch, run->stream, run->event, run->token);
    if (rc) FAIL_ACL("aa_watch_add", rc);
    return 0;
}

int aa_run_collect(aa_run *run) {
    if (run->model) return aa_mdl_run_collect(run);
    aclError rc = 0;
    if (run->dynamic) {
        /* The run's event completed: its pending slots can be described now. No wait: on CANN
         * the shim reads the gert::Tensors GE updated when the stream reached the run; on the
         * sim the device thread filled the slots already (cdefs/ge_session.h). */
        aa_status st = aa_session_resolve_outputs(run->slots, run->n_outputs);
        if (st) {
            run->failed_api = "aa_session_resolve_outputs";
            run->ge_status = st;
            return -1;
        }
    }
    for (size_t i = 0; i < run->n_outputs && run->dynamic; i++) {
        aa_run_io *io = &run->outputs[i];
        /* Taken once (a descriptor's io->tensor has no owner at a run's start: released or
         * handed to a DeviceTensor). An empty output may have no address and no owner. */
        if (!io->tensor.owner) {
            io->tensor = run->slots[i];
            run->slots[i].owner = NULL;
        }
        io->nbytes = aa_tensor_nbytes(&io->tensor);
        if (!run->outputs_to_host || io->host_block) continue;
        io->host_block = aa_pool_alloc(run->host_pool, io->nbytes ? io->nbytes : 1, &rc);
        if (!io->host_block) FAIL_ACL("aclrtMallocHost", rc);
        if (io->nbytes) {
            rc = aclrtMemcpy(io->host_block, io->nbytes, io->tensor.addr, io->nbytes, ACL_MEMCPY_DEVICE_TO_HOST);
            if (rc) FAIL_ACL("aclrtMemcpy", rc);
        }
    }
    return 0;
}

void aa_run_release(aa_run *run) {
    if (run->model) {
        aa_mdl_run_release(run);
        return;
    }
    for (size_t i = 0; i < run->n_inputs; i++) {
        aa_run_io *io = &run->inputs[i];
        if (io->host_block) aa_pool_free(run->host_pool, io->host_block);
        if (io->dev_block) aa_pool_free(run->device_pool, io->dev_block);
        io->host_block = io->dev_block = NULL;
    }
    for (size_t i = 0; i < run->n_outputs; i++) {
        aa_run_io *io = &run->outputs[i];
        if (io->host_block) aa_pool_free(run->host_pool, io->host_block);
        io->host_block = NULL;
        aa_tensor_release(&io->tensor);
        if (run->slots) aa_tensor_release(&run->slots[i]); /* placed by GE, never collected */
    }
}

void aa_run_release_many(aa_run *const *runs, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (runs[i]) aa_run_release(runs[i]);
}
