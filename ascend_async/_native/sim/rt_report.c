/* Host callbacks: subscribe, launch, the report queues and aclrtProcessReport (rt_internal.h). */
#define _GNU_SOURCE
#include "rt_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Hands a callback task's item (allocated by aclrtLaunchCallback) to its report thread's queue.
 * Device thread, device lock held. */
void rt_report_push_locked(sim_device *d, sim_task *t, const sim_stream *s, int *done_flag) {
    for (report_queue *q = d->reports; q; q = q->next) {
        if (q->thread_id != t->cb_thread) continue;
        report_item *it = t->cb_item;
        t->cb_item = NULL;
        memset(it, 0, sizeof *it);
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

/* Drops the callbacks `s` queued for its report thread and not yet taken by aclrtProcessReport:
 * once a stream is unsubscribed (or destroyed) they must not reach a later thread that happens
 * to reuse the id (their user data may be gone by then). Caller holds the device lock. */
void rt_report_drop_locked(sim_device *d, const sim_stream *s) {
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
    aclError rc = rt_resolve_stream(stream, "aclrtSubscribeReport", &s);
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
        if (!q) {
            pthread_mutex_unlock(&d->lock);
            FAIL(ACL_ERROR_BAD_ALLOC, "aclrtSubscribeReport: out of host memory");
        }
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
    aclError rc = rt_resolve_stream(stream, "aclrtUnSubscribeReport", &s);
    if (rc) return rc;
    sim_device *d = s->dev;
    pthread_mutex_lock(&d->lock);
    if (!s->subscribed || s->sub_thread != threadId) {
        pthread_mutex_unlock(&d->lock);
        FAIL(ACL_ERROR_STREAM_NOT_SUBSCRIBE, "aclrtUnSubscribeReport: stream is not subscribed by that thread");
    }
    rt_report_drop_locked(d, s);
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
    aclError rc = rt_resolve_stream(stream, "aclrtLaunchCallback", &s);
    if (rc) return rc;
    /* The task and its report item are made here, so that the device thread never allocates. */
    sim_task *t = rt_task_new(TASK_CALLBACK);
    report_item *item = t ? calloc(1, sizeof *item) : NULL;
    if (!item) {
        free(t);
        FAIL(ACL_ERROR_BAD_ALLOC, "aclrtLaunchCallback: out of host memory");
    }
    pthread_mutex_lock(&s->dev->lock);
    if (!s->subscribed) {
        pthread_mutex_unlock(&s->dev->lock);
        free(item);
        free(t);
        FAIL(ACL_ERROR_STREAM_NOT_SUBSCRIBE, "aclrtLaunchCallback: no report thread is subscribed to the stream");
    }
    t->cb_item = item;
    t->cb_fn = fn;
    t->cb_data = userData;
    t->cb_block = blockType == ACL_CALLBACK_BLOCK;
    t->cb_thread = s->sub_thread;
    rt_enqueue_locked(s, t);
    pthread_mutex_unlock(&s->dev->lock);
    return ACL_SUCCESS;
}

aclError aclrtProcessReport(int32_t timeout) {
    aclError rc;
    if (timeout == 0 || timeout < -1)
        FAIL(ACL_ERROR_INVALID_PARAM, "aclrtProcessReport: timeout must be -1 or > 0, got %d", (int)timeout);
    rc = rt_start();
    if (rc) return rc;
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
    if (timeout > 0) rt_deadline_after_ms(&dl, timeout);
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
