/* Backend-neutral C helpers compiled into every backend module (the C files in common/). They call only
 * the public AscendCL and session ABI above, so the same code runs on the sim and on CANN.
 * Plain declarations only (cffi cdef input).
 */

/* ---------------------------------------------------------------------------------------------
 * aa_watch: the completion watcher's C core. The Python watcher thread sits in aa_watch_wait
 * (the GIL released by cffi) and receives completions in batches.
 *
 * Ownership: the watch owns its pending table; aa_watch_add (any thread, after the event's
 * aclrtRecordEvent returned) hands an (event, token) pair over; aa_watch_wait (one thread, the
 * watcher) is the only reader and gives each token back exactly once, with an aclError code
 * (0 = the event completed; otherwise the stream faulted and this run is lost).
 */
#define AA_WATCH_POLL 0
#define AA_WATCH_REPORT 1
/* A token's top 16 bits name the channel its completion goes to (0: aa_watch_wait's caller). */
#define AA_WATCH_CHANNEL_SHIFT 48
/* The code of a wake-up request from aa_watch_wait: its token is the channel to wake. */
#define AA_WATCH_WAKE -1

typedef struct aa_watch_config {
    int32_t strategy;          /* AA_WATCH_POLL (default) or AA_WATCH_REPORT */
    uint32_t spin_us;          /* busy-poll this long after the last completion, default 50 */
    uint32_t min_sleep_us;     /* then sleep between polls, doubling from this ... */
    uint32_t max_sleep_us;     /* ... up to this, default 20 .. 500 */
    uint32_t fault_probe_us;   /* probe busy streams for faults this often, default 2000 */
    uint32_t wake_after_us;    /* wake an armed channel's loop when a completion waited this long, default 1000 */
    uint32_t takeover_us;      /* a wake-up unanswered this long: channel 0 takes over, default 50000 */
} aa_watch_config;

typedef struct aa_watch_stats {
    uint64_t added;
    uint64_t completed;
    uint64_t failed;
    uint64_t polls;            /* aclrtQueryEventStatus calls */
    uint64_t probes;           /* fault probes (aclrtSynchronizeStreamWithTimeout(s, 0)) */
    uint64_t batches;          /* aa_watch_wait calls that returned completions */
    uint64_t sleeps;           /* condition/timed waits entered */
    int64_t pending;
    uint64_t harvested;        /* completions collected by loops through aa_watch_harvest */
    uint64_t wakes;            /* wake-ups requested for loop channels */
    uint64_t takeovers;        /* completions moved from an unanswering channel to channel 0 */
} aa_watch_stats;

typedef struct aa_watch aa_watch;

/* NULL when host memory (or, for AA_WATCH_REPORT, its report thread) could not be had. */
aa_watch *aa_watch_create(aclrtContext context, const aa_watch_config *config);
/* Hand a recorded event to the watcher; returns 0 or an aclError (ACL_ERROR_BAD_ALLOC: no host
 * memory, nothing was added). */
aclError aa_watch_add(aa_watch *watch, aclrtStream stream, aclrtEvent event, uint64_t token);
/* Block (GIL released) until channel-0 completions or loop wake-ups are ready, `timeout_ms`
 * passes (-1 = no limit) or the watch is kicked/closed. Writes up to `max` (token, code,
 * monotonic ns when noticed) triples; a wake-up is (channel, AA_WATCH_WAKE, ns). Returns their
 * count, or -1 once closed. One thread (the watcher) calls it. */
int aa_watch_wait(aa_watch *watch, uint64_t *tokens, int32_t *codes, uint64_t *noticed_ns,
                  int max, int32_t timeout_ms);
/* Loop channels (1..63): completions of tokens carrying the channel wait for their loop.
 * Closing a channel moves what it holds, and what comes later, to channel 0. */
int aa_watch_channel_open(aa_watch *watch);
void aa_watch_channel_close(aa_watch *watch, int channel);
/* Wake the channel's loop by writing 8 bytes (an eventfd increment) to `fd` instead of through
 * aa_watch_wait's caller (-1: back to that). The caller keeps `fd` open until it has set -1
 * here or closed the channel; the write is non-blocking only if the fd is. */
void aa_watch_channel_notify_fd(aa_watch *watch, int channel, int fd);
/* Non-blocking, from the channel's loop thread (with the device's context current): one
 * polling pass over busy streams (poll strategy), then up to `max` of the channel's
 * completions. `armed`: 1 = the caller collects again soon if this returns any (no wake-up
 * needed meanwhile), 0 = it will not (wake it), -1 = leave as is. Returns the count. */
int aa_watch_harvest(aa_watch *watch, int channel, uint64_t *tokens, int32_t *codes,
                     uint64_t *noticed_ns, int max, int32_t armed);
