/* The simulated AscendCL runtime: devices, contexts, streams, events, memory, host callbacks.
 *
 * Semantics follow AscendCL (acl_rt.h) as documented: the current context is per OS thread;
 * a stream runs its tasks in submission order; events capture the work submitted before their
 * record; a failed task leaves the stream faulted: later tasks are skipped, events behind the
 * failure never report COMPLETE, and the error code surfaces from synchronize/query on the
 * stream (and from synchronize on those events). See ARCHITECTURE.md.
 *
 * Locking: g_rt.lock guards the device table and configuration; each device's `lock` guards
 * its streams, events, report queues and counters; g_mem.lock guards the allocation table.
 * Device threads take the device lock only to pick and retire tasks, never while running one.
 */
#define _GNU_SOURCE
#include "runtime.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

aa_sim_stats g_sim_stats;

/* ------------------------------------------------------------------------------------------ */
/* Errors                                                                                      */

static __thread char tls_err[512];
static __thread char tls_err_out[512];

void sim_set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_err, sizeof tls_err, fmt, ap);
    va_end(ap);
}

const char *aclGetRecentErrMsg(void) {
    if (!tls_err[0]) return NULL;
    memcpy(tls_err_out, tls_err, sizeof tls_err_out);
    tls_err[0] = 0;
    return tls_err_out;
}

#define FAIL(code, ...)            \
    do {                           \
        sim_set_error(__VA_ARGS__); \
        return (code);             \
    } while (0)

/* ------------------------------------------------------------------------------------------ */
/* Time                                                                                        */

