/* The sim's graph engine over onnxruntime's C API (see engine.h and ort_api.h).
 *
 * onnxruntime is loaded with dlopen from the `onnxruntime` wheel (the Python side finds the
 * library and calls aa_sim_engine_open), so building the sim needs no onnxruntime headers and
 * the process keeps one copy of onnxruntime however many models it runs.
 *
 * Sessions are configured for a device thread's role: intra-op threads from the sim config
 * (default 1, so the device's width stays its worker count), no inter-op parallelism, no
 * spinning pool threads, every graph optimisation on. They are created when a graph is added,
 * never per run.
 *
 * g_eng.lock guards the model cache; a model itself is immutable once published.
 */
#define _GNU_SOURCE
#include "engine.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/tensor.h"
#include "ort_api.h"
#include "stats.h"

typedef struct sim_io {
    char *name;
    int32_t dtype;  /* ge::DataType */
    int onnx_type;  /* ONNX element type */
    uint32_t ndim;  /* 0: a scalar, or a shape onnxruntime does not know */
    int64_t dims[AA_MAX_DIMS];     /* -1: symbolic or unknown */
    char *symbols[AA_MAX_DIMS];    /* the dim's name, or NULL */
} sim_io;

/* Where a run's output comes from when onnxruntime will not write it into a bound buffer. */
enum { OUT_WRITTEN = 0, OUT_ALIASED = 1 };

struct sim_model {
    sim_model *next; /* cache list, under g_eng.lock */
    /* The identity: SHA-256 of the bytes, the bytes themselves (compared on a digest hit), the
     * thread count and, for a model with external data, the folder its weights are read from
     * and the caller's stamp of those files. */
    unsigned char digest[32];
    void *bytes;
    size_t size;
    uint32_t threads;
    char *data_dir;   /* NULL: no external data */
    char *data_stamp; /* NULL or the caller's description of the weight files */
    int refs; /* under g_eng.lock */
    OrtSession *session;
    size_t n_in, n_out;
    sim_io *in, *out;
    const char **in_names, **out_names;
    /* Per output: OUT_ALIASED when it is also a graph input or listed more than once. For such
     * outputs onnxruntime returns a value of its own (the input, or one shared value) and never
     * writes a buffer bound to it, so the run copies that value into the output block. */
    unsigned char *out_kind;
    size_t n_aliased;
};

static struct {
    pthread_mutex_t lock;
    void *dl;
    void *const *api; /* the OrtApi table */
    OrtEnv *env;
    OrtMemoryInfo *cpu;
    sim_model *models;
} g_eng = {.lock = PTHREAD_MUTEX_INITIALIZER};

#define ORT(fn) ((ort_##fn##_fn)g_eng.api[ORT_##fn])
#define ORT_AS(type, fn) ((type)g_eng.api[ORT_##fn])