void aa_watch_kick(aa_watch *watch);
void aa_watch_close(aa_watch *watch);
/* Forget everything pending on `stream` (after it was replaced); their tokens come back
 * with `code`. */
void aa_watch_fail_stream(aa_watch *watch, aclrtStream stream, int32_t code);
void aa_watch_get_stats(aa_watch *watch, aa_watch_stats *stats);
/* The defaults aa_watch_create fills in for zero fields. */
void aa_watch_default_config(aa_watch_config *config);
/* The configuration in effect (defaults filled in). */
void aa_watch_get_config(aa_watch *watch, aa_watch_config *config);
void aa_watch_destroy(aa_watch *watch);
uint64_t aa_monotonic_ns(void);

/* RunGraphAsync completions flow through the same watch: pass aa_watch_run_callback as the
 * callback and a slot as user_data. The callback stores status and outputs (ownership passes
 * to the slot's holder), and for a failure GE's error text as the callback's thread has it
 * (GEGetErrorMsgV3 is per thread), then hands `token` to the waiter with a non-zero code when
 * the run failed (the watch counts it as failed; the slot keeps GE's status). */
typedef struct aa_cb_slot {
    aa_watch *watch;
    uint64_t token;
    aa_status status;
    size_t capacity;
    size_t n_outputs;
    aa_tensor *outputs;
    char detail[1024];
} aa_cb_slot;

void aa_watch_run_callback(void *user_data, aa_status status, aa_tensor *outputs,
                           size_t n_outputs);

/* ---------------------------------------------------------------------------------------------
 * aa_pool: a caching allocator over aclrtMalloc (device) or aclrtMallocHost (pinned host).
 * Thread-safe. A block goes back with aa_pool_free only once no device work uses it; reuse
 * then needs no synchronization.
 *
 * GE's external allocator must be stream-ordered: GE frees a run's workspace block right after
 * the host side of the run returns, while the stream may still use it, and one allocator shared
 * by several streams forbids them to run concurrently (ge_acl_facts.md §2.10, §2.13). So a
 * stream registers a lane of the pool (aa_pool_lane_open + aa_pool_lane_allocator), never the
 * pool itself: a block given back through a lane is handed out again only through that lane
 * (later work on the same stream) until the lane is flushed or closed, which its owner does
 * once the stream is idle (synchronized, or destroyed after its work drained); then the
 * blocks join the shared cache. aa_pool_allocator() (the shared pool as an allocator) suits one
 * stream that is synchronized before its blocks are reused elsewhere, i.e. tests.
 */
#define AA_POOL_DEVICE 0
#define AA_POOL_HOST 1

typedef struct aa_pool_stats {
    int64_t live_blocks;
    int64_t live_bytes;
    int64_t cached_blocks;
    int64_t cached_bytes;
    uint64_t hits;
    uint64_t misses;
    int64_t stream_cached_blocks; /* cached in lanes: reusable by their own stream only */
    int64_t stream_cached_bytes;
} aa_pool_stats;

typedef struct aa_pool aa_pool;

/* NULL when host memory ran out. */
aa_pool *aa_pool_create(int32_t kind, uint64_t max_cached_bytes);
/* Returns NULL and sets *error (an aclError) on failure; retries once after trimming. */
void *aa_pool_alloc(aa_pool *pool, size_t size, aclError *error);
void aa_pool_free(aa_pool *pool, void *ptr);
/* The calling thread's last allocation error from a pool (0 if none since the last call), read
 * and cleared: how a GE failure is known to be an OOM of our external allocator. */
aclError aa_pool_take_error(void);
/* Returns cached blocks to the runtime. */
void aa_pool_trim(aa_pool *pool);
void aa_pool_get_stats(aa_pool *pool, aa_pool_stats *stats);
void aa_pool_allocator(aa_pool *pool, aa_allocator *out);
/* Frees cached blocks (lanes' too); returns how many blocks were still live (and frees those
 * too). */
int64_t aa_pool_destroy(aa_pool *pool);

/* A stream's lane (see above). Owned by the pool: valid until aa_pool_destroy, and blocks may
 * come back through it after it was closed (they then go to the shared cache). NULL when host
 * memory ran out. aa_pool_trim leaves lanes alone: their blocks may still be in use. */
typedef struct aa_pool_lane aa_pool_lane;

