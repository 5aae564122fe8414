/* The simulated AscendCL offline-model API (cdefs/acl_mdl.h) over the sim's graph engine.
 *
 * An offline model on the sim is its own container, never ATC's .om (which holds code for a
 * real NPU). Layout, little-endian:
 *   48 bytes  the text "ASCEND_ASYNC simulated offline model\n", NUL-padded
 *   u32 version (1), u32 gear kind (0 none, 1 batch, 2 image size, 3 dims),
 *   u32 gear count, u32 gear width (1, 2, or the sum of the inputs' ranks),
 *   u64 ONNX size, i64 gears[count * width], then the ONNX bytes; nothing after them.
 * A gear model's inputs carry -1 (a symbolic dim in the ONNX) where the gear sets the dim:
 * every such dim is the batch (kind 1); an input's two such dims are H and W (kind 2); a
 * dims gear lists every dim of every input in order (kind 3).
 *
 * Rules the sim enforces (acl_mdl.h): one modelId runs on one stream at a time (a run on a
 * second stream while the first still has a run in flight faults that second stream, 507011);
 * unload with runs in flight is refused; output buffers at least the model's output size; the
 * gear input present and holding a gear of the table.
 *
 * Memory: a load charges the model's weights (the ONNX bytes) and its work memory (64 KiB plus
 * the largest gear's inputs and outputs) to the device: what aclmdlQuerySize reports. The
 * ...WithMem loads use the caller's device memory instead (checked: large enough, device memory),
 * which unload leaves to the caller.
 *
 * Locking: g_om.lock guards the model list, every model's gear state, in-flight count and busy
 * stream. Device threads take it only in a run's cleanup. Nothing here calls into Python.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/tensor.h"
#include "engine.h"
#include "runtime.h"

#define OM_TEXT "ASCEND_ASYNC simulated offline model\n"
#define OM_HEADER 48
#define OM_FIXED (OM_HEADER + 4 * 4 + 8)
#define OM_VERSION 1
#define WORK_MIN (64u << 10)
#define DESC_MAGIC 0x4d444553u
#define DS_MAGIC 0x4d445354u
#define BUF_MAGIC 0x4d444246u
#define TD_MAGIC 0x4d445444u

/* ------------------------------------------------------------------------------------------ */
/* Data buffers, tensor descs, datasets                                                        */

struct aclDataBuffer {
    uint32_t magic;
    void *data;
    size_t size;
};

struct aclTensorDesc {
    uint32_t magic;
    aclDataType dtype;
    aclFormat format;
    size_t ndim;
    int64_t dims[ACL_MAX_DIM_CNT];
};

struct aclmdlDataset {
    uint32_t magic;
    size_t n, cap;
    aclDataBuffer **bufs;
    aclTensorDesc *descs; /* n of them (grown with bufs): a run's output shapes */
};

aclDataBuffer *aclCreateDataBuffer(void *data, size_t size) {
    aclDataBuffer *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->magic = BUF_MAGIC;
    b->data = data;
    b->size = size;
    return b;
}

aclError aclDestroyDataBuffer(const aclDataBuffer *dataBuffer) {
    if (!dataBuffer || dataBuffer->magic != BUF_MAGIC) return ACL_ERROR_INVALID_PARAM;
    ((aclDataBuffer *)dataBuffer)->magic = 0;
    free((void *)dataBuffer);
    return ACL_SUCCESS;
}

aclError aclUpdateDataBuffer(aclDataBuffer *dataBuffer, void *data, size_t size) {
    if (!dataBuffer || dataBuffer->magic != BUF_MAGIC) return ACL_ERROR_INVALID_PARAM;
    dataBuffer->data = data;
    dataBuffer->size = size;
    return ACL_SUCCESS;
}

void *aclGetDataBufferAddr(const aclDataBuffer *dataBuffer) {
    return dataBuffer && dataBuffer->magic == BUF_MAGIC ? dataBuffer->data : NULL;
}

size_t aclGetDataBufferSizeV2(const aclDataBuffer *dataBuffer) {
    return dataBuffer && dataBuffer->magic == BUF_MAGIC ? dataBuffer->size : 0;
}

aclTensorDesc *aclCreateTensorDesc(aclDataType dataType, int numDims, const int64_t *dims, aclFormat format) {
    if (numDims < 0 || numDims > ACL_MAX_DIM_CNT || (numDims && !dims)) return NULL;
    aclTensorDesc *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->magic = TD_MAGIC;
    t->dtype = dataType;
    t->format = format;
    t->ndim = (size_t)numDims;
    if (numDims) memcpy(t->dims, dims, (size_t)numDims * sizeof *dims);
    return t;
}

void aclDestroyTensorDesc(const aclTensorDesc *desc) {
    if (!desc || desc->magic != TD_MAGIC) return;
    ((aclTensorDesc *)desc)->magic = 0;
    free((void *)desc);
}

aclDataType aclGetTensorDescType(const aclTensorDesc *desc) {
    return desc && desc->magic == TD_MAGIC ? desc->dtype : ACL_DT_UNDEFINED;
}

size_t aclGetTensorDescNumDims(const aclTensorDesc *desc) {
    return desc && desc->magic == TD_MAGIC ? desc->ndim : 0;
}

aclError aclGetTensorDescDimV2(const aclTensorDesc *desc, size_t index, int64_t *dimSize) {
    if (!desc || desc->magic != TD_MAGIC || !dimSize || index >= desc->ndim) return ACL_ERROR_INVALID_PARAM;
    *dimSize = desc->dims[index];
    return ACL_SUCCESS;
}

aclmdlDataset *aclmdlCreateDataset(void) {
    aclmdlDataset *d = calloc(1, sizeof *d);
    if (d) d->magic = DS_MAGIC;
    return d;
}

static int is_dataset(const aclmdlDataset *d) { return d && d->magic == DS_MAGIC; }

aclError aclmdlDestroyDataset(const aclmdlDataset *dataset) {
    if (!is_dataset(dataset)) return ACL_ERROR_INVALID_PARAM;
    aclmdlDataset *d = (aclmdlDataset *)dataset;
    d->magic = 0;
    free(d->bufs);
    free(d->descs);
    free(d);
    return ACL_SUCCESS;
}