static void put_err(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void put_err(char *err, size_t len, const char *fmt, ...) {
    if (!err || !len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

/* Consumes a status: 0 for success, else its OrtErrorCode + 1 with its message in err
 * (prefixed by `what`). */
static int take(OrtStatus *st, const char *what, char *err, size_t len) {
    if (!st) return 0;
    int code = ORT(GetErrorCode)(st);
    put_err(err, len, "%s: %s", what, ORT(GetErrorMessage)(st));
    ORT_AS(ort_Release_fn, ReleaseStatus)(st);
    return code + 1;
}

/* ------------------------------------------------------------------------------------------ */
/* The library                                                                                 */

int sim_engine_open(const char *path, char *err, size_t err_len) {
    pthread_mutex_lock(&g_eng.lock);
    int rc = 0;
    if (g_eng.api) goto out;
    rc = -1;
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        put_err(err, err_len, "cannot open onnxruntime (%s): %s", path ? path : "(null)", dlerror());
        goto out;
    }
    const OrtApiBase *(*get_base)(void) = (const OrtApiBase *(*)(void))dlsym(dl, "OrtGetApiBase");
    const OrtApiBase *base = get_base ? get_base() : NULL;
    const OrtApi *api = base ? base->GetApi(ORT_SIM_API_VERSION) : NULL;
    if (!api) {
        put_err(err, err_len, "%s is not an onnxruntime library of API version %d or newer", path,
                ORT_SIM_API_VERSION);
        dlclose(dl);
        goto out;
    }
    g_eng.api = (void *const *)api;
    OrtEnv *env = NULL;
    OrtMemoryInfo *cpu = NULL;
    if (take(ORT(CreateEnv)(ORT_LOG_FATAL, "ascend_async_sim", &env), "CreateEnv", err, err_len) ||
        take(ORT(CreateCpuMemoryInfo)(ORT_ALLOC_DEVICE, ORT_MEM_DEFAULT, &cpu), "CreateCpuMemoryInfo", err,
             err_len)) {
        if (env) ORT_AS(ort_Release_fn, ReleaseEnv)(env);
        g_eng.api = NULL;
        dlclose(dl);
        goto out;
    }
    g_eng.dl = dl;
    g_eng.env = env;
    g_eng.cpu = cpu;
    rc = 0;
out:
    pthread_mutex_unlock(&g_eng.lock);
    return rc;
}

int aa_sim_engine_open(const char *library_path, char *err, size_t err_len) {
    return sim_engine_open(library_path, err, err_len);
}

int sim_engine_is_open(void) {
    pthread_mutex_lock(&g_eng.lock);
    int open = g_eng.api != NULL;
    pthread_mutex_unlock(&g_eng.lock);
    return open;
}

/* ------------------------------------------------------------------------------------------ */
/* Shapes and dtypes                                                                           */

size_t sim_shape_nbytes(int32_t dtype, uint32_t ndim, const int64_t *dims, int *ok) {
    *ok = 1;
    int empty = 0;
    for (uint32_t i = 0; i < ndim; i++) {
        if (dims[i] < 0) {
            *ok = 0;
            return 0;
        }
        empty |= dims[i] == 0;
    }
    if (empty) return 0; /* no elements, whatever the other dims say */
    size_t n = aa_dtype_size(dtype);
    for (uint32_t i = 0; i < ndim; i++)
        if (__builtin_mul_overflow(n, (size_t)dims[i], &n)) {
            *ok = 0;
            return 0;
        }
    return n;
}

static int32_t ge_dtype(int onnx_type) {
    switch (onnx_type) {
        case ORT_T_FLOAT: return AA_DT_FLOAT;
        case ORT_T_UINT8: return AA_DT_UINT8;
        case ORT_T_INT8: return AA_DT_INT8;
        case ORT_T_UINT16: return AA_DT_UINT16;
        case ORT_T_INT16: return AA_DT_INT16;
        case ORT_T_INT32: return AA_DT_INT32;
        case ORT_T_INT64: return AA_DT_INT64;
        case ORT_T_BOOL: return AA_DT_BOOL;
        case ORT_T_FLOAT16: return AA_DT_FLOAT16;
        case ORT_T_DOUBLE: return AA_DT_DOUBLE;
        case ORT_T_UINT32: return AA_DT_UINT32;
        case ORT_T_UINT64: return AA_DT_UINT64;
        case ORT_T_BFLOAT16: return AA_DT_BF16;
        default: return AA_DT_UNDEFINED;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Models                                                                                      */

/* SHA-256 (FIPS 180-4): the model cache's key. A digest hit is confirmed by comparing the
 * bytes, so identity never rests on the digest alone. */
typedef struct sha256_ctx {
    uint32_t h[8];
    uint64_t total; /* bytes fed so far */
    unsigned char buf[64];
    size_t used;
} sha256_ctx;

static const uint32_t SHA256_K[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

static uint32_t rotr32(uint32_t x, unsigned n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr32(w[i - 15], 7) ^ rotr32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr32(w[i - 2], 17) ^ rotr32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (rotr32(e, 6) ^ rotr32(e, 11) ^ rotr32(e, 25)) + ((e & f) ^ (~e & g)) + SHA256_K[i] + w[i];
        uint32_t t2 = (rotr32(a, 2) ^ rotr32(a, 13) ^ rotr32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

static void sha256_init(sha256_ctx *c) {
    static const uint32_t iv[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                   0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    memcpy(c->h, iv, sizeof iv);
    c->total = 0;
    c->used = 0;
}

static void sha256_update(sha256_ctx *c, const void *data, size_t n) {
    const unsigned char *p = data;
    c->total += n;
    if (c->used) {
        size_t take = 64 - c->used < n ? 64 - c->used : n;
        memcpy(c->buf + c->used, p, take);
        c->used += take, p += take, n -= take;
        if (c->used < 64) return;
        sha256_block(c->h, c->buf);
        c->used = 0;
    }
    for (; n >= 64; p += 64, n -= 64) sha256_block(c->h, p);
    memcpy(c->buf, p, n);
    c->used = n;
}

static void sha256_final(sha256_ctx *c, unsigned char out[32]) {
    uint64_t bits = c->total * 8; /* the length modulo 2^64, as the standard says */
    unsigned char pad[72] = {0x80};
    size_t pad_len = (c->used < 56 ? 56 : 120) - c->used;
    for (int i = 0; i < 8; i++) pad[pad_len + (size_t)i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(c, pad, pad_len + 8);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (unsigned char)(c->h[i] >> (24 - 8 * j));
}

void aa_sim_sha256(const void *data, size_t n, unsigned char *out) {
    sha256_ctx c;
    sha256_init(&c);
    if (n) sha256_update(&c, data, n);
    sha256_final(&c, out);
}

static void model_free(sim_model *m) {
    if (m->session) ORT_AS(ort_Release_fn, ReleaseSession)(m->session);
    sim_io *sets[2] = {m->in, m->out};
    size_t counts[2] = {m->n_in, m->n_out};
    for (int s = 0; s < 2; s++) {
        for (size_t i = 0; sets[s] && i < counts[s]; i++) {
            free(sets[s][i].name);
            for (uint32_t d = 0; d < AA_MAX_DIMS; d++) free(sets[s][i].symbols[d]);
        }
        free(sets[s]);
    }
    free(m->in_names);
    free(m->out_names);
    free(m->out_kind);
    free(m->bytes);
    free(m->data_dir);
    free(m->data_stamp);
    free(m);
}

/* Reads one input's or output's name and tensor type. Returns 0 or -1 (message in err). */
static int read_io(sim_model *m, int output, size_t i, sim_io *io, char *err, size_t len) {
    const char *kind = output ? "output" : "input";
    OrtAllocator *alloc = NULL;
    char *name = NULL;
    if (take(ORT_AS(ort_GetDefaultAllocator_fn, GetAllocatorWithDefaultOptions)(&alloc), "allocator", err, len))
        return -1;
    ort_SessionGetName_fn get_name = output ? ORT_AS(ort_SessionGetName_fn, SessionGetOutputName)
                                            : ORT_AS(ort_SessionGetName_fn, SessionGetInputName);
    if (take(get_name(m->session, i, alloc, &name), "name", err, len)) return -1;
    io->name = strdup(name);
    ORT(AllocatorFree)(alloc, name);
    if (!io->name) {
        put_err(err, len, "out of host memory");
        return -1;
    }

    OrtTypeInfo *ti = NULL;
    ort_SessionGetTypeInfo_fn get_type = output ? ORT_AS(ort_SessionGetTypeInfo_fn, SessionGetOutputTypeInfo)
                                                : ORT_AS(ort_SessionGetTypeInfo_fn, SessionGetInputTypeInfo);
    if (take(get_type(m->session, i, &ti), "type info", err, len)) return -1;
    int rc = -1, onnx_kind = 0;
    const OrtTensorTypeAndShapeInfo *tt = NULL;
    size_t ndim = 0;
    if (take(ORT_AS(ort_GetOnnxType_fn, GetOnnxTypeFromTypeInfo)(ti, &onnx_kind), "type", err, len)) goto done;
    if (onnx_kind != ORT_ONNX_TYPE_TENSOR) {
        put_err(err, len, "%s '%s' is not a tensor (sequences, maps and optionals cannot cross a GE graph's boundary)",
                kind, io->name);
        goto done;
    }
    if (take(ORT(CastTypeInfoToTensorInfo)(ti, &tt), "tensor info", err, len) ||
        take(ORT(GetTensorElementType)(tt, &io->onnx_type), "element type", err, len) ||
        take(ORT(GetDimensionsCount)(tt, &ndim), "rank", err, len))
        goto done;
    io->dtype = ge_dtype(io->onnx_type);
    if (io->dtype == AA_DT_UNDEFINED) {
        put_err(err, len, "%s '%s' has ONNX element type %d, which GE tensors cannot carry", kind, io->name,
                io->onnx_type);
        goto done;
    }
    if (ndim > AA_MAX_DIMS) {
        put_err(err, len, "%s '%s' has rank %zu; GE tensors have at most %d dims", kind, io->name, ndim,
                AA_MAX_DIMS);
        goto done;
    }
    io->ndim = (uint32_t)ndim;
    const char *syms[AA_MAX_DIMS] = {0};
    if (ndim && (take(ORT(GetDimensions)(tt, io->dims, ndim), "dims", err, len) ||
                 take(ORT(GetSymbolicDimensions)(tt, syms, ndim), "symbolic dims", err, len)))
        goto done;
    /* Only a real name ties dims together, as in onnxruntime and GE: a dim stored as -1, an
     * empty name and "?" (what several exporters write for "unknown") are each independent. */
    for (size_t d = 0; d < ndim; d++) {
        if (io->dims[d] >= 0 || !syms[d] || !syms[d][0] || !strcmp(syms[d], "?")) continue;
        io->symbols[d] = strdup(syms[d]);
        if (!io->symbols[d]) {
            put_err(err, len, "out of host memory reading %s '%s'", kind, io->name);
            goto done;
        }
    }
    rc = 0;
done:
    ORT_AS(ort_Release_fn, ReleaseTypeInfo)(ti);
    return rc;
}

static sim_model *model_create(const void *bytes, size_t size, uint32_t threads, const char *data_dir,
                               int *not_implemented, char *err, size_t len) {
    OrtSessionOptions *so = NULL;
    sim_model *m = calloc(1, sizeof *m);
    if (!m) {
        put_err(err, len, "out of host memory");
        return NULL;
    }
    int code = take(ORT(CreateSessionOptions)(&so), "session options", err, len);
    if (!code) {
        /* One device thread runs one graph at a time: no pools of our own beyond `threads`,
         * and nothing that spins while the device is idle. */
        ort_SetOptionInt_fn set_int;
        set_int = ORT_AS(ort_SetOptionInt_fn, SetIntraOpNumThreads);
        code = take(set_int(so, (int)threads), "intra-op threads", err, len);
        set_int = ORT_AS(ort_SetOptionInt_fn, SetInterOpNumThreads);
        if (!code) code = take(set_int(so, 1), "inter-op threads", err, len);
        set_int = ORT_AS(ort_SetOptionInt_fn, SetSessionExecutionMode);
        if (!code) code = take(set_int(so, ORT_EXEC_SEQUENTIAL), "execution mode", err, len);
        set_int = ORT_AS(ort_SetOptionInt_fn, SetSessionGraphOptimizationLevel);
        if (!code) code = take(set_int(so, ORT_OPT_ALL), "optimisation level", err, len);
        set_int = ORT_AS(ort_SetOptionInt_fn, SetSessionLogSeverityLevel);
        if (!code) code = take(set_int(so, ORT_LOG_FATAL), "log level", err, len);
        if (!code) code = take(ORT(AddSessionConfigEntry)(so, "session.intra_op.allow_spinning", "0"), "spin", err, len);
        if (!code) code = take(ORT(AddSessionConfigEntry)(so, "session.inter_op.allow_spinning", "0"), "spin", err, len);
        /* A model from bytes has no path: without this entry onnxruntime would resolve its
         * external data against the process's working directory. */
        if (!code && data_dir)
            code = take(ORT(AddSessionConfigEntry)(so, "session.model_external_initializers_file_folder_path", data_dir),
                        "external data folder", err, len);
    }
    if (!code) code = take(ORT(CreateSessionFromArray)(g_eng.env, bytes, size, so, &m->session), "onnxruntime", err, len);
    if (so) ORT_AS(ort_Release_fn, ReleaseSessionOptions)(so);
    if (code) {
        if (not_implemented) *not_implemented = code == ORT_CODE_NOT_IMPLEMENTED + 1;
        model_free(m);
        return NULL;
    }
    if (take(ORT_AS(ort_SessionGetCount_fn, SessionGetInputCount)(m->session, &m->n_in), "inputs", err, len) ||
        take(ORT_AS(ort_SessionGetCount_fn, SessionGetOutputCount)(m->session, &m->n_out), "outputs", err, len))
        goto fail;
    m->in = calloc(m->n_in ? m->n_in : 1, sizeof(sim_io));
    m->out = calloc(m->n_out ? m->n_out : 1, sizeof(sim_io));
    m->in_names = calloc(m->n_in ? m->n_in : 1, sizeof(char *));
    m->out_names = calloc(m->n_out ? m->n_out : 1, sizeof(char *));
    m->out_kind = calloc(m->n_out ? m->n_out : 1, 1);
    if (!m->in || !m->out || !m->in_names || !m->out_names || !m->out_kind) {
        put_err(err, len, "out of host memory");
        goto fail;
    }
    for (size_t i = 0; i < m->n_in; i++) {
        if (read_io(m, 0, i, &m->in[i], err, len)) goto fail;
        m->in_names[i] = m->in[i].name;
    }
    for (size_t i = 0; i < m->n_out; i++) {
        if (read_io(m, 1, i, &m->out[i], err, len)) goto fail;
        m->out_names[i] = m->out[i].name;
    }
    /* Outputs onnxruntime will not write into a bound buffer: a graph input passed through,
     * and every occurrence of a name listed more than once (which one onnxruntime would write
     * is its own business; all of them are copied). */
    for (size_t o = 0; o < m->n_out; o++) {
        for (size_t i = 0; i < m->n_in && !m->out_kind[o]; i++)
            if (!strcmp(m->out[o].name, m->in[i].name)) m->out_kind[o] = OUT_ALIASED;
        for (size_t p = 0; p < m->n_out && !m->out_kind[o]; p++)
            if (p != o && !strcmp(m->out[o].name, m->out[p].name)) m->out_kind[o] = OUT_ALIASED;
        m->n_aliased += m->out_kind[o] == OUT_ALIASED;
    }
    m->size = size;
    m->threads = threads;
    return m;
fail:
    model_free(m);
    return NULL;
}

static int str_eq(const char *a, const char *b) { return a == b || (a && b && !strcmp(a, b)); }

/* Is `m` the model these arguments describe? Under g_eng.lock. */
static int model_is(const sim_model *m, const unsigned char digest[32], const void *bytes, size_t size,
                    uint32_t threads, const char *data_dir, const char *data_stamp) {
    return m->size == size && m->threads == threads && !memcmp(m->digest, digest, 32) &&
           str_eq(m->data_dir, data_dir) && str_eq(m->data_stamp, data_stamp) && !memcmp(m->bytes, bytes, size);
}

static sim_model *cache_find_locked(const unsigned char digest[32], const void *bytes, size_t size, uint32_t threads,
                                    const char *data_dir, const char *data_stamp) {
    for (sim_model *m = g_eng.models; m; m = m->next)
        if (model_is(m, digest, bytes, size, threads, data_dir, data_stamp)) return m;
    return NULL;
}

sim_model *sim_model_get(const void *bytes, size_t size, uint32_t threads, const char *data_dir,
                         const char *data_stamp, int *not_implemented, char *err, size_t err_len) {
    if (not_implemented) *not_implemented = 0;
    if (!sim_engine_is_open()) {
        put_err(err, err_len, "the sim's graph engine (onnxruntime) is not loaded");
        return NULL;
    }
    if (!bytes || !size) {
        put_err(err, err_len, "the model is empty");
        return NULL;
    }
    if (data_dir && !data_dir[0]) data_dir = NULL;
    if (data_stamp && !data_stamp[0]) data_stamp = NULL;
    if (!threads) threads = 1;
    unsigned char digest[32];
    aa_sim_sha256(bytes, size, digest);
    pthread_mutex_lock(&g_eng.lock);
    sim_model *hit = cache_find_locked(digest, bytes, size, threads, data_dir, data_stamp);
    if (hit) hit->refs++;
    pthread_mutex_unlock(&g_eng.lock);
    if (hit) return hit;

    /* Compile outside the lock: it can take seconds, and other graphs may be added meanwhile. */
    sim_model *made = model_create(bytes, size, threads, data_dir, not_implemented, err, err_len);
    if (!made) return NULL;
    memcpy(made->digest, digest, sizeof digest);
    made->bytes = malloc(size);
    made->data_dir = data_dir ? strdup(data_dir) : NULL;
    made->data_stamp = data_stamp ? strdup(data_stamp) : NULL;
    if (!made->bytes || (data_dir && !made->data_dir) || (data_stamp && !made->data_stamp)) {
        put_err(err, err_len, "out of host memory (keeping a copy of the %zu-byte model)", size);
        model_free(made);
        return NULL;
    }
    memcpy(made->bytes, bytes, size);
    pthread_mutex_lock(&g_eng.lock);
    hit = cache_find_locked(digest, bytes, size, threads, data_dir, data_stamp);
    if (hit) { /* another thread won the race */
        hit->refs++;
        pthread_mutex_unlock(&g_eng.lock);
        model_free(made);
        return hit;
    }
    made->refs = 1;
    made->next = g_eng.models;
    g_eng.models = made;
    pthread_mutex_unlock(&g_eng.lock);
    SIM_STAT_ADD(models, 1);
    return made;
}

void sim_model_release(sim_model *model) {
    if (!model) return;
    pthread_mutex_lock(&g_eng.lock);
    int last = --model->refs == 0;
    if (last)
        for (sim_model **pp = &g_eng.models; *pp; pp = &(*pp)->next)
            if (*pp == model) {
                *pp = model->next;
                break;
            }
    pthread_mutex_unlock(&g_eng.lock);
    if (last) {
        model_free(model);
        SIM_STAT_ADD(models, -1);
    }
}

size_t sim_model_n_inputs(const sim_model *model) { return model->n_in; }
size_t sim_model_n_outputs(const sim_model *model) { return model->n_out; }

int sim_model_is_static(const sim_model *model) {
    for (size_t k = 0; k < model->n_in + model->n_out; k++) {
        const sim_io *io = k < model->n_in ? &model->in[k] : &model->out[k - model->n_in];
        if (!io->ndim) return 0; /* a scalar, or a shape onnxruntime does not know: not sure */
        for (uint32_t d = 0; d < io->ndim; d++)
            if (io->dims[d] < 0) return 0;
    }
    return 1;
}
size_t sim_model_bytes(const sim_model *model) { return model->size; }

const char *sim_model_io(const sim_model *m, int output, size_t i, int32_t *dtype, uint32_t *ndim, int64_t *dims) {
    if (i >= (output ? m->n_out : m->n_in)) return NULL;
    const sim_io *io = output ? &m->out[i] : &m->in[i];
    *dtype = io->dtype;
    *ndim = io->ndim;
    memcpy(dims, io->dims, io->ndim * sizeof(int64_t));
    return io->name;
}

/* ------------------------------------------------------------------------------------------ */
/* Shapes at submit                                                                            */

typedef struct binding {
    const char *symbol;
    int64_t value;
    size_t input;
} binding;

int sim_model_resolve(const sim_model *m, const aa_tensor *inputs, size_t n_inputs, aa_tensor *outputs,
                      size_t n_outputs, char *err, size_t len) {
    if (n_inputs != m->n_in) {
        put_err(err, len, "the graph takes %zu inputs, got %zu", m->n_in, n_inputs);
        return -1;
    }
    if (n_outputs != m->n_out) {
        put_err(err, len, "the graph has %zu outputs, got %zu slots", m->n_out, n_outputs);
        return -1;
    }
    binding *bound = calloc(n_inputs * AA_MAX_DIMS + 1, sizeof *bound);
    if (!bound) {
        put_err(err, len, "out of host memory");
        return -1;
    }
    size_t n_bound = 0;
    int rc = -1;
    for (size_t i = 0; i < n_inputs; i++) {
        const aa_tensor *t = &inputs[i];
        const sim_io *io = &m->in[i];
        if (t->dtype != io->dtype) {
            put_err(err, len, "input '%s' has ge::DataType %d, the graph expects %d", io->name, t->dtype, io->dtype);
            goto out;
        }
        if (t->ndim > AA_MAX_DIMS) {
            put_err(err, len, "input '%s' has %u dims (at most %d)", io->name, t->ndim, AA_MAX_DIMS);
            goto out;
        }
        int ok;
        sim_shape_nbytes(t->dtype, t->ndim, t->dims, &ok);
        if (!ok) {
            put_err(err, len, "input '%s' has a negative dim or an element count that overflows", io->name);
            goto out;
        }
        if (!io->ndim) continue; /* a scalar or an unknown shape: onnxruntime checks it */
        if (t->ndim != io->ndim) {
            put_err(err, len, "input '%s' has rank %u, the graph expects %u", io->name, t->ndim, io->ndim);
            goto out;
        }
        for (uint32_t d = 0; d < t->ndim; d++) {
            if (io->dims[d] >= 0 && io->dims[d] != t->dims[d]) {
                put_err(err, len, "input '%s': dim %u is %lld, the graph expects %lld", io->name, d,
                        (long long)t->dims[d], (long long)io->dims[d]);
                goto out;
            }
            if (!io->symbols[d]) continue;
            size_t k = 0;
            while (k < n_bound && strcmp(bound[k].symbol, io->symbols[d])) k++;
            if (k == n_bound) {
                bound[n_bound++] = (binding){io->symbols[d], t->dims[d], i};
            } else if (bound[k].value != t->dims[d]) {
                put_err(err, len, "symbolic dim '%s' is %lld in input '%s' but %lld in input '%s'", io->symbols[d],
                        (long long)bound[k].value, m->in[bound[k].input].name, (long long)t->dims[d], io->name);
                goto out;
            }
        }
    }
    rc = 0;
    for (size_t o = 0; o < n_outputs; o++) {
        const sim_io *io = &m->out[o];
        aa_tensor *t = &outputs[o];
        t->dtype = io->dtype;
        t->ndim = io->ndim;
        /* rank 0 may mean "unknown" to onnxruntime: place such outputs after the run */
        int known = io->ndim > 0;
        for (uint32_t d = 0; d < io->ndim; d++) {
            int64_t v = io->dims[d];
            if (v < 0 && io->symbols[d])
                for (size_t k = 0; k < n_bound; k++)
                    if (!strcmp(bound[k].symbol, io->symbols[d])) v = bound[k].value;
            t->dims[d] = v;
            if (v < 0) known = 0;
        }
        if (known) {
            int ok;
            sim_shape_nbytes(t->dtype, t->ndim, t->dims, &ok);
            if (!ok) {
                put_err(err, len, "output '%s' would have an element count that overflows", io->name);
                rc = -1;
                goto out;
            }
        } else {
            rc = 1;
        }
    }
out:
    free(bound);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Runs (device threads)                                                                       */

/* Memory for empty tensors: onnxruntime wants a non-NULL buffer even for zero bytes. */
static _Alignas(64) unsigned char empty_buffer[64];

static int make_value(const sim_io *io, const aa_tensor *t, OrtValue **out, char *err, size_t len) {
    int ok;
    size_t nbytes = sim_shape_nbytes(t->dtype, t->ndim, t->dims, &ok);
    if (!ok) {
        put_err(err, len, "'%s': bad shape", io->name);
        return -1;
    }
    void *data = nbytes && t->addr ? t->addr : empty_buffer;
    if (take(ORT_AS(ort_CreateTensorWithData_fn, CreateTensorWithDataAsOrtValue)(g_eng.cpu, data, nbytes, t->dims, t->ndim, io->onnx_type, out), io->name, err,
             len))
        return -1;
    return 0;
}

/* The byte count of a value onnxruntime returned, from its own shape. Returns 0 or -1. */
static int value_bytes(const sim_io *io, OrtValue *v, size_t *nbytes, char *err, size_t len) {
    OrtTensorTypeAndShapeInfo *info = NULL;
    size_t ndim = 0;
    int64_t dims[AA_MAX_DIMS];
    int bad = take(ORT(GetTensorTypeAndShape)(v, &info), io->name, err, len) ||
              take(ORT(GetDimensionsCount)(info, &ndim), io->name, err, len);
    if (!bad && ndim > AA_MAX_DIMS) {
        put_err(err, len, "output '%s' came out with rank %zu (at most %d)", io->name, ndim, AA_MAX_DIMS);
        bad = 1;
    }
    if (!bad && ndim) bad = take(ORT(GetDimensions)(info, dims, ndim), io->name, err, len);
    if (info) ORT_AS(ort_Release_fn, ReleaseTensorTypeAndShapeInfo)(info);
    if (bad) return -1;
    int ok;
    *nbytes = sim_shape_nbytes(io->dtype, (uint32_t)ndim, dims, &ok);
    if (!ok) {
        put_err(err, len, "output '%s' came out with a bad shape", io->name);
        return -1;
    }
    return 0;
}

int sim_model_run(const sim_model *m, const aa_tensor *inputs, size_t n_inputs, const aa_tensor *outputs,
                  size_t n_outputs, sim_place_fn place, void *ctx, char *err, size_t len) {
    if (n_inputs != m->n_in || n_outputs != m->n_out) {
        put_err(err, len, "the graph takes %zu inputs and %zu outputs", m->n_in, m->n_out);
        return ACL_ERROR_INVALID_PARAM;
    }
    OrtValue **vin = calloc(m->n_in + 1, sizeof *vin);
    OrtValue **vout = calloc(m->n_out + 1, sizeof *vout);
    int rc = ACL_ERROR_BAD_ALLOC;
    if (!vin || !vout) {
        put_err(err, len, "out of host memory");
        goto out;
    }
    rc = ACL_ERROR_RT_MODEL_EXECUTE;
    for (size_t i = 0; i < m->n_in; i++)
        if (make_value(&m->in[i], &inputs[i], &vin[i], err, len)) goto out;
    if (!place)
        for (size_t o = 0; o < m->n_out; o++)
            if (m->out_kind[o] != OUT_ALIASED && make_value(&m->out[o], &outputs[o], &vout[o], err, len)) goto out;
    if (take(ORT(Run)(m->session, NULL, m->in_names, (const OrtValue *const *)vin, m->n_in, m->out_names, m->n_out,
                      vout),
             "onnxruntime", err, len))
        goto out;
    /* Bound outputs that onnxruntime answers with a value of its own: copy it in, so every
     * output block holds what this run computed (never what the block held before). */
    for (size_t o = 0; !place && m->n_aliased && o < m->n_out; o++) {
        if (m->out_kind[o] != OUT_ALIASED) continue;
        int ok;
        size_t want = sim_shape_nbytes(outputs[o].dtype, outputs[o].ndim, outputs[o].dims, &ok), got = 0;
        if (!ok || !vout[o]) {
            put_err(err, len, "output '%s': %s", m->out[o].name, ok ? "onnxruntime returned no value" : "bad shape");
            goto out;
        }
        if (value_bytes(&m->out[o], vout[o], &got, err, len)) goto out;
        if (got != want) {
            put_err(err, len, "output '%s': onnxruntime returned %zu bytes for a %zu-byte output", m->out[o].name, got,
                    want);
            goto out;
        }
        void *src = NULL;
        if (want && take(ORT(GetTensorMutableData)(vout[o], &src), m->out[o].name, err, len)) goto out;
        if (want && src != outputs[o].addr) memmove(outputs[o].addr, src, want);
    }
    if (place) {
        for (size_t o = 0; o < m->n_out; o++) {
            OrtTensorTypeAndShapeInfo *info = NULL;
            aa_tensor desc = {0};
            size_t ndim = 0;
            void *data = NULL;
            desc.dtype = m->out[o].dtype;
            desc.format = AA_FORMAT_ND;
            int bad = take(ORT(GetTensorTypeAndShape)(vout[o], &info), m->out[o].name, err, len) ||
                      take(ORT(GetDimensionsCount)(info, &ndim), m->out[o].name, err, len);
            if (!bad && ndim > AA_MAX_DIMS) {
                put_err(err, len, "output '%s' came out with rank %zu (at most %d)", m->out[o].name, ndim, AA_MAX_DIMS);
                bad = 1;
            }
            if (!bad) {
                desc.ndim = (uint32_t)ndim;
                bad = (ndim && take(ORT(GetDimensions)(info, desc.dims, ndim), m->out[o].name, err, len)) ||
                      take(ORT(GetTensorMutableData)(vout[o], &data), m->out[o].name, err, len);
            }
            if (info) ORT_AS(ort_Release_fn, ReleaseTensorTypeAndShapeInfo)(info);
            if (bad) goto out;
            int ok;
            size_t nbytes = sim_shape_nbytes(desc.dtype, desc.ndim, desc.dims, &ok);
            int placed = ok ? place(ctx, o, &desc, data, nbytes, err, len) : ACL_ERROR_RT_MODEL_EXECUTE;
            if (placed) {
                rc = placed;
                goto out;
            }
        }
    }
    rc = 0;
out:
    for (size_t i = 0; vin && i < m->n_in; i++)
        if (vin[i]) ORT_AS(ort_Release_fn, ReleaseValue)(vin[i]);
    for (size_t o = 0; vout && o < m->n_out; o++)
        if (vout[o]) ORT_AS(ort_Release_fn, ReleaseValue)(vout[o]);
    free(vin);
    free(vout);
    return rc;
}