aa_pool_lane *aa_pool_lane_open(aa_pool *pool);
/* The lane's own cache first (same size class), else the shared pool. */
void *aa_pool_lane_alloc(aa_pool_lane *lane, size_t size, aclError *error);
/* Keeps the block for this lane: the stream may still be using it. */
void aa_pool_lane_free(aa_pool_lane *lane, void *ptr);
/* The lane's stream is idle (the caller's promise): its cached blocks join the shared cache. */
void aa_pool_lane_flush(aa_pool_lane *lane);
/* As flush, and the stream is gone: later frees go straight to the shared cache. The lane may
 * be handed to another stream by a later aa_pool_lane_open. */
void aa_pool_lane_close(aa_pool_lane *lane);
/* The lane as GE's external allocator for its one stream. */
void aa_pool_lane_allocator(aa_pool_lane *lane, aa_allocator *out);

/* ---------------------------------------------------------------------------------------------
 * The floor: n_runs graph runs on one stream with an event after each, at most `window` in
 * flight, waited for in C (spinning on aclrtQueryEventStatus) with no Python in the loop.
 * Outputs are caller-provided. Returns 0 or an error code; *elapsed_ns is the wall time.
 */
int64_t aa_floor_run(aa_session *session, uint32_t graph_id, aclrtStream stream,
                     const aa_tensor *inputs, size_t n_inputs, aa_tensor *outputs,
                     size_t n_outputs, uint32_t n_runs, uint32_t window, uint64_t *elapsed_ns);

/* ---------------------------------------------------------------------------------------------
 * aa_run: one RunGraphWithStreamAsync round, submitted in one call (the hot path of
 * `await session.run`): stage host inputs into page-locked blocks, copy them H2D into device
 * blocks, run the graph with empty output slots (GE allocates them through the stream's
 * external allocator), copy outputs D2H into page-locked blocks (unless they stay on the
 * device), record `event` and hand it to `watch` under `token`. Every call returns at once.
 *
 * On success the watcher owns the run: once its token comes back, call aa_run_collect if
 * `dynamic` is set, read the outputs and call aa_run_release. On failure, `failed_api` names the call, `acl_error`/`ge_status` say why;
 * if `enqueued` is set, work already on the stream still reads the buffers: synchronize the
 * stream before aa_run_release.
 */
typedef struct aa_run_io {
    const void *host;   /* input: host data to stage (NULL: `tensor` already describes device data) */
    aa_tensor tensor;   /* input: dtype/ndim/dims (+addr/size if on device); output: filled by GE */
    size_t nbytes;      /* logical byte count (outputs: filled at submit) */
    void *host_block;   /* page-locked staging block (taken here, given back by aa_run_release) */
    void *dev_block;    /* device block of a staged input */
} aa_run_io;

typedef struct aa_run {
    aa_session *session;
    uint32_t graph_id;
    aclrtStream stream;
    aa_pool *device_pool;
    aa_pool *host_pool;
    aa_watch *watch;
    aclrtEvent event;
    uint64_t token;
    int32_t outputs_to_host;
    size_t n_inputs;
    size_t n_outputs;
    aa_run_io *inputs;
    aa_run_io *outputs;
    /* n_outputs GE output slots, owned by the caller and kept alive as long as the run: a
     * dynamic-shape graph's slots stay pending until aa_run_collect describes them. */
    aa_tensor *slots;
    /* Optional stage markers (NULL = none), recorded before the H2D copies, after them, and
     * after the graph run; with `event` (after the D2H copies) they time each stage. */
    aclrtEvent stage_events[3];
    /* results */
    const char *failed_api;
    int32_t acl_error;
    aa_status ge_status;
    int32_t enqueued;
    int32_t dynamic;    /* the slots came back pending (a dynamic-shape graph, on both
                           backends): no D2H copies were enqueued, and aa_run_collect describes
                           the outputs once the run's event completed. 0: described at submit.
                           (The Python side caches output shapes only for graphs whose output
                           shapes follow from the input shapes, Graph.static_outputs.) */
    struct aa_mdl_run *model; /* NULL: a GE graph. Else an offline model (cdefs/offline.h):
                                 aa_run_submit/collect/release run it with aclmdlExecuteAsync */
} aa_run;

int aa_run_submit(aa_run *run);
/* After a dynamic run's event completed (never before): describe its pending slots
 * (aa_session_resolve_outputs: no wait on either backend), take the outputs GE placed in
 * `slots` and, when they go to the host, copy them into page-locked blocks (aclrtMemcpy, of the
 * finished outputs only). Returns 0, or -1 with failed_api naming the call and acl_error (an
 * aclError) or ge_status (a GE status) saying why. The calling thread's context must own the
 * stream. */
int aa_run_collect(aa_run *run);
/* Gives back staging/device blocks and GE-allocated outputs whose owner is still set. */
void aa_run_release(aa_run *run);
/* Releases a batch of finished runs in one call (the watcher's, without the GIL). */
void aa_run_release_many(aa_run *const *runs, size_t n);
