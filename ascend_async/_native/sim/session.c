/* The simulated GE session (ge::GeSession v2 behind the flat session ABI, cdefs/ge_session.h).
 *
 * Reproduces GE's documented rules (reference: ge_acl_facts.md §2, §9): GEInitializeV2 is
 * idempotent; AddGraph of an existing id succeeds without replacing; LoadGraph once (it
 * compiles first if needed); the run calls auto-load; the three run modes are exclusive per
 * graph id until RemoveGraph, with GE's return codes (RunGraph/RunGraphAsync UNSUPPORTED,
 * RunGraphWithStreamAsync FAILED) and its E10062 text; RunGraphWithStreamAsync fills output
 * slots at submit time from the caller, else the stream's external allocator, else the graph's
 * built-in allocator (blocks of round_up(n, 32) + 32 bytes); RunGraph and RunGraphAsync
 * return GE-allocated host outputs; concurrent RunGraph calls in one session fail.
 *
 * Locking: g_ge.lock guards the session list and the allocator registry; each session's `mu`
 * guards its graph table; each graph's `run_mu` serializes host-side submission on that graph
 * (as GE's per-graph run mutex does).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/tensor.h"
#include "program.h"
#include "runtime.h"

#define GE_OK AA_GE_SUCCESS
#define GE_FAILED ((aa_status)AA_GE_FAILED)
#define GE_UNSUPPORTED ((aa_status)AA_GE_UNSUPPORTED)

enum { MODE_NONE = -1, MODE_RUN_GRAPH = 0, MODE_RUN_GRAPH_ASYNC = 1, MODE_STREAM_ASYNC = 2 };
static const char *const MODE_NAMES[] = {"RunGraph", "RunGraphAsync", "RunGraphWithStreamAsync"};

/* ------------------------------------------------------------------------------------------ */
/* GE error text (GEGetErrorMsgV3: accumulated per thread, returned and cleared)               */

static __thread char tls_ge_err[2048];

static void ge_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ge_error(const char *fmt, ...) {
    size_t used = strlen(tls_ge_err);
    if (used && used + 2 < sizeof tls_ge_err) tls_ge_err[used++] = '\n', tls_ge_err[used] = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_ge_err + used, sizeof tls_ge_err - used, fmt, ap);
    va_end(ap);
}

size_t aa_ge_get_error_msg(char *buf, size_t buf_len) {
    size_t n = strlen(tls_ge_err);
    if (!buf || !buf_len) return n; /* a size query keeps the text */
    size_t c = n < buf_len - 1 ? n : buf_len - 1;
    memcpy(buf, tls_ge_err, c);
    buf[c] = 0;
    tls_ge_err[0] = 0;
    return n;
}

/* ------------------------------------------------------------------------------------------ */
/* State                                                                                       */

typedef struct graph_node graph_node;

/* A GE-allocated output block: the `owner` of an aa_tensor. */
enum { BLOCK_BUILTIN, BLOCK_EXTERNAL, BLOCK_HOST };
#define BLOCK_MAGIC 0x424c4b21u

typedef struct ge_block {
    uint32_t magic;
    int kind;
    int zombie; /* its graph was removed first (undefined in GE; here: memory already freed) */
    void *addr;
    size_t size;
    aa_allocator alloc; /* BLOCK_EXTERNAL */
    void *ext_block;
    graph_node *graph;  /* BLOCK_BUILTIN */
    struct ge_block *prev, *next;
} ge_block;

struct graph_node {
    uint32_t id;
    aa_sim_program *program;
    int compiled;
    int loaded;
    int mode;
    int32_t device;
    void *const_mem; /* initializers, charged to device memory at load */
    pthread_mutex_t run_mu;
    ge_block *builtin; /* live built-in output blocks */
    graph_node *next;
};

#define SESSION_MAGIC 0x53455353u

struct aa_session {
    uint32_t magic;
    int32_t device;
    pthread_mutex_t mu;
    graph_node *graphs;
    int running_sync;        /* RunGraph in progress (GE's session try_lock) */
    aclrtStream sync_stream; /* GE's own model streams */
    aclrtStream async_stream;
};

