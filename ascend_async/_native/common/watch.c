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
 * - event loops own channels (aa_watch_channel_open): a completion whose token names a channel
 *   (token >> AA_WATCH_CHANNEL_SHIFT) waits in that channel's queue until its loop collects it
 *   with aa_watch_harvest (non-blocking: one polling pass, then a pop). The watcher thread asks
 *   for a wake-up of the loop (a (channel, AA_WATCH_WAKE) pair from aa_watch_wait) only when the
 *   channel is not armed (the loop has no collection scheduled) or its oldest completion waited
 *   longer than wake_after_us; after takeover_us with a wake-up unanswered (a blocked or closed
 *   loop) the channel's completions move to channel 0, the watcher thread's own queue. A
 *   channel with a notify fd (aa_watch_channel_notify_fd: an eventfd or pipe its loop's own
 *   selector watches) is woken by a write to that fd, here, under `mu`: the watcher thread then
 *   never returns to Python (never takes the GIL) to wake that loop.
 * ACL calls and `mu`: the polling pass queries events and probes streams with `mu` released.
 * In report mode some ACL calls are made with `mu` held: aa_watch_add subscribes the stream and
 * launches the callback under it (so the entry is queued before its callback can look for it),
 * aa_watch_fail_stream unsubscribes under it, and failing a stream's entries queries each event's
 * status under it. That is safe because the runtime never calls report_cb (which takes `mu`)
 * from inside those calls: callbacks run on the report thread, in aclrtProcessReport, with no
 * runtime lock held.
 *
 * Completion queues (channel 0's and each channel's) are growable rings: a pop moves nothing.
 * Host memory follows ../alloc_policy.h: aa_watch_create returns NULL and aa_watch_add
 * ACL_ERROR_BAD_ALLOC; a completion that cannot be queued stops the process (rule 3).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../alloc_policy.h"
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

/* A ring of completions: `n` items from index `head`, capacity 0 or a power of two. */
typedef struct dqueue {
    done_item *v;
    size_t head, n, cap;
} dqueue;

#define MAX_CHANNELS 64

typedef struct channel {
    int open;
    int armed;        /* the loop has a collection scheduled: no wake-up needed */
    int harvesting;   /* inside aa_watch_harvest: completions found now are popped at once */
    int wake_pending; /* a wake-up was handed to the watcher thread and not answered yet */
    int notify_fd;    /* -1, or an fd the loop's selector watches: a wake-up writes it */
    uint64_t wake_ns;
    dqueue q;
} channel;

struct aa_watch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    aclrtContext ctx;
    aa_watch_config cfg;
    wstream *streams;
    wentry *orphans;
    dqueue done;          /* channel 0: completions for the watcher thread itself */
    channel ch[MAX_CHANNELS];
    uint64_t wake_mask;   /* channels whose wake-up aa_watch_wait has yet to return */
    int polling;          /* poll passes in progress (dead streams are freed only at 0) */
    int armed_n;          /* armed channels: loops that poll for themselves */
    int closed;
    int kicked;
    int sleeping;         /* 1: asleep, a new entry wakes it; 2: the armed nap (see aa_watch_add) */
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

/* The i-th oldest item (i < q->n). */
static const done_item *dq_at(const dqueue *q, size_t i) { return &q->v[(q->head + i) & (q->cap - 1)]; }

static void dq_push(dqueue *q, done_item it) {
    if (q->n == q->cap) {
        /* Full: a ring twice the size, the items laid out from 0 again. A completion that cannot
         * be queued would leave its waiter hanging forever: stop loudly (alloc_policy.h rule 3). */
        size_t cap = q->cap ? q->cap * 2 : 256;
        if (cap < q->cap || cap > SIZE_MAX / sizeof(done_item)) aa_oom_abort("a completion queue", SIZE_MAX);
        done_item *v = malloc(cap * sizeof(done_item));
        if (!v) aa_oom_abort("a completion queue", cap * sizeof(done_item));
        size_t first = q->n < q->cap - q->head ? q->n : q->cap - q->head; /* up to the ring's end */
        if (first) memcpy(v, q->v + q->head, first * sizeof(done_item));
        if (q->n > first) memcpy(v + first, q->v, (q->n - first) * sizeof(done_item));
        free(q->v);
        q->v = v;
        q->head = 0;
        q->cap = cap;
    }
    q->v[(q->head + q->n) & (q->cap - 1)] = it;
    q->n++;
}

