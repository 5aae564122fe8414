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
 * GE's rules for RunGraphWithStreamAsync that the sim enforces (§2.10, §2.13):
 *  - device input and output addresses are 32-byte aligned (FAILED otherwise, naming the
 *    input or output and the address); RunGraph's device inputs too;
 *  - a run of a static-shape graph on a stream with an external allocator takes a workspace
 *    block (WS_BYTES) from that allocator at submit and frees it when the host side of the submission returns, as GE does
 *    with feature memory, while the stream still needs it. The device thread writes a run-unique
 *    canary into it when the run starts and checks it when the run ends; and every block an
 *    external allocator hands GE is compared with the workspaces of runs that have not ended.
 *    A canary that changed, or a workspace handed to another stream's run, fails the run (the
 *    stream faults): the allocator is not stream-ordered;
 *  - one allocator (one `ctx`) registered for several streams: a run is refused while another
 *    of those streams still has work (they must not run concurrently).
 *
 * Locking: g_ge.lock guards the session list and the allocator registry; g_ws.lock the
 * workspaces of runs in flight; each session's `mu` guards its graph table, and its
 * `submit_mu` serializes the host-side submissions into the session (RunGraphWithStreamAsync,
 * RunGraphAsync): GE holds a graph's run mutex for a whole submission and a GeSession does not
 * support concurrent execution, so the CANN shim takes the same per-session mutex. Each
 * graph's `run_mu` guards that graph's mode, load state, removal mark, in-flight gate and
 * built-in blocks. RunGraph and RunGraphWithStreamAsync hold it for the gate only (and to link
 * a built-in output block); RunGraphAsync holds it across its whole submission (gate, input
 * check, job, enqueue), so its mode is recorded only with its run on the stream; a load holds
 * it while it places the weights. Order: submit_mu, then run_mu or g_ge.lock, then a device's
 * lock (an enqueue, an allocation); g_ge.lock before a device's lock (sim_stream_busy).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/tensor.h"
#include "engine.h"
#include "runtime.h"

/* AddGraph options of our own (not GE's): see cdefs/sim.h. */
#define AA_OPTION_EXTERNAL_DATA_DIR "ascend_async.external_data_dir"
#define AA_OPTION_EXTERNAL_DATA_STAMP "ascend_async.external_data_stamp"

#define GE_OK AA_GE_SUCCESS
#define GE_FAILED ((aa_status)AA_GE_FAILED)
#define GE_UNSUPPORTED ((aa_status)AA_GE_UNSUPPORTED)
#define GE_OUT_OF_MEMORY ((aa_status)AA_GE_OUT_OF_MEMORY)

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

/* A GE-allocated output block: the `owner` of an aa_tensor (BLOCK_PENDING: a pending_run).
 * BLOCK_BUILTIN lives as long as its graph; BLOCK_DEVICE (GE's memory for a dynamic run's
 * output on a stream with an external allocator, see alloc_output) as long as its tensor. */
enum { BLOCK_BUILTIN, BLOCK_EXTERNAL, BLOCK_HOST, BLOCK_PENDING, BLOCK_DEVICE };
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

/* A graph id's state. Lifetime: the session's table holds one reference, every lookup and
 * every run in flight holds one more (atomics), so RemoveGraph can never free a graph that a
 * submitting thread or a device thread still uses. */
struct graph_node {
    uint32_t id;
    int refs;     /* atomic */
    int inflight; /* atomic: runs submitted and not yet finished on the device */
    sim_model *model;
    int compiled;
    int loaded;
    int removed; /* under run_mu: RemoveGraph took it out of the table */
    int mode;
    int32_t device;
    void *const_mem; /* the model's weights, charged to device memory at load */
    pthread_mutex_t run_mu;
    ge_block *builtin; /* live built-in output blocks */
    graph_node *next;
};

#define SESSION_MAGIC 0x53455353u

struct aa_session {
    uint32_t magic;
    int32_t device;
    pthread_mutex_t mu;
    pthread_mutex_t submit_mu; /* host-side submissions, one at a time (see the top) */
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
    if (n && !o) {
        ge_error("%s: %zu options passed without an array", api, n);
        return 0;
    }
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
    if (!s || sim_stream_create_internal(device, &s->sync_stream) != ACL_SUCCESS ||
        sim_stream_create_internal(device, &s->async_stream) != ACL_SUCCESS) {
        if (s && s->sync_stream) sim_stream_destroy_internal(s->sync_stream);
        free(s);
        aclrtResetDevice(device);
        ge_error("GeSession: out of host memory");
        return GE_FAILED;
    }
    s->magic = SESSION_MAGIC;
    s->device = device;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->submit_mu, NULL);
    SIM_STAT_ADD(sessions, 1);
    *out = s;
    return GE_OK;
}

static void graph_put(graph_node *g);
static void graph_drop_builtin(graph_node *g);

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
        graph_drop_builtin(g);
        graph_put(g);
        g = n;
    }
    s->magic = 0;
    aclrtResetDevice(s->device);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->submit_mu);
    free(s);
    SIM_STAT_ADD(sessions, -1);
    return GE_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Graphs                                                                                      */

static void graph_get(graph_node *g) { __atomic_add_fetch(&g->refs, 1, __ATOMIC_RELAXED); }

static void graph_put(graph_node *g) {
    if (__atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL)) return;
    if (g->const_mem) sim_device_free(g->const_mem);
    sim_model_release(g->model);
    pthread_mutex_destroy(&g->run_mu);
    free(g);
    SIM_STAT_ADD(graphs, -1);
}

/* Common prologue: session valid, GE initialized, graph present. Returns the graph with a
 * reference the caller gives back with graph_put. */
static graph_node *lookup(aa_session *session, uint32_t graph_id, const char *api) {
    aa_session *s = as_session(session);
    if (!s) {
        ge_error("%s: invalid session handle", api);
        return NULL;
    }
    if (!ge_ready(api)) return NULL;
    pthread_mutex_lock(&s->mu);
    graph_node *g = s->graphs;
    while (g && g->id != graph_id) g = g->next;
    if (g) graph_get(g);
    pthread_mutex_unlock(&s->mu);
    if (!g) ge_error("E10062: %s: graph does not exist (graph_id=%u)", api, graph_id);
    return g;
}

static int has_graph(aa_session *s, uint32_t graph_id) {
    pthread_mutex_lock(&s->mu);
    graph_node *g = s->graphs;
    while (g && g->id != graph_id) g = g->next;
    pthread_mutex_unlock(&s->mu);
    return g != NULL;
}

