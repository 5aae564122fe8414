/* The simulated AscendCL runtime's private header: what its rooms share, and nothing else sees.
 * (session.c and the rest of the sim use runtime.h; Python uses the cdefs.)
 *
 * Semantics follow AscendCL (acl_rt.h) as documented: the current context is per OS thread;
 * a stream runs its tasks in submission order; events capture the work submitted before their
 * record; a failed task leaves the stream faulted: later tasks are skipped, events behind the
 * failure never report COMPLETE, and the error code surfaces from synchronize/query on the
 * stream (and from synchronize on those events). See ARCHITECTURE.md.
 *
 * The rooms:
 *   rt_config.c  errors (aclGetRecentErrMsg), the clock, configuration, timing, statistics,
 *                aclInit/aclFinalize
 *   rt_device.c  devices and their start, contexts, streams, task queueing
 *   rt_thread.c  the device threads: pick a runnable stream, run its head task, retire it
 *   rt_event.c   events
 *   rt_memory.c  device and page-locked memory, the allocation table, poisoning, copies, memsets
 *   rt_report.c  host callbacks: subscribe, launch, report queues, aclrtProcessReport
 *   rt_fault.c   fault and delay injection, stream gates (sim-only test hooks)
 *
 * Locking: g_rt.lock guards the device table and configuration; each device's `lock` guards
 * its streams, events, report queues and counters; the allocation table has its own lock
 * (rt_memory.c). Device threads take the device lock to pick and retire tasks and release it
 * while a task body runs; a blocking host callback keeps its stream (and that thread) waiting
 * on done_cv until the report thread ran it.
 *
 * Host memory: every allocation is checked, as ../alloc_policy.h says: an acl* call returns
 * ACL_ERROR_BAD_ALLOC (with a message) having changed nothing; device threads never allocate.
 */
#ifndef AA_SIM_RT_INTERNAL_H
#define AA_SIM_RT_INTERNAL_H

#include <pthread.h>
#include <time.h>

#include "../alloc_policy.h"
#include "runtime.h"

#define FAIL(code, ...)             \
    do {                            \
        sim_set_error(__VA_ARGS__); \
        return (code);              \
    } while (0)

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
    int32_t fault_code; /* injected failure */
    uint32_t delay_us;  /* injected delay */
    sim_exec_fn exec;
    sim_cleanup_fn cleanup;
    void *payload;
    sim_event *event;    /* RECORD / WAIT */
    uint64_t gen;        /* RECORD: the record generation; WAIT: the generation waited for */
    aclrtCallback cb_fn; /* CALLBACK */
    void *cb_data;
    int cb_block;
    uint64_t cb_thread;
    struct report_item *cb_item; /* CALLBACK: allocated at launch, so device threads never allocate */
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
    uint64_t submitted; /* seq of the last submitted task */
    uint64_t completed; /* seq of the last retired task (run or skipped) */
    int running;        /* a device thread holds its head task */
    int held;           /* test gate */
    int internal;       /* GE-internal or default stream: not counted */
    int destroying;
    int32_t fault; /* sticky error, 0 = healthy */
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
    sim_stream *stream;  /* stream of the latest record */
    uint64_t seq;        /* that record task's seq */
    uint64_t record_gen; /* 0 = never recorded */
    uint64_t done_gen;
    uint64_t timestamp_ns;
    int hw;   /* holds a hardware event slot */
    int refs; /* 1 for the handle + 1 per pending record/wait task */
    int destroyed;
};

typedef struct report_item {
    struct report_item *next;
    aclrtCallback fn;
    void *data;
    int *done_flag;     /* BLOCK callbacks: set when processed */
    const void *stream; /* the stream that launched it (dropped when that stream unsubscribes) */
} report_item;

typedef struct report_queue {
    struct report_queue *next;
    uint64_t thread_id;
    int n_streams;
    report_item *head, *tail;
} report_queue;