/* Pops up to `max` of the oldest items into the caller's arrays (nothing else moves). */
static int dq_pop(dqueue *q, uint64_t *tokens, int32_t *codes, uint64_t *noticed_ns, int max) {
    int n = (int)(q->n < (size_t)max ? q->n : (size_t)max);
    for (int i = 0; i < n; i++) {
        const done_item *it = dq_at(q, (size_t)i);
        tokens[i] = it->token;
        codes[i] = it->code;
        if (noticed_ns) noticed_ns[i] = it->ns;
    }
    q->n -= (size_t)n;
    q->head = q->n ? (q->head + (size_t)n) & (q->cap - 1) : 0;
    return n;
}

/* Appends every item of `from`, oldest first, to `to`; empties `from`. */
static void dq_move_all(dqueue *to, dqueue *from) {
    for (size_t i = 0; i < from->n; i++) dq_push(to, *dq_at(from, i));
    from->n = 0;
    from->head = 0;
}

static void request_wake_locked(aa_watch *w, int c, uint64_t now) {
    channel *ch = &w->ch[c];
    if (ch->wake_pending) return;
    ch->wake_pending = 1;
    ch->wake_ns = now;
    w->st.wakes++;
    if (ch->notify_fd >= 0) {
        /* 8 bytes: an eventfd's counter increment (a pipe takes them as bytes). A full pipe or
         * an eventfd at its limit (EAGAIN) means a wake-up is already unread: nothing is lost.
         * The fd stays open while set here (aa_watch_channel_notify_fd's contract). */
        uint64_t one = 1;
        ssize_t rc;
        do rc = write(ch->notify_fd, &one, sizeof one);
        while (rc < 0 && errno == EINTR);
        return;
    }
    w->wake_mask |= 1ull << c;
    pthread_cond_signal(&w->cv);
}

/* Routes a completion to its channel's queue (channel 0: the watcher thread's). */
static void push_done_locked(aa_watch *w, uint64_t token, int32_t code, uint64_t ns) {
    uint64_t c = token >> AA_WATCH_CHANNEL_SHIFT;
    if (code)
        w->st.failed++;
    else
        w->st.completed++;
    if (c > 0 && c < MAX_CHANNELS && w->ch[c].open) {
        channel *ch = &w->ch[c];
        dq_push(&ch->q, (done_item){token, code, ns});
        if (!ch->armed && !ch->harvesting) request_wake_locked(w, (int)c, ns);
        return;
    }
    dq_push(&w->done, (done_item){token, code, ns});
}

/* The watcher thread's checks of loop channels: a wake-up when an armed loop left a completion
 * waiting past wake_after_us; channel 0 takes over a channel whose wake-up went unanswered
 * past takeover_us. Returns the ns until the next check is due (UINT64_MAX: none). */
static uint64_t check_channels_locked(aa_watch *w, uint64_t now) {
    uint64_t next = UINT64_MAX;
    uint64_t wake_ns = (uint64_t)w->cfg.wake_after_us * 1000u, take_ns = (uint64_t)w->cfg.takeover_us * 1000u;
    for (int c = 1; c < MAX_CHANNELS; c++) {
        channel *ch = &w->ch[c];
        if (!ch->open || !ch->q.n) continue;
        if (ch->wake_pending) {
            if (now - ch->wake_ns >= take_ns) {
                w->st.takeovers += ch->q.n;
                dq_move_all(&w->done, &ch->q);
                continue;
            }
            uint64_t left = take_ns - (now - ch->wake_ns);
            if (left < next) next = left;
            continue;
        }
        uint64_t age = now - dq_at(&ch->q, 0)->ns;
        if (age >= wake_ns) {
            request_wake_locked(w, c, now);
            if (take_ns < next) next = take_ns;
        } else if (wake_ns - age < next) {
            next = wake_ns - age;
        }
    }
    return next;
}

static void *report_main(void *arg);

/* strategy, spin_us, min_sleep_us, max_sleep_us, fault_probe_us, wake_after_us, takeover_us */
static const aa_watch_config DEFAULTS = {AA_WATCH_POLL, 50, 20, 500, 2000, 1000, 50000};

void aa_watch_default_config(aa_watch_config *config) { *config = DEFAULTS; }

aa_watch *aa_watch_create(aclrtContext context, const aa_watch_config *config) {
    aa_watch *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    for (int c = 0; c < MAX_CHANNELS; c++) w->ch[c].notify_fd = -1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &a);
    pthread_condattr_destroy(&a);
    w->ctx = context;
    aa_watch_config c = DEFAULTS;
    if (config) {
        if (config->wake_after_us) c.wake_after_us = config->wake_after_us;
        if (config->takeover_us) c.takeover_us = config->takeover_us;
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
        /* Without its report thread the watch would never see a completion: no watch at all. */
        if (pthread_create(&w->report_thread, NULL, report_main, w) != 0) {
            pthread_cond_destroy(&w->cv);
            pthread_mutex_destroy(&w->mu);
            free(w);
            return NULL;
        }
        w->report_started = 1;
    }
    return w;
}