aclError aclmdlAddDatasetBuffer(aclmdlDataset *dataset, aclDataBuffer *dataBuffer) {
    if (!is_dataset(dataset) || !dataBuffer || dataBuffer->magic != BUF_MAGIC) return ACL_ERROR_INVALID_PARAM;
    if (dataset->n == dataset->cap) {
        size_t cap = dataset->cap ? dataset->cap * 2 : 4;
        aclDataBuffer **bufs = realloc(dataset->bufs, cap * sizeof *bufs);
        if (!bufs) return ACL_ERROR_BAD_ALLOC;
        dataset->bufs = bufs;
        aclTensorDesc *descs = realloc(dataset->descs, cap * sizeof *descs);
        if (!descs) return ACL_ERROR_BAD_ALLOC;
        dataset->descs = descs;
        dataset->cap = cap;
    }
    memset(&dataset->descs[dataset->n], 0, sizeof dataset->descs[0]);
    dataset->bufs[dataset->n++] = dataBuffer;
    return ACL_SUCCESS;
}

size_t aclmdlGetDatasetNumBuffers(const aclmdlDataset *dataset) { return is_dataset(dataset) ? dataset->n : 0; }

aclDataBuffer *aclmdlGetDatasetBuffer(const aclmdlDataset *dataset, size_t index) {
    return is_dataset(dataset) && index < dataset->n ? dataset->bufs[index] : NULL;
}

