/* The session ABI: a flat C face of ge::GeSession v2 (ge/ge_api_v2.h, libge_runner_v2.so).
 *
 * Both backends implement it: sim/session.c on the simulated device, cann/ge_shim.cpp over the
 * real GeSession. Status values are GE's (ge::Status = uint32_t): 0 success, 0xFFFFFFFF FAILED,
 * 1343225956 UNSUPPORTED, 1343225957 OUT_OF_MEMORY (the sim: an output that cannot be placed). Plain declarations only: this text is also cffi cdef input.
 *
 * Tensors cross as aa_tensor structs with GE's enum values (ge::DataType, ge::Format,
 * gert::TensorPlacement). A tensor whose `owner` is non-NULL holds memory GE allocated (a
 * gert::TensorData with a manager, or a host output of RunGraph/RunGraphAsync); the holder
 * releases it exactly once with aa_tensor_release(). A NULL owner means the caller owns `addr`.
 *
 * Thread safety: every function may be called from any thread. Calls that submit work to a
 * stream need the calling thread's current context to own that stream (as in AscendCL). A
 * GeSession "does not support concurrent execution": both backends serialize the submissions
 * into one session (RunGraphWithStreamAsync, RunGraphAsync) with a per-session mutex; other
 * sessions are not held up. RunGraph is not serialized: a concurrent one in the same session
 * fails (GE's GE_SESS_ALREADY_RUNNING, as FAILED).
 *
 * Device memory: every device address passed as an input or an output of
 * RunGraphWithStreamAsync (and RunGraph's device inputs) must be 32-byte aligned; GE fails the
 * call otherwise (FAILED, the sim names the input/output and the address).
 */

typedef uint32_t aa_status;

#define AA_GE_SUCCESS 0
#define AA_GE_FAILED 4294967295
#define AA_GE_UNSUPPORTED 1343225956
#define AA_GE_PARAM_INVALID 1343225857
#define AA_GE_OUT_OF_MEMORY 1343225957
#define AA_MAX_DIMS 25

/* ge::DataType (graph/types.h) */
#define AA_DT_FLOAT 0
#define AA_DT_FLOAT16 1
#define AA_DT_INT8 2
#define AA_DT_INT32 3
#define AA_DT_UINT8 4
#define AA_DT_INT16 6
#define AA_DT_UINT16 7
#define AA_DT_UINT32 8
#define AA_DT_INT64 9
#define AA_DT_UINT64 10
#define AA_DT_DOUBLE 11
#define AA_DT_BOOL 12
#define AA_DT_BF16 27
#define AA_DT_UNDEFINED 28

/* ge::Format */
#define AA_FORMAT_NCHW 0
#define AA_FORMAT_NHWC 1
#define AA_FORMAT_ND 2

/* gert::TensorPlacement */
#define AA_PLACEMENT_DEVICE_HBM 0
#define AA_PLACEMENT_HOST 1

typedef struct aa_tensor {
    void *addr;        /* data; NULL (or size 0) in an output slot = let GE allocate */
    size_t size;       /* bytes at addr; for GE-allocated blocks, the block size */
    int32_t dtype;     /* ge::DataType */
    int32_t format;    /* ge::Format */
    int32_t placement; /* gert::TensorPlacement */
    uint32_t ndim;
    int64_t dims[25];
    void *owner;       /* non-NULL: GE-allocated memory, release with aa_tensor_release */
} aa_tensor;

typedef struct aa_option {
    const char *key;
    const char *value;
} aa_option;

typedef struct aa_session aa_session;

/* An external allocator (ge::Allocator / ge::MemBlock) as a C function table. `alloc` returns
 * a block handle and its device address (NULL handle = out of memory); `free` gives the block
 * back. Called from whichever thread submits the run; must not block on the device.
 *
 * It must be stream-ordered. GE allocates a static graph's feature (workspace) memory from it
 * for every run and frees that block as soon as the host side of the submission returns, while
 * the stream may still use it: a freed block may be handed out again for later work on the
 * same stream, never to another stream until this one is synchronized (common/pool.c's lanes
 * do exactly this). The sim checks it: a workspace canary written when the run starts and
 * checked when it ends, and every block an allocator hands GE compared with the workspaces of
 * runs that have not ended; either failing faults the run's stream (507011) saying so.
 * One allocator is one `ctx`: registered for several streams, those streams must not run
 * concurrently (the sim refuses a run while another of them still has work), and they must be
 * synchronized before its memory goes back to the runtime. Register one per stream. */
typedef struct aa_allocator {
    void *ctx;
    void *(*alloc)(void *ctx, size_t size, void **addr);
    void (*free)(void *ctx, void *block);
} aa_allocator;

/* RunGraphAsync completion: status, and outputs whose ownership passes to the callee (each one
 * released with aa_tensor_release). Runs on a GE-owned thread. */
typedef void (*aa_run_callback)(void *user_data, aa_status status, aa_tensor *outputs,
                                size_t n_outputs);

/* --- global (GEInitializeV2 / GEFinalizeV2 / GEGetErrorMsgV3) --- */
aa_status aa_ge_initialize(const aa_option *options, size_t n_options);
aa_status aa_ge_finalize(void);
/* Copies and clears this thread's GE error text; returns its full length. A NULL buffer (or
 * buf_len 0) only asks for the length and keeps the text. */
size_t aa_ge_get_error_msg(char *buf, size_t buf_len);

