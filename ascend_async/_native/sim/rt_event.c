/* Events: create, record, query, synchronize, wait, timestamps (rt_internal.h). */
#define _GNU_SOURCE
#include "rt_internal.h"

#include <errno.h>
#include <stdlib.h>

static sim_event *as_event(aclrtEvent e) {
    sim_event *x = (sim_event *)e;
    return (x && x->magic == MAGIC_EVENT && !x->destroyed) ? x : NULL;
}

aclError aclrtCreateEventWithFlag(aclrtEvent *event, uint32_t flag) {
    if (!event) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtCreateEvent: event is NULL");
    if (!rt_tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "aclrtCreateEvent: no current context on this thread");
    sim_event *e = calloc(1, sizeof *e);
    if (!e) FAIL(ACL_ERROR_BAD_ALLOC, "aclrtCreateEvent: out of host memory");
    e->magic = MAGIC_EVENT;
    e->flags = flag;
    e->dev = rt_tls_ctx->dev;
    e->refs = 1;
    SIM_STAT_ADD(events, 1);
    *event = e;
    return ACL_SUCCESS;
}

aclError aclrtCreateEvent(aclrtEvent *event) { return aclrtCreateEventWithFlag(event, ACL_EVENT_SYNC); }

void rt_event_unref_locked(sim_event *e) {
    if (--e->refs > 0) return;
    if (e->stream) rt_stream_unref_locked(e->stream);
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
    rt_event_unref_locked(e);
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
    aclError rc = rt_resolve_stream(stream, "aclrtRecordEvent", &s);
    if (rc) return rc;
    sim_device *d = s->dev;
    if (d != e->dev) FAIL(ACL_ERROR_RT_STREAM_CONTEXT, "aclrtRecordEvent: event and stream are on different devices");
    sim_task *t = rt_task_new(TASK_RECORD);
    if (!t) FAIL(ACL_ERROR_BAD_ALLOC, "aclrtRecordEvent: out of host memory");
    pthread_mutex_lock(&d->lock);
    if (!e->hw) {
        /* The first record takes a hardware event; none free means waiting for one. */
        struct timespec dl = {0, 0};
        if (d->hw_events >= g_rt.cfg.max_events) rt_deadline_after_ms(&dl, record_wait_ms());
        while (d->hw_events >= g_rt.cfg.max_events) {
            if (pthread_cond_timedwait(&d->done_cv, &d->lock, &dl) == ETIMEDOUT &&
                d->hw_events >= g_rt.cfg.max_events) {
                pthread_mutex_unlock(&d->lock);
                free(t);
                FAIL(ACL_ERROR_RT_NO_EVENT_RESOURCE, "aclrtRecordEvent: all %u hardware events are in use",
                     g_rt.cfg.max_events);
            }
        }
        d->hw_events++;
        e->hw = 1;
    }
    t->event = e;
    t->gen = e->record_gen + 1;
    __atomic_store_n(&e->record_gen, t->gen, __ATOMIC_RELEASE); /* read lock-free by QueryEventStatus */
    e->refs++;
    if (e->stream != s) { /* the event keeps the stream of its latest record alive */
        if (e->stream) rt_stream_unref_locked(e->stream);
        s->refs++;
        e->stream = s;
    }
    rt_enqueue_locked(s, t);
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
    if (timeout_ms > 0) rt_deadline_after_ms(&dl, timeout_ms);
    pthread_mutex_lock(&d->lock);
    aclError rc = ACL_SUCCESS;
    uint64_t gen = e->record_gen;
    while (gen && e->done_gen < gen) {
        sim_stream *s = e->stream;
        if (s && s->fault && s->fault_seq <= e->seq) {
            rc = rt_stream_fault_locked(s, api);
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
    if (timeout < -1)
        FAIL(ACL_ERROR_RT_PARAM_INVALID, "aclrtSynchronizeEventWithTimeout: timeout %d < -1", (int)timeout);
    return event_sync(event, timeout, "aclrtSynchronizeEventWithTimeout");
}

aclError aclrtStreamWaitEvent(aclrtStream stream, aclrtEvent event) {
    sim_event *e = as_event(event);
    if (!e) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtStreamWaitEvent: invalid event handle");
    sim_stream *s;
    aclError rc = rt_resolve_stream(stream, "aclrtStreamWaitEvent", &s);
    if (rc) return rc;
    if (s->dev != e->dev)
        FAIL(ACL_ERROR_RT_STREAM_CONTEXT, "aclrtStreamWaitEvent: event and stream are on different devices");
    sim_task *t = rt_task_new(TASK_WAIT);
    if (!t) FAIL(ACL_ERROR_BAD_ALLOC, "aclrtStreamWaitEvent: out of host memory");
    pthread_mutex_lock(&s->dev->lock);
    if (e->record_gen) { /* waiting on a never-recorded event is a no-op */
        t->event = e;
        t->gen = e->record_gen;
        e->refs++;
        rt_enqueue_locked(s, t);
        t = NULL;
    }
    pthread_mutex_unlock(&s->dev->lock);
    free(t);
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