/* An output's shape of the last run that executed with this dataset; NULL before one did. */
aclTensorDesc *aclmdlGetDatasetTensorDesc(const aclmdlDataset *dataset, size_t index) {
    if (!is_dataset(dataset) || index >= dataset->n) return NULL;
    aclTensorDesc *t = &dataset->descs[index];
    return __atomic_load_n(&t->magic, __ATOMIC_ACQUIRE) == TD_MAGIC ? t : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Models                                                                                      */

typedef struct om_io {
    char name[ACL_MAX_TENSOR_NAME_LEN];
    int32_t dtype;
    uint32_t ndim;
    int64_t dims[AA_MAX_DIMS]; /* inputs: -1 where a gear sets the dim; outputs: the max shape, -1 if value-dependent */
    size_t max_bytes;
} om_io;

typedef struct sim_om {
    struct sim_om *next;
    uint32_t id;
    int refs;     /* under g_om.lock: the registry while loaded, each desc, each run */
    int loaded;   /* under g_om.lock */
    int inflight; /* under g_om.lock */
    const void *busy_stream;
    int32_t device;
    sim_model *model;
    void *weights, *work;
    size_t weight_bytes, work_bytes;
    int own_weights, own_work; /* allocated by the load (else the caller's: ...WithMem) */
    int gear_kind;
    size_t n_gears, width;
    int64_t *gears;       /* n_gears * width */
    int64_t cur_gear;     /* under g_om.lock: the gear set last, -1 none */
    size_t n_in, n_out;   /* the engine's (the gear input is extra, at index n_in) */
    om_io *in, *out;
    int64_t *gear_out;    /* per gear (or the one static shape): n_out * AA_MAX_DIMS dims, -1 unknown */
    aclrtStream own_stream; /* aclmdlExecute's */
} sim_om;

struct aclmdlDesc {
    uint32_t magic;
    sim_om *om; /* a reference, once aclmdlGetDesc filled it */
};

static struct {
    pthread_mutex_t lock;
    sim_om *models;
    uint32_t next_id;
} g_om = {.lock = PTHREAD_MUTEX_INITIALIZER, .next_id = 1};

static void om_free(sim_om *m) {
    if (m->own_stream) sim_stream_destroy_internal(m->own_stream);
    if (m->model) sim_model_release(m->model);
    free(m->gears);
    free(m->in);
    free(m->out);
    free(m->gear_out);
    free(m);
}

static void om_put(sim_om *m) {
    pthread_mutex_lock(&g_om.lock);
    int last = --m->refs == 0;
    pthread_mutex_unlock(&g_om.lock);
    if (last) om_free(m);
}

/* A loaded model by id, with a reference, or NULL (107... message set). */
static sim_om *om_get(uint32_t id, const char *api) {
    pthread_mutex_lock(&g_om.lock);
    sim_om *m = g_om.models;
    while (m && m->id != id) m = m->next;
    if (m) m->refs++;
    pthread_mutex_unlock(&g_om.lock);
    if (!m) sim_set_error("%s: model id %u is not loaded", api, id);
    return m;
}

static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

/* The container's fields, checked; 0 or an aclError with the reason set. */
typedef struct om_file {
    int gear_kind;
    size_t n_gears, width;
    const unsigned char *gears;
    const void *onnx;
    size_t onnx_size;
} om_file;

static aclError parse(const void *data, size_t size, om_file *f, const char *api) {
    const unsigned char *p = data;
    if (!data || size < 4) {
        sim_set_error("%s: the model is empty (%zu bytes)", api, size);
        return ACL_ERROR_MODEL_SIZE_INVALID;
    }
    if (!memcmp(p, "IMOD", 4)) {
        sim_set_error("%s: this is an offline model built by ATC for a real Ascend NPU; the simulator cannot "
                      "run NPU code: give the sim the ONNX model, or compile it for the sim "
                      "(ascend-async compile MODEL.onnx -o MODEL.om)", api);
        return ACL_ERROR_PARSE_MODEL;
    }
    if (size < OM_FIXED || memcmp(p, OM_TEXT, sizeof OM_TEXT - 1)) {
        sim_set_error("%s: not a simulated offline model (its header does not say \"simulated offline model\"): "
                      "make one with ascend-async compile MODEL.onnx -o MODEL.om", api);
        return ACL_ERROR_PARSE_MODEL;
    }
    uint32_t version = rd32(p + OM_HEADER);
    f->gear_kind = (int)rd32(p + OM_HEADER + 4);
    uint32_t n_gears = rd32(p + OM_HEADER + 8), width = rd32(p + OM_HEADER + 12);
    uint64_t onnx_size = rd64(p + OM_HEADER + 16);
    if (version != OM_VERSION) {
        sim_set_error("%s: simulated offline model version %u (this sim reads version %d)", api, version, OM_VERSION);
        return ACL_ERROR_DESERIALIZE_MODEL;
    }
    if (f->gear_kind < AA_GEAR_NONE || f->gear_kind > AA_GEAR_DIMS || n_gears > ACL_MAX_BATCH_NUM ||
        width > ACL_MAX_DIM_CNT || (f->gear_kind == AA_GEAR_NONE) != (n_gears == 0) ||
        (f->gear_kind == AA_GEAR_BATCH && width != 1) || (f->gear_kind == AA_GEAR_HW && width != 2) ||
        (n_gears && !width)) {
        sim_set_error("%s: corrupt simulated offline model: gear kind %d, %u gears of width %u", api, f->gear_kind,
                      n_gears, width);
        return ACL_ERROR_MODEL_MISSING_ATTR;
    }
    size_t table = (size_t)n_gears * width * 8;
    if (onnx_size > size || size - OM_FIXED < table || size - OM_FIXED - table != onnx_size || !onnx_size) {
        sim_set_error("%s: corrupt simulated offline model: %zu bytes, the header promises %zu + %zu + %llu", api,
                      size, (size_t)OM_FIXED, table, (unsigned long long)onnx_size);
        return ACL_ERROR_MODEL_SIZE_INVALID;
    }
    f->n_gears = n_gears;
    f->width = width;
    f->gears = p + OM_FIXED;
    f->onnx = p + OM_FIXED + table;
    f->onnx_size = (size_t)onnx_size;
    for (size_t k = 0; k < (size_t)n_gears * width; k++) {
        int64_t v = (int64_t)rd64(f->gears + 8 * k);
        if (v <= 0) {
            sim_set_error("%s: corrupt simulated offline model: gear value %lld", api, (long long)v);
            return ACL_ERROR_MODEL_MISSING_ATTR;
        }
    }
    return ACL_SUCCESS;
}

/* Input shapes for gear `g` (-1: the model's only configuration) into shapes[n_in]. 0 or -1. */
static int gear_shapes(const sim_om *m, int64_t g, aa_tensor *shapes) {
    size_t pos = 0;
    for (size_t i = 0; i < m->n_in; i++) {
        const om_io *io = &m->in[i];
        aa_tensor *t = &shapes[i];
        memset(t, 0, sizeof *t);
        t->dtype = io->dtype;
        t->ndim = io->ndim;
        size_t hw = 0;
        for (uint32_t d = 0; d < io->ndim; d++) {
            int64_t v = io->dims[d];
            const int64_t *gear = g >= 0 ? &m->gears[(size_t)g * m->width] : NULL;
            if (m->gear_kind == AA_GEAR_DIMS && gear) {
                if (pos >= m->width) return -1;
                if (v >= 0 && gear[pos] != v) return -1;
                v = gear[pos++];
            } else if (v < 0 && gear && m->gear_kind == AA_GEAR_BATCH) {
                v = gear[0];
            } else if (v < 0 && gear && m->gear_kind == AA_GEAR_HW) {
                if (hw >= 2) return -1;
                v = gear[hw++];
            }
            if (v < 0) return -1;
            t->dims[d] = v;
        }
    }
    return (m->gear_kind == AA_GEAR_DIMS && g >= 0 && pos != m->width) ? -1 : 0;
}

/* Fills the signature, the gears' output shapes and the size of every input and output. */
static aclError om_describe(sim_om *m, const char *api) {
    m->n_in = sim_model_n_inputs(m->model);
    m->n_out = sim_model_n_outputs(m->model);
    size_t configs = m->n_gears ? m->n_gears : 1;
    m->in = calloc(m->n_in ? m->n_in : 1, sizeof *m->in);
    m->out = calloc(m->n_out ? m->n_out : 1, sizeof *m->out);
    m->gear_out = calloc(configs * (m->n_out ? m->n_out : 1) * AA_MAX_DIMS, sizeof(int64_t));
    aa_tensor *shapes = calloc(m->n_in ? m->n_in : 1, sizeof *shapes);
    aa_tensor *outs = calloc(m->n_out ? m->n_out : 1, sizeof *outs);
    aclError rc = ACL_ERROR_BAD_ALLOC;
    if (!m->in || !m->out || !m->gear_out || !shapes || !outs) {
        sim_set_error("%s: out of host memory", api);
        goto out;
    }
    rc = ACL_ERROR_MODEL_INPUT_NOT_MATCH;
    size_t rank_sum = 0;
    for (int output = 0; output < 2; output++)
        for (size_t i = 0; i < (output ? m->n_out : m->n_in); i++) {
            om_io *io = output ? &m->out[i] : &m->in[i];
            const char *name = sim_model_io(m->model, output, i, &io->dtype, &io->ndim, io->dims);
            snprintf(io->name, sizeof io->name, "%s", name ? name : "");
            if (!output) rank_sum += io->ndim;
        }
    if (m->gear_kind == AA_GEAR_DIMS && m->width != rank_sum) {
        sim_set_error("%s: corrupt simulated offline model: a dims gear has %zu values, the inputs have %zu dims", api,
                      m->width, rank_sum);
        goto out;
    }
    for (size_t g = 0; g < configs; g++) {
        if (gear_shapes(m, m->n_gears ? (int64_t)g : -1, shapes)) {
            if (m->n_gears)
                sim_set_error("%s: gear %zu does not fit the model's inputs (a fixed dim differs, or a dim is "
                              "left unset)", api, g);
            else
                sim_set_error("%s: input dims are not fixed and the model has no gears: an offline model runs "
                              "fixed shapes, or compile it with gears (--gears)", api);
            goto out;
        }
        char err[512];
        int r = sim_model_resolve(m->model, shapes, m->n_in, outs, m->n_out, err, sizeof err);
        if (r < 0) {
            sim_set_error("%s: gear %zu: %s", api, g, err);
            goto out;
        }
        size_t in_bytes = 0;
        for (size_t i = 0; i < m->n_in; i++) {
            int ok;
            size_t n = sim_shape_nbytes(shapes[i].dtype, shapes[i].ndim, shapes[i].dims, &ok);
            if (!ok) {
                sim_set_error("%s: gear %zu: input %zu's size overflows", api, g, i);
                goto out;
            }
            if (n > m->in[i].max_bytes) m->in[i].max_bytes = n;
            in_bytes += n;
        }
        for (size_t o = 0; o < m->n_out; o++) {
            int64_t *dims = &m->gear_out[(g * m->n_out + o) * AA_MAX_DIMS];
            int known = outs[o].ndim > 0; /* rank 0 may mean "unknown" to the engine: placed after the run */
            for (uint32_t d = 0; d < outs[o].ndim; d++) {
                dims[d] = outs[o].dims[d];
                known &= dims[d] >= 0;
            }
            m->out[o].ndim = outs[o].ndim;
            int ok = 1;
            /* A value-dependent output: bounded by eight times the gear's input bytes (at least
             * 4 KiB), as an .om's output size is fixed at build time. */
            size_t n = known ? sim_shape_nbytes(outs[o].dtype, outs[o].ndim, dims, &ok) : 8 * in_bytes;
            if (!ok) {
                sim_set_error("%s: gear %zu: output %zu's size overflows", api, g, o);
                goto out;
            }
            if (!known && n < 4096) n = 4096;
            if (n > m->out[o].max_bytes) m->out[o].max_bytes = n;
        }
    }
    /* The description's dims: the largest gear's output shapes (-1 where they differ by gear or
     * depend on values). */
    for (size_t o = 0; o < m->n_out; o++)
        for (uint32_t d = 0; d < m->out[o].ndim; d++) {
            int64_t v = m->gear_out[o * AA_MAX_DIMS + d];
            for (size_t g = 1; g < configs; g++)
                if (m->gear_out[(g * m->n_out + o) * AA_MAX_DIMS + d] != v) v = -1;
            m->out[o].dims[d] = v;
        }
    rc = ACL_SUCCESS;
out:
    free(shapes);
    free(outs);
    return rc;
}

/* A model from the container's fields: the engine's compiled graph, its description and the
 * memory a load charges (not yet charged). NULL with the reason set in *rc. */
static sim_om *om_build(const om_file *f, aclError *rc, const char *api) {
    if (!sim_engine_is_open()) {
        sim_set_error("%s: the sim's graph engine is not open (aa_sim_engine_open)", api);
        *rc = ACL_ERROR_UNINITIALIZE;
        return NULL;
    }
    sim_om *m = calloc(1, sizeof *m);
    *rc = ACL_ERROR_BAD_ALLOC;
    if (!m) return NULL;
    m->refs = 1;
    m->cur_gear = -1;
    m->gear_kind = f->gear_kind;
    m->n_gears = f->n_gears;
    m->width = f->width;
    m->gears = calloc(f->n_gears * f->width + 1, sizeof(int64_t));
    if (!m->gears) {
        om_free(m);
        return NULL;
    }
    for (size_t k = 0; k < f->n_gears * f->width; k++) m->gears[k] = (int64_t)rd64(f->gears + 8 * k);
    aa_sim_config cfg;
    aa_sim_get_config(&cfg);
    char err[1024];
    int not_implemented = 0;
    m->model = sim_model_get(f->onnx, f->onnx_size, cfg.engine_threads, NULL, NULL, &not_implemented, err, sizeof err);
    if (!m->model) {
        sim_set_error("%s: the simulated offline model's ONNX graph cannot be loaded: %s", api, err);
        om_free(m);
        *rc = ACL_ERROR_PARSE_MODEL;
        return NULL;
    }
    *rc = om_describe(m, api);
    if (*rc) {
        om_free(m);
        return NULL;
    }
    m->weight_bytes = f->onnx_size;
    m->work_bytes = WORK_MIN;
    for (size_t i = 0; i < m->n_in; i++) m->work_bytes += m->in[i].max_bytes;
    for (size_t o = 0; o < m->n_out; o++) m->work_bytes += m->out[o].max_bytes;
    return m;
}

/* Caller memory for one part (...WithMem): NULL = the load allocates it; else device memory of
 * at least `need` bytes. 0 or an aclError with the reason set. */
static aclError caller_mem(void *ptr, size_t size, size_t need, const char *what, const char *api) {
    char why[200];
    if (!ptr) return ACL_SUCCESS;
    if (size < need || sim_check_device_range(ptr, need, why, sizeof why) != 1) {
        sim_set_error("%s: the caller's %s memory must be %zu bytes of device memory (aclmdlQuerySize); got %zu "
                      "bytes at %p", api, what, need, size, ptr);
        return ACL_ERROR_INVALID_PARAM;
    }
    return ACL_SUCCESS;
}

static aclError load(const void *data, size_t size, uint32_t *modelId, void *work, size_t work_size, void *weights,
                     size_t weight_size, const char *api) {
    if (!modelId) {
        sim_set_error("%s: modelId is NULL", api);
        return ACL_ERROR_INVALID_PARAM;
    }
    om_file f;
    aclError rc = parse(data, size, &f, api);
    if (rc) return rc;
    int32_t device;
    rc = sim_current_device(&device);
    if (rc) {
        sim_set_error("%s: no current context on this thread (aclrtSetCurrentContext first)", api);
        return rc;
    }
    sim_om *m = om_build(&f, &rc, api);
    if (!m) return rc;
    m->device = device;
    if ((rc = caller_mem(work, work_size, m->work_bytes, "work", api)) ||
        (rc = caller_mem(weights, weight_size, m->weight_bytes, "weight", api))) {
        om_free(m);
        return rc;
    }
    m->work = work;
    m->weights = weights;
    m->own_weights = !weights;
    m->own_work = !work;
    if ((m->own_weights && sim_device_alloc(device, m->weight_bytes, &m->weights)) ||
        (m->own_work && sim_device_alloc(device, m->work_bytes, &m->work))) {
        const char *msg = aclGetRecentErrMsg();
        sim_set_error("%s: not enough device memory for the model's weights and work memory (%zu + %zu bytes): %s",
                      api, m->weight_bytes, m->work_bytes, msg ? msg : "");
        if (m->own_weights && m->weights) sim_device_free(m->weights);
        om_free(m);
        return ACL_ERROR_RT_MEMORY_ALLOCATION;
    }
    if (sim_stream_create_internal(device, &m->own_stream)) {
        if (m->own_weights) sim_device_free(m->weights);
        if (m->own_work) sim_device_free(m->work);
        om_free(m);
        return ACL_ERROR_RT_NO_STREAM_RESOURCE;
    }
    pthread_mutex_lock(&g_om.lock);
    m->id = g_om.next_id++;
    if (!g_om.next_id) g_om.next_id = 1;
    m->loaded = 1;
    m->next = g_om.models;
    g_om.models = m;
    pthread_mutex_unlock(&g_om.lock);
    *modelId = m->id;
    return ACL_SUCCESS;
}

aclError aclmdlLoadFromMem(const void *model, size_t modelSize, uint32_t *modelId) {
    return load(model, modelSize, modelId, NULL, 0, NULL, 0, "aclmdlLoadFromMem");
}

aclError aclmdlLoadFromMemWithMem(const void *model, size_t modelSize, uint32_t *modelId, void *workPtr,
                                  size_t workSize, void *weightPtr, size_t weightSize) {
    return load(model, modelSize, modelId, workPtr, workSize, weightPtr, weightSize, "aclmdlLoadFromMemWithMem");
}

/* The whole file in a malloc'd buffer, or NULL with the reason set. */
static void *read_file(const char *path, size_t *size, aclError *rc, const char *api) {
    *rc = ACL_ERROR_READ_MODEL_FAILURE;
    if (!path) {
        sim_set_error("%s: the path is NULL", api);
        *rc = ACL_ERROR_INVALID_PARAM;
        return NULL;
    }
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        sim_set_error("%s: cannot open %s", api, path);
        return NULL;
    }
    void *buf = NULL;
    long n = -1;
    if (!fseek(fp, 0, SEEK_END)) n = ftell(fp);
    if (n >= 0 && !fseek(fp, 0, SEEK_SET) && (buf = malloc(n ? (size_t)n : 1)) && fread(buf, 1, (size_t)n, fp) == (size_t)n) {
        fclose(fp);
        *size = (size_t)n;
        return buf;
    }
    free(buf);
    fclose(fp);
    sim_set_error("%s: cannot read %s", api, path);
    return NULL;
}

