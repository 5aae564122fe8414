/* Sim-only entry points: configuration, the graph engine, fault injection, gates,
 * the timing model and statistics. Only the sim module declares these; everything the product
 * does after AddGraph goes through acl_rt.h and ge_session.h, shared with CANN.
 * Plain declarations only (cffi cdef input).
 */

/* --- configuration: call before aclInit (or after aclFinalize) --- */
typedef struct aa_sim_config {
    uint32_t device_count;      /* physical devices; default 1, or ASCEND_ASYNC_SIM_DEVICES */
    uint32_t workers;           /* device worker threads per device, default 2 */
    uint64_t memory_bytes;      /* device memory capacity per device, default 4 GiB */
    uint32_t max_events;        /* hardware events per device, default 1023 */
    uint32_t engine_threads;    /* onnxruntime intra-op threads per graph run, default 1 */
    uint32_t poison;            /* 1: fill every device and pinned block the sim hands out, and
                                   every block given back (aclrtFree/FreeHost, the caching pool),
                                   with the poison pattern; default 0, or 1 when
                                   ASCEND_ASYNC_SIM_POISON=1 (the test suite sets it) */
} aa_sim_config;

/* ASCEND_RT_VISIBLE_DEVICES, read when the runtime starts, works as in ACL: a comma-separated
 * ascending list of physical ids; logical ids 0..n-1 map onto them in order; parsing stops at
 * the first bad character, out-of-range or non-ascending id; set but empty = no device. */
int aa_sim_configure(const aa_sim_config *config);
void aa_sim_get_config(aa_sim_config *config);

/* --- timing model: applies to every task from now on (0 = off, the default) --- */
typedef struct aa_sim_timing {
    uint32_t launch_latency_us;   /* added before every task starts */
    uint32_t min_graph_us;        /* a graph run lasts at least this long */
    uint32_t compile_us;          /* CompileGraph host-side delay */
    uint32_t load_us;             /* LoadGraph host-side delay */
    uint32_t per_sample_us;       /* plus this per sample: a graph run lasts at least
                                     min_graph_us + per_sample_us * (first dim of input 0) */
} aa_sim_timing;

void aa_sim_set_timing(const aa_sim_timing *timing);

/* --- fault injection and gates (per stream) --- */
/* The nth task submitted to `stream` from now on (1 = the next one) fails with `code`. */
aclError aa_sim_inject_fault(aclrtStream stream, uint32_t nth, int32_t code);
/* The nth task submitted from now on sleeps `us` microseconds before it runs. */
aclError aa_sim_inject_delay(aclrtStream stream, uint32_t nth, uint32_t us);
/* Holds the stream before its next task starts until released (a test gate). */
aclError aa_sim_stream_hold(aclrtStream stream);
aclError aa_sim_stream_release(aclrtStream stream);
/* Shrinks (or grows) device memory capacity; live allocations are kept. */
aclError aa_sim_set_memory_capacity(int32_t device_id, uint64_t bytes);

/* --- statistics and leak counters --- */
typedef struct aa_sim_stats {
    int64_t device_allocations;   /* live aclrtMalloc blocks (all devices) */
    int64_t device_bytes;         /* live device bytes, as charged (rounded) */
    int64_t host_allocations;     /* live aclrtMallocHost blocks */
    int64_t contexts;             /* live explicit contexts */
    int64_t streams;              /* live user-created streams */
    int64_t events;               /* live events */
    int64_t sessions;             /* live GE sessions */
    int64_t graphs;               /* live graphs (added, not removed) */
    int64_t models;               /* live compiled models (shared by graph ids with equal bytes) */
    int64_t ge_outputs;           /* live GE-allocated output blocks (device and host) */
    int64_t tasks_submitted;      /* cumulative */
    int64_t tasks_completed;      /* cumulative */
    int64_t tasks_failed;         /* cumulative */
    int64_t graph_runs;           /* cumulative graph executions */
    int64_t device_spins;         /* cumulative: times a device thread out of work spun for more */
} aa_sim_stats;

void aa_sim_get_stats(aa_sim_stats *stats);

/* --- the graph engine ---
 * The sim computes graphs with onnxruntime's C API, loaded from the `onnxruntime` wheel's
 * libonnxruntime.so. Call once before adding graphs (later calls are no-ops). Returns 0, or -1
 * with a message in err. AddGraph (aa_session_add_graph_onnx) fails until it succeeded.
 */
int aa_sim_engine_open(const char *library_path, char *err, size_t err_len);
/* AddGraph options the sim reads (aa_session_add_graph_onnx; the Python layer passes them only
 * for a model with external data, after checking every location stays inside the folder):
 *   "ascend_async.external_data_dir"   the folder external data is resolved against (the
 *                                      model's own folder; never the working directory);
 *   "ascend_async.external_data_stamp" a description of the weight files (sizes, times), part
 *                                      of the compiled-model cache's key.
 * The compiled-model cache keys by SHA-256 and compares the bytes on a digest hit. */
void aa_sim_sha256(const void *data, size_t n, unsigned char *out);
/* The output count of a graph added to `session` (what GE's compiled-graph summary reports),
 * or -1 if the session has no such graph. */
int64_t aa_sim_session_graph_outputs(aa_session *session, uint32_t graph_id);
/* What GE's CompiledGraphSummary::IsStatic() would say for a graph added to `session`: 1 when
 * every input and output dim is fixed, 0 when one is not (GE runs it as a dynamic-shape graph,
 * whose outputs it describes after submission), -1 if the session has no such graph. */
int aa_sim_session_graph_is_static(aa_session *session, uint32_t graph_id);
/* GE's per-run workspace, modelled (sim/session.c): on = 1, off = 0. On by default; the
 * environment variable ASCEND_ASYNC_SIM_WORKSPACE=0 turns it off when first needed. */
void aa_sim_set_workspace_model(int on);
