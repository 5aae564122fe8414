/* Devices and their start, contexts, streams and task queueing (rt_internal.h); the device
 * threads that run the tasks are in rt_thread.c. */
#define _GNU_SOURCE
#include "rt_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------------------------ */
/* Devices                                                                                     */

static void cond_init_monotonic(pthread_cond_t *cv) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
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

/* A failed start: stops the device threads it had started (each leaves at its next look for
 * work) and frees the table, so that a later call starts afresh. g_rt.lock held. */
static void devices_unwind_locked(void) {
    for (uint32_t i = 0; i < g_rt.n_visible; i++) {
        sim_device *d = &g_rt.devs[i];
        pthread_mutex_lock(&d->lock);
        d->shutdown = 1;
        pthread_cond_broadcast(&d->work_cv);
        while (d->n_live) pthread_cond_wait(&d->done_cv, &d->lock);
        pthread_mutex_unlock(&d->lock);
        pthread_cond_destroy(&d->work_cv);
        pthread_cond_destroy(&d->done_cv);
        pthread_mutex_destroy(&d->lock);
        free(d->threads);
    }
    free(g_rt.devs);
    g_rt.devs = NULL;
    g_rt.n_visible = 0;
}

/* Devices start on first use (AscendCL works without aclInit too, as GE's samples show).
 * Host memory or a thread that cannot be had fails the start with ACL_ERROR_BAD_ALLOC, having
 * started nothing (the next call tries again). */
aclError rt_start(void) {
    pthread_mutex_lock(&g_rt.lock);
    if (g_rt.started) {
        pthread_mutex_unlock(&g_rt.lock);
        return ACL_SUCCESS;
    }
    const char *env_count = getenv("ASCEND_ASYNC_SIM_DEVICES");
    if (!g_rt.configured && env_count && atoi(env_count) > 0) g_rt.cfg.device_count = (uint32_t)atoi(env_count);
    const char *env_poison = getenv("ASCEND_ASYNC_SIM_POISON");
    if (env_poison && !strcmp(env_poison, "1")) g_rt.cfg.poison = 1; /* turns it on, whatever was configured */
    rt_poison_set(g_rt.cfg.poison);
    uint32_t *phys = calloc(g_rt.cfg.device_count, sizeof(uint32_t));
    uint32_t n = phys ? visible_devices(g_rt.cfg.device_count, phys) : 0;
    g_rt.devs = phys ? calloc(n ? n : 1, sizeof(sim_device)) : NULL;
    if (!g_rt.devs) {
        free(phys);
        pthread_mutex_unlock(&g_rt.lock);
        FAIL(ACL_ERROR_BAD_ALLOC, "the simulated runtime cannot start: out of host memory for %u devices",
             g_rt.cfg.device_count);
    }
    /* Every device's table first, then the threads: a failure unwinds whole devices. */
    g_rt.n_visible = n;
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
    }
    free(phys);
    int err = 0;
    const char *what = "out of host memory";
    for (uint32_t i = 0; i < n && !err; i++) {
        sim_device *d = &g_rt.devs[i];
        if (!d->threads) {
            err = ENOMEM;
            break;
        }
        for (uint32_t t = 0; t < d->n_threads && !err; t++) {
            pthread_attr_t a;
            pthread_attr_init(&a);
            pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
            err = pthread_create(&d->threads[t], &a, rt_device_thread, d);
            pthread_attr_destroy(&a);
            if (err) {
                what = "cannot create a device thread";
                break;
            }
            pthread_mutex_lock(&d->lock);
            d->n_live++;
            pthread_mutex_unlock(&d->lock);
        }
    }
    if (err) {
        devices_unwind_locked();
        pthread_mutex_unlock(&g_rt.lock);
        FAIL(ACL_ERROR_BAD_ALLOC, "the simulated runtime cannot start: %s (%s)", what, strerror(err));
    }
    __atomic_store_n(&g_rt.started, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g_rt.lock);
    return ACL_SUCCESS;
}

sim_device *rt_device_get(int32_t id) {
    if (rt_start()) return NULL;
    if (id < 0 || (uint32_t)id >= g_rt.n_visible) return NULL;
    return &g_rt.devs[id];
}