aclError aclmdlLoadFromFile(const char *modelPath, uint32_t *modelId) {
    aclError rc;
    size_t size = 0;
    void *data = read_file(modelPath, &size, &rc, "aclmdlLoadFromFile");
    if (!data) return rc;
    rc = load(data, size, modelId, NULL, 0, NULL, 0, "aclmdlLoadFromFile");
    free(data);
    return rc;
}

aclError aclmdlLoadFromFileWithMem(const char *modelPath, uint32_t *modelId, void *workPtr, size_t workSize,
                                   void *weightPtr, size_t weightSize) {
    aclError rc;
    size_t size = 0;
    void *data = read_file(modelPath, &size, &rc, "aclmdlLoadFromFileWithMem");
    if (!data) return rc;
    rc = load(data, size, modelId, workPtr, workSize, weightPtr, weightSize, "aclmdlLoadFromFileWithMem");
    free(data);
    return rc;
}

static aclError query(const void *data, size_t size, size_t *workSize, size_t *weightSize, const char *api) {
    om_file f;
    if (!workSize || !weightSize) return ACL_ERROR_INVALID_PARAM;
    aclError rc = parse(data, size, &f, api);
    if (rc) return rc;
    sim_om *m = om_build(&f, &rc, api); /* exactly what a load would charge */
    if (!m) return rc;
    *weightSize = m->weight_bytes;
    *workSize = m->work_bytes;
    om_free(m);
    return ACL_SUCCESS;
}

