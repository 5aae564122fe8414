/* An offline model's run on the run path (cdefs/offline.h): aa_run_submit, aa_run_collect and
 * aa_run_release come here when run->model is set. Public ABI only (acl_rt.h, acl_mdl.h), so
 * it runs on both backends. Called on the thread that owns the descriptor, whose current
 * context owns the stream; nothing here waits for the device (the collect's copy reads a run
 * whose event already completed). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../ascend_async.h"
#include "run_internal.h"
#include "tensor.h"


/* Threads that share a modelId serialize its gear, execute and the read of its current output
 * shapes (acl_mdl.h): the gear is model state, so another thread's gear set between ours and
 * aclmdlGetCurOutputDims would give this run its shapes. Striped by modelId; held only around
 * calls that return at once. */
#define MDL_LOCKS 16
static pthread_mutex_t g_mdl_locks[MDL_LOCKS] = {
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
};

/* The model input that user input `i` fills (the gear input takes one place among them). */
static size_t model_index(const aa_mdl_run *m, size_t i) {
    return (m->gear_input >= 0 && (int64_t)i >= m->gear_input) ? i + 1 : i;
}

/* A dataset of `n` empty buffers, or NULL (everything made is destroyed). */
static aclmdlDataset *dataset_new(size_t n) {
    aclmdlDataset *ds = aclmdlCreateDataset();
    if (!ds) return NULL;
    for (size_t i = 0; i < n; i++) {
        aclDataBuffer *b = aclCreateDataBuffer(NULL, 0);
        if (!b || aclmdlAddDatasetBuffer(ds, b)) {
            if (b) aclDestroyDataBuffer(b);
            for (size_t k = 0; k < aclmdlGetDatasetNumBuffers(ds); k++)
                aclDestroyDataBuffer(aclmdlGetDatasetBuffer(ds, k));
            aclmdlDestroyDataset(ds);
            return NULL;
        }
    }
    return ds;
}

static void dataset_free(aclmdlDataset *ds) {
    if (!ds) return;
    for (size_t k = 0; k < aclmdlGetDatasetNumBuffers(ds); k++) aclDestroyDataBuffer(aclmdlGetDatasetBuffer(ds, k));
    aclmdlDestroyDataset(ds);
}

void aa_mdl_run_destroy(aa_mdl_run *m) {
    if (!m) return;
    dataset_free(m->input);
    dataset_free(m->output);
    m->input = m->output = NULL;
}

static int submit_locked(aa_run *run, aa_mdl_run *m);

static int set_buffer(aclmdlDataset *ds, size_t index, void *addr, size_t size) {
    aclDataBuffer *b = aclmdlGetDatasetBuffer(ds, index);
    if (!b) return ACL_ERROR_INVALID_PARAM;
    return aclUpdateDataBuffer(b, addr, size);
}

/* Shape and byte count of output `i` from `dims` (0 when a dim is unknown or too many). */
static int describe(aa_run_io *io, const aclmdlIODims *dims, aclDataType dt) {
    if (dims->dimCount > AA_MAX_DIMS) return 0;
    io->tensor.dtype = (int32_t)dt; /* aclDataType and ge::DataType share their numbers */
    io->tensor.format = AA_FORMAT_ND;
    io->tensor.placement = AA_PLACEMENT_DEVICE_HBM;
    io->tensor.ndim = (uint32_t)dims->dimCount;
    for (size_t d = 0; d < dims->dimCount; d++) {
        if (dims->dims[d] < 0) return 0;
        io->tensor.dims[d] = dims->dims[d];
    }
    return 1;
}

