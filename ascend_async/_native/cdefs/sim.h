/* Sim-only entry points: configuration, the lowered graph program, fault injection, gates,
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
    int64_t programs;             /* live lowered programs */
    int64_t ge_outputs;           /* live GE-allocated output blocks (device and host) */
    int64_t tasks_submitted;      /* cumulative */
    int64_t tasks_completed;      /* cumulative */
    int64_t tasks_failed;         /* cumulative */
    int64_t graph_runs;           /* cumulative graph executions */
} aa_sim_stats;

void aa_sim_get_stats(aa_sim_stats *stats);

/* --- the lowered graph program (ONNX lowered on the Python side) ---
 * Build it with the calls below, then aa_sim_program_finalize, which checks every node's op,
 * attributes and dtypes and refuses anything the kernels do not support with a message naming
 * the op type and node. A program is reference counted: sessions that add it keep a reference.
 * Value ids and node ids are small non-negative integers returned by the add calls; a negative
 * return is an error (see aa_sim_program_error).
 */
typedef struct aa_sim_program aa_sim_program;

aa_sim_program *aa_sim_program_new(void);
void aa_sim_program_release(aa_sim_program *program);
const char *aa_sim_program_error(const aa_sim_program *program);

/* dims: -1 = unknown (symbolic) extent; ndim < 0 = unknown rank. */
int32_t aa_sim_program_add_value(aa_sim_program *program, const char *name, int32_t dtype,
                                 int32_t ndim, const int64_t *dims);
int aa_sim_program_set_initializer(aa_sim_program *program, int32_t value, const void *data,
                                   size_t nbytes);
int aa_sim_program_add_input(aa_sim_program *program, int32_t value);
int aa_sim_program_add_output(aa_sim_program *program, int32_t value);
/* inputs: value ids, -1 for an omitted optional input. */
int32_t aa_sim_program_add_node(aa_sim_program *program, const char *op_type, const char *name,
                                int32_t opset, uint32_t n_inputs, const int32_t *inputs,
                                uint32_t n_outputs, const int32_t *outputs);
int aa_sim_program_attr_int(aa_sim_program *program, int32_t node, const char *name, int64_t v);
int aa_sim_program_attr_float(aa_sim_program *program, int32_t node, const char *name, double v);
int aa_sim_program_attr_ints(aa_sim_program *program, int32_t node, const char *name,
                             const int64_t *v, size_t n);
int aa_sim_program_attr_floats(aa_sim_program *program, int32_t node, const char *name,
                               const float *v, size_t n);
int aa_sim_program_attr_string(aa_sim_program *program, int32_t node, const char *name,
                               const char *v);
int aa_sim_program_attr_tensor(aa_sim_program *program, int32_t node, const char *name,
                               int32_t dtype, uint32_t ndim, const int64_t *dims,
                               const void *data, size_t nbytes);
int aa_sim_program_finalize(aa_sim_program *program);

/* AddGraph with a lowered program (the sim's stand-in for ONNX parsing). */
aa_status aa_sim_session_add_program(aa_session *session, uint32_t graph_id,
                                     aa_sim_program *program, const aa_option *options,
                                     size_t n_options);