aclError aclmdlQuerySizeFromMem(const void *model, size_t modelSize, size_t *workSize, size_t *weightSize) {
    return query(model, modelSize, workSize, weightSize, "aclmdlQuerySizeFromMem");
}

aclError aclmdlQuerySize(const char *fileName, size_t *workSize, size_t *weightSize) {
    aclError rc;
    size_t size = 0;
    void *data = read_file(fileName, &size, &rc, "aclmdlQuerySize");
    if (!data) return rc;
    rc = query(data, size, workSize, weightSize, "aclmdlQuerySize");
    free(data);
    return rc;
}

aclError aclmdlUnload(uint32_t modelId) {
    pthread_mutex_lock(&g_om.lock);
    sim_om **pp = &g_om.models;
    while (*pp && (*pp)->id != modelId) pp = &(*pp)->next;
    sim_om *m = *pp;
    if (m && m->inflight) {
        int n = m->inflight;
        pthread_mutex_unlock(&g_om.lock);
        sim_set_error("aclmdlUnload: model %u has %d run(s) in flight; unload it once they finished "
                      "(synchronize its stream first)", modelId, n);
        return ACL_ERROR_INVALID_PARAM;
    }
    if (m) {
        *pp = m->next;
        m->loaded = 0;
    }
    pthread_mutex_unlock(&g_om.lock);
    if (!m) {
        sim_set_error("aclmdlUnload: model id %u is not loaded", modelId);
        return ACL_ERROR_INVALID_MODEL_ID;
    }
    if (m->own_weights) sim_device_free(m->weights);
    if (m->own_work) sim_device_free(m->work); /* the caller's memory stays the caller's */
    m->weights = m->work = NULL;
    om_put(m);
    return ACL_SUCCESS;
}

/* ------------------------------------------------------------------------------------------ */
/* Descriptions                                                                                */

aclmdlDesc *aclmdlCreateDesc(void) {
    aclmdlDesc *d = calloc(1, sizeof *d);
    if (d) d->magic = DESC_MAGIC;
    return d;
}

aclError aclmdlDestroyDesc(aclmdlDesc *modelDesc) {
    if (!modelDesc || modelDesc->magic != DESC_MAGIC) return ACL_ERROR_INVALID_PARAM;
    if (modelDesc->om) om_put(modelDesc->om);
    modelDesc->magic = 0;
    free(modelDesc);
    return ACL_SUCCESS;
}

aclError aclmdlGetDesc(aclmdlDesc *modelDesc, uint32_t modelId) {
    if (!modelDesc || modelDesc->magic != DESC_MAGIC) return ACL_ERROR_INVALID_PARAM;
    sim_om *m = om_get(modelId, "aclmdlGetDesc");
    if (!m) return ACL_ERROR_INVALID_MODEL_ID;
    if (modelDesc->om) om_put(modelDesc->om);
    modelDesc->om = m;
    return ACL_SUCCESS;
}

static const sim_om *desc_om(const aclmdlDesc *d) { return d && d->magic == DESC_MAGIC ? d->om : NULL; }

/* The gear input is the model's last input (index n_in), as the sim lays it out. */
static int has_gear(const sim_om *m) { return m->gear_kind != AA_GEAR_NONE; }

size_t aclmdlGetNumInputs(aclmdlDesc *modelDesc) {
    const sim_om *m = desc_om(modelDesc);
    return m ? m->n_in + (size_t)has_gear(m) : 0;
}

size_t aclmdlGetNumOutputs(aclmdlDesc *modelDesc) {
    const sim_om *m = desc_om(modelDesc);
    return m ? m->n_out : 0;
}

size_t aclmdlGetInputSizeByIndex(aclmdlDesc *modelDesc, size_t index) {
    const sim_om *m = desc_om(modelDesc);
    if (!m) return 0;
    if (index < m->n_in) return m->in[index].max_bytes;
    return index == m->n_in && has_gear(m) ? m->width * sizeof(int64_t) : 0;
}

size_t aclmdlGetOutputSizeByIndex(aclmdlDesc *modelDesc, size_t index) {
    const sim_om *m = desc_om(modelDesc);
    return m && index < m->n_out ? m->out[index].max_bytes : 0;
}

static aclError fill_dims(const om_io *io, const int64_t *dims, aclmdlIODims *out) {
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", io->name);
    out->dimCount = io->ndim;
    memcpy(out->dims, dims, io->ndim * sizeof(int64_t));
    return ACL_SUCCESS;
}

aclError aclmdlGetInputDims(const aclmdlDesc *modelDesc, size_t index, aclmdlIODims *dims) {
    const sim_om *m = desc_om(modelDesc);
    if (!m || !dims) return ACL_ERROR_INVALID_PARAM;
    if (index < m->n_in) return fill_dims(&m->in[index], m->in[index].dims, dims);
    if (index == m->n_in && has_gear(m)) {
        memset(dims, 0, sizeof *dims);
        snprintf(dims->name, sizeof dims->name, "ascend_mbatch_shape_data");
        dims->dimCount = 1;
        dims->dims[0] = (int64_t)m->width;
        return ACL_SUCCESS;
    }
    return ACL_ERROR_INVALID_PARAM;
}