/* The stream's record, made on first use; NULL when host memory ran out. */
static wstream *stream_of_locked(aa_watch *w, aclrtStream s) {
    for (wstream *x = w->streams; x; x = x->next)
        if (x->stream == s && !x->dead) return x;
    wstream *x = calloc(1, sizeof *x);
    if (!x) return NULL;
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
    if (!e) return ACL_ERROR_BAD_ALLOC;
    e->event = event;
    e->token = token;
    e->w = w;
    pthread_mutex_lock(&w->mu);
    wstream *ws = stream_of_locked(w, stream);
    if (!ws) {
        pthread_mutex_unlock(&w->mu);
        free(e);
        return ACL_ERROR_BAD_ALLOC;
    }
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
    /* Wake a sleeping watcher for the new entry, except from its armed nap when the entry's
     * loop is armed: that loop polls for its own runs (aa_watch_harvest), so a wake-up per
     * submission would only cost a futex call and a needless poll pass on another core. An
     * entry of channel 0 or of an unarmed loop still wakes it. */
    uint64_t c = token >> AA_WATCH_CHANNEL_SHIFT;
    int own_poller = c > 0 && c < MAX_CHANNELS && w->ch[c].open && w->ch[c].armed;
    if (w->sleeping == 1 || (w->sleeping == 2 && !own_poller)) pthread_cond_signal(&w->cv);
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
    w->polling++;
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
    w->polling--;
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

/* Hands channel-0 completions and pending wake-ups to the caller; -1 if there is nothing. */
static int take_locked(aa_watch *w, uint64_t *tokens, int32_t *codes, uint64_t *noticed_ns, int max) {
    int n = 0;
    while (w->wake_mask && n < max) {
        int c = __builtin_ctzll(w->wake_mask);
        w->wake_mask &= w->wake_mask - 1;
        if (!w->ch[c].open) continue;
        tokens[n] = (uint64_t)c;
        codes[n] = AA_WATCH_WAKE;
        if (noticed_ns) noticed_ns[n] = w->ch[c].wake_ns;
        n++;
    }
    n += dq_pop(&w->done, tokens + n, codes + n, noticed_ns ? noticed_ns + n : NULL, max - n);
    if (n) w->st.batches++;
    return n ? n : -1;
}

static int queued_in_channels_locked(aa_watch *w) {
    for (int c = 1; c < MAX_CHANNELS; c++)
        if (w->ch[c].open && w->ch[c].q.n) return 1;
    return 0;
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
        /* Only this thread frees dead streams, and only while no poll pass walks the list. */
        for (wstream **pp = &w->streams; *pp && !w->polling;) {
            wstream *ws = *pp;
            if (ws->dead) {
                *pp = ws->next;
                free(ws);
            } else {
                pp = &ws->next;
            }
        }
        uint64_t now = aa_monotonic_ns();
        uint64_t channel_due = check_channels_locked(w, now);
        int n = take_locked(w, tokens, codes, noticed_ns, max);
        if (n > 0) {
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
        if (now >= deadline) {
            pthread_mutex_unlock(&w->mu);
            return 0;
        }
        if (w->st.pending == 0 || report) {
            /* Idle (or callbacks do the work): sleep until something arrives, or until a loop
             * channel's completions are due for a wake-up or a takeover. With runs pending in
             * report mode, wake up to probe for faults, which never call back. */
            uint64_t wait_ns = deadline - now;
            if (channel_due < wait_ns) wait_ns = channel_due;
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
        if (w->armed_n > 0) {
            /* A loop collects for itself (aa_watch_harvest polls): leave the polling to it and
             * look again only when a wake-up or a fault probe could be due, so this thread does
             * not take a core from the loop. */
            uint64_t nap = (uint64_t)w->cfg.wake_after_us * 500u; /* half the wake-up bound */
            if (channel_due < nap) nap = channel_due;
            struct timespec ts;
            abs_deadline(&ts, nap);
            w->sleeping = 2;
            w->st.sleeps++;
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
            w->sleeping = 0;
            if (w->armed_n > 0 && !w->wake_mask && !w->done.n) {
                pthread_mutex_unlock(&w->mu);
                uint64_t t = aa_monotonic_ns();
                int probe = t - last_probe >= (uint64_t)w->cfg.fault_probe_us * 1000u;
                if (probe) last_probe = t;
                poll_pass(w, probe); /* completions of loops that are not collecting */
                pthread_mutex_lock(&w->mu);
            }
            last_progress = aa_monotonic_ns();
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
        /* Back off; a new run, a wake-up to hand over or a kick wakes us early. */
        uint64_t sleep_ns = (uint64_t)backoff * 1000u;
        if (channel_due < sleep_ns) sleep_ns = channel_due;
        struct timespec ts;
        abs_deadline(&ts, sleep_ns);
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

int aa_watch_channel_open(aa_watch *w) {
    pthread_mutex_lock(&w->mu);
    int found = -1;
    for (int c = 1; c < MAX_CHANNELS; c++)
        if (!w->ch[c].open && !w->ch[c].q.n) {
            channel *ch = &w->ch[c];
            ch->open = 1;
            ch->armed = ch->harvesting = ch->wake_pending = 0;
            ch->notify_fd = -1;
            found = c;
            break;
        }
    pthread_mutex_unlock(&w->mu);
    return found;
}

void aa_watch_channel_close(aa_watch *w, int c) {
    if (c <= 0 || c >= MAX_CHANNELS) return;
    pthread_mutex_lock(&w->mu);
    channel *ch = &w->ch[c];
    if (ch->open) {
        dq_move_all(&w->done, &ch->q);
        ch->open = 0;
        ch->notify_fd = -1;
        w->armed_n -= ch->armed;
        ch->armed = 0;
        w->wake_mask &= ~(1ull << c);
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
}

void aa_watch_channel_notify_fd(aa_watch *w, int c, int fd) {
    if (c <= 0 || c >= MAX_CHANNELS) return;
    pthread_mutex_lock(&w->mu);
    channel *ch = &w->ch[c];
    if (ch->open) {
        ch->notify_fd = fd < 0 ? -1 : fd;
        /* a wake-up already handed to the watcher thread stays there; later ones use the fd */
    }
    pthread_mutex_unlock(&w->mu);
}

int aa_watch_harvest(aa_watch *w, int c, uint64_t *tokens, int32_t *codes, uint64_t *noticed_ns, int max,
                     int32_t armed) {
    if (c <= 0 || c >= MAX_CHANNELS) return 0;
    channel *ch = &w->ch[c];
    pthread_mutex_lock(&w->mu);
    int poll = w->cfg.strategy == AA_WATCH_POLL && w->st.pending > 0 && ch->q.n < (size_t)max;
    ch->harvesting = 1;
    pthread_mutex_unlock(&w->mu);
    if (poll) poll_pass(w, 0); /* the loop finds finished runs itself: no thread hand-off */
    pthread_mutex_lock(&w->mu);
    ch->harvesting = 0;
    int n = ch->open ? dq_pop(&ch->q, tokens, codes, noticed_ns, max) : 0;
    ch->wake_pending = 0;
    w->wake_mask &= ~(1ull << c);
    if (armed >= 0) {
        int now_armed = armed && (n > 0 || ch->q.n > 0);
        w->armed_n += now_armed - ch->armed;
        if (ch->armed && !now_armed && w->sleeping) pthread_cond_signal(&w->cv); /* poll again */
        ch->armed = now_armed;
    }
    if (n) w->st.harvested += (uint64_t)n;
    if (ch->q.n && !ch->armed) request_wake_locked(w, c, aa_monotonic_ns());
    pthread_mutex_unlock(&w->mu);
    return n;
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

void aa_watch_get_config(aa_watch *w, aa_watch_config *config) { *config = w->cfg; }

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
    slot->detail[0] = 0;
    if (status) aa_ge_get_error_msg(slot->detail, sizeof slot->detail);
    /* The completion carries the run's outcome (counted as failed in the watch's statistics);
     * the slot keeps GE's exact status. A status that reads as AA_WATCH_WAKE (GE's FAILED is
     * 0xFFFFFFFF) would be taken for a wake-up: it travels as ACL_ERROR_RT_INTERNAL_ERROR. */
    int32_t code = (int32_t)status;
    if (code == AA_WATCH_WAKE) code = ACL_ERROR_RT_INTERNAL_ERROR;
    aa_watch *w = slot->watch;
    pthread_mutex_lock(&w->mu);
    push_done_locked(w, slot->token, code, aa_monotonic_ns());
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
    free(w->done.v);
    for (int c = 0; c < MAX_CHANNELS; c++) free(w->ch[c].q.v);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}