aclError rt_no_device(const char *api, int32_t id) {
    /* A failed start already set its message on this thread. */
    if (!__atomic_load_n(&g_rt.started, __ATOMIC_ACQUIRE)) return ACL_ERROR_BAD_ALLOC;
    FAIL(ACL_ERROR_RT_INVALID_DEVICEID, "%s: no device %d", api, (int)id);
}

/* ------------------------------------------------------------------------------------------ */
/* Devices and contexts                                                                        */

aclError aclrtGetDeviceCount(uint32_t *count) {
    if (!count) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtGetDeviceCount: count is NULL");
    aclError rc = rt_start();
    if (rc) return rc;
    *count = g_rt.n_visible;
    return ACL_SUCCESS;
}

static sim_stream *stream_new(sim_device *d, sim_context *ctx, int internal);
static void stream_free(sim_stream *s);

/* A context with its default stream; NULL when host memory ran out. */
static sim_context *context_new(sim_device *d, int is_explicit) {
    sim_context *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->dev = d;
    c->magic = MAGIC_CTX;
    c->is_explicit = is_explicit;
    c->default_stream = stream_new(d, c, 1);
    if (!c->default_stream) {
        free(c);
        return NULL;
    }
    if (is_explicit) SIM_STAT_ADD(contexts, 1);
    return c;
}

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
    sim_device *d = rt_device_get(deviceId);
    if (!d) return rt_no_device("aclrtSetDevice", deviceId);
    pthread_mutex_lock(&d->lock);
    while (!d->default_ctx) {
        /* context_new takes the device lock itself; a racing thread may win meanwhile. */
        pthread_mutex_unlock(&d->lock);
        sim_context *c = context_new(d, 0);
        if (!c) FAIL(ACL_ERROR_BAD_ALLOC, "aclrtSetDevice: out of host memory for the default context");
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
    rt_tls_ctx = d->default_ctx;
    pthread_mutex_unlock(&d->lock);
    return ACL_SUCCESS;
}

aclError aclrtResetDevice(int32_t deviceId) {
    sim_device *d = rt_device_get(deviceId);
    if (!d) return rt_no_device("aclrtResetDevice", deviceId);
    pthread_mutex_lock(&d->lock);
    sim_context *release = NULL;
    if (d->set_refs > 0 && --d->set_refs == 0) {
        release = d->default_ctx;
        d->default_ctx = NULL;
    }
    pthread_mutex_unlock(&d->lock);
    if (rt_tls_ctx && rt_tls_ctx == release) rt_tls_ctx = NULL;
    if (release) context_free(release);
    return ACL_SUCCESS;
}

aclError aclrtGetDevice(int32_t *deviceId) {
    if (!deviceId) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtGetDevice: deviceId is NULL");
    if (!rt_tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "aclrtGetDevice: no current context on this thread");
    *deviceId = rt_tls_ctx->dev->id;
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
    sim_device *d = rt_device_get(deviceId);
    if (!d) return rt_no_device("aclrtCreateContext", deviceId);
    sim_context *c = context_new(d, 1);
    if (!c) FAIL(ACL_ERROR_BAD_ALLOC, "aclrtCreateContext: out of host memory");
    rt_tls_ctx = c;
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
    if (rt_tls_ctx == c) rt_tls_ctx = NULL;
    context_free(c);
    return ACL_SUCCESS;
}

aclError aclrtSetCurrentContext(aclrtContext context) {
    sim_context *c = as_ctx(context);
    if (!c) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtSetCurrentContext: invalid context");
    rt_tls_ctx = c;
    return ACL_SUCCESS;
}

aclError aclrtGetCurrentContext(aclrtContext *context) {
    if (!context) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtGetCurrentContext: context is NULL");
    if (!rt_tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "aclrtGetCurrentContext: no current context on this thread");
    *context = rt_tls_ctx;
    return ACL_SUCCESS;
}

/* ------------------------------------------------------------------------------------------ */
/* Streams                                                                                     */