aclError aclmdlGetOutputDims(const aclmdlDesc *modelDesc, size_t index, aclmdlIODims *dims) {
    const sim_om *m = desc_om(modelDesc);
    if (!m || !dims || index >= m->n_out) return ACL_ERROR_INVALID_PARAM;
    return fill_dims(&m->out[index], m->out[index].dims, dims);
}

/* The gear set last (or, before any, the largest: the last in the table), as ACL documents. */
aclError aclmdlGetCurOutputDims(const aclmdlDesc *modelDesc, size_t index, aclmdlIODims *dims) {
    const sim_om *m = desc_om(modelDesc);
    if (!m || !dims || index >= m->n_out) return ACL_ERROR_INVALID_PARAM;
    pthread_mutex_lock(&g_om.lock);
    int64_t g = m->cur_gear;
    pthread_mutex_unlock(&g_om.lock);
    if (g < 0) g = m->n_gears ? (int64_t)m->n_gears - 1 : 0;
    return fill_dims(&m->out[index], &m->gear_out[((size_t)g * m->n_out + index) * AA_MAX_DIMS], dims);
}

const char *aclmdlGetInputNameByIndex(const aclmdlDesc *modelDesc, size_t index) {
    const sim_om *m = desc_om(modelDesc);
    if (!m) return "";
    if (index < m->n_in) return m->in[index].name;
    return index == m->n_in && has_gear(m) ? "ascend_mbatch_shape_data" : "";
}

const char *aclmdlGetOutputNameByIndex(const aclmdlDesc *modelDesc, size_t index) {
    const sim_om *m = desc_om(modelDesc);
    return m && index < m->n_out ? m->out[index].name : "";
}

aclFormat aclmdlGetInputFormat(const aclmdlDesc *modelDesc, size_t index) {
    return aclmdlGetNumInputs((aclmdlDesc *)modelDesc) > index ? ACL_FORMAT_ND : ACL_FORMAT_UNDEFINED;
}

aclFormat aclmdlGetOutputFormat(const aclmdlDesc *modelDesc, size_t index) {
    const sim_om *m = desc_om(modelDesc);
    return m && index < m->n_out ? ACL_FORMAT_ND : ACL_FORMAT_UNDEFINED;
}

aclDataType aclmdlGetInputDataType(const aclmdlDesc *modelDesc, size_t index) {
    const sim_om *m = desc_om(modelDesc);
    if (!m) return ACL_DT_UNDEFINED;
    if (index < m->n_in) return (aclDataType)m->in[index].dtype;
    return index == m->n_in && has_gear(m) ? ACL_INT64 : ACL_DT_UNDEFINED;
}

aclDataType aclmdlGetOutputDataType(const aclmdlDesc *modelDesc, size_t index) {
    const sim_om *m = desc_om(modelDesc);
    return m && index < m->n_out ? (aclDataType)m->out[index].dtype : ACL_DT_UNDEFINED;
}

aclError aclmdlGetInputIndexByName(const aclmdlDesc *modelDesc, const char *name, size_t *index) {
    const sim_om *m = desc_om(modelDesc);
    if (!m || !name || !index) return ACL_ERROR_INVALID_PARAM;
    for (size_t i = 0; i < m->n_in + (size_t)has_gear(m); i++)
        if (!strcmp(aclmdlGetInputNameByIndex(modelDesc, i), name)) {
            *index = i;
            return ACL_SUCCESS;
        }
    return ACL_ERROR_INVALID_PARAM;
}

aclError aclmdlGetDynamicBatch(const aclmdlDesc *modelDesc, aclmdlBatch *batch) {
    const sim_om *m = desc_om(modelDesc);
    if (!m || !batch) return ACL_ERROR_INVALID_PARAM;
    memset(batch, 0, sizeof *batch);
    if (m->gear_kind != AA_GEAR_BATCH) return ACL_SUCCESS; /* batchCount 0: not a dynamic-batch model */
    batch->batchCount = m->n_gears;
    for (size_t g = 0; g < m->n_gears; g++) batch->batch[g] = (uint64_t)m->gears[g];
    return ACL_SUCCESS;
}

aclError aclmdlGetDynamicHW(const aclmdlDesc *modelDesc, size_t index, aclmdlHW *hw) {
    const sim_om *m = desc_om(modelDesc);
    (void)index;
    if (!m || !hw) return ACL_ERROR_INVALID_PARAM;
    memset(hw, 0, sizeof *hw);
    if (m->gear_kind != AA_GEAR_HW) return ACL_SUCCESS;
    hw->hwCount = m->n_gears;
    for (size_t g = 0; g < m->n_gears; g++) {
        hw->hw[g][0] = (uint64_t)m->gears[2 * g];
        hw->hw[g][1] = (uint64_t)m->gears[2 * g + 1];
    }
    return ACL_SUCCESS;
}

aclError aclmdlGetInputDynamicGearCount(const aclmdlDesc *modelDesc, size_t index, size_t *gearCount) {
    const sim_om *m = desc_om(modelDesc);
    (void)index;
    if (!m || !gearCount) return ACL_ERROR_INVALID_PARAM;
    *gearCount = m->gear_kind == AA_GEAR_DIMS ? m->n_gears : 0;
    return ACL_SUCCESS;
}

aclError aclmdlGetInputDynamicDims(const aclmdlDesc *modelDesc, size_t index, aclmdlIODims *dims, size_t gearCount) {
    const sim_om *m = desc_om(modelDesc);
    (void)index;
    if (!m || !dims || m->gear_kind != AA_GEAR_DIMS || gearCount != m->n_gears) return ACL_ERROR_INVALID_PARAM;
    for (size_t g = 0; g < m->n_gears; g++) {
        memset(&dims[g], 0, sizeof dims[g]);
        dims[g].dimCount = m->width;
        memcpy(dims[g].dims, &m->gears[g * m->width], m->width * sizeof(int64_t));
    }
    return ACL_SUCCESS;
}

/* ------------------------------------------------------------------------------------------ */
/* Gears                                                                                       */

/* Writes `values` (width of them) into the dataset's gear buffer when they are a gear of the
 * model, and makes that gear the current one. */
