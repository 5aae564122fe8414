/* aa_watch: the completion watcher's C core (see cdefs/support.h), over public AscendCL only.
 *
 * Who touches what:
 * - submitting threads (event loops) call aa_watch_add after their aclrtRecordEvent returned;
 *   it appends to the stream's FIFO under `mu` and wakes the watcher only if it sleeps;
 * - the watcher thread (Python, GIL released by cffi) is the only caller of aa_watch_wait: it
 *   queries the OLDEST event of each busy stream (a stream completes in order, so nothing
 *   behind it can be done first), spins for spin_us after progress, then sleeps with a
 *   doubling back-off, and probes busy streams for faults every fault_probe_us (a faulted
 *   stream's events never complete; aclrtSynchronizeStreamWithTimeout(s, 0) reports the error);
 * - in report mode a C report thread runs aclrtProcessReport and the runtime invokes
 *   report_cb on it; RunGraphAsync callbacks (aa_watch_run_callback) arrive on GE's thread.
 *   Both only move an entry to the done queue and signal `cv`.
 * ACL queries are made without holding `mu`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../ascend_async.h"

typedef struct wstream wstream;

typedef struct wentry {
    struct wentry *next;
    aclrtEvent event;
    uint64_t token;
    wstream *ws;
    aa_watch *w;
    int orphan; /* report mode: failed before its callback ran; freed at destroy */
} wentry;

struct wstream {
    wstream *next;
    aclrtStream stream;
    wentry *head, *tail;
    int subscribed;
    int dead; /* forgotten by aa_watch_fail_stream; freed by the watcher thread */
};

typedef struct done_item {
    uint64_t token;
    int32_t code;
    uint64_t ns;
} done_item;

struct aa_watch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    aclrtContext ctx;
    aa_watch_config cfg;
    wstream *streams;
    wentry *orphans;
    done_item *done;
    size_t n_done, cap_done;
    int closed;
    int kicked;
    int sleeping;
    pthread_t ctx_thread;
    int ctx_set;
    aa_watch_stats st;
    /* report mode */
    pthread_t report_thread;
    int report_started;
    int report_stop;
};

uint64_t aa_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void abs_deadline(struct timespec *ts, uint64_t ns_from_now) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    uint64_t nsec = (uint64_t)ts->tv_nsec + ns_from_now;
    ts->tv_sec += (time_t)(nsec / 1000000000ull);
    ts->tv_nsec = (long)(nsec % 1000000000ull);
}

static void push_done_locked(aa_watch *w, uint64_t token, int32_t code, uint64_t ns) {
    if (w->n_done == w->cap_done) {
        w->cap_done = w->cap_done ? w->cap_done * 2 : 256;
        w->done = realloc(w->done, w->cap_done * sizeof(done_item));
    }
    w->done[w->n_done++] = (done_item){token, code, ns};
    if (code)
        w->st.failed++;
    else
        w->st.completed++;
}

static void *report_main(void *arg);

aa_watch *aa_watch_create(aclrtContext context, const aa_watch_config *config) {
    aa_watch *w = calloc(1, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &a);
    pthread_condattr_destroy(&a);
    w->ctx = context;
    aa_watch_config c = {AA_WATCH_POLL, 50, 20, 500, 2000};
    if (config) {
        c.strategy = config->strategy;
        if (config->spin_us || config->min_sleep_us || config->max_sleep_us) {
            c.spin_us = config->spin_us;
            c.min_sleep_us = config->min_sleep_us ? config->min_sleep_us : 1;
            c.max_sleep_us = config->max_sleep_us > c.min_sleep_us ? config->max_sleep_us : c.min_sleep_us;
        }
        if (config->fault_probe_us) c.fault_probe_us = config->fault_probe_us;
    }
    w->cfg = c;
    if (c.strategy == AA_WATCH_REPORT) {
        if (pthread_create(&w->report_thread, NULL, report_main, w) == 0) w->report_started = 1;
    }
    return w;
}

static wstream *stream_of_locked(aa_watch *w, aclrtStream s) {
    for (wstream *x = w->streams; x; x = x->next)
        if (x->stream == s && !x->dead) return x;
    wstream *x = calloc(1, sizeof *x);
    x->stream = s;
    x->next = w->streams;
    w->streams = x;
    return x;
}