aa_status aa_session_add_graph_onnx(aa_session *session, uint32_t graph_id, const void *model, size_t model_size,
                                    const aa_option *options, size_t n_options) {
    static const char api[] = "AddGraph";
    aa_session *s = as_session(session);
    if (!s) {
        ge_error("%s: invalid session handle", api);
        return GE_FAILED;
    }
    if (!ge_ready(api) || !options_valid(options, n_options, api)) return GE_FAILED;
    if (!model || !model_size) {
        ge_error("%s: graph %u: the ONNX model is empty", api, graph_id);
        return GE_FAILED;
    }
    if (has_graph(s, graph_id)) return GE_OK; /* GE keeps the first graph added under an id */
    aa_sim_config cfg;
    aa_sim_get_config(&cfg);
    char err[2048];
    int not_implemented = 0;
    /* A model with external data names the folder its weights are read from (the caller
     * checked every location against it); without one, external data fails to load. */
    const char *data_dir = find_option(options, n_options, AA_OPTION_EXTERNAL_DATA_DIR);
    const char *data_stamp = find_option(options, n_options, AA_OPTION_EXTERNAL_DATA_STAMP);
    /* The parse: onnxruntime reads, checks and compiles the model here (outside any lock). */
    sim_model *m = sim_model_get(model, model_size, cfg.engine_threads, data_dir, data_stamp, &not_implemented, err,
                                 sizeof err);
    if (!m) {
        ge_error("%s: graph %u: %s%s", api, graph_id, not_implemented ? "E10062: unsupported operator: " : "", err);
        return not_implemented ? GE_UNSUPPORTED : GE_FAILED;
    }
    if (!sim_model_n_outputs(m)) { /* onnxruntime accepts it; a GE graph needs an output to run */
        ge_error("%s: graph %u has no outputs", api, graph_id);
        sim_model_release(m);
        return GE_FAILED;
    }
    graph_node *g = calloc(1, sizeof *g);
    if (!g) {
        ge_error("%s: graph %u: out of host memory", api, graph_id);
        sim_model_release(m);
        return GE_FAILED;
    }
    g->id = graph_id;
    g->refs = 1;
    g->model = m;
    g->mode = MODE_NONE;
    g->device = s->device;
    pthread_mutex_init(&g->run_mu, NULL);
    pthread_mutex_lock(&s->mu);
    graph_node *dup = s->graphs;
    while (dup && dup->id != graph_id) dup = dup->next;
    if (!dup) {
        g->next = s->graphs;
        s->graphs = g;
    }
    pthread_mutex_unlock(&s->mu);
    SIM_STAT_ADD(graphs, 1);
    if (dup) graph_put(g); /* another thread added this id meanwhile: the first one stays */
    return GE_OK;
}

int64_t aa_sim_session_graph_outputs(aa_session *session, uint32_t graph_id) {
    graph_node *g = lookup(session, graph_id, "GetCompiledGraphSummary");
    if (!g) return -1;
    int64_t n = (int64_t)sim_model_n_outputs(g->model);
    graph_put(g);
    return n;
}

int aa_sim_session_graph_is_static(aa_session *session, uint32_t graph_id) {
    graph_node *g = lookup(session, graph_id, "GetCompiledGraphSummary");
    if (!g) return -1;
    int is_static = sim_model_is_static(g->model);
    graph_put(g);
    return is_static;
}

static void block_unlink_locked(ge_block *b) {
    if (b->prev) b->prev->next = b->next;
    else if (b->graph && b->graph->builtin == b) b->graph->builtin = b->next;
    if (b->next) b->next->prev = b->prev;
    b->prev = b->next = NULL;
}

/* Built-in output blocks live as long as their graph: RemoveGraph frees their memory, and
 * releasing them afterwards (undefined in GE) only frees their records. */
static void graph_drop_builtin(graph_node *g) {
    pthread_mutex_lock(&g->run_mu);
    g->removed = 1;
    while (g->builtin) {
        ge_block *b = g->builtin;
        block_unlink_locked(b);
        sim_device_free(b->addr);
        b->zombie = 1;
        b->graph = NULL;
        SIM_STAT_ADD(ge_outputs, -1);
    }
    pthread_mutex_unlock(&g->run_mu);
}

aa_status aa_session_remove_graph(aa_session *session, uint32_t graph_id) {
    static const char api[] = "RemoveGraph";
    graph_node *g = lookup(session, graph_id, api);
    if (!g) return GE_FAILED;
    aa_session *s = session;
    /* A graph with runs still on the device is refused: its memory is in use. GE leaves this
     * undefined; callers synchronize the streams first. The check and the mark share run_mu
     * with the run gate, so a run either counts as in flight here or is refused there. */
    pthread_mutex_lock(&g->run_mu);
    int gone = g->removed;
    int busy = __atomic_load_n(&g->inflight, __ATOMIC_ACQUIRE);
    if (!gone && !busy) g->removed = 1;
    pthread_mutex_unlock(&g->run_mu);
    if (gone || busy) {
        if (gone) ge_error("E10062: %s: graph does not exist (graph_id=%u)", api, graph_id);
        else
            ge_error("%s: graph %u still has %d run(s) on the device; synchronize their streams first", api,
                     graph_id, busy);
        graph_put(g);
        return GE_FAILED;
    }
    pthread_mutex_lock(&s->mu);
    for (graph_node **pp = &s->graphs; *pp; pp = &(*pp)->next)
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    pthread_mutex_unlock(&s->mu);
    graph_drop_builtin(g);
    graph_put(g); /* the table's reference */
    graph_put(g); /* ours */
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
    graph_put(g);
    return GE_OK;
}