static aclError set_gear(uint32_t modelId, aclmdlDataset *dataset, size_t index, const int64_t *values, size_t n,
                         int kind, const char *api) {
    sim_om *m = om_get(modelId, api);
    if (!m) return ACL_ERROR_INVALID_MODEL_ID;
    aclError rc = ACL_ERROR_INVALID_PARAM;
    if (m->gear_kind != kind) {
        sim_set_error("%s: model %u has no gears of this kind", api, modelId);
        rc = ACL_ERROR_MODEL_NOT_DYNAMIC;
        goto out;
    }
    if (!is_dataset(dataset) || index != m->n_in || index >= dataset->n || n != m->width) {
        sim_set_error("%s: model %u: the gear input is input %zu (ascend_mbatch_shape_data), not %zu", api, modelId,
                      m->n_in, index);
        goto out;
    }
    int64_t g = -1;
    for (size_t k = 0; k < m->n_gears && g < 0; k++)
        if (!memcmp(&m->gears[k * m->width], values, n * sizeof(int64_t))) g = (int64_t)k;
    if (g < 0) {
        sim_set_error("%s: model %u has no such gear", api, modelId);
        goto out;
    }
    aclDataBuffer *b = dataset->bufs[index];
    char why[200];
    if (!b->data || b->size < n * sizeof(int64_t) ||
        sim_check_device_range(b->data, n * sizeof(int64_t), why, sizeof why) != 1) {
        sim_set_error("%s: model %u: the gear input's buffer is not %zu bytes of device memory", api, modelId,
                      n * sizeof(int64_t));
        goto out;
    }
    memcpy(b->data, values, n * sizeof(int64_t)); /* as ACL's synchronous copy into the buffer */
    pthread_mutex_lock(&g_om.lock);
    m->cur_gear = g;
    pthread_mutex_unlock(&g_om.lock);
    rc = ACL_SUCCESS;
out:
    om_put(m);
    return rc;
}

aclError aclmdlSetDynamicBatchSize(uint32_t modelId, aclmdlDataset *dataset, size_t index, uint64_t batchSize) {
    int64_t v = (int64_t)batchSize;
    return set_gear(modelId, dataset, index, &v, 1, AA_GEAR_BATCH, "aclmdlSetDynamicBatchSize");
}

aclError aclmdlSetDynamicHWSize(uint32_t modelId, aclmdlDataset *dataset, size_t index, uint64_t height,
                                uint64_t width) {
    int64_t v[2] = {(int64_t)height, (int64_t)width};
    return set_gear(modelId, dataset, index, v, 2, AA_GEAR_HW, "aclmdlSetDynamicHWSize");
}

aclError aclmdlSetInputDynamicDims(uint32_t modelId, aclmdlDataset *dataset, size_t index, const aclmdlIODims *dims) {
    if (!dims || dims->dimCount > ACL_MAX_DIM_CNT) return ACL_ERROR_INVALID_PARAM;
    return set_gear(modelId, dataset, index, dims->dims, dims->dimCount, AA_GEAR_DIMS, "aclmdlSetInputDynamicDims");
}

/* ------------------------------------------------------------------------------------------ */
/* Execution                                                                                   */

/* One execute: copies of the buffers' addresses and shapes, made at submit. */
typedef struct om_job {
    sim_om *om;              /* a reference; counted in flight until the cleanup */
    const void *stream;
    const void *conflict;    /* another stream with a run of this model in flight, or NULL */
    int dynamic;             /* outputs placed after the run (value-dependent shapes) */
    aclmdlDataset *output;   /* the caller's: each output's tensor desc is set when the run ends */
    aa_tensor *in, *out;
    int code;                /* aclmdlExecute */
    char msg[512];
} om_job;

static void job_free(om_job *j) {
    pthread_mutex_lock(&g_om.lock);
    j->om->inflight--;
    pthread_mutex_unlock(&g_om.lock);
    om_put(j->om);
    free(j->in);
    free(j->out);
    free(j);
}

static void set_desc(aclmdlDataset *ds, size_t i, const aa_tensor *t) {
    aclTensorDesc *d = &ds->descs[i];
    d->dtype = (aclDataType)t->dtype;
    d->format = ACL_FORMAT_ND;
    d->ndim = t->ndim;
    memcpy(d->dims, t->dims, t->ndim * sizeof(int64_t));
    __atomic_store_n(&d->magic, TD_MAGIC, __ATOMIC_RELEASE); /* read after the run's event */
}

/* Device thread: one value-dependent output into the caller's buffer. */
static int place(void *ctx, size_t i, const aa_tensor *desc, const void *data, size_t nbytes, char *err,
                 size_t err_len) {
    om_job *j = ctx;
    aa_tensor *t = &j->out[i];
    if (nbytes > t->size) {
        snprintf(err, err_len, "output %zu of model %u needs %zu bytes; its buffer has %zu (the model's output size)",
                 i, j->om->id, nbytes, t->size);
        return ACL_ERROR_RT_MODEL_EXECUTE;
    }
    if (nbytes) memcpy(t->addr, data, nbytes);
    t->dtype = desc->dtype;
    t->ndim = desc->ndim;
    memcpy(t->dims, desc->dims, sizeof t->dims);
    return 0;
}

static int job_exec(om_job *j, char *err, size_t err_len) {
    if (j->conflict) {
        snprintf(err, err_len,
                 "model %u executed on stream %p while its run on stream %p had not finished: one modelId must not "
                 "execute on two streams at once (load the model once per stream)",
                 j->om->id, j->stream, j->conflict);
        return ACL_ERROR_RT_MODEL_EXECUTE;
    }
    int rc = sim_model_run(j->om->model, j->in, j->om->n_in, j->out, j->om->n_out, j->dynamic ? place : NULL, j, err,
                           err_len);
    if (!rc)
        for (size_t o = 0; o < j->om->n_out; o++) set_desc(j->output, o, &j->out[o]);
    return rc;
}

static int stream_exec(void *payload, char *err, size_t err_len) { return job_exec(payload, err, err_len); }

static void stream_cleanup(void *payload, int executed) {
    (void)executed;
    job_free(payload);
}

/* Checks the datasets against the model and the current gear; builds the job (not yet in
 * flight). NULL with the reason set. */