/* NULL when host memory ran out. */
static sim_stream *stream_new(sim_device *d, sim_context *ctx, int internal) {
    sim_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
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

sim_stream *rt_as_stream(aclrtStream s) {
    sim_stream *x = (sim_stream *)s;
    return (x && x->magic == MAGIC_STREAM && !x->destroying) ? x : NULL;
}

/* NULL = the current context's default stream. Work submitted from a thread whose context does
 * not own the stream's device is refused, as on the real runtime. */
aclError rt_resolve_stream(aclrtStream stream, const char *api, sim_stream **out) {
    if (!rt_tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "%s: no current context on this thread", api);
    if (!stream) {
        *out = rt_tls_ctx->default_stream;
        return ACL_SUCCESS;
    }
    sim_stream *s = rt_as_stream(stream);
    if (!s) FAIL(ACL_ERROR_RT_INVALID_HANDLE, "%s: invalid stream handle", api);
    if (s->dev != rt_tls_ctx->dev)
        FAIL(ACL_ERROR_RT_STREAM_CONTEXT, "%s: the stream belongs to device %d, the current context to device %d", api,
             (int)s->dev->id, (int)rt_tls_ctx->dev->id);
    *out = s;
    return ACL_SUCCESS;
}

int32_t sim_stream_device(aclrtStream stream) {
    sim_stream *s = rt_as_stream(stream);
    return s ? s->dev->id : -1;
}

aclError aclrtCreateStream(aclrtStream *stream) {
    if (!stream) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtCreateStream: stream is NULL");
    if (!rt_tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "aclrtCreateStream: no current context on this thread");
    sim_stream *s = stream_new(rt_tls_ctx->dev, rt_tls_ctx, 0);
    if (!s) FAIL(ACL_ERROR_BAD_ALLOC, "aclrtCreateStream: out of host memory");
    *stream = s;
    return ACL_SUCCESS;
}

aclError aclrtCreateStreamWithConfig(aclrtStream *stream, uint32_t priority, uint32_t flag) {
    (void)priority;
    (void)flag; /* FAST_LAUNCH / FAST_SYNC change only timing on hardware */
    return aclrtCreateStream(stream);
}

aclError sim_stream_create_internal(int32_t device_id, aclrtStream *out) {
    sim_device *d = rt_device_get(device_id);
    if (!d) return rt_no_device("sim_stream_create_internal", device_id);
    sim_stream *s = stream_new(d, NULL, 1);
    if (!s) FAIL(ACL_ERROR_BAD_ALLOC, "sim_stream_create_internal: out of host memory");
    *out = s;
    return ACL_SUCCESS;
}

/* Drops one reference; the last frees the record (stream_free already waited for the work to
 * drain and unlinked it: what is left is read only by events recorded on it). */
void rt_stream_unref_locked(sim_stream *s) {
    if (--s->refs > 0) return;
    while (s->injects) {
        sim_inject *n = s->injects->next;
        free(s->injects);
        s->injects = n;
    }
    free(s);
}

/* Waits for the stream's work to drain (releasing a held gate), unlinks it and drops the
 * handle's reference. */
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
        rt_report_drop_locked(d, s);
        for (report_queue *q = d->reports; q; q = q->next)
            if (q->thread_id == s->sub_thread) q->n_streams--;
    }
    s->magic = 0; /* the handle is dead; events recorded on it may still read its fault */
    rt_stream_unref_locked(s);
    pthread_mutex_unlock(&d->lock);
    if (!s_internal) SIM_STAT_ADD(streams, -1);
}

aclError aclrtDestroyStream(aclrtStream stream) {
    sim_stream *s = rt_as_stream(stream);
    if (!s) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtDestroyStream: invalid stream handle");
    if (s->internal) FAIL(ACL_ERROR_RT_PARAM_INVALID, "aclrtDestroyStream: a default stream cannot be destroyed");
    stream_free(s);
    return ACL_SUCCESS;
}

aclError sim_stream_destroy_internal(aclrtStream stream) {
    sim_stream *s = rt_as_stream(stream);
    if (!s) return ACL_ERROR_INVALID_PARAM;
    stream_free(s);
    return ACL_SUCCESS;
}

static int stream_idle(const sim_stream *s) { return !s->head && !s->running; }

aclError rt_stream_fault_locked(sim_stream *s, const char *api) {
    sim_set_error("%s: stream failed: %s", api, s->fault_msg[0] ? s->fault_msg : "device task error");
    return s->fault;
}