int aa_mdl_run_submit(aa_run *run) {
    aa_mdl_run *m = run->model;
    run->failed_api = NULL;
    run->acl_error = 0;
    run->ge_status = 0;
    run->enqueued = 0;
    run->dynamic = 0;
    aclError rc = 0;
    size_t n_model_in = m->n_model_inputs;
    if (n_model_in != run->n_inputs + (m->gear_input >= 0)) FAIL_ACL("aa_run_submit", ACL_ERROR_INVALID_PARAM);
    if (!m->input && !(m->input = dataset_new(n_model_in))) FAIL_ACL("aclmdlCreateDataset", ACL_ERROR_BAD_ALLOC);
    if (!m->output && !(m->output = dataset_new(run->n_outputs))) FAIL_ACL("aclmdlCreateDataset", ACL_ERROR_BAD_ALLOC);
    if (run->stage_events[0]) {
        rc = aclrtRecordEvent(run->stage_events[0], run->stream);
        if (rc) FAIL_ACL("aclrtRecordEvent", rc);
        run->enqueued = 1;
    }
    for (size_t i = 0; i < run->n_inputs; i++) {
        aa_run_io *io = &run->inputs[i];
        void *addr = io->tensor.addr;
        size_t size = io->nbytes;
        if (io->host) { /* stage through page-locked memory, as for a graph */
            if (aa_run_stage_input(run, io)) return -1;
            addr = io->dev_block;
        } else {
            size = aa_tensor_nbytes(&io->tensor);
        }
        rc = set_buffer(m->input, model_index(m, i), addr, size);
        if (rc) FAIL_ACL("aclUpdateDataBuffer", rc);
    }
    pthread_mutex_t *mu = &g_mdl_locks[m->model_id % MDL_LOCKS];
    pthread_mutex_lock(mu);
    int rc_locked = submit_locked(run, m);
    pthread_mutex_unlock(mu);
    if (rc_locked) return rc_locked;
    for (size_t i = 0; i < run->n_outputs && !run->dynamic; i++) {
        aa_run_io *io = &run->outputs[i];
        io->nbytes = aa_tensor_nbytes(&io->tensor);
        if (io->nbytes > m->out_sizes[i]) FAIL_ACL("aclmdlGetCurOutputDims", ACL_ERROR_MODEL_OUTPUT_NOT_MATCH);
        if (run->outputs_to_host && aa_run_read_back(run, io, io->dev_block)) return -1;
    }
    rc = aclrtRecordEvent(run->event, run->stream);
    if (rc) FAIL_ACL("aclrtRecordEvent", rc);
    rc = aa_watch_add(run->watch, run->stream, run->event, run->token);
    if (rc) FAIL_ACL("aa_watch_add", rc);
    return 0;
}

/* The gear, the output buffers, the execute and this gear's output shapes (under the modelId's
 * lock). 0, or -1 with the failure in `run`. */
static int submit_locked(aa_run *run, aa_mdl_run *m) {
    aclError rc = 0;
    if (m->gear_input >= 0) {
        size_t gsize = aclmdlGetInputSizeByIndex(m->desc, (size_t)m->gear_input);
        m->gear_block = aa_pool_alloc(run->device_pool, gsize ? gsize : 1, &rc);
        if (!m->gear_block) FAIL_ACL("aclrtMalloc", rc);
        rc = set_buffer(m->input, (size_t)m->gear_input, m->gear_block, gsize);
        if (rc) FAIL_ACL("aclUpdateDataBuffer", rc);
        size_t gi = (size_t)m->gear_input;
        if (m->gear_kind == AA_GEAR_BATCH) {
            rc = aclmdlSetDynamicBatchSize(m->model_id, m->input, gi, m->batch);
            if (rc) FAIL_ACL("aclmdlSetDynamicBatchSize", rc);
        } else if (m->gear_kind == AA_GEAR_HW) {
            rc = aclmdlSetDynamicHWSize(m->model_id, m->input, gi, m->height, m->width);
            if (rc) FAIL_ACL("aclmdlSetDynamicHWSize", rc);
        } else if (m->gear_kind == AA_GEAR_DIMS) {
            rc = aclmdlSetInputDynamicDims(m->model_id, m->input, gi, &m->dims);
            if (rc) FAIL_ACL("aclmdlSetInputDynamicDims", rc);
        }
        /* (the Set* call copies the gear into the block now; the block is this run's alone) */
    }
    if (run->stage_events[1]) {
        rc = aclrtRecordEvent(run->stage_events[1], run->stream);
        if (rc) FAIL_ACL("aclrtRecordEvent", rc);
        run->enqueued = 1;
    }
    for (size_t i = 0; i < run->n_outputs; i++) {
        aa_run_io *io = &run->outputs[i];
        size_t size = m->out_sizes[i];
        io->dev_block = aa_pool_alloc(run->device_pool, size ? size : 1, &rc);
        if (!io->dev_block) FAIL_ACL("aclrtMalloc", rc);
        memset(&io->tensor, 0, sizeof io->tensor);
        io->tensor.addr = io->dev_block;
        io->tensor.size = size;
        rc = set_buffer(m->output, i, io->dev_block, size);
        if (rc) FAIL_ACL("aclUpdateDataBuffer", rc);
    }
    rc = aclmdlExecuteAsync(m->model_id, m->input, m->output, run->stream);
    if (rc) FAIL_ACL("aclmdlExecuteAsync", rc);
    run->enqueued = 1;
    if (run->stage_events[2]) {
        rc = aclrtRecordEvent(run->stage_events[2], run->stream);
        if (rc) FAIL_ACL("aclrtRecordEvent", rc);
    }
    /* Output shapes for this gear (read under the modelId's lock, right after this run's gear
     * was set); an output whose shape depends on values is described once the run executed
     * (aa_mdl_run_collect, from the output dataset's tensor descs). */
    for (size_t i = 0; i < run->n_outputs && !run->dynamic; i++) {
        aclmdlIODims dims;
        rc = aclmdlGetCurOutputDims(m->desc, i, &dims);
        if (rc) FAIL_ACL("aclmdlGetCurOutputDims", rc);
        if (!describe(&run->outputs[i], &dims, aclmdlGetOutputDataType(m->desc, i))) run->dynamic = 1;
    }
    return 0;
}