static om_job *job_make(uint32_t modelId, const aclmdlDataset *input, aclmdlDataset *output, const char *api,
                        aclError *rc) {
    sim_om *m = om_get(modelId, api);
    *rc = ACL_ERROR_INVALID_MODEL_ID;
    if (!m) return NULL;
    *rc = ACL_ERROR_INVALID_PARAM;
    om_job *j = calloc(1, sizeof *j);
    aa_tensor *in = calloc(m->n_in ? m->n_in : 1, sizeof *in);
    aa_tensor *out = calloc(m->n_out ? m->n_out : 1, sizeof *out);
    if (!j || !in || !out) {
        *rc = ACL_ERROR_BAD_ALLOC;
        goto fail;
    }
    j->om = m;
    j->in = in;
    j->out = out;
    j->output = output;
    size_t want_in = m->n_in + (size_t)has_gear(m);
    if (!is_dataset(input) || !is_dataset(output) || input->n != want_in || output->n != m->n_out) {
        sim_set_error("%s: model %u takes %zu input and %zu output buffers, the datasets have %zu and %zu", api,
                      modelId, want_in, m->n_out, is_dataset(input) ? input->n : 0, is_dataset(output) ? output->n : 0);
        *rc = is_dataset(input) && input->n != want_in ? ACL_ERROR_MODEL_INPUT_NOT_MATCH : ACL_ERROR_MODEL_OUTPUT_NOT_MATCH;
        goto fail;
    }
    int64_t g = -1;
    if (has_gear(m)) { /* the gear this run executes: what the gear input's buffer holds */
        const aclDataBuffer *b = input->bufs[m->n_in];
        char why[200];
        if (!b->data || b->size < m->width * 8 || sim_check_device_range(b->data, m->width * 8, why, sizeof why) != 1) {
            sim_set_error("%s: model %u: the gear input (ascend_mbatch_shape_data, input %zu) has no %zu-byte device "
                          "buffer; set a gear with aclmdlSetDynamicBatchSize/HWSize/InputDynamicDims", api, modelId,
                          m->n_in, m->width * 8);
            goto fail;
        }
        for (size_t k = 0; k < m->n_gears && g < 0; k++)
            if (!memcmp(&m->gears[k * m->width], b->data, m->width * 8)) g = (int64_t)k;
        if (g < 0) {
            sim_set_error("%s: model %u: the gear input holds no gear of the model (set one first)", api, modelId);
            goto fail;
        }
    }
    if (gear_shapes(m, g, in)) {
        sim_set_error("%s: model %u: no gear set", api, modelId);
        goto fail;
    }
    for (size_t i = 0; i < m->n_in; i++) {
        const aclDataBuffer *b = input->bufs[i];
        int ok;
        size_t need = sim_shape_nbytes(in[i].dtype, in[i].ndim, in[i].dims, &ok);
        char why[200];
        if (need && (!b->data || b->size < need || sim_check_device_range(b->data, need, why, sizeof why) != 1)) {
            sim_set_error("%s: model %u: input %zu (%s) needs %zu bytes of device memory, its buffer has %zu at %p", api,
                          modelId, i, m->in[i].name, need, b->size, b->data);
            *rc = ACL_ERROR_MODEL_INPUT_NOT_MATCH;
            goto fail;
        }
        in[i].addr = b->data;
        in[i].size = b->size;
        in[i].placement = AA_PLACEMENT_DEVICE_HBM;
    }
    size_t configs_g = g < 0 ? 0 : (size_t)g;
    for (size_t o = 0; o < m->n_out; o++) {
        const aclDataBuffer *b = output->bufs[o];
        char why[200];
        size_t need = m->out[o].max_bytes;
        if (!b->data || b->size < need || sim_check_device_range(b->data, b->size, why, sizeof why) != 1) {
            sim_set_error("%s: model %u: output %zu (%s) needs a %zu-byte device buffer (aclmdlGetOutputSizeByIndex), "
                          "it has %zu at %p", api, modelId, o, m->out[o].name, need, b->size, b->data);
            *rc = ACL_ERROR_MODEL_OUTPUT_NOT_MATCH;
            goto fail;
        }
        const int64_t *dims = &m->gear_out[(configs_g * m->n_out + o) * AA_MAX_DIMS];
        out[o].addr = b->data;
        out[o].size = b->size;
        out[o].dtype = m->out[o].dtype;
        out[o].format = AA_FORMAT_ND;
        out[o].placement = AA_PLACEMENT_DEVICE_HBM;
        out[o].ndim = m->out[o].ndim;
        memcpy(out[o].dims, dims, m->out[o].ndim * sizeof(int64_t));
        if (!m->out[o].ndim) j->dynamic = 1;
        for (uint32_t d = 0; d < m->out[o].ndim; d++)
            if (dims[d] < 0) j->dynamic = 1;
    }
    for (size_t o = 0; o < m->n_out; o++) /* this run's shapes are not known until it ran */
        __atomic_store_n(&output->descs[o].magic, 0, __ATOMIC_RELAXED);
    *rc = ACL_SUCCESS;
    return j;
fail:
    free(in);
    free(out);
    free(j);
    om_put(m);
    return NULL;
}

/* Counts the run in flight on `stream`; notes a run of the model on another stream. */
static void job_start(om_job *j, const void *stream) {
    pthread_mutex_lock(&g_om.lock);
    sim_om *m = j->om;
    if (m->inflight && m->busy_stream != stream) j->conflict = m->busy_stream;
    if (!m->inflight) m->busy_stream = stream;
    m->inflight++;
    pthread_mutex_unlock(&g_om.lock);
    j->stream = stream;
}

aclError aclmdlExecuteAsync(uint32_t modelId, const aclmdlDataset *input, aclmdlDataset *output, aclrtStream stream) {
    static const char api[] = "aclmdlExecuteAsync";
    aclError rc;
    om_job *j = job_make(modelId, input, output, api, &rc);
    if (!j) return rc;
    int32_t dev;
    if (sim_current_device(&dev) || dev != j->om->device) {
        sim_set_error("%s: model %u was loaded on device %d; this thread's current context is not on it", api, modelId,
                      j->om->device);
        free(j->in), free(j->out), om_put(j->om), free(j);
        return ACL_ERROR_RT_CONTEXT_NULL;
    }
    job_start(j, stream);
    rc = sim_enqueue(stream, sim_graph_task_flags(j->in, j->om->n_in), stream_exec, stream_cleanup, j);
    if (rc) job_free(j);
    return rc;
}

static int sync_exec(void *payload, char *err, size_t err_len) {
    om_job *j = payload;
    char msg[512] = "";
    j->code = job_exec(j, msg, sizeof msg);
    snprintf(j->msg, sizeof j->msg, "%s", msg);
    (void)err, (void)err_len;
    return 0; /* the model's own stream never faults: the caller gets the code */
}

aclError aclmdlExecute(uint32_t modelId, const aclmdlDataset *input, aclmdlDataset *output) {
    static const char api[] = "aclmdlExecute";
    aclError rc;
    om_job *j = job_make(modelId, input, output, api, &rc);
    if (!j) return rc;
    aclrtStream s = j->om->own_stream;
    job_start(j, s);
    uint64_t seq = 0;
    rc = sim_enqueue_internal(s, sim_graph_task_flags(j->in, j->om->n_in), sync_exec, NULL, j, &seq);
    if (rc) {
        job_free(j);
        return rc;
    }
    sim_wait_retired(s, seq);
    rc = j->code;
    if (rc) sim_set_error("%s: %s", api, j->msg);
    job_free(j);
    return rc;
}