struct sim_device {
    int32_t id;   /* logical (over ASCEND_RT_VISIBLE_DEVICES) */
    int32_t phys; /* physical */
    pthread_mutex_t lock;
    pthread_cond_t work_cv; /* device threads: a stream may have become runnable */
    pthread_cond_t done_cv; /* waiters: a task retired, an event slot freed, a report processed, a thread stopped */
    sim_stream *streams;
    sim_stream *rr; /* round-robin cursor */
    pthread_t *threads;
    uint32_t n_threads;
    uint32_t idle;     /* device threads waiting on work_cv */
    uint32_t waking;   /* signals sent to idle threads not yet awake */
    uint32_t spinning; /* threads that found no work and look again before sleeping */
    uint64_t enqueued; /* tasks enqueued so far (atomic reads by spinning threads) */
    int shutdown;      /* a failed start stops the threads it had started */
    uint32_t n_live;   /* device threads started and not yet stopped */
    uint64_t capacity;
    uint64_t used;
    uint32_t hw_events;
    int set_refs; /* aclrtSetDevice reference count */
    sim_context *default_ctx;
    report_queue *reports;
};

#define MAGIC_STREAM 0x5354524du
#define MAGIC_EVENT 0x4556454eu
#define MAGIC_CTX 0x43545854u

/* The process's runtime (rt_config.c). */
typedef struct sim_runtime {
    pthread_mutex_t lock;
    int started;
    int acl_inited;
    aa_sim_config cfg;
    int configured; /* aa_sim_configure was called: it wins over the environment */
    aa_sim_timing timing;
    sim_device *devs; /* the visible devices, indexed by logical id */
    uint32_t n_visible;
    aclError start_error; /* the last failed start (ACL_ERROR_BAD_ALLOC), 0 once started */
} sim_runtime;

extern sim_runtime g_rt;
/* The calling thread's current context (a device thread: the context of the stream it runs). */
extern __thread sim_context *rt_tls_ctx;

/* ------------------------------------------------------------------------------------------ */
/* Shared between the rooms                                                                    */

/* rt_config.c */
void rt_deadline_after_ms(struct timespec *ts, int32_t ms);

/* rt_device.c: devices start on first use; 0 or ACL_ERROR_BAD_ALLOC (message set). */
aclError rt_start(void);
/* The visible device `id`, or NULL (no such device, or the runtime could not start). */
sim_device *rt_device_get(int32_t id);
/* Sets the error for a NULL rt_device_get and returns its code: the failed start's, else
 * ACL_ERROR_RT_INVALID_DEVICEID. */
aclError rt_no_device(const char *api, int32_t id);
/* A live stream handle, or NULL. */
sim_stream *rt_as_stream(aclrtStream s);
/* NULL = the current context's default stream; refuses a stream of another device. */
aclError rt_resolve_stream(aclrtStream stream, const char *api, sim_stream **out);
/* A zeroed task, or NULL when host memory ran out (the caller returns ACL_ERROR_BAD_ALLOC). */
sim_task *rt_task_new(int kind);
/* Appends under the device lock; applies injected faults/delays. */
void rt_enqueue_locked(sim_stream *s, sim_task *t);
/* Sets this thread's error text from the stream's fault and returns its code (device lock). */
aclError rt_stream_fault_locked(sim_stream *s, const char *api);
/* Drops one reference (device lock); the last frees the stream's record. */
void rt_stream_unref_locked(sim_stream *s);

/* rt_thread.c: a device thread's body (started by rt_start, stopped only by a failed start). */
void *rt_device_thread(void *arg);

/* rt_event.c: drops one reference (device lock); the last frees the event. */
void rt_event_unref_locked(sim_event *e);

/* rt_memory.c: fixes poisoning when the runtime starts. */
void rt_poison_set(int on);

/* rt_report.c (device lock held) */
void rt_report_drop_locked(sim_device *d, const sim_stream *s);
void rt_report_push_locked(sim_device *d, sim_task *t, const sim_stream *s, int *done_flag);

#endif /* AA_SIM_RT_INTERNAL_H */