static void report_cb(void *user) {
    wentry *e = user;
    aa_watch *w = e->w;
    uint64_t now = aa_monotonic_ns();
    pthread_mutex_lock(&w->mu);
    if (e->orphan) { /* already reported failed; owned by the orphan list */
        pthread_mutex_unlock(&w->mu);
        return;
    }
    wstream *ws = e->ws;
    wentry *prev = NULL;
    for (wentry *x = ws->head; x; prev = x, x = x->next)
        if (x == e) {
            if (prev)
                prev->next = x->next;
            else
                ws->head = x->next;
            if (ws->tail == x) ws->tail = prev;
            w->st.pending--;
            push_done_locked(w, e->token, 0, now);
            pthread_cond_signal(&w->cv);
            break;
        }
    pthread_mutex_unlock(&w->mu);
    free(e);
}

aclError aa_watch_add(aa_watch *w, aclrtStream stream, aclrtEvent event, uint64_t token) {
    wentry *e = calloc(1, sizeof *e);
    e->event = event;
    e->token = token;
    e->w = w;
    pthread_mutex_lock(&w->mu);
    wstream *ws = stream_of_locked(w, stream);
    e->ws = ws;
    if (w->cfg.strategy == AA_WATCH_REPORT) {
        if (!ws->subscribed) {
            aclError rc = aclrtSubscribeReport((uint64_t)w->report_thread, stream);
            if (rc) {
                pthread_mutex_unlock(&w->mu);
                free(e);
                return rc;
            }
            ws->subscribed = 1;
        }
    }
    if (ws->tail)
        ws->tail->next = e;
    else
        ws->head = e;
    ws->tail = e;
    w->st.added++;
    w->st.pending++;
    if (w->cfg.strategy == AA_WATCH_REPORT) {
        /* The callback runs when the stream reaches it, i.e. after the recorded work. */
        aclError rc = aclrtLaunchCallback(report_cb, e, ACL_CALLBACK_NO_BLOCK, stream);
        if (rc) {
            /* Undo: it was the tail. */
            wentry *p = NULL;
            for (wentry *x = ws->head; x && x != e; x = x->next) p = x;
            if (p) p->next = NULL; else ws->head = NULL;
            ws->tail = p;
            w->st.added--;
            w->st.pending--;
            pthread_mutex_unlock(&w->mu);
            free(e);
            return rc;
        }
    }
    if (w->sleeping) pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return ACL_SUCCESS;
}

/* Moves every entry of `ws` to done with `code`. In report mode an entry whose event already
 * completed succeeded (its callback is merely late, or was itself the failed task): it is done
 * with code 0. Report-mode entries stay allocated as orphans: a late callback may still come. */
static void fail_entries_locked(aa_watch *w, wstream *ws, int32_t code, uint64_t now) {
    int report = w->cfg.strategy == AA_WATCH_REPORT;
    while (ws->head) {
        wentry *e = ws->head;
        ws->head = e->next;
        int32_t c = code;
        if (report) {
            aclrtEventRecordedStatus status = ACL_EVENT_RECORDED_STATUS_NOT_READY;
            if (aclrtQueryEventStatus(e->event, &status) == ACL_SUCCESS &&
                status == ACL_EVENT_RECORDED_STATUS_COMPLETE)
                c = 0;
        }
        push_done_locked(w, e->token, c, now);
        w->st.pending--;
        if (report) {
            e->orphan = 1;
            e->next = w->orphans;
            w->orphans = e;
        } else {
            free(e);
        }
    }
    ws->tail = NULL;
}

/* Probes `ws` for a fault (called with `mu`, drops it around the runtime call): a faulted
 * stream's events never complete, so its pending entries fail with the stream's error.
 * Returns 1 if it failed them. */
static int probe_locked(aa_watch *w, wstream *ws, uint64_t *now) {
    aclrtStream s = ws->stream;
    pthread_mutex_unlock(&w->mu);
    aclError prc = aclrtSynchronizeStreamWithTimeout(s, 0);
    pthread_mutex_lock(&w->mu);
    w->st.probes++;
    if (prc == ACL_SUCCESS || prc == ACL_ERROR_RT_STREAM_SYNC_TIMEOUT) return 0;
    if (!*now) *now = aa_monotonic_ns();
    fail_entries_locked(w, ws, prc, *now);
    return 1;
}