/* LoadGraph body; the caller holds run_mu. */
static aa_status load_locked(graph_node *g, const char *api) {
    if (g->loaded) {
        ge_error("%s: graph %u has been loaded", api, g->id);
        return GE_FAILED;
    }
    compile_locked(g);
    size_t bytes = sim_model_bytes(g->model);
    if (bytes && sim_device_alloc(g->device, bytes, &g->const_mem) != ACL_SUCCESS) {
        const char *m = aclGetRecentErrMsg();
        ge_error("%s: graph %u: cannot place %zu bytes of weights: %s", api, g->id, bytes, m ? m : "");
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
    if (!g) return GE_FAILED;
    aa_status st = GE_FAILED;
    if (options_valid(options, n_options, "LoadGraph")) {
        pthread_mutex_lock(&g->run_mu);
        st = load_locked(g, "LoadGraph");
        pthread_mutex_unlock(&g->run_mu);
    }
    graph_put(g);
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

/* The run prologue under run_mu: the graph is still in its session, the mode allows `mode`,
 * and it is loaded (auto-load; no mode is recorded when loading fails). An open gate counts
 * the run as in flight until run_done (job_free does it for runs that reached a stream). */
static int run_gate_locked(graph_node *g, int mode, const char *api, aa_status *refusal) {
    *refusal = GE_FAILED;
    if (g->removed) {
        ge_error("E10062: %s: graph does not exist (graph_id=%u)", api, g->id);
        return 0;
    }
    if (!mode_allows(g, mode, api)) {
        *refusal = mode == MODE_STREAM_ASYNC ? GE_FAILED : GE_UNSUPPORTED;
        return 0;
    }
    if (!g->loaded && load_locked(g, api) != GE_OK) return 0;
    __atomic_add_fetch(&g->inflight, 1, __ATOMIC_ACQ_REL);
    return 1;
}

static void run_done(graph_node *g) { __atomic_sub_fetch(&g->inflight, 1, __ATOMIC_ACQ_REL); }

/* ------------------------------------------------------------------------------------------ */
/* Tensors                                                                                     */

/* Checks input memory and shapes; `device_only` for RunGraphWithStreamAsync. Describes the
 * outputs (see sim_model_resolve). Returns 0 (static), 1 (dynamic), -1 (bad inputs) or -2 (an
 * output larger than the device's memory). */
static int check_inputs(const graph_node *g, const aa_tensor *in, size_t n, int device_only, aa_tensor *described,
                        const char *api) {
    size_t want = sim_model_n_inputs(g->model);
    if (n != want) {
        ge_error("%s: graph %u takes %zu inputs, got %zu", api, g->id, want, n);
        return -1;
    }
    if (n && !in) {
        ge_error("%s: graph %u: no input array", api, g->id);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const aa_tensor *t = &in[i];
        if (t->ndim > AA_MAX_DIMS) {
            ge_error("%s: input %zu has %u dims (max %d)", api, i, t->ndim, AA_MAX_DIMS);
            return -1;
        }
        int ok;
        size_t nbytes = sim_shape_nbytes(t->dtype, t->ndim, t->dims, &ok);
        if (!ok) {
            ge_error("%s: input %zu: a negative dim or an element count that overflows", api, i);
            return -1;
        }
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
    char err[512];
    size_t n_out = sim_model_n_outputs(g->model);
    int rc = sim_model_resolve(g->model, in, n, described, n_out, err, sizeof err);
    if (rc < 0) ge_error("%s: graph %u: %s", api, g->id, err);
    /* An output known to be larger than the device's memory cannot be computed: refuse it
     * here rather than let the run fail (or the host run out of memory) on the device. */
    uint64_t capacity = sim_device_capacity(g->device);
    for (size_t o = 0; rc >= 0 && o < n_out; o++) {
        int ok, known = described[o].ndim > 0;
        for (uint32_t d = 0; d < described[o].ndim; d++) known &= described[o].dims[d] >= 0;
        size_t nbytes = known ? sim_shape_nbytes(described[o].dtype, described[o].ndim, described[o].dims, &ok) : 0;
        if (nbytes > capacity) {
            ge_error("%s: graph %u: output %zu needs %zu bytes, more than the device's memory (%llu bytes)", api,
                     g->id, o, nbytes, (unsigned long long)capacity);
            rc = -2;
        }
    }
    return rc;
}

/* NULL when host memory ran out (the caller gives the memory back). */
static ge_block *block_new(int kind, void *addr, size_t size) {
    ge_block *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->magic = BLOCK_MAGIC;
    b->kind = kind;
    b->addr = addr;
    b->size = size;
    SIM_STAT_ADD(ge_outputs, 1);
    return b;
}

/* A dynamic RunGraphWithStreamAsync run's outputs between submit and
 * aa_session_resolve_outputs, as GE has them (cdefs/ge_session.h): every slot of the run is
 * pending (addr NULL, owner = &head) until then. The device thread that executes the run writes
 * `out` and sets `done`; the caller's slot array is never written by a device thread, so what
 * submit returned stays as it was until the caller describes it after the run's event. One
 * reference per slot and one for the job (so a slot released early, or a run that never
 * executes, frees nothing the device thread still writes); the last one gives back the outputs
 * no slot took. */
typedef struct pending_run {
    ge_block head; /* kind BLOCK_PENDING; what the slots' owner points at */
    int refs;      /* atomic */
    int done;      /* atomic: the run executed and placed every output in `out` */
    size_t n;
    aa_tensor out[];
} pending_run;

static void pending_put(pending_run *p) {
    if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL)) return;
    for (size_t i = 0; i < p->n; i++) aa_tensor_release(&p->out[i]);
    free(p);
}

void aa_tensor_release(aa_tensor *tensor) {
    if (!tensor || !tensor->owner) return;
    ge_block *b = tensor->owner;
    tensor->owner = NULL;
    tensor->addr = NULL;
    tensor->size = 0;
    if (b->magic != BLOCK_MAGIC) return;
    if (b->kind == BLOCK_PENDING) { /* this slot's share of its run */
        pending_put((pending_run *)b);
        return;
    }
    b->magic = 0;
    if (b->zombie) {
        free(b);
        return;
    }
    switch (b->kind) {
        case BLOCK_HOST: free(b->addr); break;
        case BLOCK_DEVICE: sim_device_free(b->addr); break;
        case BLOCK_EXTERNAL: b->alloc.free(b->alloc.ctx, b->ext_block); break;
        case BLOCK_BUILTIN: {
            graph_node *g = b->graph;
            pthread_mutex_lock(&g->run_mu);
            int zombie = b->zombie; /* RemoveGraph may have freed it meanwhile */
            if (!zombie) block_unlink_locked(b);
            pthread_mutex_unlock(&g->run_mu);
            if (zombie) {
                free(b);
                return;
            }
            sim_device_free(b->addr);
            break;
        }
    }
    SIM_STAT_ADD(ge_outputs, -1);
    free(b);
}

static size_t block_size_for(size_t nbytes) { return ((nbytes + 31) & ~(size_t)31) + 32; }

/* ------------------------------------------------------------------------------------------ */
/* GE's workspace: taken at submit, freed when the submission returns, used until the run ends */

#define WS_BYTES 512 /* small: the check costs one 512-byte fill and compare per run */

/* The workspace model is on unless turned off (aa_sim_set_workspace_model(0), or
 * ASCEND_ASYNC_SIM_WORKSPACE=0 read when first needed). -1: not read yet. */
static int g_ws_model = -1;

void aa_sim_set_workspace_model(int on) { __atomic_store_n(&g_ws_model, on ? 1 : 0, __ATOMIC_RELAXED); }

static int ws_model_on(void) {
    int on = __atomic_load_n(&g_ws_model, __ATOMIC_RELAXED);
    if (on < 0) {
        const char *env = getenv("ASCEND_ASYNC_SIM_WORKSPACE");
        on = !(env && !strcmp(env, "0"));
        int unset = -1; /* another thread may have set it meanwhile: that value wins */
        if (!__atomic_compare_exchange_n(&g_ws_model, &unset, on, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            on = unset;
    }
    return on;
}
#define WS_SLOTS 1024

/* A run's workspace while the run has not ended. Lives in its run_job; registered in g_ws from
 * before GE frees the block until the job's cleanup (or its failed submission) takes it out. */
typedef struct ws_claim {
    struct ws_claim *next, *prev;
    void *addr;              /* NULL: no workspace (no external allocator) */
    const void *stream;
    uint32_t graph_id;
    uint64_t canary;
    const void *taken_by;    /* another stream's run got this block while this run had not ended */
} ws_claim;

static struct {
    pthread_mutex_t lock;
    ws_claim *slots[WS_SLOTS];
    uint64_t runs; /* canary counter */
} g_ws = {.lock = PTHREAD_MUTEX_INITIALIZER};

static size_t ws_slot(const void *addr) {
    return (size_t)((((uintptr_t)addr >> 5) * 0x9E3779B97F4A7C15ull) >> 54) & (WS_SLOTS - 1);
}

static void ws_register(ws_claim *c) {
    pthread_mutex_lock(&g_ws.lock);
    c->canary = (++g_ws.runs * 0x9E3779B97F4A7C15ull) | 1;
    ws_claim **head = &g_ws.slots[ws_slot(c->addr)];
    c->prev = NULL;
    c->next = *head;
    if (*head) (*head)->prev = c;
    *head = c;
    pthread_mutex_unlock(&g_ws.lock);
}

static void ws_unregister(ws_claim *c) {
    if (!c->addr) return;
    pthread_mutex_lock(&g_ws.lock);
    if (c->prev) c->prev->next = c->next;
    else g_ws.slots[ws_slot(c->addr)] = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
    pthread_mutex_unlock(&g_ws.lock);
    c->addr = NULL;
}

/* An external allocator handed `addr` to GE for a run on `stream`: if it is the workspace of a
 * run on another stream that has not ended, that run's workspace was given away under it. */
static void ws_note_handout(const void *addr, const void *stream) {
    pthread_mutex_lock(&g_ws.lock);
    for (ws_claim *c = g_ws.slots[ws_slot(addr)]; c; c = c->next)
        if (c->addr == addr && c->stream != stream && !c->taken_by) c->taken_by = stream;
    pthread_mutex_unlock(&g_ws.lock);
}

/* Device thread, before the run touches its workspace: an allocator that gave the block back to
 * the runtime while the stream still needed it (GE: synchronize first) fails the run instead.
 * (It could still be given back during the run; only such an allocator races this.) */
static int rc_ws_gone(const ws_claim *c, char *err, size_t err_len) {
    char why[200];
    if (sim_check_device_range(c->addr, WS_BYTES, why, sizeof why) == 1) return 0;
    snprintf(err, err_len,
             "graph %u on stream %p: its workspace %p (freed by GE when the run was submitted) is no longer "
             "device memory: the external allocator gave it back to the runtime while the stream still used "
             "it (GE: synchronize the stream before allocator memory goes back)",
             c->graph_id, c->stream, c->addr);
    return 1;
}

/* Device thread, when the run starts: the canary, one word per 8 bytes. */
static void ws_fill(const ws_claim *c) {
    uint64_t *w = c->addr;
    for (size_t i = 0; i < WS_BYTES / 8; i++) w[i] = c->canary ^ i;
}

/* Device thread, when the run ends: 0, or ACL_ERROR_RT_MODEL_EXECUTE with the reason in err. */
static int ws_check(const ws_claim *c, char *err, size_t err_len) {
    const uint64_t *w = c->addr;
    size_t bad = WS_BYTES / 8;
    for (size_t i = 0; i < WS_BYTES / 8 && bad == WS_BYTES / 8; i++)
        if (w[i] != (c->canary ^ i)) bad = i;
    pthread_mutex_lock(&g_ws.lock);
    const void *taken_by = c->taken_by;
    pthread_mutex_unlock(&g_ws.lock);
    if (bad == WS_BYTES / 8 && !taken_by) return 0;
    char why[160];
    if (taken_by)
        snprintf(why, sizeof why, "it was handed to a run on stream %p", taken_by);
    else
        snprintf(why, sizeof why, "its contents changed during the run (byte %zu)", bad * 8);
    snprintf(err, err_len,
             "graph %u on stream %p: the external allocator handed a block GE had freed to other work while "
             "this stream still used it (workspace %p, %d bytes, freed when the run was submitted, as GE "
             "does: %s); the allocator is not stream-ordered: a block GE frees during a submission may be "
             "reused only by later work on the same stream",
             c->graph_id, c->stream, c->addr, WS_BYTES, why);
    return ACL_ERROR_RT_MODEL_EXECUTE;
}

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

/* A device block for an output of `nbytes`: from the stream's external allocator, else the
 * graph's built-in allocator. Fills addr/size/owner/placement of `t`. Returns 0 or an aclError
 * with a message in err. `in_order`: called by the submitting thread, in submission order.
 *
 * A dynamic graph's outputs are placed on the device thread, when the stream reaches the run,
 * and so not in order: by then later submissions on the stream may have given blocks back to
 * the stream's allocator (GE frees a static run's workspace as its submission returns), and a
 * stream-ordered allocator may hand such a block to any later work on its stream, which the
 * earlier run is not: the later run would overwrite the output. GE's host executor allocates
 * as it launches, in submission order; the sim, which learns the sizes only when it runs the
 * graph, takes such outputs from GE's own memory instead (BLOCK_DEVICE), which lives as long as
 * the tensor, as the allocator's blocks do. */
static int alloc_output(graph_node *g, aclrtStream stream, int in_order, aa_tensor *t, size_t nbytes, char *err,
                        size_t err_len) {
    if (nbytes > SIZE_MAX - 64) {
        snprintf(err, err_len, "an output of %zu bytes cannot be allocated", nbytes);
        return ACL_ERROR_RT_MEMORY_ALLOCATION;
    }
    size_t size = block_size_for(nbytes);
    aa_allocator a;
    ge_block *b;
    int external = lookup_allocator(stream, &a);
    if (external && in_order) {
        void *addr = NULL;
        void *blk = a.alloc(a.ctx, size, &addr);
        if (!blk || !addr) {
            snprintf(err, err_len, "the external allocator of the stream could not provide %zu bytes", size);
            return ACL_ERROR_RT_MEMORY_ALLOCATION;
        }
        ws_note_handout(addr, stream);
        b = block_new(BLOCK_EXTERNAL, addr, size);
        if (!b) {
            a.free(a.ctx, blk);
            snprintf(err, err_len, "out of host memory for an output's record");
            return ACL_ERROR_BAD_ALLOC;
        }
        b->alloc = a;
        b->ext_block = blk;
    } else {
        void *addr = NULL;
        if (sim_device_alloc(g->device, size, &addr) != ACL_SUCCESS) {
            const char *m = aclGetRecentErrMsg();
            snprintf(err, err_len, "cannot allocate a %zu-byte output: %s", size, m ? m : "");
            return ACL_ERROR_RT_MEMORY_ALLOCATION;
        }
        b = block_new(external ? BLOCK_DEVICE : BLOCK_BUILTIN, addr, size);
        if (!b) {
            sim_device_free(addr);
            snprintf(err, err_len, "out of host memory for an output's record");
            return ACL_ERROR_BAD_ALLOC;
        }
        if (!external) {
            b->graph = g;
            pthread_mutex_lock(&g->run_mu);
            b->next = g->builtin;
            if (g->builtin) g->builtin->prev = b;
            g->builtin = b;
            pthread_mutex_unlock(&g->run_mu);
        }
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

/* One run's payload: a device thread executes it. It holds a reference to the graph (and so
 * to its model) and counts as in flight until its cleanup. `in` and `out` are copies of the
 * caller's descriptors; a dynamic graph's placed outputs go to `pending` (GE fills such
 * outputs when the stream reaches the run; the caller reads them after the event). */
typedef struct run_job {
    graph_node *graph;
    aclrtStream stream;
    size_t n_in, n_out;
    aa_tensor *in;
    aa_tensor *out;
    pending_run *pending; /* RunGraphWithStreamAsync of a dynamic graph: holds one reference */
    int dynamic;
    int placement; /* AA_PLACEMENT_HOST: outputs go to host blocks (RunGraph, RunGraphAsync) */
    /* RunGraphAsync */
    aa_run_callback cb;
    void *user;
    /* RunGraph */
    int code;
    char msg[512];
    int finished; /* its in-flight count was already given back (RunGraphAsync, before calling back) */
    ws_claim ws;  /* RunGraphWithStreamAsync with an external allocator: GE's workspace */
} run_job;

/* NULL when host memory ran out (nothing taken). */
static run_job *job_new(graph_node *g, const aa_tensor *in, size_t n_in, const aa_tensor *out, size_t n_out) {
    run_job *j = calloc(1, sizeof *j);
    if (j) {
        j->in = calloc(n_in ? n_in : 1, sizeof(aa_tensor));
        j->out = calloc(n_out ? n_out : 1, sizeof(aa_tensor));
    }
    if (!j || !j->in || !j->out) {
        if (j) free(j->in), free(j->out);
        free(j);
        ge_error("graph %u: out of host memory for a run", g->id);
        return NULL;
    }
    graph_get(g); /* the run's in-flight count was taken by its gate */
    j->graph = g;
    j->n_in = n_in;
    j->n_out = n_out;
    if (n_in) memcpy(j->in, in, n_in * sizeof(aa_tensor));
    if (n_out && out) memcpy(j->out, out, n_out * sizeof(aa_tensor));
    return j;
}

static void job_free(run_job *j) {
    ws_unregister(&j->ws); /* the run is over (or never ran): the block is no longer in use */
    if (j->pending) pending_put(j->pending);
    if (!j->finished) run_done(j->graph);
    graph_put(j->graph);
    free(j->in);
    free(j->out);
    free(j);
}

/* Places one output of a run whose outputs onnxruntime allocated (device thread). */
static int place_output(void *ctx, size_t i, const aa_tensor *desc, const void *data, size_t nbytes, char *err,
                        size_t err_len) {
    run_job *j = ctx;
    aa_tensor *t = &j->out[i];
    if (j->placement == AA_PLACEMENT_HOST) {
        void *p = NULL;
        if (posix_memalign(&p, 64, nbytes ? nbytes : 1)) {
            snprintf(err, err_len, "output %zu: cannot allocate %zu bytes of host memory", i, nbytes);
            return ACL_ERROR_BAD_ALLOC;
        }
        t->addr = p;
        t->size = nbytes;
        t->placement = AA_PLACEMENT_HOST;
        t->owner = block_new(BLOCK_HOST, p, nbytes);
        if (!t->owner) {
            free(p);
            t->addr = NULL;
            t->size = 0;
            snprintf(err, err_len, "output %zu: out of host memory for its record", i);
            return ACL_ERROR_BAD_ALLOC;
        }
    } else if (t->addr && t->size && !t->owner) { /* the caller's memory */
        if (t->size < nbytes) {
            snprintf(err, err_len, "output %zu needs %zu bytes; the caller's buffer has %zu", i, nbytes, t->size);
            return ACL_ERROR_RT_PARAM_INVALID;
        }
    } else {
        int rc = alloc_output(j->graph, j->stream, 0, t, nbytes, err, err_len);
        if (rc) return rc;
    }
    if (nbytes) memcpy(t->addr, data, nbytes);
    t->dtype = desc->dtype;
    t->format = AA_FORMAT_ND;
    t->ndim = desc->ndim;
    memcpy(t->dims, desc->dims, sizeof t->dims);
    return 0;
}

/* Runs the job's graph. A dynamic run's outputs are placed after the run; a failed one gives
 * back what it placed. */
static int job_run(run_job *j, char *err, size_t err_len) {
    int rc = sim_model_run(j->graph->model, j->in, j->n_in, j->out, j->n_out, j->dynamic ? place_output : NULL, j,
                           err, err_len);
    if (rc && j->dynamic)
        for (size_t i = 0; i < j->n_out; i++)
            if (j->out[i].owner) aa_tensor_release(&j->out[i]);
    return rc;
}

static int stream_exec(void *payload, char *err, size_t err_len) {
    run_job *j = payload;
    if (j->ws.addr && (rc_ws_gone(&j->ws, err, err_len))) return ACL_ERROR_RT_MODEL_EXECUTE;
    if (j->ws.addr) ws_fill(&j->ws);
    int rc = job_run(j, err, err_len);
    if (!rc && j->ws.addr && (rc = ws_check(&j->ws, err, err_len)) && j->dynamic)
        for (size_t i = 0; i < j->n_out; i++) /* placed by this run, which failed after all */
            if (j->out[i].owner) aa_tensor_release(&j->out[i]);
    if (!rc && j->dynamic) { /* GE describes the outputs now; the caller takes them after the event */
        memcpy(j->pending->out, j->out, j->n_out * sizeof(aa_tensor));
        __atomic_store_n(&j->pending->done, 1, __ATOMIC_RELEASE);
    }
    return rc;
}

static void job_cleanup(void *payload, int executed) {
    (void)executed;
    job_free(payload);
}

/* ------------------------------------------------------------------------------------------ */
/* RunGraphWithStreamAsync                                                                     */

/* One allocator (one ctx) registered for `stream` and for another stream that still has work:
 * GE forbids those streams to run concurrently. Returns that other stream, or NULL. */
static const void *allocator_shared_busy(const void *stream, const aa_allocator *a) {
    const void *other = NULL;
    pthread_mutex_lock(&g_ge.lock);
    for (alloc_entry *e = g_ge.allocators; e && !other; e = e->next)
        if (e->stream != stream && e->alloc.ctx == a->ctx && e->alloc.alloc == a->alloc && sim_stream_busy(e->stream))
            other = e->stream;
    pthread_mutex_unlock(&g_ge.lock);
    return other;
}

static aa_status stream_async_locked(aa_session *session, uint32_t graph_id, aclrtStream stream,
                                     const aa_tensor *inputs, size_t n_inputs, aa_tensor *outputs, size_t n_outputs) {
    static const char api[] = "RunGraphWithStreamAsync";
    graph_node *g = lookup(session, graph_id, api);
    if (!g) return GE_FAILED;
    aa_status st = GE_FAILED;
    pthread_mutex_lock(&g->run_mu);
    int open = run_gate_locked(g, MODE_STREAM_ASYNC, api, &st);
    if (open) g->mode = MODE_STREAM_ASYNC; /* recorded whether or not the run itself succeeds */
    pthread_mutex_unlock(&g->run_mu);
    if (!open) {
        graph_put(g);
        return st;
    }
    size_t n_out = sim_model_n_outputs(g->model);
    int *mine = calloc(n_out ? n_out : 1, sizeof(int));
    aa_tensor *described = calloc(n_out ? n_out : 1, sizeof(aa_tensor));
    aa_allocator ext = {0};
    int has_ext = lookup_allocator(stream, &ext);
    void *ws_block = NULL, *ws_addr = NULL;
    run_job *j = NULL;
    char err[512];
    if (!mine || !described) {
        ge_error("%s: graph %u: out of host memory", api, graph_id);
        goto done;
    }
    int dynamic = check_inputs(g, inputs, n_inputs, 1, described, api);
    if (dynamic == -2) st = GE_OUT_OF_MEMORY;
    if (dynamic < 0) goto done;
    if (n_outputs != n_out || (n_out && !outputs)) {
        ge_error("%s: graph %u has %zu outputs, %zu output slots were passed", api, graph_id, n_out, n_outputs);
        goto done;
    }
    if (has_ext) {
        const void *other = allocator_shared_busy(stream, &ext);
        if (other) {
            ge_error("%s: graph %u: the external allocator of stream %p is also registered for stream %p, which "
                     "still has work in flight; streams sharing one allocator must not run concurrently "
                     "(synchronize stream %p first, or register one allocator per stream)",
                     api, graph_id, (void *)stream, other, other);
            goto done;
        }
    }
    if (has_ext && !dynamic && ws_model_on()) {
        /* A static graph's feature memory for this run (GE's DavinciModel with a refreshable
         * feature base): from the stream's allocator, freed when this submission returns
         * (below), while the stream still needs it. (A dynamic graph's executor allocates as
         * the run goes; the sim models no workspace for it.) */
        ws_block = ext.alloc(ext.ctx, WS_BYTES, &ws_addr);
        if (!ws_block || !ws_addr) {
            ge_error("%s: graph %u: the external allocator of the stream could not provide %d bytes of workspace",
                     api, graph_id, WS_BYTES);
            ws_block = NULL;
            st = GE_OUT_OF_MEMORY;
            goto done;
        }
        ws_note_handout(ws_addr, stream);
        if ((uintptr_t)ws_addr % 32 || sim_check_device_range(ws_addr, WS_BYTES, err, sizeof err) != 1) {
            ge_error("%s: graph %u: the external allocator returned %p for %d bytes of workspace: not 32-byte "
                     "aligned device memory", api, graph_id, ws_addr, WS_BYTES);
            goto done;
        }
    }
    for (size_t i = 0; i < n_out; i++) {
        aa_tensor *t = &outputs[i];
        int caller = t->addr && t->size;
        if (caller && dynamic && (uintptr_t)t->addr % 32) {
            ge_error("%s: output %zu: device address %p is not 32-byte aligned", api, i, t->addr);
            goto done;
        }
        if (dynamic) { /* shapes follow from values: placed when the run executes (pending below) */
            if (!caller) t->owner = NULL, t->addr = NULL, t->size = 0;
            t->dtype = described[i].dtype;
            t->format = AA_FORMAT_ND;
            continue;
        }
        int ok;
        size_t nbytes = sim_shape_nbytes(described[i].dtype, described[i].ndim, described[i].dims, &ok);
        if (caller) { /* caller memory, used as is */
            int r = sim_check_device_range(t->addr, nbytes, err, sizeof err);
            if (t->size < nbytes || r != 1) {
                ge_error("%s: output %zu: %s", api, i,
                         t->size < nbytes ? "the caller's buffer is smaller than the output"
                         : r              ? err
                                          : "address is not device memory");
                goto done;
            }
            if ((uintptr_t)t->addr % 32) {
                ge_error("%s: output %zu: device address %p is not 32-byte aligned", api, i, t->addr);
                goto done;
            }
        } else {
            t->owner = NULL;
            if (alloc_output(g, stream, 1, t, nbytes, err, sizeof err)) {
                ge_error("%s: output %zu: %s", api, i, err);
                st = GE_OUT_OF_MEMORY;
                goto done;
            }
            mine[i] = 1;
        }
        t->dtype = described[i].dtype;
        t->format = AA_FORMAT_ND;
        t->ndim = described[i].ndim;
        memcpy(t->dims, described[i].dims, sizeof t->dims);
    }
    pending_run *pr = NULL;
    if (dynamic) {
        pr = calloc(1, sizeof *pr + n_out * sizeof(aa_tensor));
        if (!pr) {
            ge_error("%s: graph %u: out of host memory", api, graph_id);
            goto done;
        }
        pr->head.magic = BLOCK_MAGIC;
        pr->head.kind = BLOCK_PENDING;
        pr->refs = (int)n_out + 1; /* the slots and the job */
        pr->n = n_out;
    }
    j = job_new(g, inputs, n_inputs, outputs, n_out); /* the caller's memory, if any, in j->out */
    if (!j) {
        free(pr);
        goto done;
    }
    j->stream = stream;
    j->dynamic = dynamic;
    j->pending = pr;
    if (ws_addr) {
        j->ws.addr = ws_addr;
        j->ws.stream = stream;
        j->ws.graph_id = graph_id;
        ws_register(&j->ws); /* before GE frees the block: from now on a handout is noticed */
    }
    aclError rc = sim_enqueue(stream, sim_graph_task_flags(inputs, n_inputs), stream_exec, job_cleanup, j);
    if (rc) {
        const char *m = aclGetRecentErrMsg();
        ge_error("%s: cannot launch on the stream: aclError %d %s", api, rc, m ? m : "");
        job_free(j); /* ends the run's in-flight count, its workspace claim and the job's reference */
        if (pr) free(pr); /* never reached a slot */
    } else {
        st = GE_OK;
        /* Every slot of a dynamic run is pending until aa_session_resolve_outputs; nothing
         * writes them meanwhile (the device thread writes `pr`). */
        for (size_t i = 0; pr && i < n_out; i++) {
            outputs[i].addr = NULL;
            outputs[i].size = 0;
            outputs[i].owner = &pr->head;
        }
    }
    goto submitted;
done:
    run_done(g);
submitted:
    if (st != GE_OK && outputs && mine) release_outputs(outputs, n_outputs < n_out ? n_outputs : n_out, mine);
    /* The host side of the submission returns: GE frees the run's workspace block now, while the
     * run may not even have started (its claim, registered above, stays until the run ends). */
    if (ws_block) ext.free(ext.ctx, ws_block);
    free(mine);
    free(described);
    graph_put(g);
    return st;
}

aa_status aa_session_run_graph_with_stream_async(aa_session *session, uint32_t graph_id, aclrtStream stream,
                                                 const aa_tensor *inputs, size_t n_inputs, aa_tensor *outputs,
                                                 size_t n_outputs) {
    aa_session *s = as_session(session);
    if (!s) {
        ge_error("RunGraphWithStreamAsync: invalid session handle");
        return GE_FAILED;
    }
    pthread_mutex_lock(&s->submit_mu); /* a GeSession does not run two submissions at once */
    aa_status st = stream_async_locked(s, graph_id, stream, inputs, n_inputs, outputs, n_outputs);
    pthread_mutex_unlock(&s->submit_mu);
    return st;
}

/* Describes a dynamic run's pending slots once the stream passed the run (cdefs/ge_session.h).
 * No wait: the device thread placed the outputs before the run's event completed. */
aa_status aa_session_resolve_outputs(aa_tensor *outputs, size_t n_outputs) {
    static const char api[] = "aa_session_resolve_outputs";
    if (n_outputs && !outputs) {
        ge_error("%s: outputs is NULL but n_outputs is %zu", api, n_outputs);
        return (aa_status)AA_GE_PARAM_INVALID;
    }
    aa_status st = GE_OK;
    for (size_t i = 0; i < n_outputs; i++) {
        ge_block *b = outputs[i].owner;
        if (!b || b->magic != BLOCK_MAGIC || b->kind != BLOCK_PENDING) continue; /* described already */
        pending_run *p = (pending_run *)b;
        if (i >= p->n) {
            ge_error("%s: slot %zu is pending but its run has %zu outputs (pass the array "
                     "RunGraphWithStreamAsync filled)", api, i, p->n);
            st = (aa_status)AA_GE_PARAM_INVALID;
            continue;
        }
        if (!__atomic_load_n(&p->done, __ATOMIC_ACQUIRE)) {
            ge_error("%s: output %zu has no address although the stream passed its run: GE has not "
                     "described it (still pending)", api, i);
            st = GE_FAILED;
            continue;
        }
        outputs[i] = p->out[i]; /* its block (owner) passes to the slot */
        memset(&p->out[i], 0, sizeof p->out[i]);
        pending_put(p);
    }
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* RunGraph and RunGraphAsync: GE's own streams, host outputs                                  */

/* GE's own streams never fault: a failed execution is reported through the job, so one bad
 * run does not poison the session. */
static int sync_exec(void *payload, char *err, size_t err_len) {
    run_job *j = payload;
    (void)err;
    (void)err_len;
    j->code = job_run(j, j->msg, sizeof j->msg);
    return 0;
}

aa_status aa_session_run_graph(aa_session *session, uint32_t graph_id, const aa_tensor *inputs, size_t n_inputs,
                               aa_tensor *outputs, size_t *n_outputs) {
    static const char api[] = "RunGraph";
    if (!n_outputs) {
        ge_error("%s: n_outputs is NULL", api);
        return GE_FAILED;
    }
    graph_node *g = lookup(session, graph_id, api);
    if (!g) return GE_FAILED;
    aa_session *s = session;
    aa_status st = GE_FAILED;
    pthread_mutex_lock(&g->run_mu);
    int open = run_gate_locked(g, MODE_RUN_GRAPH, api, &st);
    if (open) g->mode = MODE_RUN_GRAPH;
    pthread_mutex_unlock(&g->run_mu);
    if (!open) {
        graph_put(g);
        return st;
    }

    /* GE's inner session runs one RunGraph at a time and refuses a concurrent one. */
    pthread_mutex_lock(&s->mu);
    int busy = s->running_sync;
    s->running_sync = 1;
    pthread_mutex_unlock(&s->mu);
    if (busy) {
        ge_error("%s: graph %u: the session is already running a graph (GE_SESS_ALREADY_RUNNING)", api, graph_id);
        run_done(g);
        graph_put(g);
        return GE_FAILED;
    }
    size_t n_out = sim_model_n_outputs(g->model);
    aa_tensor *described = calloc(n_out ? n_out : 1, sizeof(aa_tensor));
    if (!described) {
        ge_error("%s: graph %u: out of host memory", api, graph_id);
        goto refused;
    }
    int checked = check_inputs(g, inputs, n_inputs, 0, described, api);
    if (checked == -2) st = GE_OUT_OF_MEMORY;
    if (checked < 0) goto refused;
    if (*n_outputs < n_out || (n_out && !outputs)) {
        ge_error("%s: graph %u has %zu outputs, room for %zu was passed", api, graph_id, n_out, *n_outputs);
        goto refused;
    }
    run_job *j = job_new(g, inputs, n_inputs, NULL, n_out);
    if (!j) goto refused;
    j->dynamic = 1; /* host outputs: placed from onnxruntime's results */
    j->placement = AA_PLACEMENT_HOST;
    uint64_t seq = 0;
    /* The model's own stream: a device thread runs it while this thread waits, as GE blocks. */
    if (sim_enqueue_internal(s->sync_stream, sim_graph_task_flags(inputs, n_inputs), sync_exec, NULL, j, &seq)) {
        ge_error("%s: graph %u: out of host memory", api, graph_id);
        job_free(j); /* ends the run's in-flight count */
        goto out;
    }
    sim_wait_retired(s->sync_stream, seq);
    int code = j->code;
    if (code) {
        ge_error("%s: graph %u: execution failed with aclError %d: %s", api, graph_id, code, j->msg);
        /* RunGraph passes codes <= 9,999,999 through and turns larger ones into FAILED. */
        st = code <= 9999999 ? (aa_status)code : GE_FAILED;
    } else {
        memcpy(outputs, j->out, n_out * sizeof(aa_tensor));
        *n_outputs = n_out;
        st = GE_OK;
    }
    job_free(j);
    goto out;
refused:
    run_done(g);
out:
    free(described);
    pthread_mutex_lock(&s->mu);
    s->running_sync = 0;
    pthread_mutex_unlock(&s->mu);
    graph_put(g);
    return st;
}

/* RunGraphAsync: outputs are allocated and the callback invoked on the device thread (GE's). */
static int async_exec(void *payload, char *err, size_t err_len) {
    run_job *j = payload;
    int code = job_run(j, err, err_len);
    /* The run is over before the callback hears of it: whoever the callback wakes may remove
     * the graph at once (the job's reference keeps the graph's memory until its cleanup). */
    run_done(j->graph);
    j->finished = 1;
    if (code) {
        /* GE's text for the failure, on the thread that calls back (as GEGetErrorMsgV3 is). */
        ge_error("RunGraphAsync: graph %u: execution failed with aclError %d: %s", j->graph->id, code, err);
        j->cb(j->user, GE_FAILED, NULL, 0);
    } else {
        j->cb(j->user, GE_OK, j->out, j->n_out); /* ownership of the outputs passes to the callee */
    }
    return 0;
}

/* RunGraphAsync under the session's submit_mu. A mode conflict sets *conflict: the caller
 * calls back (UNSUPPORTED) once the mutex is released, so a callback may submit again. */
static aa_status async_locked(aa_session *session, uint32_t graph_id, const aa_tensor *inputs, size_t n_inputs,
                              aa_run_callback callback, void *user_data, int *conflict) {
    static const char api[] = "RunGraphAsync";
    graph_node *g = lookup(session, graph_id, api);
    if (!g) return GE_FAILED;
    aa_session *s = session;
    aa_status st = GE_FAILED;
    size_t n_out = sim_model_n_outputs(g->model);
    aa_tensor *described = calloc(n_out ? n_out : 1, sizeof(aa_tensor));
    if (!described) {
        ge_error("%s: graph %u: out of host memory", api, graph_id);
        graph_put(g);
        return GE_FAILED;
    }
    pthread_mutex_lock(&g->run_mu);
    int open = run_gate_locked(g, MODE_RUN_GRAPH_ASYNC, api, &st);
    if (!open && st == GE_UNSUPPORTED) { /* a mode conflict: the callback runs at once, as in GE */
        pthread_mutex_unlock(&g->run_mu);
        *conflict = 1;
        goto out;
    }
    int checked = open ? check_inputs(g, inputs, n_inputs, 0, described, api) : 0;
    if (checked == -2) st = GE_OUT_OF_MEMORY;
    if (open && checked < 0) {
        run_done(g);
    } else if (open) {
        run_job *j = job_new(g, inputs, n_inputs, NULL, n_out);
        if (!j) {
            run_done(g);
            pthread_mutex_unlock(&g->run_mu);
            goto out;
        }
        j->cb = callback;
        j->user = user_data;
        j->dynamic = 1;
        j->placement = AA_PLACEMENT_HOST;
        if (sim_enqueue_internal(s->async_stream, sim_graph_task_flags(inputs, n_inputs), async_exec, job_cleanup, j,
                                 NULL)) {
            ge_error("%s: graph %u: out of host memory", api, graph_id);
            job_free(j); /* ends the run's in-flight count */
        } else {
            g->mode = MODE_RUN_GRAPH_ASYNC; /* recorded right after submission */
            st = GE_OK;
        }
    }
    pthread_mutex_unlock(&g->run_mu);
out:
    free(described);
    graph_put(g);
    return st;
}

aa_status aa_session_run_graph_async(aa_session *session, uint32_t graph_id, const aa_tensor *inputs,
                                     size_t n_inputs, aa_run_callback callback, void *user_data) {
    static const char api[] = "RunGraphAsync";
    if (!callback) {
        ge_error("%s: callback is NULL", api);
        return GE_FAILED;
    }
    aa_session *s = as_session(session);
    if (!s) {
        ge_error("%s: invalid session handle", api);
        return GE_FAILED;
    }
    int conflict = 0;
    pthread_mutex_lock(&s->submit_mu); /* a GeSession does not run two submissions at once */
    aa_status st = async_locked(s, graph_id, inputs, n_inputs, callback, user_data, &conflict);
    pthread_mutex_unlock(&s->submit_mu);
    if (conflict) {
        /* The conflict's text is for this call's caller (GEGetErrorMsgV3 after the return), not
         * for a callback that reads the thread's text: keep it aside while the callback runs. */
        char text[2048];
        aa_ge_get_error_msg(text, sizeof text);
        callback(user_data, GE_UNSUPPORTED, NULL, 0);
        ge_error("%s", text);
    }
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
        if (!e) {
            pthread_mutex_unlock(&g_ge.lock);
            ge_error("RegisterExternalAllocator: out of host memory");
            return GE_FAILED;
        }
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