int aa_mdl_run_collect(aa_run *run) {
    aa_mdl_run *m = run->model;
    aclError rc = 0;
    for (size_t i = 0; i < run->n_outputs && run->dynamic; i++) {
        aa_run_io *io = &run->outputs[i];
        const aclTensorDesc *td = aclmdlGetDatasetTensorDesc(m->output, i);
        if (!td) FAIL_ACL("aclmdlGetDatasetTensorDesc", ACL_ERROR_MODEL_OUTPUT_NOT_MATCH);
        size_t nd = aclGetTensorDescNumDims(td);
        if (nd > AA_MAX_DIMS) FAIL_ACL("aclGetTensorDescNumDims", ACL_ERROR_MODEL_OUTPUT_NOT_MATCH);
        io->tensor.dtype = (int32_t)aclGetTensorDescType(td);
        io->tensor.ndim = (uint32_t)nd;
        for (size_t d = 0; d < nd; d++) {
            int64_t v = -1;
            rc = aclGetTensorDescDimV2(td, d, &v);
            if (rc) FAIL_ACL("aclGetTensorDescDimV2", rc);
            if (v < 0) FAIL_ACL("aclGetTensorDescDimV2", ACL_ERROR_MODEL_OUTPUT_NOT_MATCH);
            io->tensor.dims[d] = v;
        }
        int ok = 1;
        size_t nbytes = aa_dtype_size(io->tensor.dtype);
        for (size_t d = 0; d < nd && ok; d++) {
            size_t dim = (size_t)io->tensor.dims[d];
            if (dim && nbytes > SIZE_MAX / dim) ok = 0;
            else nbytes *= dim;
        }
        if (!ok || nbytes > m->out_sizes[i]) FAIL_ACL("aclmdlGetDatasetTensorDesc", ACL_ERROR_MODEL_OUTPUT_NOT_MATCH);
        io->nbytes = nbytes;
        if (!run->outputs_to_host || io->host_block) continue;
        io->host_block = aa_pool_alloc(run->host_pool, nbytes ? nbytes : 1, &rc);
        if (!io->host_block) FAIL_ACL("aclrtMallocHost", rc);
        if (nbytes) {
            rc = aclrtMemcpy(io->host_block, nbytes, io->dev_block, nbytes, ACL_MEMCPY_DEVICE_TO_HOST);
            if (rc) FAIL_ACL("aclrtMemcpy", rc);
        }
    }
    return 0;
}

void aa_mdl_run_release(aa_run *run) {
    aa_mdl_run *m = run->model;
    for (size_t i = 0; i < run->n_inputs; i++) {
        aa_run_io *io = &run->inputs[i];
        if (io->host_block) aa_pool_free(run->host_pool, io->host_block);
        if (io->dev_block) aa_pool_free(run->device_pool, io->dev_block);
        io->host_block = io->dev_block = NULL;
    }
    for (size_t i = 0; i < run->n_outputs; i++) {
        aa_run_io *io = &run->outputs[i];
        if (io->host_block) aa_pool_free(run->host_pool, io->host_block);
        if (io->dev_block) aa_pool_free(run->device_pool, io->dev_block);
        io->host_block = io->dev_block = NULL;
        io->tensor.addr = NULL;
    }
    if (m->gear_block) aa_pool_free(run->device_pool, m->gear_block);
    m->gear_block = NULL;
}