typedef struct alloc_entry {
    struct alloc_entry *next;
    const void *stream;
    aa_allocator alloc;
} alloc_entry;

static struct {
    pthread_mutex_t lock;
    int initialized;
    int32_t device; /* ge.exec.deviceId */
    alloc_entry *allocators;
} g_ge = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int ge_ready(const char *api) {
    pthread_mutex_lock(&g_ge.lock);
    int ok = g_ge.initialized;
    pthread_mutex_unlock(&g_ge.lock);
    if (!ok) ge_error("E10062: %s: GE is not initialized (call GEInitializeV2 first)", api);
    return ok;
}

static const char *find_option(const aa_option *o, size_t n, const char *key) {
    for (size_t i = 0; i < n; i++)
        if (o[i].key && !strcmp(o[i].key, key)) return o[i].value;
    return NULL;
}

static int options_valid(const aa_option *o, size_t n, const char *api) {
    for (size_t i = 0; i < n; i++)
        if (!o[i].key || !o[i].key[0] || !o[i].value) {
            ge_error("%s: option %zu has an empty key or no value", api, i);
            return 0;
        }
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Global                                                                                      */

aa_status aa_ge_initialize(const aa_option *options, size_t n_options) {
    if (!options_valid(options, n_options, "GEInitializeV2")) return GE_FAILED;
    pthread_mutex_lock(&g_ge.lock);
    if (!g_ge.initialized) {
        const char *dev = find_option(options, n_options, "ge.exec.deviceId");
        g_ge.device = dev ? (int32_t)atoi(dev) : 0;
        if (g_ge.device < 0) g_ge.device = 0;
        g_ge.initialized = 1;
    }
    pthread_mutex_unlock(&g_ge.lock);
    return GE_OK;
}

aa_status aa_ge_finalize(void) {
    pthread_mutex_lock(&g_ge.lock);
    g_ge.initialized = 0; /* live sessions now fail every call, as after GEFinalizeV2 */
    pthread_mutex_unlock(&g_ge.lock);
    return GE_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Sessions                                                                                    */

static aa_session *as_session(aa_session *s) { return (s && s->magic == SESSION_MAGIC) ? s : NULL; }

aa_status aa_session_create(const aa_option *options, size_t n_options, aa_session **out) {
    if (!out) return GE_FAILED;
    *out = NULL;
    if (!ge_ready("GeSession") || !options_valid(options, n_options, "GeSession")) return GE_FAILED;
    const char *dev = find_option(options, n_options, "ge.session_device_id");
    int32_t device = dev ? (int32_t)atoi(dev) : g_ge.device;
    /* GE's inner session calls aclrtSetDevice on the constructing thread: that thread's
     * current context switches to the device's default context. */
    if (aclrtSetDevice(device) != ACL_SUCCESS) {
        ge_error("GeSession: cannot set device %d: %s", (int)device, aclGetRecentErrMsg());
        return GE_FAILED;
    }
    aa_session *s = calloc(1, sizeof *s);
    s->magic = SESSION_MAGIC;
    s->device = device;
    pthread_mutex_init(&s->mu, NULL);
    sim_stream_create_internal(device, &s->sync_stream);
    sim_stream_create_internal(device, &s->async_stream);
    SIM_STAT_ADD(sessions, 1);
    *out = s;
    return GE_OK;
}

static void graph_free(graph_node *g);

aa_status aa_session_destroy(aa_session *session) {
    aa_session *s = as_session(session);
    if (!s) return GE_FAILED;
    /* GE's own streams drain first: RunGraphAsync work still references the graphs. */
    sim_stream_destroy_internal(s->sync_stream);
    sim_stream_destroy_internal(s->async_stream);
    pthread_mutex_lock(&s->mu);
    graph_node *g = s->graphs;
    s->graphs = NULL;
    pthread_mutex_unlock(&s->mu);
    while (g) {
        graph_node *n = g->next;
        graph_free(g);
        g = n;
    }
    s->magic = 0;
    aclrtResetDevice(s->device);
    pthread_mutex_destroy(&s->mu);
    free(s);
    SIM_STAT_ADD(sessions, -1);
    return GE_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Graphs                                                                                      */

static graph_node *find_graph(aa_session *s, uint32_t id) {
    pthread_mutex_lock(&s->mu);
    graph_node *g = s->graphs;
    while (g && g->id != id) g = g->next;
    pthread_mutex_unlock(&s->mu);
    return g;
}

/* Common prologue: session valid, GE initialized, graph present. */
static graph_node *lookup(aa_session *session, uint32_t graph_id, const char *api) {
    aa_session *s = as_session(session);
    if (!s) {
        ge_error("%s: invalid session handle", api);
        return NULL;
    }
    if (!ge_ready(api)) return NULL;
    graph_node *g = find_graph(s, graph_id);
    if (!g) ge_error("E10062: %s: graph does not exist (graph_id=%u)", api, graph_id);
    return g;
}

aa_status aa_sim_session_add_program(aa_session *session, uint32_t graph_id, aa_sim_program *program,
                                     const aa_option *options, size_t n_options) {
    aa_session *s = as_session(session);
    if (!s || !ge_ready("AddGraph") || !options_valid(options, n_options, "AddGraph")) return GE_FAILED;
    if (!program || !sim_program_is_finalized(program)) {
        ge_error("AddGraph: graph %u: the program is not finalized", graph_id);
        return GE_FAILED;
    }
    pthread_mutex_lock(&s->mu);
    for (graph_node *g = s->graphs; g; g = g->next)
        if (g->id == graph_id) { /* GE keeps the first graph added under an id */
            pthread_mutex_unlock(&s->mu);
            return GE_OK;
        }
    graph_node *g = calloc(1, sizeof *g);
    g->id = graph_id;
    g->program = program;
    sim_program_retain(program);
    g->mode = MODE_NONE;
    g->device = s->device;
    pthread_mutex_init(&g->run_mu, NULL);
    g->next = s->graphs;
    s->graphs = g;
    pthread_mutex_unlock(&s->mu);
    SIM_STAT_ADD(graphs, 1);
    return GE_OK;
}

aa_status aa_session_add_graph_onnx(aa_session *session, uint32_t graph_id, const void *model, size_t model_size,
                                    const aa_option *options, size_t n_options) {
    (void)session;
    (void)model;
    (void)model_size;
    (void)options;
    (void)n_options;
    ge_error("AddGraph: graph %u: the sim backend takes a lowered program (aa_sim_session_add_program), "
             "not ONNX bytes",
             graph_id);
    return GE_FAILED;
}

static void block_unlink_locked(ge_block *b) {
    if (b->prev) b->prev->next = b->next;
    else if (b->graph && b->graph->builtin == b) b->graph->builtin = b->next;
    if (b->next) b->next->prev = b->prev;
    b->prev = b->next = NULL;
}

static void graph_free(graph_node *g) {
    /* Built-in output blocks must be released before the graph goes (GE: undefined if not).
     * Here their memory is freed now and their records turn into harmless zombies. */
    pthread_mutex_lock(&g->run_mu);
    while (g->builtin) {
        ge_block *b = g->builtin;
        block_unlink_locked(b);
        sim_device_free(b->addr);
        b->zombie = 1;
        b->graph = NULL;
        SIM_STAT_ADD(ge_outputs, -1);
    }
    pthread_mutex_unlock(&g->run_mu);
    if (g->const_mem) sim_device_free(g->const_mem);
    aa_sim_program_release(g->program);
    pthread_mutex_destroy(&g->run_mu);
    free(g);
    SIM_STAT_ADD(graphs, -1);
}

aa_status aa_session_remove_graph(aa_session *session, uint32_t graph_id) {
    if (!lookup(session, graph_id, "RemoveGraph")) return GE_FAILED;
    aa_session *s = session;
    pthread_mutex_lock(&s->mu);
    graph_node *g = NULL;
    for (graph_node **pp = &s->graphs; *pp; pp = &(*pp)->next)
        if ((*pp)->id == graph_id) {
            g = *pp;
            *pp = g->next;
            break;
        }
    pthread_mutex_unlock(&s->mu);
    if (!g) return GE_FAILED;
    graph_free(g);
    return GE_OK;
}

static void compile_locked(graph_node *g) {
    if (g->compiled) return;
    sim_sleep_us(sim_timing().compile_us);
    g->compiled = 1;
}

aa_status aa_session_compile_graph(aa_session *session, uint32_t graph_id) {
    graph_node *g = lookup(session, graph_id, "CompileGraph");
    if (!g) return GE_FAILED;
    pthread_mutex_lock(&g->run_mu);
    compile_locked(g);
    pthread_mutex_unlock(&g->run_mu);
    return GE_OK;
}

/* LoadGraph body; the caller holds run_mu. */
static aa_status load_locked(graph_node *g, const char *api) {
    if (g->loaded) {
        ge_error("%s: graph %u has been loaded", api, g->id);
        return GE_FAILED;
    }
    compile_locked(g);
    size_t bytes = sim_program_initializer_bytes(g->program);
    if (bytes && sim_device_alloc(g->device, bytes, &g->const_mem) != ACL_SUCCESS) {
        const char *m = aclGetRecentErrMsg();
        ge_error("%s: graph %u: cannot place %zu bytes of constants: %s", api, g->id, bytes, m ? m : "");
        return GE_FAILED;
    }
    sim_sleep_us(sim_timing().load_us);
    g->loaded = 1;
    return GE_OK;
}

aa_status aa_session_load_graph(aa_session *session, uint32_t graph_id, const aa_option *options, size_t n_options,
                                aclrtStream stream) {
    (void)stream; /* the sim's load submits no device work */
    graph_node *g = lookup(session, graph_id, "LoadGraph");
    if (!g || !options_valid(options, n_options, "LoadGraph")) return GE_FAILED;
    pthread_mutex_lock(&g->run_mu);
    aa_status st = load_locked(g, "LoadGraph");
    pthread_mutex_unlock(&g->run_mu);
    return st;
}

/* The mode gate shared by the three run calls; the caller holds run_mu. */
static int mode_allows(graph_node *g, int mode, const char *api) {
    if (g->mode == MODE_NONE || g->mode == mode) return 1;
    ge_error("E10062: %s was already called for the graph (graph_id=%u). %s and %s are mutually exclusive "
             "and cannot be used together",
             MODE_NAMES[g->mode], g->id, api, MODE_NAMES[g->mode]);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Tensors                                                                                     */

/* Checks input memory; `device_only` for RunGraphWithStreamAsync. Returns 0 or -1. */
static int check_inputs(const graph_node *g, const aa_tensor *in, size_t n, int device_only, const char *api) {
    size_t want = sim_program_n_inputs(g->program);
    if (n != want) {
        ge_error("%s: graph %u takes %zu inputs, got %zu", api, g->id, want, n);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const aa_tensor *t = &in[i];
        if (t->ndim > AA_MAX_DIMS) {
            ge_error("%s: input %zu has %u dims (max %d)", api, i, t->ndim, AA_MAX_DIMS);
            return -1;
        }
        size_t nbytes = aa_tensor_nbytes(t);
        if (!nbytes) continue;
        if (!t->addr || t->size < nbytes) {
            ge_error("%s: input %zu: %zu bytes needed, tensor has %zu at %p", api, i, nbytes, t->size, t->addr);
            return -1;
        }
        if (t->placement == AA_PLACEMENT_DEVICE_HBM) {
            char err[200];
            if ((uintptr_t)t->addr % 32) {
                ge_error("%s: input %zu: device address %p is not 32-byte aligned", api, i, t->addr);
                return -1;
            }
            int r = sim_check_device_range(t->addr, nbytes, err, sizeof err);
            if (r != 1) {
                ge_error("%s: input %zu: %s", api, i, r ? err : "address is not device memory");
                return -1;
            }
        } else if (device_only) {
            ge_error("%s: input %zu is a host tensor; RunGraphWithStreamAsync takes device memory", api, i);
            return -1;
        }
    }
    return 0;
}

static ge_block *block_new(int kind, void *addr, size_t size) {
    ge_block *b = calloc(1, sizeof *b);
    b->magic = BLOCK_MAGIC;
    b->kind = kind;
    b->addr = addr;
    b->size = size;
    SIM_STAT_ADD(ge_outputs, 1);
    return b;
}

void aa_tensor_release(aa_tensor *tensor) {
    if (!tensor || !tensor->owner) return;
    ge_block *b = tensor->owner;
    tensor->owner = NULL;
    tensor->addr = NULL;
    tensor->size = 0;
    if (b->magic != BLOCK_MAGIC) return;
    b->magic = 0;
    if (b->zombie) {
        free(b);
        return;
    }
    switch (b->kind) {
        case BLOCK_HOST: free(b->addr); break;
        case BLOCK_EXTERNAL: b->alloc.free(b->alloc.ctx, b->ext_block); break;
        case BLOCK_BUILTIN: {
            graph_node *g = b->graph;
            pthread_mutex_lock(&g->run_mu);
            block_unlink_locked(b);
            pthread_mutex_unlock(&g->run_mu);
            sim_device_free(b->addr);
            break;
        }
    }
    SIM_STAT_ADD(ge_outputs, -1);
    free(b);
}

static size_t block_size_for(size_t nbytes) { return ((nbytes + 31) & ~(size_t)31) + 32; }

static int lookup_allocator(const void *stream, aa_allocator *out) {
    pthread_mutex_lock(&g_ge.lock);
    int found = 0;
    for (alloc_entry *e = g_ge.allocators; e; e = e->next)
        if (e->stream == stream) {
            *out = e->alloc;
            found = 1;
            break;
        }
    pthread_mutex_unlock(&g_ge.lock);
    return found;
}

/* Fills an empty output slot for RunGraphWithStreamAsync; the caller holds run_mu. */
static int alloc_output_locked(graph_node *g, aclrtStream stream, aa_tensor *t, size_t nbytes, const char *api) {
    size_t size = block_size_for(nbytes);
    aa_allocator a;
    ge_block *b;
    if (lookup_allocator(stream, &a)) {
        void *addr = NULL;
        void *blk = a.alloc(a.ctx, size, &addr);
        if (!blk || !addr) {
            ge_error("%s: the external allocator of the stream could not provide %zu bytes", api, size);
            return -1;
        }
        b = block_new(BLOCK_EXTERNAL, addr, size);
        b->alloc = a;
        b->ext_block = blk;
    } else {
        void *addr = NULL;
        if (sim_device_alloc(g->device, size, &addr) != ACL_SUCCESS) {
            const char *m = aclGetRecentErrMsg();
            ge_error("%s: cannot allocate a %zu-byte output: %s", api, size, m ? m : "");
            return -1;
        }
        b = block_new(BLOCK_BUILTIN, addr, size);
        b->graph = g;
        b->next = g->builtin;
        if (g->builtin) g->builtin->prev = b;
        g->builtin = b;
    }
    t->addr = b->addr;
    t->size = size;
    t->owner = b;
    t->placement = AA_PLACEMENT_DEVICE_HBM;
    return 0;
}

static void release_outputs(aa_tensor *out, size_t n, const int *mine) {
    for (size_t i = 0; i < n; i++)
        if (mine[i]) aa_tensor_release(&out[i]);
}

/* ------------------------------------------------------------------------------------------ */
/* Execution payloads                                                                          */

typedef struct run_job {
    aa_sim_program *program;
    size_t n_in, n_out;
    aa_tensor *in;
    aa_tensor *out;
    /* RunGraphAsync */
    aa_run_callback cb;
    void *user;
    int code;
    char msg[256];
} run_job;

static run_job *job_new(aa_sim_program *p, const aa_tensor *in, size_t n_in, const aa_tensor *out, size_t n_out) {
    run_job *j = calloc(1, sizeof *j);
    j->program = p;
    sim_program_retain(p);
    j->n_in = n_in;
    j->n_out = n_out;
    j->in = calloc(n_in ? n_in : 1, sizeof(aa_tensor));
    j->out = calloc(n_out ? n_out : 1, sizeof(aa_tensor));
    if (n_in) memcpy(j->in, in, n_in * sizeof(aa_tensor));
    if (n_out && out) memcpy(j->out, out, n_out * sizeof(aa_tensor));
    return j;
}

static void job_free(run_job *j) {
    aa_sim_program_release(j->program);
    free(j->in);
    free(j->out);
    free(j);
}

static int job_exec(void *payload, char *err, size_t err_len) {
    run_job *j = payload;
    int rc = sim_program_execute(j->program, j->in, j->n_in, j->out, j->n_out, err, err_len);
    return rc ? rc : 0;
}

static void job_cleanup(void *payload, int executed) {
    (void)executed;
    job_free(payload);
}

/* ------------------------------------------------------------------------------------------ */
/* RunGraphWithStreamAsync                                                                     */

aa_status aa_session_run_graph_with_stream_async(aa_session *session, uint32_t graph_id, aclrtStream stream,
                                                 const aa_tensor *inputs, size_t n_inputs, aa_tensor *outputs,
                                                 size_t n_outputs) {
    static const char api[] = "RunGraphWithStreamAsync";
    graph_node *g = lookup(session, graph_id, api);
    if (!g) return GE_FAILED;
    pthread_mutex_lock(&g->run_mu);
    if (!mode_allows(g, MODE_STREAM_ASYNC, api)) {
        pthread_mutex_unlock(&g->run_mu);
        return GE_FAILED;
    }
    if (!g->loaded && load_locked(g, api) != GE_OK) { /* auto-load; no mode on failure */
        pthread_mutex_unlock(&g->run_mu);
        return GE_FAILED;
    }
    g->mode = MODE_STREAM_ASYNC; /* recorded whether or not the run itself succeeds */

    aa_status st = GE_FAILED;
    size_t n_out = sim_program_n_outputs(g->program);
    int *mine = calloc(n_out ? n_out : 1, sizeof(int));
    aa_tensor *inferred = calloc(n_out ? n_out : 1, sizeof(aa_tensor));
    char err[512];
    if (check_inputs(g, inputs, n_inputs, 1, api)) goto done;
    if (n_outputs != n_out || !outputs) {
        ge_error("%s: graph %u has %zu outputs, %zu output slots were passed", api, graph_id, n_out, n_outputs);
        goto done;
    }
    if (sim_program_infer(g->program, inputs, n_inputs, inferred, n_out, err, sizeof err)) {
        ge_error("%s: graph %u: %s", api, graph_id, err);
        goto done;
    }
    for (size_t i = 0; i < n_out; i++) {
        aa_tensor *t = &outputs[i];
        size_t nbytes = aa_tensor_nbytes(&inferred[i]);
        if (t->addr && t->size) { /* caller memory, used as is */
            int r = sim_check_device_range(t->addr, nbytes, err, sizeof err);
            if (t->size < nbytes || r != 1) {
                ge_error("%s: output %zu: %s", api, i,
                         t->size < nbytes ? "the caller's buffer is smaller than the output" : r ? err : "address is not device memory");
                goto done;
            }
        } else {
            t->owner = NULL;
            if (alloc_output_locked(g, stream, t, nbytes, api)) goto done;
            mine[i] = 1;
        }
        t->dtype = inferred[i].dtype;
        t->format = AA_FORMAT_ND;
        t->ndim = inferred[i].ndim;
        memcpy(t->dims, inferred[i].dims, sizeof t->dims);
    }
    run_job *j = job_new(g->program, inputs, n_inputs, outputs, n_out);
    aclError rc = sim_enqueue(stream, sim_graph_task_flags(inputs, n_inputs), job_exec, job_cleanup, j);
    if (rc) {
        const char *m = aclGetRecentErrMsg();
        ge_error("%s: cannot launch on the stream: aclError %d %s", api, rc, m ? m : "");
        job_free(j);
        goto done;
    }
    st = GE_OK;
done:
    if (st != GE_OK) release_outputs(outputs, n_outputs < n_out ? n_outputs : n_out, mine);
    pthread_mutex_unlock(&g->run_mu);
    free(mine);
    free(inferred);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* RunGraph and RunGraphAsync: GE's own streams, host outputs                                  */

/* Allocates host output blocks for inferred shapes. */
static void alloc_host_outputs(aa_tensor *out, const aa_tensor *inferred, size_t n) {
    for (size_t i = 0; i < n; i++) {
        size_t nbytes = aa_tensor_nbytes(&inferred[i]);
        size_t size = nbytes ? nbytes : 1;
        void *p = NULL;
        if (posix_memalign(&p, 64, size)) p = NULL;
        out[i] = inferred[i];
        out[i].addr = p;
        out[i].size = nbytes;
        out[i].format = AA_FORMAT_ND;
        out[i].placement = AA_PLACEMENT_HOST;
        out[i].owner = block_new(BLOCK_HOST, p, nbytes);
    }
}

/* GE's own streams never fault: a failed execution is reported through the job, so one bad
 * run does not poison the session. */
static int sync_exec(void *payload, char *err, size_t err_len) {
    run_job *j = payload;
    (void)err;
    (void)err_len;
    j->code = sim_program_execute(j->program, j->in, j->n_in, j->out, j->n_out, j->msg, sizeof j->msg);
    return 0;
}

aa_status aa_session_run_graph(aa_session *session, uint32_t graph_id, const aa_tensor *inputs, size_t n_inputs,
                               aa_tensor *outputs, size_t *n_outputs) {
    static const char api[] = "RunGraph";
    graph_node *g = lookup(session, graph_id, api);
    if (!g || !n_outputs) return GE_FAILED;
    aa_session *s = session;
    pthread_mutex_lock(&g->run_mu);
    if (!mode_allows(g, MODE_RUN_GRAPH, api)) {
        pthread_mutex_unlock(&g->run_mu);
        return GE_UNSUPPORTED;
    }
    if (!g->loaded && load_locked(g, api) != GE_OK) {
        pthread_mutex_unlock(&g->run_mu);
        return GE_FAILED;
    }
    g->mode = MODE_RUN_GRAPH;
    pthread_mutex_unlock(&g->run_mu);

    /* GE's inner session runs one RunGraph at a time and refuses a concurrent one. */
    pthread_mutex_lock(&s->mu);
    int busy = s->running_sync;
    s->running_sync = 1;
    pthread_mutex_unlock(&s->mu);
    if (busy) {
        ge_error("%s: graph %u: the session is already running a graph (GE_SESS_ALREADY_RUNNING)", api, graph_id);
        return GE_FAILED;
    }
    aa_status st = GE_FAILED;
    size_t n_out = sim_program_n_outputs(g->program);
    aa_tensor *inferred = calloc(n_out ? n_out : 1, sizeof(aa_tensor));
    char err[512];
    if (check_inputs(g, inputs, n_inputs, 0, api)) goto out;
    if (*n_outputs < n_out) {
        ge_error("%s: graph %u has %zu outputs, room for %zu was passed", api, graph_id, n_out, *n_outputs);
        goto out;
    }
    if (sim_program_infer(g->program, inputs, n_inputs, inferred, n_out, err, sizeof err)) {
        ge_error("%s: graph %u: %s", api, graph_id, err);
        goto out;
    }
    alloc_host_outputs(outputs, inferred, n_out);
    run_job *j = job_new(g->program, inputs, n_inputs, outputs, n_out);
    uint64_t seq = 0;
    /* The model's own stream: a device thread runs it while this thread waits, as GE blocks. */
    sim_enqueue_internal(s->sync_stream, sim_graph_task_flags(inputs, n_inputs), sync_exec, NULL, j, &seq);
    sim_wait_retired(s->sync_stream, seq);
    int code = j->code;
    if (code) ge_error("%s: graph %u: execution failed with aclError %d: %s", api, graph_id, code, j->msg);
    job_free(j);
    if (code) {
        for (size_t i = 0; i < n_out; i++) aa_tensor_release(&outputs[i]);
        /* RunGraph passes codes <= 9,999,999 through and turns larger ones into FAILED. */
        st = code <= 9999999 ? (aa_status)code : GE_FAILED;
        goto out;
    }
    *n_outputs = n_out;
    st = GE_OK;
out:
    free(inferred);
    pthread_mutex_lock(&s->mu);
    s->running_sync = 0;
    pthread_mutex_unlock(&s->mu);
    return st;
}

/* RunGraphAsync: outputs are allocated and the callback invoked on the device thread (GE's). */
static int async_exec(void *payload, char *err, size_t err_len) {
    run_job *j = payload;
    aa_tensor *inferred = calloc(j->n_out ? j->n_out : 1, sizeof(aa_tensor));
    aa_tensor *out = calloc(j->n_out ? j->n_out : 1, sizeof(aa_tensor));
    char msg[256] = "";
    int code = sim_program_infer(j->program, j->in, j->n_in, inferred, j->n_out, msg, sizeof msg);
    if (!code) {
        alloc_host_outputs(out, inferred, j->n_out);
        code = sim_program_execute(j->program, j->in, j->n_in, out, j->n_out, msg, sizeof msg);
    }
    if (code) {
        for (size_t i = 0; i < j->n_out; i++) aa_tensor_release(&out[i]);
        snprintf(err, err_len, "%s", msg);
        j->cb(j->user, GE_FAILED, NULL, 0);
    } else {
        j->cb(j->user, GE_OK, out, j->n_out); /* ownership of the outputs passes to the callee */
    }
    free(out);
    free(inferred);
    return 0;
}

aa_status aa_session_run_graph_async(aa_session *session, uint32_t graph_id, const aa_tensor *inputs,
                                     size_t n_inputs, aa_run_callback callback, void *user_data) {
    static const char api[] = "RunGraphAsync";
    if (!callback) {
        ge_error("%s: callback is NULL", api);
        return GE_FAILED;
    }
    graph_node *g = lookup(session, graph_id, api);
    if (!g) return GE_FAILED;
    aa_session *s = session;
    pthread_mutex_lock(&g->run_mu);
    if (!mode_allows(g, MODE_RUN_GRAPH_ASYNC, api)) {
        pthread_mutex_unlock(&g->run_mu);
        callback(user_data, GE_UNSUPPORTED, NULL, 0); /* synchronously, as GE does */
        return GE_UNSUPPORTED;
    }
    aa_status st = GE_FAILED;
    if (!g->loaded && load_locked(g, api) != GE_OK) goto out;
    if (check_inputs(g, inputs, n_inputs, 0, api)) goto out;
    run_job *j = job_new(g->program, inputs, n_inputs, NULL, sim_program_n_outputs(g->program));
    j->cb = callback;
    j->user = user_data;
    sim_enqueue_internal(s->async_stream, sim_graph_task_flags(inputs, n_inputs), async_exec, job_cleanup, j, NULL);
    g->mode = MODE_RUN_GRAPH_ASYNC; /* recorded right after submission */
    st = GE_OK;
out:
    pthread_mutex_unlock(&g->run_mu);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* External allocators: a process-wide registry keyed by stream, as in GE                     */

aa_status aa_session_register_external_allocator(aa_session *session, aclrtStream stream,
                                                 const aa_allocator *allocator) {
    if (!as_session(session) || !ge_ready("RegisterExternalAllocator")) return GE_FAILED;
    if (!stream || !allocator || !allocator->alloc || !allocator->free) {
        ge_error("RegisterExternalAllocator: stream and allocator must not be NULL");
        return GE_FAILED;
    }
    pthread_mutex_lock(&g_ge.lock);
    alloc_entry *e = g_ge.allocators;
    while (e && e->stream != stream) e = e->next;
    if (!e) {
        e = calloc(1, sizeof *e);
        e->stream = stream;
        e->next = g_ge.allocators;
        g_ge.allocators = e;
    }
    e->alloc = *allocator; /* re-registering replaces: last one wins */
    pthread_mutex_unlock(&g_ge.lock);
    return GE_OK;
}

aa_status aa_session_unregister_external_allocator(aa_session *session, aclrtStream stream) {
    if (!as_session(session) || !ge_ready("UnregisterExternalAllocator")) return GE_FAILED;
    pthread_mutex_lock(&g_ge.lock);
    for (alloc_entry **pp = &g_ge.allocators; *pp; pp = &(*pp)->next)
        if ((*pp)->stream == stream) {
            alloc_entry *e = *pp;
            *pp = e->next;
            free(e);
            break;
        }
    pthread_mutex_unlock(&g_ge.lock);
    return GE_OK; /* unknown stream or repeated: a no-op success */
}
