/* The device threads: each device's `workers` threads run its streams' tasks, one task of a
 * stream at a time, several streams at once (rt_internal.h). */
#define _GNU_SOURCE
#include "rt_internal.h"

#include <stdio.h>
#include <stdlib.h>

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

/* How long a device thread that ran out of work looks for more before it sleeps: the gaps
 * between the tasks of one host submission (measured: 5 us is too short, 10-20 us catches
 * them; c=64 on a tiny graph went from ~27k to ~32k runs/s, with less CPU per run). */
#define SPIN_NS 20000u

void *rt_device_thread(void *arg) {
    sim_device *d = arg;
    char err[1024];
    /* Named, so that tools (and the benchmarks) can tell the simulated device's CPU time from
     * the host's: on an NPU this work is not host CPU at all. */
    char name[16];
    snprintf(name, sizeof name, "aa-sim-dev%d", (int)d->id);
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&d->lock);
    int spun = 0;
    int recorded = 0; /* the last task run was an event record: a host submission's end */
    for (;;) {
        if (d->shutdown) break; /* a failed start (devices_unwind_locked): no work was ever queued */
        sim_stream *s = pick_locked(d);
        /* No spin after an event record: it ends a host submission, and the host thread that
         * waits for that event (a watcher polling, a loop) may share this core, where a spin
         * would keep it from noticing the completion until the spin ends (measured on 2
         * cores: a flat +30 us from device done to noticed at c=1, and c=64 at half rate). The
         * next submission rings the doorbell (a futex wake), as after a spin that found
         * nothing. */
        if (!s && !spun && !d->spinning && !recorded) {
            /* A host enqueues a run as a few tasks back to back (copies, graph, event): look
             * again for a few microseconds before sleeping, so those tasks need no futex wake
             * each (a doorbell on an NPU is one register write). One thread at a time. */
            uint64_t seen = d->enqueued;
            d->spinning = 1;
            SIM_STAT_ADD(device_spins, 1);
            pthread_mutex_unlock(&d->lock);
            uint64_t t0 = sim_now_ns();
            while (__atomic_load_n(&d->enqueued, __ATOMIC_ACQUIRE) == seen && sim_now_ns() - t0 < SPIN_NS) {}
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
            recorded = 0;
            d->idle++;
            pthread_cond_wait(&d->work_cv, &d->lock);
            d->idle--;
            if (d->waking) d->waking--;
            spun = 0;
            continue;
        }
        spun = 0;
        sim_task *t = s->head;
        recorded = t->kind == TASK_RECORD;
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
                snprintf(err, sizeof err, "injected fault %d on task %llu", (int)code, (unsigned long long)t->seq);
            } else if (t->kind == TASK_EXEC) {
                /* A task body may allocate device memory (a dynamic graph's outputs come from
                 * the stream's external allocator): it runs in its stream's context. */
                rt_tls_ctx = s->ctx;
                code = t->exec ? t->exec(t->payload, err, sizeof err) : 0;
                rt_tls_ctx = NULL;
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
            rt_report_push_locked(d, t, s, t->cb_block ? &cb_done : NULL);
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
            rt_event_unref_locked(e);
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

        free(t->cb_item); /* NULL once the report queue took it */
        free(t);
        pthread_mutex_lock(&d->lock);
    }
    d->n_live--;
    pthread_cond_broadcast(&d->done_cv);
    pthread_mutex_unlock(&d->lock);
    return NULL;
}