/* One polling pass over the busy streams; returns how many completed. Called without `mu`. */
static int poll_pass(aa_watch *w, int probe) {
    int progressed = 0;
    uint64_t now = 0;
    int report = w->cfg.strategy == AA_WATCH_REPORT; /* callbacks pop entries: probe only */
    pthread_mutex_lock(&w->mu);
    for (wstream *ws = w->streams; ws; ws = ws->next) {
        if (report) {
            if (ws->head && probe) progressed += probe_locked(w, ws, &now);
            continue;
        }
        while (ws->head) {
            wentry *e = ws->head;
            aclrtEvent ev = e->event;
            pthread_mutex_unlock(&w->mu);
            aclrtEventRecordedStatus status = ACL_EVENT_RECORDED_STATUS_NOT_READY;
            aclError rc = aclrtQueryEventStatus(ev, &status);
            pthread_mutex_lock(&w->mu);
            w->st.polls++;
            if (ws->head != e) continue; /* aa_watch_fail_stream took it meanwhile */
            if (rc == ACL_SUCCESS && status == ACL_EVENT_RECORDED_STATUS_COMPLETE) {
                if (!now) now = aa_monotonic_ns();
                ws->head = e->next;
                if (!ws->head) ws->tail = NULL;
                w->st.pending--;
                push_done_locked(w, e->token, 0, now);
                free(e);
                progressed++;
                continue;
            }
            if (rc != ACL_SUCCESS) { /* the event's context was aborted: the run is lost */
                if (!now) now = aa_monotonic_ns();
                fail_entries_locked(w, ws, rc, now);
                progressed++;
            } else if (probe) {
                progressed += probe_locked(w, ws, &now);
            }
            break;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return progressed;
}

static void ensure_context(aa_watch *w) {
    pthread_t me = pthread_self();
    if (w->ctx_set && pthread_equal(w->ctx_thread, me)) return;
    if (w->ctx) aclrtSetCurrentContext(w->ctx);
    w->ctx_thread = me;
    w->ctx_set = 1;
}

int aa_watch_wait(aa_watch *w, uint64_t *tokens, int32_t *codes, uint64_t *noticed_ns, int max, int32_t timeout_ms) {
    ensure_context(w);
    uint64_t start = aa_monotonic_ns();
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : start + (uint64_t)timeout_ms * 1000000ull;
    uint64_t last_progress = start;
    uint64_t last_probe = start;
    uint32_t backoff = w->cfg.min_sleep_us;
    int report = w->cfg.strategy == AA_WATCH_REPORT;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        /* Only this thread walks the stream list unlocked, so only it frees dead entries. */
        for (wstream **pp = &w->streams; *pp;) {
            wstream *ws = *pp;
            if (ws->dead) {
                *pp = ws->next;
                free(ws);
            } else {
                pp = &ws->next;
            }
        }
        if (w->n_done) {
            int n = (int)(w->n_done < (size_t)max ? w->n_done : (size_t)max);
            for (int i = 0; i < n; i++) {
                tokens[i] = w->done[i].token;
                codes[i] = w->done[i].code;
                if (noticed_ns) noticed_ns[i] = w->done[i].ns;
            }
            memmove(w->done, w->done + n, (w->n_done - (size_t)n) * sizeof(done_item));
            w->n_done -= (size_t)n;
            w->st.batches++;
            pthread_mutex_unlock(&w->mu);
            return n;
        }
        if (w->closed) {
            pthread_mutex_unlock(&w->mu);
            return -1;
        }
        if (w->kicked) {
            w->kicked = 0;
            pthread_mutex_unlock(&w->mu);
            return 0;
        }
        uint64_t now = aa_monotonic_ns();
        if (now >= deadline) {
            pthread_mutex_unlock(&w->mu);
            return 0;
        }
        if (w->st.pending == 0 || report) {
            /* Idle (or callbacks do the work): sleep until something arrives. With runs pending
             * in report mode, wake up to probe for faults, which never call back. */
            uint64_t wait_ns = deadline - now;
            if (report && w->st.pending) {
                uint64_t probe_ns = (uint64_t)w->cfg.fault_probe_us * 1000u;
                if (now - last_probe >= probe_ns) {
                    last_probe = now;
                    pthread_mutex_unlock(&w->mu);
                    /* Probe only: no event queries in report mode beyond the fault check. */
                    poll_pass(w, 1);
                    pthread_mutex_lock(&w->mu);
                    continue;
                }
                if (wait_ns > probe_ns) wait_ns = probe_ns;
            }
            struct timespec ts;
            if (wait_ns > 3600ull * 1000000000ull) wait_ns = 3600ull * 1000000000ull;
            abs_deadline(&ts, wait_ns);
            w->sleeping = 1;
            w->st.sleeps++;
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
            w->sleeping = 0;
            last_progress = aa_monotonic_ns();
            backoff = w->cfg.min_sleep_us;
            continue;
        }
        pthread_mutex_unlock(&w->mu);
        int probe = now - last_probe >= (uint64_t)w->cfg.fault_probe_us * 1000u;
        if (probe) last_probe = now;
        int got = poll_pass(w, probe);
        pthread_mutex_lock(&w->mu);
        if (got) {
            last_progress = aa_monotonic_ns();
            backoff = w->cfg.min_sleep_us;
            continue;
        }
        if (now - last_progress < (uint64_t)w->cfg.spin_us * 1000u) {
            /* Spin (in C, GIL released): completions are likely within microseconds. */
            pthread_mutex_unlock(&w->mu);
            sched_yield();
            pthread_mutex_lock(&w->mu);
            continue;
        }
        /* Back off; a new run or a kick wakes us early. */
        struct timespec ts;
        abs_deadline(&ts, (uint64_t)backoff * 1000u);
        w->sleeping = 1;
        w->st.sleeps++;
        int woke = pthread_cond_timedwait(&w->cv, &w->mu, &ts) != ETIMEDOUT;
        w->sleeping = 0;
        if (woke) {
            last_progress = aa_monotonic_ns();
            backoff = w->cfg.min_sleep_us;
        } else if (backoff < w->cfg.max_sleep_us) {
            backoff = backoff * 2 < w->cfg.max_sleep_us ? backoff * 2 : w->cfg.max_sleep_us;
        }
    }
}

void aa_watch_kick(aa_watch *w) {
    pthread_mutex_lock(&w->mu);
    w->kicked = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void aa_watch_close(aa_watch *w) {
    pthread_mutex_lock(&w->mu);
    w->closed = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void aa_watch_fail_stream(aa_watch *w, aclrtStream stream, int32_t code) {
    pthread_mutex_lock(&w->mu);
    for (wstream **pp = &w->streams; *pp; pp = &(*pp)->next) {
        wstream *ws = *pp;
        if (ws->stream != stream) continue;
        if (ws->dead) continue;
        fail_entries_locked(w, ws, code, aa_monotonic_ns());
        if (ws->subscribed) aclrtUnSubscribeReport((uint64_t)w->report_thread, stream);
        ws->subscribed = 0;
        ws->dead = 1;
        pthread_cond_broadcast(&w->cv);
        break;
    }
    pthread_mutex_unlock(&w->mu);
}

void aa_watch_get_stats(aa_watch *w, aa_watch_stats *stats) {
    pthread_mutex_lock(&w->mu);
    *stats = w->st;
    pthread_mutex_unlock(&w->mu);
}

void aa_watch_run_callback(void *user_data, aa_status status, aa_tensor *outputs, size_t n_outputs) {
    aa_cb_slot *slot = user_data;
    size_t keep = n_outputs < slot->capacity ? n_outputs : slot->capacity;
    for (size_t i = 0; i < keep; i++) slot->outputs[i] = outputs[i];
    for (size_t i = keep; i < n_outputs; i++) aa_tensor_release(&outputs[i]);
    slot->n_outputs = keep;
    slot->status = status;
    aa_watch *w = slot->watch;
    pthread_mutex_lock(&w->mu);
    push_done_locked(w, slot->token, 0, aa_monotonic_ns());
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void *report_main(void *arg) {
    aa_watch *w = arg;
    if (w->ctx) aclrtSetCurrentContext(w->ctx);
    for (;;) {
        pthread_mutex_lock(&w->mu);
        int stop = w->report_stop;
        pthread_mutex_unlock(&w->mu);
        if (stop) break;
        aclError rc = aclrtProcessReport(50);
        if (rc != ACL_SUCCESS && rc != ACL_ERROR_RT_REPORT_TIMEOUT) {
            /* Nothing subscribed yet: wait for a subscription (or the stop). */
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

void aa_watch_destroy(aa_watch *w) {
    if (w->report_started) {
        pthread_mutex_lock(&w->mu);
        w->report_stop = 1;
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->report_thread, NULL);
    }
    while (w->streams) {
        wstream *ws = w->streams;
        w->streams = ws->next;
        if (ws->subscribed) aclrtUnSubscribeReport((uint64_t)w->report_thread, ws->stream);
        while (ws->head) {
            wentry *e = ws->head;
            ws->head = e->next;
            free(e);
        }
        free(ws);
    }
    while (w->orphans) {
        wentry *e = w->orphans;
        w->orphans = e->next;
        free(e);
    }
    free(w->done);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}