uint64_t sim_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void sim_sleep_us(uint32_t us) {
    if (!us) return;
    struct timespec ts = {us / 1000000u, (long)(us % 1000000u) * 1000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static void deadline_after_ms(struct timespec *ts, int32_t ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void cond_init_monotonic(pthread_cond_t *cv) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

/* ------------------------------------------------------------------------------------------ */
/* Objects                                                                                     */

typedef struct sim_device sim_device;
typedef struct sim_stream sim_stream;
typedef struct sim_event sim_event;

enum { TASK_EXEC, TASK_RECORD, TASK_WAIT, TASK_CALLBACK };

typedef struct sim_task {
    struct sim_task *next;
    int kind;
    int flags;
    uint64_t seq;
    int32_t fault_code;  /* injected failure */
    uint32_t delay_us;   /* injected delay */
    sim_exec_fn exec;
    sim_cleanup_fn cleanup;
    void *payload;
    sim_event *event;    /* RECORD / WAIT */
    uint64_t gen;        /* RECORD: the record generation; WAIT: the generation waited for */
    aclrtCallback cb_fn; /* CALLBACK */
    void *cb_data;
    int cb_block;
    uint64_t cb_thread;
} sim_task;

typedef struct sim_inject {
    struct sim_inject *next;
    uint64_t seq;
    int32_t code;
    uint32_t delay_us;
} sim_inject;

typedef struct sim_context {
    sim_device *dev;
    sim_stream *default_stream;
    int is_explicit;
    uint32_t magic;
} sim_context;

struct sim_stream {
    uint32_t magic;
    sim_device *dev;
    sim_context *ctx;
    sim_stream *next; /* device list */
    sim_task *head, *tail;
    uint64_t submitted;   /* seq of the last submitted task */
    uint64_t completed;   /* seq of the last retired task (run or skipped) */
    int running;          /* a device thread holds its head task */
    int held;             /* test gate */
    int internal;         /* GE-internal or default stream: not counted */
    int destroying;
    int32_t fault;        /* sticky error, 0 = healthy */
    uint64_t fault_seq;
    char fault_msg[1024];
    int subscribed;
    uint64_t sub_thread;
    sim_inject *injects;
    int refs; /* 1 for the handle + 1 per event whose latest record is on this stream */
};

struct sim_event {
    uint32_t magic;
    uint32_t flags;
    sim_device *dev;
    sim_stream *stream;      /* stream of the latest record */
    uint64_t seq;            /* that record task's seq */
    uint64_t record_gen;     /* 0 = never recorded */
    uint64_t done_gen;
    uint64_t timestamp_ns;
    int hw;                  /* holds a hardware event slot */
    int refs;                /* 1 for the handle + 1 per pending record/wait task */
    int destroyed;
};

typedef struct report_item {
    struct report_item *next;
    aclrtCallback fn;
    void *data;
    int *done_flag; /* BLOCK callbacks: set when processed */
    const void *stream; /* the stream that launched it (dropped when that stream unsubscribes) */
} report_item;

typedef struct report_queue {
    struct report_queue *next;
    uint64_t thread_id;
    int n_streams;
    report_item *head, *tail;
} report_queue;

struct sim_device {
    int32_t id;               /* logical (over ASCEND_RT_VISIBLE_DEVICES) */
    int32_t phys;             /* physical */
    pthread_mutex_t lock;
    pthread_cond_t work_cv;   /* device threads: a stream may have become runnable */
    pthread_cond_t done_cv;   /* waiters: a task retired, an event slot freed, a report processed */
    sim_stream *streams;
    sim_stream *rr;           /* round-robin cursor */
    pthread_t *threads;
    uint32_t n_threads;
    uint32_t idle;            /* device threads waiting on work_cv */
    uint32_t waking;          /* signals sent to idle threads not yet awake */
    uint32_t spinning;        /* threads that found no work and look again before sleeping */
    uint64_t enqueued;        /* tasks enqueued so far (atomic reads by spinning threads) */
    int shutdown;
    uint64_t capacity;
    uint64_t used;
    uint32_t hw_events;
    int set_refs;             /* aclrtSetDevice reference count */
    sim_context *default_ctx;
    report_queue *reports;
};

#define MAGIC_STREAM 0x5354524du
#define MAGIC_EVENT 0x4556454eu
#define MAGIC_CTX 0x43545854u

static struct {
    pthread_mutex_t lock;
    int started;
    int acl_inited;
    aa_sim_config cfg;
    int configured;          /* aa_sim_configure was called: it wins over the environment */
    aa_sim_timing timing;
    sim_device *devs;        /* the visible devices, indexed by logical id */
    uint32_t n_visible;
} g_rt = {.lock = PTHREAD_MUTEX_INITIALIZER,
          .cfg = {1, 2, 4ull << 30, 1023, 1}};

static __thread sim_context *tls_ctx;

/* ------------------------------------------------------------------------------------------ */
/* Poisoning (aa_sim_config.poison): every block handed out and every block given back is
 * filled with the bytes F5 FF repeated. The allocator does not know dtypes, so the pattern is
 * one that reads as NaN in every float type a block can hold (float16, bfloat16, float32 and
 * float64 all see an all-ones exponent and a non-zero mantissa at their natural alignment) and
 * as implausible integers otherwise (int8 -11/-1, int32 -655371, ...). A stale read then shows
 * up as a wrong answer, never as plausible data. Fixed when the runtime starts. */
static int g_poison;

int sim_poison_enabled(void) { return __atomic_load_n(&g_poison, __ATOMIC_RELAXED); }

void sim_poison_fill(void *ptr, size_t n) {
    if (!ptr || !__atomic_load_n(&g_poison, __ATOMIC_RELAXED)) return;
    unsigned char *p = ptr;
    const uint64_t word = 0xFFF5FFF5FFF5FFF5ull; /* little-endian bytes F5 FF F5 FF ... */
    size_t i = 0;
    /* Blocks start 64-byte aligned, so the pattern's phase matches every element's alignment. */
    for (; i + 8 <= n; i += 8) memcpy(p + i, &word, 8);
    for (; i < n; i++) p[i] = (i & 1) ? 0xFF : 0xF5;
}

static void *device_thread(void *arg);

int aa_sim_configure(const aa_sim_config *config) {
    pthread_mutex_lock(&g_rt.lock);
    if (g_rt.started) {
        pthread_mutex_unlock(&g_rt.lock);
        return -1;
    }
    g_rt.cfg = *config;
    g_rt.configured = 1;
    if (!g_rt.cfg.device_count) g_rt.cfg.device_count = 1;
    if (!g_rt.cfg.workers) g_rt.cfg.workers = 2;
    if (!g_rt.cfg.memory_bytes) g_rt.cfg.memory_bytes = 4ull << 30;
    if (!g_rt.cfg.max_events) g_rt.cfg.max_events = 1023;
    if (!g_rt.cfg.engine_threads) g_rt.cfg.engine_threads = 1;
    pthread_mutex_unlock(&g_rt.lock);
    return 0;
}

void aa_sim_get_config(aa_sim_config *config) {
    pthread_mutex_lock(&g_rt.lock);
    *config = g_rt.cfg;
    pthread_mutex_unlock(&g_rt.lock);
}

void aa_sim_set_timing(const aa_sim_timing *timing) {
    pthread_mutex_lock(&g_rt.lock);
    g_rt.timing = *timing;
    pthread_mutex_unlock(&g_rt.lock);
}

aa_sim_timing sim_timing(void) {
    pthread_mutex_lock(&g_rt.lock);
    aa_sim_timing t = g_rt.timing;
    pthread_mutex_unlock(&g_rt.lock);
    return t;
}

void aa_sim_get_stats(aa_sim_stats *stats) {
    stats->device_allocations = __atomic_load_n(&g_sim_stats.device_allocations, __ATOMIC_RELAXED);
    stats->device_bytes = __atomic_load_n(&g_sim_stats.device_bytes, __ATOMIC_RELAXED);
    stats->host_allocations = __atomic_load_n(&g_sim_stats.host_allocations, __ATOMIC_RELAXED);
    stats->contexts = __atomic_load_n(&g_sim_stats.contexts, __ATOMIC_RELAXED);
    stats->streams = __atomic_load_n(&g_sim_stats.streams, __ATOMIC_RELAXED);
    stats->events = __atomic_load_n(&g_sim_stats.events, __ATOMIC_RELAXED);
    stats->sessions = __atomic_load_n(&g_sim_stats.sessions, __ATOMIC_RELAXED);
    stats->graphs = __atomic_load_n(&g_sim_stats.graphs, __ATOMIC_RELAXED);
    stats->models = __atomic_load_n(&g_sim_stats.models, __ATOMIC_RELAXED);
    stats->ge_outputs = __atomic_load_n(&g_sim_stats.ge_outputs, __ATOMIC_RELAXED);
    stats->tasks_submitted = __atomic_load_n(&g_sim_stats.tasks_submitted, __ATOMIC_RELAXED);
    stats->tasks_completed = __atomic_load_n(&g_sim_stats.tasks_completed, __ATOMIC_RELAXED);
    stats->tasks_failed = __atomic_load_n(&g_sim_stats.tasks_failed, __ATOMIC_RELAXED);
    stats->graph_runs = __atomic_load_n(&g_sim_stats.graph_runs, __ATOMIC_RELAXED);
}

static sim_stream *stream_new(sim_device *d, sim_context *ctx, int internal);

int sim_graph_task_flags(const aa_tensor *inputs, size_t n_inputs) {
    int64_t n = (n_inputs && inputs[0].ndim > 0) ? inputs[0].dims[0] : 1;
    if (n < 1) n = 1;
    if (n > 0x7fffff) n = 0x7fffff;
    return SIM_TASK_GRAPH | (int)(n << SIM_TASK_SAMPLES_SHIFT);
}

/* ASCEND_RT_VISIBLE_DEVICES as ACL reads it: ascending physical ids, comma-separated; parsing
 * stops at the first bad character, out-of-range or non-ascending id. Unset: every device. */
static uint32_t visible_devices(uint32_t physical, uint32_t *phys) {
    const char *env = getenv("ASCEND_RT_VISIBLE_DEVICES");
    if (!env) {
        for (uint32_t i = 0; i < physical; i++) phys[i] = i;
        return physical;
    }
    uint32_t n = 0;
    const char *p = env;
    while (*p >= '0' && *p <= '9' && n < physical) {
        uint64_t v = 0;
        while (*p >= '0' && *p <= '9' && v <= physical) v = v * 10 + (uint64_t)(*p++ - '0');
        if (v >= physical || (n && v <= phys[n - 1])) break;
        phys[n++] = (uint32_t)v;
        if (*p != ',') break;
        p++;
    }
    return n;
}

/* Devices start on first use (AscendCL works without aclInit too, as GE's samples show). */
static void runtime_start(void) {
    pthread_mutex_lock(&g_rt.lock);
    if (g_rt.started) {
        pthread_mutex_unlock(&g_rt.lock);
        return;
    }
    const char *env_count = getenv("ASCEND_ASYNC_SIM_DEVICES");
    if (!g_rt.configured && env_count && atoi(env_count) > 0) g_rt.cfg.device_count = (uint32_t)atoi(env_count);
    const char *env_poison = getenv("ASCEND_ASYNC_SIM_POISON");
    if (env_poison && !strcmp(env_poison, "1")) g_rt.cfg.poison = 1; /* turns it on, whatever was configured */
    __atomic_store_n(&g_poison, g_rt.cfg.poison ? 1 : 0, __ATOMIC_RELAXED);
    uint32_t *phys = calloc(g_rt.cfg.device_count, sizeof(uint32_t));
    uint32_t n = g_rt.n_visible = visible_devices(g_rt.cfg.device_count, phys);
    g_rt.devs = calloc(n ? n : 1, sizeof(sim_device));
    for (uint32_t i = 0; i < n; i++) {
        sim_device *d = &g_rt.devs[i];
        d->id = (int32_t)i; /* the logical id, as aclrtGetDevice reports it */
        d->phys = (int32_t)phys[i];
        pthread_mutex_init(&d->lock, NULL);
        cond_init_monotonic(&d->work_cv);
        cond_init_monotonic(&d->done_cv);
        d->capacity = g_rt.cfg.memory_bytes;
        d->n_threads = g_rt.cfg.workers;
        d->threads = calloc(d->n_threads, sizeof(pthread_t));
        for (uint32_t t = 0; t < d->n_threads; t++) {
            pthread_attr_t a;
            pthread_attr_init(&a);
            pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
            pthread_create(&d->threads[t], &a, device_thread, d);
            pthread_attr_destroy(&a);
        }
    }
    free(phys);
    __atomic_store_n(&g_rt.started, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g_rt.lock);
}

static sim_device *device_get(int32_t id) {
    runtime_start();
    if (id < 0 || (uint32_t)id >= g_rt.n_visible) return NULL;
    return &g_rt.devs[id];
}

/* ------------------------------------------------------------------------------------------ */
/* Init                                                                                        */

aclError aclInit(const char *configPath) {
    (void)configPath;
    runtime_start();
    pthread_mutex_lock(&g_rt.lock);
    int again = g_rt.acl_inited;
    g_rt.acl_inited = 1;
    pthread_mutex_unlock(&g_rt.lock);
    if (again) FAIL(ACL_ERROR_REPEAT_INITIALIZE, "aclInit: already initialized");
    return ACL_SUCCESS;
}

aclError aclFinalize(void) {
    pthread_mutex_lock(&g_rt.lock);
    int was = g_rt.acl_inited;
    g_rt.acl_inited = 0;
    pthread_mutex_unlock(&g_rt.lock);
    if (!was) FAIL(ACL_ERROR_REPEAT_FINALIZE, "aclFinalize: not initialized");
    return ACL_SUCCESS;
}

/* ------------------------------------------------------------------------------------------ */
/* Devices and contexts                                                                        */

aclError aclrtGetDeviceCount(uint32_t *count) {
    if (!count) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtGetDeviceCount: count is NULL");
    runtime_start();
    *count = g_rt.n_visible;
    return ACL_SUCCESS;
}

static sim_context *context_new(sim_device *d, int is_explicit) {
    sim_context *c = calloc(1, sizeof *c);
    c->dev = d;
    c->magic = MAGIC_CTX;
    c->is_explicit = is_explicit;
    c->default_stream = stream_new(d, c, 1);
    if (is_explicit) SIM_STAT_ADD(contexts, 1);
    return c;
}

static void stream_free(sim_stream *s);
static void report_drop_locked(sim_device *d, const sim_stream *s);

static void context_free(sim_context *c) {
    sim_device *d = c->dev;
    /* Streams created in the context go with it (after their work drains). */
    for (;;) {
        pthread_mutex_lock(&d->lock);
        sim_stream *victim = NULL;
        for (sim_stream *s = d->streams; s; s = s->next)
            if (s->ctx == c && !s->destroying) {
                victim = s;
                break;
            }
        pthread_mutex_unlock(&d->lock);
        if (!victim) break;
        stream_free(victim);
    }
    if (c->is_explicit) SIM_STAT_ADD(contexts, -1);
    c->magic = 0;
    free(c);
}

aclError aclrtSetDevice(int32_t deviceId) {
    sim_device *d = device_get(deviceId);
    if (!d) FAIL(ACL_ERROR_RT_INVALID_DEVICEID, "aclrtSetDevice: no device %d", (int)deviceId);
    pthread_mutex_lock(&d->lock);
    while (!d->default_ctx) {
        /* context_new takes the device lock itself; a racing thread may win meanwhile. */
        pthread_mutex_unlock(&d->lock);
        sim_context *c = context_new(d, 0);
        pthread_mutex_lock(&d->lock);
        if (!d->default_ctx) {
            d->default_ctx = c;
        } else {
            pthread_mutex_unlock(&d->lock);
            context_free(c);
            pthread_mutex_lock(&d->lock);
        }
    }
    d->set_refs++;
    tls_ctx = d->default_ctx;
    pthread_mutex_unlock(&d->lock);
    return ACL_SUCCESS;
}

aclError aclrtResetDevice(int32_t deviceId) {
    sim_device *d = device_get(deviceId);
    if (!d) FAIL(ACL_ERROR_RT_INVALID_DEVICEID, "aclrtResetDevice: no device %d", (int)deviceId);
    pthread_mutex_lock(&d->lock);
    sim_context *release = NULL;
    if (d->set_refs > 0 && --d->set_refs == 0) {
        release = d->default_ctx;
        d->default_ctx = NULL;
    }
    pthread_mutex_unlock(&d->lock);
    if (tls_ctx && tls_ctx == release) tls_ctx = NULL;
    if (release) context_free(release);
    return ACL_SUCCESS;
}

aclError aclrtGetDevice(int32_t *deviceId) {
    if (!deviceId) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtGetDevice: deviceId is NULL");
    if (!tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "aclrtGetDevice: no current context on this thread");
    *deviceId = tls_ctx->dev->id;
    return ACL_SUCCESS;
}

aclError sim_current_device(int32_t *device_id) { return aclrtGetDevice(device_id); }

aclError aclrtGetRunMode(aclrtRunMode *runMode) {
    if (!runMode) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtGetRunMode: runMode is NULL");
    *runMode = ACL_HOST;
    return ACL_SUCCESS;
}

aclError aclrtCreateContext(aclrtContext *context, int32_t deviceId) {
    if (!context) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtCreateContext: context is NULL");
    sim_device *d = device_get(deviceId);
    if (!d) FAIL(ACL_ERROR_RT_INVALID_DEVICEID, "aclrtCreateContext: no device %d", (int)deviceId);
    sim_context *c = context_new(d, 1);
    tls_ctx = c;
    *context = c;
    return ACL_SUCCESS;
}

static sim_context *as_ctx(aclrtContext c) {
    sim_context *x = (sim_context *)c;
    return (x && x->magic == MAGIC_CTX) ? x : NULL;
}

aclError aclrtDestroyContext(aclrtContext context) {
    sim_context *c = as_ctx(context);
    if (!c) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtDestroyContext: invalid context");
    if (!c->is_explicit)
        FAIL(ACL_ERROR_RT_PARAM_INVALID, "aclrtDestroyContext: a device's default context cannot be destroyed");
    if (tls_ctx == c) tls_ctx = NULL;
    context_free(c);
    return ACL_SUCCESS;
}

aclError aclrtSetCurrentContext(aclrtContext context) {
    sim_context *c = as_ctx(context);
    if (!c) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtSetCurrentContext: invalid context");
    tls_ctx = c;
    return ACL_SUCCESS;
}

aclError aclrtGetCurrentContext(aclrtContext *context) {
    if (!context) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtGetCurrentContext: context is NULL");
    if (!tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "aclrtGetCurrentContext: no current context on this thread");
    *context = tls_ctx;
    return ACL_SUCCESS;
}

/* ------------------------------------------------------------------------------------------ */
/* Streams                                                                                     */

static sim_stream *stream_new(sim_device *d, sim_context *ctx, int internal) {
    sim_stream *s = calloc(1, sizeof *s);
    s->magic = MAGIC_STREAM;
    s->dev = d;
    s->ctx = ctx;
    s->internal = internal;
    s->refs = 1;
    pthread_mutex_lock(&d->lock);
    s->next = d->streams;
    d->streams = s;
    pthread_mutex_unlock(&d->lock);
    if (!internal) SIM_STAT_ADD(streams, 1);
    return s;
}

static sim_stream *as_stream(aclrtStream s) {
    sim_stream *x = (sim_stream *)s;
    return (x && x->magic == MAGIC_STREAM && !x->destroying) ? x : NULL;
}

/* NULL = the current context's default stream. Work submitted from a thread whose context does
 * not own the stream's device is refused, as on the real runtime. */
static aclError resolve_stream(aclrtStream stream, const char *api, sim_stream **out) {
    if (!tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "%s: no current context on this thread", api);
    if (!stream) {
        *out = tls_ctx->default_stream;
        return ACL_SUCCESS;
    }
    sim_stream *s = as_stream(stream);
    if (!s) FAIL(ACL_ERROR_RT_INVALID_HANDLE, "%s: invalid stream handle", api);
    if (s->dev != tls_ctx->dev)
        FAIL(ACL_ERROR_RT_STREAM_CONTEXT, "%s: the stream belongs to device %d, the current context to device %d",
             api, (int)s->dev->id, (int)tls_ctx->dev->id);
    *out = s;
    return ACL_SUCCESS;
}

int32_t sim_stream_device(aclrtStream stream) {
    sim_stream *s = as_stream(stream);
    return s ? s->dev->id : -1;
}

aclError aclrtCreateStream(aclrtStream *stream) {
    if (!stream) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtCreateStream: stream is NULL");
    if (!tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "aclrtCreateStream: no current context on this thread");
    *stream = stream_new(tls_ctx->dev, tls_ctx, 0);
    return ACL_SUCCESS;
}

aclError aclrtCreateStreamWithConfig(aclrtStream *stream, uint32_t priority, uint32_t flag) {
    (void)priority;
    (void)flag; /* FAST_LAUNCH / FAST_SYNC change only timing on hardware */
    return aclrtCreateStream(stream);
}

aclError sim_stream_create_internal(int32_t device_id, aclrtStream *out) {
    sim_device *d = device_get(device_id);
    if (!d) FAIL(ACL_ERROR_RT_INVALID_DEVICEID, "no device %d", (int)device_id);
    *out = stream_new(d, NULL, 1);
    return ACL_SUCCESS;
}

static void event_unref_locked(sim_event *e);

/* Waits for the stream's work to drain (releasing a held gate), then frees it. */
static void stream_unref_locked(sim_stream *s) {
    if (--s->refs > 0) return;
    while (s->injects) {
        sim_inject *n = s->injects->next;
        free(s->injects);
        s->injects = n;
    }
    free(s);
}

static void stream_free(sim_stream *s) {
    sim_device *d = s->dev;
    int s_internal = s->internal;
    pthread_mutex_lock(&d->lock);
    s->destroying = 1;
    s->held = 0;
    pthread_cond_broadcast(&d->work_cv);
    while (s->head || s->running) pthread_cond_wait(&d->done_cv, &d->lock);
    for (sim_stream **pp = &d->streams; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    if (d->rr == s) d->rr = NULL;
    if (s->subscribed) {
        report_drop_locked(d, s);
        for (report_queue *q = d->reports; q; q = q->next)
            if (q->thread_id == s->sub_thread) q->n_streams--;
    }
    s->magic = 0; /* the handle is dead; events recorded on it may still read its fault */
    stream_unref_locked(s);
    pthread_mutex_unlock(&d->lock);
    if (!s_internal) SIM_STAT_ADD(streams, -1);
}

aclError aclrtDestroyStream(aclrtStream stream) {
    sim_stream *s = as_stream(stream);
    if (!s) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtDestroyStream: invalid stream handle");
    if (s->internal) FAIL(ACL_ERROR_RT_PARAM_INVALID, "aclrtDestroyStream: a default stream cannot be destroyed");
    stream_free(s);
    return ACL_SUCCESS;
}

aclError sim_stream_destroy_internal(aclrtStream stream) {
    sim_stream *s = as_stream(stream);
    if (!s) return ACL_ERROR_INVALID_PARAM;
    stream_free(s);
    return ACL_SUCCESS;
}

static int stream_idle(const sim_stream *s) { return !s->head && !s->running; }

static aclError stream_fault_locked(sim_stream *s, const char *api) {
    sim_set_error("%s: stream failed: %s", api, s->fault_msg[0] ? s->fault_msg : "device task error");
    return s->fault;
}

/* Wait until the stream drains; timeout_ms -1 = forever, 0 = check now. */
static aclError stream_sync(sim_stream *s, int32_t timeout_ms, const char *api) {
    sim_device *d = s->dev;
    struct timespec dl;
    if (timeout_ms > 0) deadline_after_ms(&dl, timeout_ms);
    pthread_mutex_lock(&d->lock);
    aclError rc = ACL_SUCCESS;
    while (!stream_idle(s)) {
        if (timeout_ms == 0) {
            rc = ACL_ERROR_RT_STREAM_SYNC_TIMEOUT;
            break;
        }
        if (timeout_ms < 0) {
            pthread_cond_wait(&d->done_cv, &d->lock);
        } else if (pthread_cond_timedwait(&d->done_cv, &d->lock, &dl) == ETIMEDOUT && !stream_idle(s)) {
            rc = ACL_ERROR_RT_STREAM_SYNC_TIMEOUT;
            break;
        }
    }
    if (s->fault) {
        /* A faulted stream reports its error as soon as it is known, drained or not. */
        rc = stream_fault_locked(s, api);
    } else if (rc) {
        sim_set_error("%s: timed out after %d ms", api, (int)timeout_ms);
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

aclError aclrtSynchronizeStream(aclrtStream stream) {
    sim_stream *s;
    aclError rc = resolve_stream(stream, "aclrtSynchronizeStream", &s);
    if (rc) return rc;
    return stream_sync(s, -1, "aclrtSynchronizeStream");
}

aclError aclrtSynchronizeStreamWithTimeout(aclrtStream stream, int32_t timeout) {
    if (timeout < -1) FAIL(ACL_ERROR_RT_PARAM_INVALID, "aclrtSynchronizeStreamWithTimeout: timeout %d < -1", (int)timeout);
    sim_stream *s;
    aclError rc = resolve_stream(stream, "aclrtSynchronizeStreamWithTimeout", &s);
    if (rc) return rc;
    return stream_sync(s, timeout, "aclrtSynchronizeStreamWithTimeout");
}

aclError aclrtStreamQuery(aclrtStream stream, aclrtStreamStatus *status) {
    if (!status) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtStreamQuery: status is NULL");
    sim_stream *s;
    aclError rc = resolve_stream(stream, "aclrtStreamQuery", &s);
    if (rc) return rc;
    sim_device *d = s->dev;
    pthread_mutex_lock(&d->lock);
    if (s->fault) {
        rc = stream_fault_locked(s, "aclrtStreamQuery");
    } else {
        *status = stream_idle(s) ? ACL_STREAM_STATUS_COMPLETE : ACL_STREAM_STATUS_NOT_READY;
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

aclError aclrtSynchronizeDevice(void) {
    if (!tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "aclrtSynchronizeDevice: no current context on this thread");
    sim_device *d = tls_ctx->dev;
    aclError first = ACL_SUCCESS;
    pthread_mutex_lock(&d->lock);
    for (;;) {
        int busy = 0;
        for (sim_stream *s = d->streams; s; s = s->next) {
            if (!stream_idle(s) && !s->held) busy = 1;
            if (s->fault && !first && !s->internal) first = s->fault;
        }
        if (!busy) break;
        pthread_cond_wait(&d->done_cv, &d->lock);
    }
    pthread_mutex_unlock(&d->lock);
    return first;
}

/* ------------------------------------------------------------------------------------------ */
/* Task queueing                                                                               */

static sim_task *task_new(int kind) {
    sim_task *t = calloc(1, sizeof *t);
    t->kind = kind;
    return t;
}

/* Appends under the device lock; applies injected faults/delays. */
static void enqueue_locked(sim_stream *s, sim_task *t) {
    sim_device *d = s->dev;
    t->seq = ++s->submitted;
    for (sim_inject **pp = &s->injects; *pp;) {
        sim_inject *in = *pp;
        if (in->seq == t->seq) {
            if (in->code) t->fault_code = in->code;
            t->delay_us += in->delay_us;
            *pp = in->next;
            free(in);
        } else {
            pp = &in->next;
        }
    }
    if (s->tail)
        s->tail->next = t;
    else
        s->head = t;
    s->tail = t;
    SIM_STAT_ADD(tasks_submitted, 1);
    /* Ring the doorbell only when it helps: a thread already running this stream takes the
     * task next, and a thread already being woken will find it. Saves a futex wake per task
     * when a run's copies, graph and event are enqueued back to back. */
    __atomic_store_n(&d->enqueued, d->enqueued + 1, __ATOMIC_RELEASE);
    if (!s->running && !d->spinning && d->idle > d->waking) {
        d->waking++;
        pthread_cond_signal(&d->work_cv);
    }
}

static uint64_t enqueue_exec(sim_stream *s, int flags, sim_exec_fn exec, sim_cleanup_fn cleanup, void *payload) {
    sim_task *t = task_new(TASK_EXEC);
    t->flags = flags;
    t->exec = exec;
    t->cleanup = cleanup;
    t->payload = payload;
    pthread_mutex_lock(&s->dev->lock);
    enqueue_locked(s, t);
    uint64_t seq = t->seq;
    pthread_mutex_unlock(&s->dev->lock);
    return seq;
}

aclError sim_enqueue(aclrtStream stream, int flags, sim_exec_fn exec, sim_cleanup_fn cleanup,
                     void *payload) {
    sim_stream *s;
    aclError rc = resolve_stream(stream, "sim_enqueue", &s);
    if (rc) return rc;
    enqueue_exec(s, flags, exec, cleanup, payload);
    return ACL_SUCCESS;
}

/* GE's own streams: no context check (GE drives them from its own threads). */
aclError sim_enqueue_internal(aclrtStream stream, int flags, sim_exec_fn exec, sim_cleanup_fn cleanup,
                              void *payload, uint64_t *seq) {
    sim_stream *s = as_stream(stream);
    if (!s) FAIL(ACL_ERROR_RT_INVALID_HANDLE, "sim_enqueue_internal: invalid stream handle");
    uint64_t n = enqueue_exec(s, flags, exec, cleanup, payload);
    if (seq) *seq = n;
    return ACL_SUCCESS;
}

void sim_wait_retired(aclrtStream stream, uint64_t seq) {
    sim_stream *s = (sim_stream *)stream;
    pthread_mutex_lock(&s->dev->lock);
    while (s->completed < seq) pthread_cond_wait(&s->dev->done_cv, &s->dev->lock);
    pthread_mutex_unlock(&s->dev->lock);
}

/* ------------------------------------------------------------------------------------------ */
/* Device threads                                                                              */

static int event_done_locked(const sim_event *e, uint64_t gen) { return e->done_gen >= gen; }

static int stream_runnable_locked(const sim_stream *s) {
    if (!s->head || s->running || s->held) return 0;
    const sim_task *t = s->head;
    if (t->kind == TASK_WAIT && !s->fault && !s->destroying) return event_done_locked(t->event, t->gen);
    return 1;
}

static int runnable_count_locked(sim_device *d) {
    int n = 0;
    for (sim_stream *s = d->streams; s; s = s->next) n += stream_runnable_locked(s);
    return n;
}

static sim_stream *pick_locked(sim_device *d) {
    /* Round robin so one busy stream cannot starve the others. */
    sim_stream *start = d->rr && d->rr->next ? d->rr->next : d->streams;
    sim_stream *s = start;
    if (!s) return NULL;
    do {
        if (stream_runnable_locked(s)) {
            d->rr = s;
            return s;
        }
        s = s->next ? s->next : d->streams;
    } while (s != start);
    return NULL;
}

static void report_push_locked(sim_device *d, sim_task *t, const sim_stream *s, int *done_flag) {
    for (report_queue *q = d->reports; q; q = q->next) {
        if (q->thread_id != t->cb_thread) continue;
        report_item *it = calloc(1, sizeof *it);
        it->fn = t->cb_fn;
        it->data = t->cb_data;
        it->done_flag = done_flag;
        it->stream = s;
        if (q->tail)
            q->tail->next = it;
        else
            q->head = it;
        q->tail = it;
        pthread_cond_broadcast(&d->done_cv);
        return;
    }
    if (done_flag) *done_flag = 1; /* nobody listens any more */
}

/* How long a device thread that ran out of work looks for more before it sleeps: the gaps
 * between the tasks of one host submission (measured: 5 us is too short, 10-20 us catches
 * them; c=64 on a tiny graph went from ~27k to ~32k runs/s, with less CPU per run). */
#define SPIN_NS 20000u

static void *device_thread(void *arg) {
    sim_device *d = arg;
    char err[1024];
    /* Named, so that tools (and the benchmarks) can tell the simulated device's CPU time from
     * the host's: on an NPU this work is not host CPU at all. */
    char name[16];
    snprintf(name, sizeof name, "aa-sim-dev%d", (int)d->id);
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&d->lock);
    int spun = 0;
    for (;;) {
        sim_stream *s = pick_locked(d);
        if (!s && !spun && !d->spinning) {
            /* A host enqueues a run as a few tasks back to back (copies, graph, event): look
             * again for a few microseconds before sleeping, so those tasks need no futex wake
             * each (a doorbell on an NPU is one register write). One thread at a time. */
            uint64_t seen = d->enqueued;
            d->spinning = 1;
            pthread_mutex_unlock(&d->lock);
            uint64_t t0 = sim_now_ns();
            while (__atomic_load_n(&d->enqueued, __ATOMIC_ACQUIRE) == seen && sim_now_ns() - t0 < SPIN_NS) {
            }
            pthread_mutex_lock(&d->lock);
            d->spinning = 0;
            spun = 1;
            /* Enqueues skipped the doorbell meanwhile: if more streams became runnable than
             * this thread takes, wake a sleeping one. */
            if (d->idle > d->waking && runnable_count_locked(d) > 1) {
                d->waking++;
                pthread_cond_signal(&d->work_cv);
            }
            continue;
        }
        if (!s) {
            d->idle++;
            pthread_cond_wait(&d->work_cv, &d->lock);
            d->idle--;
            if (d->waking) d->waking--;
            spun = 0;
            continue;
        }
        spun = 0;
        sim_task *t = s->head;
        s->head = t->next;
        if (!s->head) s->tail = NULL;
        s->running = 1;
        int skip = s->fault != 0;
        pthread_mutex_unlock(&d->lock);

        int code = 0;
        err[0] = 0;
        int executed = 0;
        if (!skip) {
            aa_sim_timing tm = sim_timing();
            uint64_t t0 = sim_now_ns();
            sim_sleep_us(tm.launch_latency_us + t->delay_us);
            if (t->fault_code) {
                code = t->fault_code;
                snprintf(err, sizeof err, "injected fault %d on task %llu", (int)code,
                         (unsigned long long)t->seq);
            } else if (t->kind == TASK_EXEC) {
                /* A task body may allocate device memory (a dynamic graph's outputs come from
                 * the stream's external allocator): it runs in its stream's context. */
                tls_ctx = s->ctx;
                code = t->exec ? t->exec(t->payload, err, sizeof err) : 0;
                tls_ctx = NULL;
                executed = 1;
                if (t->flags & SIM_TASK_GRAPH) {
                    SIM_STAT_ADD(graph_runs, 1);
                    uint64_t spent = (sim_now_ns() - t0) / 1000u;
                    uint64_t samples = (uint64_t)(t->flags >> SIM_TASK_SAMPLES_SHIFT);
                    uint64_t want = tm.min_graph_us + (uint64_t)tm.per_sample_us * samples;
                    if (want > spent) sim_sleep_us((uint32_t)(want - spent));
                }
            }
        }

        /* A task gives back what it holds before its completion becomes visible: whoever
         * synchronizes on it may free what the payload referenced (a removed graph). */
        if (t->cleanup) t->cleanup(t->payload, executed);
        t->cleanup = NULL;

        int cb_done = 0;
        pthread_mutex_lock(&d->lock);
        if (!skip && t->kind == TASK_CALLBACK && !code) {
            report_push_locked(d, t, s, t->cb_block ? &cb_done : NULL);
            /* A blocking callback holds the stream until the report thread ran it. */
            while (t->cb_block && !cb_done) pthread_cond_wait(&d->done_cv, &d->lock);
        }
        if (code && !s->fault) {
            s->fault = code;
            s->fault_seq = t->seq;
            snprintf(s->fault_msg, sizeof s->fault_msg, "%s", err[0] ? err : "device task failed");
            SIM_STAT_ADD(tasks_failed, 1);
        }
        if (t->kind == TASK_RECORD || t->kind == TASK_WAIT) {
            sim_event *e = t->event;
            if (t->kind == TASK_RECORD && !s->fault && t->gen > e->done_gen) {
                /* Release: a thread that reads the event COMPLETE without the lock
                 * (aclrtQueryEventStatus, acquire) sees every write of the work before it. */
                e->timestamp_ns = sim_now_ns();
                __atomic_store_n(&e->done_gen, t->gen, __ATOMIC_RELEASE);
            }
            event_unref_locked(e);
        }
        s->completed = t->seq;
        s->running = 0;
        SIM_STAT_ADD(tasks_completed, 1);
        pthread_cond_broadcast(&d->done_cv);
        /* Retiring a task can unblock a wait on another stream: wake an idle thread only when
         * more streams are runnable than this thread (which loops back) can take. */
        if (d->idle > d->waking && runnable_count_locked(d) > 1) {
            d->waking++;
            pthread_cond_signal(&d->work_cv);
        }
        pthread_mutex_unlock(&d->lock);

        free(t);
        pthread_mutex_lock(&d->lock);
    }
    return NULL;
}

int sim_stream_busy(const void *stream) {
    if (!stream || !__atomic_load_n(&g_rt.started, __ATOMIC_ACQUIRE)) return 0;
    for (uint32_t i = 0; i < g_rt.n_visible; i++) {
        sim_device *d = &g_rt.devs[i];
        pthread_mutex_lock(&d->lock);
        for (sim_stream *s = d->streams; s; s = s->next)
            if ((const void *)s == stream) {
                int busy = s->completed < s->submitted || s->running;
                pthread_mutex_unlock(&d->lock);
                return busy;
            }
        pthread_mutex_unlock(&d->lock);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Fault injection and gates                                                                   */

static aclError inject(aclrtStream stream, uint32_t nth, int32_t code, uint32_t us, const char *api) {
    sim_stream *s = as_stream(stream);
    if (!s) FAIL(ACL_ERROR_INVALID_PARAM, "%s: invalid stream handle", api);
    if (!nth) FAIL(ACL_ERROR_INVALID_PARAM, "%s: nth counts from 1", api);
    sim_inject *in = calloc(1, sizeof *in);
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
    sim_stream *s = as_stream(stream);
    if (!s) FAIL(ACL_ERROR_INVALID_PARAM, "aa_sim_stream_hold/release: invalid stream handle");
    pthread_mutex_lock(&s->dev->lock);
    s->held = held;
    pthread_cond_broadcast(&s->dev->work_cv);
    pthread_mutex_unlock(&s->dev->lock);
    return ACL_SUCCESS;
}

aclError aa_sim_stream_hold(aclrtStream stream) { return set_hold(stream, 1); }
aclError aa_sim_stream_release(aclrtStream stream) { return set_hold(stream, 0); }

/* ------------------------------------------------------------------------------------------ */
/* Events                                                                                      */

static sim_event *as_event(aclrtEvent e) {
    sim_event *x = (sim_event *)e;
    return (x && x->magic == MAGIC_EVENT && !x->destroyed) ? x : NULL;
}

aclError aclrtCreateEventWithFlag(aclrtEvent *event, uint32_t flag) {
    if (!event) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtCreateEvent: event is NULL");
    if (!tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "aclrtCreateEvent: no current context on this thread");
    sim_event *e = calloc(1, sizeof *e);
    e->magic = MAGIC_EVENT;
    e->flags = flag;
    e->dev = tls_ctx->dev;
    e->refs = 1;
    SIM_STAT_ADD(events, 1);
    *event = e;
    return ACL_SUCCESS;
}

aclError aclrtCreateEvent(aclrtEvent *event) { return aclrtCreateEventWithFlag(event, ACL_EVENT_SYNC); }

static void event_unref_locked(sim_event *e) {
    if (--e->refs > 0) return;
    if (e->stream) stream_unref_locked(e->stream);
    if (e->hw) {
        e->dev->hw_events--;
        pthread_cond_broadcast(&e->dev->done_cv);
    }
    e->magic = 0;
    free(e);
}

aclError aclrtDestroyEvent(aclrtEvent event) {
    sim_event *e = as_event(event);
    if (!e) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtDestroyEvent: invalid event handle");
    sim_device *d = e->dev;
    pthread_mutex_lock(&d->lock);
    e->destroyed = 1; /* freed when its last pending record retires */
    event_unref_locked(e);
    pthread_mutex_unlock(&d->lock);
    SIM_STAT_ADD(events, -1);
    return ACL_SUCCESS;
}

/* How long a record waits for a free hardware event before it fails with 207007 (ACL blocks
 * for one; the sim gives up after 5 s). ASCEND_ASYNC_SIM_EVENT_WAIT_MS shortens it for tests;
 * read on this rare path only, when every hardware event is in use. */
static int record_wait_ms(void) {
    const char *env = getenv("ASCEND_ASYNC_SIM_EVENT_WAIT_MS");
    if (!env || !*env) return 5000;
    char *end = NULL;
    long ms = strtol(env, &end, 10);
    return (end && !*end && ms >= 0 && ms <= 600000) ? (int)ms : 5000;
}

aclError aclrtRecordEvent(aclrtEvent event, aclrtStream stream) {
    sim_event *e = as_event(event);
    if (!e) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtRecordEvent: invalid event handle");
    sim_stream *s;
    aclError rc = resolve_stream(stream, "aclrtRecordEvent", &s);
    if (rc) return rc;
    sim_device *d = s->dev;
    if (d != e->dev) FAIL(ACL_ERROR_RT_STREAM_CONTEXT, "aclrtRecordEvent: event and stream are on different devices");
    pthread_mutex_lock(&d->lock);
    if (!e->hw) {
        /* The first record takes a hardware event; none free means waiting for one. */
        struct timespec dl = {0, 0};
        if (d->hw_events >= g_rt.cfg.max_events) deadline_after_ms(&dl, record_wait_ms());
        while (d->hw_events >= g_rt.cfg.max_events) {
            if (pthread_cond_timedwait(&d->done_cv, &d->lock, &dl) == ETIMEDOUT &&
                d->hw_events >= g_rt.cfg.max_events) {
                pthread_mutex_unlock(&d->lock);
                FAIL(ACL_ERROR_RT_NO_EVENT_RESOURCE, "aclrtRecordEvent: all %u hardware events are in use",
                     g_rt.cfg.max_events);
            }
        }
        d->hw_events++;
        e->hw = 1;
    }
    sim_task *t = task_new(TASK_RECORD);
    t->event = e;
    t->gen = e->record_gen + 1;
    __atomic_store_n(&e->record_gen, t->gen, __ATOMIC_RELEASE); /* read lock-free by QueryEventStatus */
    e->refs++;
    if (e->stream != s) { /* the event keeps the stream of its latest record alive */
        if (e->stream) stream_unref_locked(e->stream);
        s->refs++;
        e->stream = s;
    }
    enqueue_locked(s, t);
    e->seq = t->seq;
    pthread_mutex_unlock(&d->lock);
    return ACL_SUCCESS;
}

aclError aclrtQueryEventStatus(aclrtEvent event, aclrtEventRecordedStatus *status) {
    sim_event *e = as_event(event);
    if (!e || !status) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtQueryEventStatus: invalid argument");
    /* One aligned load each: a torn pair only ever reads as NOT_READY, which is safe. */
    uint64_t rec = __atomic_load_n(&e->record_gen, __ATOMIC_ACQUIRE);
    uint64_t done = __atomic_load_n(&e->done_gen, __ATOMIC_ACQUIRE);
    *status = (rec && done >= rec) ? ACL_EVENT_RECORDED_STATUS_COMPLETE : ACL_EVENT_RECORDED_STATUS_NOT_READY;
    return ACL_SUCCESS;
}

static aclError event_sync(aclrtEvent event, int32_t timeout_ms, const char *api) {
    sim_event *e = as_event(event);
    if (!e) FAIL(ACL_ERROR_INVALID_PARAM, "%s: invalid event handle", api);
    sim_device *d = e->dev;
    struct timespec dl;
    if (timeout_ms > 0) deadline_after_ms(&dl, timeout_ms);
    pthread_mutex_lock(&d->lock);
    aclError rc = ACL_SUCCESS;
    uint64_t gen = e->record_gen;
    while (gen && e->done_gen < gen) {
        sim_stream *s = e->stream;
        if (s && s->fault && s->fault_seq <= e->seq) {
            rc = stream_fault_locked(s, api);
            break;
        }
        if (timeout_ms == 0) {
            rc = ACL_ERROR_RT_EVENT_SYNC_TIMEOUT;
            break;
        }
        if (timeout_ms < 0) {
            pthread_cond_wait(&d->done_cv, &d->lock);
        } else if (pthread_cond_timedwait(&d->done_cv, &d->lock, &dl) == ETIMEDOUT && e->done_gen < gen) {
            rc = ACL_ERROR_RT_EVENT_SYNC_TIMEOUT;
            break;
        }
    }
    if (rc == ACL_ERROR_RT_EVENT_SYNC_TIMEOUT) sim_set_error("%s: timed out after %d ms", api, (int)timeout_ms);
    pthread_mutex_unlock(&d->lock);
    return rc;
}

aclError aclrtSynchronizeEvent(aclrtEvent event) { return event_sync(event, -1, "aclrtSynchronizeEvent"); }

aclError aclrtSynchronizeEventWithTimeout(aclrtEvent event, int32_t timeout) {
    if (timeout < -1) FAIL(ACL_ERROR_RT_PARAM_INVALID, "aclrtSynchronizeEventWithTimeout: timeout %d < -1", (int)timeout);
    return event_sync(event, timeout, "aclrtSynchronizeEventWithTimeout");
}

aclError aclrtStreamWaitEvent(aclrtStream stream, aclrtEvent event) {
    sim_event *e = as_event(event);
    if (!e) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtStreamWaitEvent: invalid event handle");
    sim_stream *s;
    aclError rc = resolve_stream(stream, "aclrtStreamWaitEvent", &s);
    if (rc) return rc;
    if (s->dev != e->dev) FAIL(ACL_ERROR_RT_STREAM_CONTEXT, "aclrtStreamWaitEvent: event and stream are on different devices");
    pthread_mutex_lock(&s->dev->lock);
    if (e->record_gen) { /* waiting on a never-recorded event is a no-op */
        sim_task *t = task_new(TASK_WAIT);
        t->event = e;
        t->gen = e->record_gen;
        e->refs++;
        enqueue_locked(s, t);
    }
    pthread_mutex_unlock(&s->dev->lock);
    return ACL_SUCCESS;
}

aclError aclrtEventGetTimestamp(aclrtEvent event, uint64_t *timestamp) {
    sim_event *e = as_event(event);
    if (!e || !timestamp) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtEventGetTimestamp: invalid argument");
    pthread_mutex_lock(&e->dev->lock);
    int done = e->record_gen && e->done_gen >= e->record_gen;
    *timestamp = e->timestamp_ns; /* the sim's syscnt ticks in CLOCK_MONOTONIC nanoseconds */
    pthread_mutex_unlock(&e->dev->lock);
    if (!done) FAIL(ACL_ERROR_RT_PARAM_INVALID, "aclrtEventGetTimestamp: the event has not completed");
    return ACL_SUCCESS;
}

aclError aclrtEventElapsedTime(float *ms, aclrtEvent startEvent, aclrtEvent endEvent) {
    if (!ms) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtEventElapsedTime: ms is NULL");
    uint64_t a, b;
    aclError rc = aclrtEventGetTimestamp(startEvent, &a);
    if (rc) return rc;
    rc = aclrtEventGetTimestamp(endEvent, &b);
    if (rc) return rc;
    *ms = (float)((double)((int64_t)(b - a)) / 1e6);
    return ACL_SUCCESS;
}

/* ------------------------------------------------------------------------------------------ */
/* Memory                                                                                      */

typedef struct mem_block {
    uintptr_t base;
    size_t size;     /* usable bytes (what the caller asked for) */
    size_t charged;  /* round_up(size, 32) + 32, as the runtime reserves */
    int32_t device;  /* -1 = page-locked host memory */
} mem_block;

static struct {
    pthread_mutex_t lock;
    mem_block *v; /* sorted by base */
    size_t n, cap;
} g_mem = {.lock = PTHREAD_MUTEX_INITIALIZER};

static size_t mem_find_locked(uintptr_t p) {
    /* Index of the last block with base <= p, or (size_t)-1. */
    size_t lo = 0, hi = g_mem.n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (g_mem.v[mid].base <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo ? lo - 1 : (size_t)-1;
}

static void mem_insert(mem_block b) {
    pthread_mutex_lock(&g_mem.lock);
    if (g_mem.n == g_mem.cap) {
        g_mem.cap = g_mem.cap ? g_mem.cap * 2 : 256;
        g_mem.v = realloc(g_mem.v, g_mem.cap * sizeof(mem_block));
    }
    size_t i = mem_find_locked(b.base);
    i = (i == (size_t)-1) ? 0 : i + 1;
    memmove(&g_mem.v[i + 1], &g_mem.v[i], (g_mem.n - i) * sizeof(mem_block));
    g_mem.v[i] = b;
    g_mem.n++;
    pthread_mutex_unlock(&g_mem.lock);
}

/* Removes the block starting exactly at p; returns 0 if there is none. */
static int mem_remove(uintptr_t p, int want_host, mem_block *out) {
    pthread_mutex_lock(&g_mem.lock);
    size_t i = mem_find_locked(p);
    int ok = i != (size_t)-1 && g_mem.v[i].base == p && ((g_mem.v[i].device < 0) == want_host);
    if (ok) {
        *out = g_mem.v[i];
        memmove(&g_mem.v[i], &g_mem.v[i + 1], (g_mem.n - i - 1) * sizeof(mem_block));
        g_mem.n--;
    }
    pthread_mutex_unlock(&g_mem.lock);
    return ok;
}

enum { RANGE_UNKNOWN = 0, RANGE_OK = 1, RANGE_OOB = -1 };

/* Classifies [p, p+n) against the allocation containing p. */
static int mem_range(const void *ptr, size_t n, mem_block *blk) {
    uintptr_t p = (uintptr_t)ptr;
    pthread_mutex_lock(&g_mem.lock);
    size_t i = mem_find_locked(p);
    int r = RANGE_UNKNOWN;
    if (i != (size_t)-1 && p < g_mem.v[i].base + g_mem.v[i].charged) {
        *blk = g_mem.v[i];
        r = (p + n <= g_mem.v[i].base + g_mem.v[i].size) ? RANGE_OK : RANGE_OOB;
    }
    pthread_mutex_unlock(&g_mem.lock);
    return r;
}

int sim_check_device_range(const void *ptr, size_t n, char *err, size_t err_len) {
    mem_block b;
    int r = mem_range(ptr, n, &b);
    if (r == RANGE_UNKNOWN || b.device < 0) return 0;
    if (r == RANGE_OOB) {
        snprintf(err, err_len, "%zu bytes at offset %zu overrun the %zu-byte device allocation",
                 n, (size_t)((uintptr_t)ptr - b.base), b.size);
        return -1;
    }
    return 1;
}

static size_t charge_of(size_t size) { return ((size + 31) & ~(size_t)31) + 32; }

aclError sim_device_alloc(int32_t device_id, size_t size, void **out) {
    sim_device *d = device_get(device_id);
    if (!d) FAIL(ACL_ERROR_RT_INVALID_DEVICEID, "no device %d", (int)device_id);
    size_t charged = charge_of(size);
    pthread_mutex_lock(&d->lock);
    if (d->used + charged > d->capacity) {
        uint64_t used = d->used, cap = d->capacity;
        pthread_mutex_unlock(&d->lock);
        FAIL(ACL_ERROR_RT_MEMORY_ALLOCATION, "device %d out of memory: %zu bytes requested, %llu of %llu in use",
             (int)device_id, size, (unsigned long long)used, (unsigned long long)cap);
    }
    d->used += charged;
    pthread_mutex_unlock(&d->lock);
    void *p = NULL;
    if (posix_memalign(&p, 64, charged)) {
        pthread_mutex_lock(&d->lock);
        d->used -= charged;
        pthread_mutex_unlock(&d->lock);
        FAIL(ACL_ERROR_RT_MEMORY_ALLOCATION, "device %d: host allocation for %zu bytes failed", (int)device_id, size);
    }
    sim_poison_fill(p, charged);
    mem_insert((mem_block){(uintptr_t)p, size, charged, device_id});
    SIM_STAT_ADD(device_allocations, 1);
    SIM_STAT_ADD(device_bytes, (int64_t)charged);
    *out = p;
    return ACL_SUCCESS;
}

aclError sim_device_free(void *ptr) {
    mem_block b;
    if (!mem_remove((uintptr_t)ptr, 0, &b)) FAIL(ACL_ERROR_RT_PARAM_INVALID, "aclrtFree: %p is not a live device allocation", ptr);
    sim_device *d = device_get(b.device);
    pthread_mutex_lock(&d->lock);
    d->used -= b.charged;
    pthread_mutex_unlock(&d->lock);
    SIM_STAT_ADD(device_allocations, -1);
    SIM_STAT_ADD(device_bytes, -(int64_t)b.charged);
    sim_poison_fill(ptr, b.charged);
    free(ptr);
    return ACL_SUCCESS;
}

aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy) {
    if (!devPtr) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtMalloc: devPtr is NULL");
    if (!size) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtMalloc: size is 0");
    if ((int)policy < 0 || (int)policy > ACL_MEM_MALLOC_NORMAL_ONLY_P2P)
        FAIL(ACL_ERROR_INVALID_PARAM, "aclrtMalloc: unknown policy %d", (int)policy);
    if (!tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "aclrtMalloc: no current context on this thread");
    return sim_device_alloc(tls_ctx->dev->id, size, devPtr);
}

aclError aclrtFree(void *devPtr) {
    if (!devPtr) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtFree: devPtr is NULL");
    return sim_device_free(devPtr);
}

aclError aclrtMallocHost(void **hostPtr, size_t size) {
    if (!hostPtr) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtMallocHost: hostPtr is NULL");
    if (!size) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtMallocHost: size is 0");
    void *p = NULL;
    if (posix_memalign(&p, 64, charge_of(size)))
        FAIL(ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMallocHost: %zu bytes failed", size);
    sim_poison_fill(p, charge_of(size));
    mem_insert((mem_block){(uintptr_t)p, size, charge_of(size), -1});
    SIM_STAT_ADD(host_allocations, 1);
    *hostPtr = p;
    return ACL_SUCCESS;
}

aclError aclrtFreeHost(void *hostPtr) {
    if (!hostPtr) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtFreeHost: hostPtr is NULL");
    mem_block b;
    if (!mem_remove((uintptr_t)hostPtr, 1, &b))
        FAIL(ACL_ERROR_RT_PARAM_INVALID, "aclrtFreeHost: %p is not a live page-locked allocation", hostPtr);
    SIM_STAT_ADD(host_allocations, -1);
    sim_poison_fill(hostPtr, b.charged);
    free(hostPtr);
    return ACL_SUCCESS;
}

/* Checks one side of a copy: device sides must be whole inside a device allocation; host sides
 * inside an acl host allocation must fit it (plain malloc'd host memory cannot be checked). */
static aclError check_side(const void *p, size_t n, int want_device, const char *api, const char *side,
                           int *pinned) {
    mem_block b;
    int r = mem_range(p, n, &b);
    if (pinned) *pinned = (r != RANGE_UNKNOWN && b.device < 0);
    if (want_device) {
        if (r == RANGE_UNKNOWN || b.device < 0) FAIL(ACL_ERROR_RT_PARAM_INVALID, "%s: %s %p is not device memory", api, side, p);
    } else if (r != RANGE_UNKNOWN && b.device >= 0) {
        FAIL(ACL_ERROR_RT_PARAM_INVALID, "%s: %s %p is device memory, the copy kind says host", api, side, p);
    }
    if (r == RANGE_OOB)
        FAIL(ACL_ERROR_RT_PARAM_INVALID, "%s: %s range of %zu bytes at offset %zu overruns its %zu-byte allocation", api,
             side, n, (size_t)((uintptr_t)p - b.base), b.size);
    return ACL_SUCCESS;
}

static int is_device_ptr(const void *p) {
    mem_block b;
    return mem_range(p, 1, &b) != RANGE_UNKNOWN && b.device >= 0;
}

static aclError check_copy(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind,
                           const char *api, int *host_pinned) {
    if (!dst || !src) FAIL(ACL_ERROR_INVALID_PARAM, "%s: dst or src is NULL", api);
    if (count > destMax) FAIL(ACL_ERROR_INVALID_PARAM, "%s: count %zu exceeds destMax %zu", api, count, destMax);
    if (kind == ACL_MEMCPY_DEFAULT) {
        int dd = is_device_ptr(dst), sd = is_device_ptr(src);
        kind = dd ? (sd ? ACL_MEMCPY_DEVICE_TO_DEVICE : ACL_MEMCPY_HOST_TO_DEVICE)
                  : (sd ? ACL_MEMCPY_DEVICE_TO_HOST : ACL_MEMCPY_HOST_TO_HOST);
    }
    int dst_dev, src_dev;
    switch (kind) {
        case ACL_MEMCPY_HOST_TO_HOST: dst_dev = 0; src_dev = 0; break;
        case ACL_MEMCPY_HOST_TO_DEVICE:
        case ACL_MEMCPY_HOST_TO_BUF_TO_DEVICE: dst_dev = 1; src_dev = 0; break;
        case ACL_MEMCPY_DEVICE_TO_HOST: dst_dev = 0; src_dev = 1; break;
        case ACL_MEMCPY_DEVICE_TO_DEVICE:
        case ACL_MEMCPY_INNER_DEVICE_TO_DEVICE:
        case ACL_MEMCPY_INTER_DEVICE_TO_DEVICE: dst_dev = 1; src_dev = 1; break;
        default: FAIL(ACL_ERROR_INVALID_PARAM, "%s: unknown copy kind %d", api, (int)kind);
    }
    int dp = 0, sp = 0;
    aclError rc = check_side(dst, count, dst_dev, api, "dst", &dp);
    if (rc) return rc;
    rc = check_side(src, count, src_dev, api, "src", &sp);
    if (rc) return rc;
    /* Is every host side of this copy page-locked (or is there none)? */
    if (host_pinned) *host_pinned = (dst_dev || dp) && (src_dev || sp) && kind != ACL_MEMCPY_HOST_TO_BUF_TO_DEVICE;
    return ACL_SUCCESS;
}

aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind) {
    if (!count) return ACL_SUCCESS;
    aclError rc = check_copy(dst, destMax, src, count, kind, "aclrtMemcpy", NULL);
    if (rc) return rc;
    memmove(dst, src, count);
    return ACL_SUCCESS;
}

typedef struct copy_job {
    void *dst;
    const void *src;
    size_t n;
    int set; /* memset: value in `value` */
    int value;
} copy_job;

static int copy_exec(void *payload, char *err, size_t err_len) {
    (void)err;
    (void)err_len;
    copy_job *j = payload;
    if (j->set)
        memset(j->dst, j->value, j->n);
    else
        memmove(j->dst, j->src, j->n);
    return 0;
}

static void copy_cleanup(void *payload, int executed) {
    (void)executed;
    free(payload);
}

static aclError enqueue_copy(copy_job *j, sim_stream *s, int host_waits, const char *api) {
    sim_task *t = task_new(TASK_EXEC);
    t->exec = copy_exec;
    t->cleanup = host_waits ? NULL : copy_cleanup; /* a waiting host thread frees its own job */
    t->payload = j;
    sim_device *d = s->dev;
    pthread_mutex_lock(&d->lock);
    enqueue_locked(s, t);
    uint64_t seq = t->seq;
    if (!host_waits) {
        pthread_mutex_unlock(&d->lock);
        return ACL_SUCCESS;
    }
    /* Pageable host memory: the call returns only after this copy ran (or was skipped). */
    while (s->completed < seq) pthread_cond_wait(&d->done_cv, &d->lock);
    aclError rc = (s->fault && s->fault_seq <= seq) ? stream_fault_locked(s, api) : ACL_SUCCESS;
    pthread_mutex_unlock(&d->lock);
    free(j);
    return rc;
}

aclError aclrtMemcpyAsync(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind,
                          aclrtStream stream) {
    if (!count) return ACL_SUCCESS;
    if (kind == ACL_MEMCPY_HOST_TO_HOST)
        FAIL(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "aclrtMemcpyAsync: HOST_TO_HOST is not supported on this device");
    int pinned = 0;
    aclError rc = check_copy(dst, destMax, src, count, kind, "aclrtMemcpyAsync", &pinned);
    if (rc) return rc;
    sim_stream *s;
    rc = resolve_stream(stream, "aclrtMemcpyAsync", &s);
    if (rc) return rc;
    copy_job *j = calloc(1, sizeof *j);
    j->dst = dst;
    j->src = src;
    j->n = count;
    return enqueue_copy(j, s, !pinned, "aclrtMemcpyAsync");
}

static aclError check_memset(void *devPtr, size_t maxCount, size_t count, const char *api) {
    if (!devPtr) FAIL(ACL_ERROR_INVALID_PARAM, "%s: devPtr is NULL", api);
    if (count > maxCount) FAIL(ACL_ERROR_INVALID_PARAM, "%s: count %zu exceeds maxCount %zu", api, count, maxCount);
    mem_block b;
    int r = mem_range(devPtr, count, &b);
    if (r == RANGE_UNKNOWN) FAIL(ACL_ERROR_RT_PARAM_INVALID, "%s: %p is not memory from an acl allocator", api, devPtr);
    if (r == RANGE_OOB) FAIL(ACL_ERROR_RT_PARAM_INVALID, "%s: %zu bytes overrun the %zu-byte allocation", api, count, b.size);
    return ACL_SUCCESS;
}

aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count) {
    if (!count) return ACL_SUCCESS;
    aclError rc = check_memset(devPtr, maxCount, count, "aclrtMemset");
    if (rc) return rc;
    memset(devPtr, value, count);
    return ACL_SUCCESS;
}

aclError aclrtMemsetAsync(void *devPtr, size_t maxCount, int32_t value, size_t count, aclrtStream stream) {
    if (!count) return ACL_SUCCESS;
    aclError rc = check_memset(devPtr, maxCount, count, "aclrtMemsetAsync");
    if (rc) return rc;
    sim_stream *s;
    rc = resolve_stream(stream, "aclrtMemsetAsync", &s);
    if (rc) return rc;
    copy_job *j = calloc(1, sizeof *j);
    j->dst = devPtr;
    j->n = count;
    j->set = 1;
    j->value = value;
    return enqueue_copy(j, s, 0, "aclrtMemsetAsync");
}

aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free_, size_t *total) {
    if (!free_ || !total) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtGetMemInfo: free or total is NULL");
    if (!tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "aclrtGetMemInfo: no current context on this thread");
    sim_device *d = tls_ctx->dev;
    if (attr > ACL_HBM_MEM_NORMAL) {
        *free_ = *total = 0;
        return ACL_SUCCESS;
    }
    pthread_mutex_lock(&d->lock);
    *total = d->capacity;
    *free_ = d->capacity > d->used ? d->capacity - d->used : 0;
    pthread_mutex_unlock(&d->lock);
    return ACL_SUCCESS;
}

aclError aa_sim_set_memory_capacity(int32_t device_id, uint64_t bytes) {
    sim_device *d = device_get(device_id);
    if (!d) FAIL(ACL_ERROR_RT_INVALID_DEVICEID, "aa_sim_set_memory_capacity: no device %d", (int)device_id);
    pthread_mutex_lock(&d->lock);
    d->capacity = bytes;
    pthread_mutex_unlock(&d->lock);
    return ACL_SUCCESS;
}

uint64_t sim_device_capacity(int32_t device_id) {
    sim_device *d = device_get(device_id);
    if (!d) return 0;
    pthread_mutex_lock(&d->lock);
    uint64_t cap = d->capacity;
    pthread_mutex_unlock(&d->lock);
    return cap;
}

/* ------------------------------------------------------------------------------------------ */
/* Host callbacks: subscribe / launch / process                                                */

/* Drops the callbacks `s` queued for its report thread and not yet taken by aclrtProcessReport:
 * once a stream is unsubscribed (or destroyed) they must not reach a later thread that happens
 * to reuse the id (their user data may be gone by then). Caller holds the device lock. */
static void report_drop_locked(sim_device *d, const sim_stream *s) {
    for (report_queue *q = d->reports; q; q = q->next) {
        if (q->thread_id != s->sub_thread) continue;
        report_item **pp = &q->head;
        q->tail = NULL;
        while (*pp) {
            report_item *it = *pp;
            if (it->stream == s) {
                *pp = it->next;
                if (it->done_flag) *it->done_flag = 1;
                free(it);
            } else {
                q->tail = it;
                pp = &it->next;
            }
        }
    }
    pthread_cond_broadcast(&d->done_cv);
}

aclError aclrtSubscribeReport(uint64_t threadId, aclrtStream stream) {
    sim_stream *s;
    aclError rc = resolve_stream(stream, "aclrtSubscribeReport", &s);
    if (rc) return rc;
    sim_device *d = s->dev;
    pthread_mutex_lock(&d->lock);
    if (s->subscribed) {
        pthread_mutex_unlock(&d->lock);
        FAIL(100033, "aclrtSubscribeReport: the stream already has a report thread");
    }
    report_queue *q = d->reports;
    while (q && q->thread_id != threadId) q = q->next;
    if (!q) {
        q = calloc(1, sizeof *q);
        q->thread_id = threadId;
        q->next = d->reports;
        d->reports = q;
    }
    q->n_streams++;
    s->subscribed = 1;
    s->sub_thread = threadId;
    pthread_mutex_unlock(&d->lock);
    return ACL_SUCCESS;
}

aclError aclrtUnSubscribeReport(uint64_t threadId, aclrtStream stream) {
    sim_stream *s;
    aclError rc = resolve_stream(stream, "aclrtUnSubscribeReport", &s);
    if (rc) return rc;
    sim_device *d = s->dev;
    pthread_mutex_lock(&d->lock);
    if (!s->subscribed || s->sub_thread != threadId) {
        pthread_mutex_unlock(&d->lock);
        FAIL(ACL_ERROR_STREAM_NOT_SUBSCRIBE, "aclrtUnSubscribeReport: stream is not subscribed by that thread");
    }
    report_drop_locked(d, s);
    s->subscribed = 0;
    for (report_queue *q = d->reports; q; q = q->next)
        if (q->thread_id == threadId) q->n_streams--;
    pthread_mutex_unlock(&d->lock);
    return ACL_SUCCESS;
}

aclError aclrtLaunchCallback(aclrtCallback fn, void *userData, aclrtCallbackBlockType blockType, aclrtStream stream) {
    if (!fn) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtLaunchCallback: fn is NULL");
    if (blockType != ACL_CALLBACK_NO_BLOCK && blockType != ACL_CALLBACK_BLOCK)
        FAIL(ACL_ERROR_INVALID_PARAM, "aclrtLaunchCallback: unknown block type %d", (int)blockType);
    sim_stream *s;
    aclError rc = resolve_stream(stream, "aclrtLaunchCallback", &s);
    if (rc) return rc;
    pthread_mutex_lock(&s->dev->lock);
    if (!s->subscribed) {
        pthread_mutex_unlock(&s->dev->lock);
        FAIL(ACL_ERROR_STREAM_NOT_SUBSCRIBE, "aclrtLaunchCallback: no report thread is subscribed to the stream");
    }
    sim_task *t = task_new(TASK_CALLBACK);
    t->cb_fn = fn;
    t->cb_data = userData;
    t->cb_block = blockType == ACL_CALLBACK_BLOCK;
    t->cb_thread = s->sub_thread;
    enqueue_locked(s, t);
    pthread_mutex_unlock(&s->dev->lock);
    return ACL_SUCCESS;
}

aclError aclrtProcessReport(int32_t timeout) {
    if (timeout == 0 || timeout < -1) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtProcessReport: timeout must be -1 or > 0, got %d", (int)timeout);
    runtime_start();
    uint64_t me = (uint64_t)pthread_self();
    sim_device *d = NULL;
    report_queue *q = NULL;
    for (uint32_t i = 0; i < g_rt.n_visible && !q; i++) {
        sim_device *c = &g_rt.devs[i];
        pthread_mutex_lock(&c->lock);
        for (report_queue *x = c->reports; x; x = x->next)
            if (x->thread_id == me && x->n_streams > 0) {
                q = x;
                d = c;
            }
        pthread_mutex_unlock(&c->lock);
    }
    if (!q) FAIL(ACL_ERROR_RT_THREAD_SUBSCRIBE, "aclrtProcessReport: this thread is not subscribed to any stream");
    struct timespec dl;
    if (timeout > 0) deadline_after_ms(&dl, timeout);
    pthread_mutex_lock(&d->lock);
    while (!q->head) {
        if (timeout < 0) {
            pthread_cond_wait(&d->done_cv, &d->lock);
        } else if (pthread_cond_timedwait(&d->done_cv, &d->lock, &dl) == ETIMEDOUT && !q->head) {
            pthread_mutex_unlock(&d->lock);
            FAIL(ACL_ERROR_RT_REPORT_TIMEOUT, "aclrtProcessReport: no callback within %d ms", (int)timeout);
        }
    }
    report_item *items = q->head;
    q->head = q->tail = NULL;
    pthread_mutex_unlock(&d->lock);
    while (items) {
        report_item *n = items->next;
        items->fn(items->data);
        if (items->done_flag) {
            pthread_mutex_lock(&d->lock);
            *items->done_flag = 1;
            pthread_cond_broadcast(&d->done_cv);
            pthread_mutex_unlock(&d->lock);
        }
        free(items);
        items = n;
    }
    return ACL_SUCCESS;
}