/* Wait until the stream drains; timeout_ms -1 = forever, 0 = check now. */
static aclError stream_sync(sim_stream *s, int32_t timeout_ms, const char *api) {
    sim_device *d = s->dev;
    struct timespec dl;
    if (timeout_ms > 0) rt_deadline_after_ms(&dl, timeout_ms);
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
        rc = rt_stream_fault_locked(s, api);
    } else if (rc) {
        sim_set_error("%s: timed out after %d ms", api, (int)timeout_ms);
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

aclError aclrtSynchronizeStream(aclrtStream stream) {
    sim_stream *s;
    aclError rc = rt_resolve_stream(stream, "aclrtSynchronizeStream", &s);
    if (rc) return rc;
    return stream_sync(s, -1, "aclrtSynchronizeStream");
}

aclError aclrtSynchronizeStreamWithTimeout(aclrtStream stream, int32_t timeout) {
    if (timeout < -1)
        FAIL(ACL_ERROR_RT_PARAM_INVALID, "aclrtSynchronizeStreamWithTimeout: timeout %d < -1", (int)timeout);
    sim_stream *s;
    aclError rc = rt_resolve_stream(stream, "aclrtSynchronizeStreamWithTimeout", &s);
    if (rc) return rc;
    return stream_sync(s, timeout, "aclrtSynchronizeStreamWithTimeout");
}

aclError aclrtStreamQuery(aclrtStream stream, aclrtStreamStatus *status) {
    if (!status) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtStreamQuery: status is NULL");
    sim_stream *s;
    aclError rc = rt_resolve_stream(stream, "aclrtStreamQuery", &s);
    if (rc) return rc;
    sim_device *d = s->dev;
    pthread_mutex_lock(&d->lock);
    if (s->fault) {
        rc = rt_stream_fault_locked(s, "aclrtStreamQuery");
    } else {
        *status = stream_idle(s) ? ACL_STREAM_STATUS_COMPLETE : ACL_STREAM_STATUS_NOT_READY;
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

aclError aclrtSynchronizeDevice(void) {
    if (!rt_tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "aclrtSynchronizeDevice: no current context on this thread");
    sim_device *d = rt_tls_ctx->dev;
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

sim_task *rt_task_new(int kind) {
    sim_task *t = calloc(1, sizeof *t);
    if (t) t->kind = kind;
    return t;
}

void rt_enqueue_locked(sim_stream *s, sim_task *t) {
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

/* The task's sequence number, or 0 when host memory ran out (nothing was enqueued). */
static uint64_t enqueue_exec(sim_stream *s, int flags, sim_exec_fn exec, sim_cleanup_fn cleanup, void *payload) {
    sim_task *t = rt_task_new(TASK_EXEC);
    if (!t) return 0;
    t->flags = flags;
    t->exec = exec;
    t->cleanup = cleanup;
    t->payload = payload;
    pthread_mutex_lock(&s->dev->lock);
    rt_enqueue_locked(s, t);
    uint64_t seq = t->seq;
    pthread_mutex_unlock(&s->dev->lock);
    return seq;
}

aclError sim_enqueue(aclrtStream stream, int flags, sim_exec_fn exec, sim_cleanup_fn cleanup, void *payload) {
    sim_stream *s;
    aclError rc = rt_resolve_stream(stream, "sim_enqueue", &s);
    if (rc) return rc;
    if (!enqueue_exec(s, flags, exec, cleanup, payload)) FAIL(ACL_ERROR_BAD_ALLOC, "sim_enqueue: out of host memory");
    return ACL_SUCCESS;
}

/* GE's own streams: no context check (GE drives them from its own threads). */
aclError sim_enqueue_internal(aclrtStream stream, int flags, sim_exec_fn exec, sim_cleanup_fn cleanup, void *payload,
                              uint64_t *seq) {
    sim_stream *s = rt_as_stream(stream);
    if (!s) FAIL(ACL_ERROR_RT_INVALID_HANDLE, "sim_enqueue_internal: invalid stream handle");
    uint64_t n = enqueue_exec(s, flags, exec, cleanup, payload);
    if (!n) FAIL(ACL_ERROR_BAD_ALLOC, "sim_enqueue_internal: out of host memory");
    if (seq) *seq = n;
    return ACL_SUCCESS;
}

void sim_wait_retired(aclrtStream stream, uint64_t seq) {
    sim_stream *s = (sim_stream *)stream;
    pthread_mutex_lock(&s->dev->lock);
    while (s->completed < seq) pthread_cond_wait(&s->dev->done_cv, &s->dev->lock);
    pthread_mutex_unlock(&s->dev->lock);
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