/* --- sessions --- */
/* Like GeSession's constructor, this sets the session's device on the calling thread, which
 * switches that thread's current context to the device's default context (not restored). */
aa_status aa_session_create(const aa_option *options, size_t n_options, aa_session **out);
aa_status aa_session_destroy(aa_session *session);

/* AddGraph from ONNX model bytes (aclgrphParseONNXFromMem + AddGraph). The sim refuses it and
 * takes a lowered program through aa_sim_session_add_program instead. */
aa_status aa_session_add_graph_onnx(aa_session *session, uint32_t graph_id, const void *model,
                                    size_t model_size, const aa_option *options,
                                    size_t n_options);
aa_status aa_session_remove_graph(aa_session *session, uint32_t graph_id);
aa_status aa_session_compile_graph(aa_session *session, uint32_t graph_id);
aa_status aa_session_load_graph(aa_session *session, uint32_t graph_id, const aa_option *options,
                                size_t n_options, aclrtStream stream);

/* RunGraph: synchronous; outputs are GE-allocated host tensors written into outputs[0..*n_outputs)
 * (in: capacity, out: count). */
aa_status aa_session_run_graph(aa_session *session, uint32_t graph_id, const aa_tensor *inputs,
                               size_t n_inputs, aa_tensor *outputs, size_t *n_outputs);

/* RunGraphAsync: returns after submission; `callback` receives the outcome. Inputs must stay
 * alive until the callback has run. On a mode conflict the callback runs before this returns
 * (UNSUPPORTED, no outputs); on CANN that happens inside the session's submission lock, so
 * such a callback must not submit into the same session. */
aa_status aa_session_run_graph_async(aa_session *session, uint32_t graph_id,
                                     const aa_tensor *inputs, size_t n_inputs,
                                     aa_run_callback callback, void *user_data);

/* RunGraphWithStreamAsync: enqueues on `stream` and returns, without waiting for the device.
 * outputs[0..n_outputs) are slots: caller memory (addr and size set) is used as is; empty
 * slots are allocated by the external allocator registered for `stream`, else by the graph's
 * built-in allocator. Data is valid once the stream reaches the run. When only some slots are
 * empty, describe their shape and dtype too: real GE may not fill them in for mixed slots.
 *
 * Static graph (every output shape known at submit): every slot is filled in (shape, dtype,
 * placement, addr, owner) before this returns.
 * Dynamic-shape graph (GE sizes and places its outputs when the stream reaches the run; on CANN
 * every graph GE did not compile as static, CompiledGraphSummary::IsStatic; on the sim a run
 * whose output shapes depend on values): this returns with every slot *pending*: addr NULL, size 0,
 * owner set (the run's kept outputs, shared by its slots), the other fields not yet meaningful.
 * Nothing writes the slots until the caller describes them: a pending slot is described only after the stream passed
 * the run (the run's own event, or any later event on the stream, completed; or the stream
 * was synchronized), by aa_session_resolve_outputs. Until then the `outputs` array must stay
 * alive and in place; it may be released with aa_tensor_release only once the stream passed
 * the run or faulted. */
aa_status aa_session_run_graph_with_stream_async(aa_session *session, uint32_t graph_id,
                                                 aclrtStream stream, const aa_tensor *inputs,
                                                 size_t n_inputs, aa_tensor *outputs,
                                                 size_t n_outputs);

/* Describes the pending slots of a dynamic-shape RunGraphWithStreamAsync run: `outputs` is the
 * array that call filled (same order, n_outputs the same count). Call it only after the stream
 * passed the run (its event completed); it never waits for the device and never blocks, so it
 * may run on an event-loop thread. Slots that are not pending are left as they are; calling it
 * again is harmless. Returns 0, or a GE status with a message (aa_ge_get_error_msg) and the
 * slots that could not be described still pending (release them with aa_tensor_release).
 *  - CANN (cann/ge_shim.cpp): the run's gert::Tensor input and output vectors were kept alive
 *    on the heap from submission (GE writes the outputs' sizes, shapes and addresses into those
 *    objects after submission, and its migration guide forbids releasing them before the
 *    stream is synchronized). Each pending slot is filled from its gert::Tensor (GE's block is
 *    taken over as for a static graph: owner set, aa_tensor_release frees it); the vectors are
 *    freed with the last slot. An output GE has still not described (a NULL address for a
 *    non-empty shape, or a negative dim) fails with FAILED and stays pending.
 *  - sim (sim/session.c): the device thread that executed the run placed the outputs in the
 *    run's pending record (never in the caller's array) before the run's event completed; each
 *    pending slot takes its output from there (owner: the output's block). A run that failed
 *    on the device leaves them pending (FAILED, "still pending"). */
aa_status aa_session_resolve_outputs(aa_tensor *outputs, size_t n_outputs);

/* The registry is process-wide and keyed by stream, as in GE. `allocator` is copied (on CANN
 * into a ge::Allocator bridge of its own). Register before LoadGraph. */
aa_status aa_session_register_external_allocator(aa_session *session, aclrtStream stream,
                                                 const aa_allocator *allocator);
aa_status aa_session_unregister_external_allocator(aa_session *session, aclrtStream stream);

/* Releases GE-allocated memory held by `tensor` (no-op when owner is NULL); clears owner/addr.
 * A pending slot (see above) drops its share of its run's kept tensors; the last one frees them
 * (with any GE block not taken over), so release a pending slot only after the stream passed
 * the run or faulted. */
void aa_tensor_release(aa_tensor *tensor);
