/* Internal face of the simulated runtime (the rt_*.c files) for the rest of the sim (session.c).
 *
 * Threads: any host thread calls the acl* functions; each device owns `workers` device threads
 * that execute stream tasks in order (one task of a stream at a time, several streams at once).
 * One mutex per device guards its streams, events and queues; device threads run task bodies
 * without it. Nothing here ever calls into Python.
 */
#ifndef AA_SIM_RUNTIME_H
#define AA_SIM_RUNTIME_H

#include <pthread.h>
#include <stdarg.h>

#include "sim_api.h"
#include "stats.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A task body: runs on a device thread. Returns 0 or an aclError (the stream then faults);
 * may write a message into err. */
typedef int (*sim_exec_fn)(void *payload, char *err, size_t err_len);
/* Called exactly once per task after it ran (executed=1) or was skipped (executed=0). */
typedef void (*sim_cleanup_fn)(void *payload, int executed);

#define SIM_TASK_GRAPH 1 /* counts as a graph run for the timing model and statistics */
#define SIM_TASK_SAMPLES_SHIFT 8 /* flags >> this: the run's sample count, for the timing model */

/* SIM_TASK_GRAPH plus the run's sample count (first dim of the first input; 1 if it has none). */
int sim_graph_task_flags(const aa_tensor *inputs, size_t n_inputs);

/* Enqueue a task on `stream` (NULL = current context's default stream). The caller's current
 * context must own the stream. A failure (ACL_ERROR_BAD_ALLOC when host memory ran out)
 * enqueues nothing: the payload stays the caller's and `cleanup` is not called. */
aclError sim_enqueue(aclrtStream stream, int flags, sim_exec_fn exec, sim_cleanup_fn cleanup,
                     void *payload);

/* Enqueue on a GE-internal stream (no context check); *seq receives the task's sequence number. */
aclError sim_enqueue_internal(aclrtStream stream, int flags, sim_exec_fn exec, sim_cleanup_fn cleanup,
                              void *payload, uint64_t *seq);
/* Blocks until the stream retired task `seq` (ran or skipped). */
void sim_wait_retired(aclrtStream stream, uint64_t seq);

/* Does `stream` (any pointer: a destroyed or foreign one is simply not found) have work
 * submitted and not yet retired? 0 when it is idle or unknown. Never dereferences it. */
int sim_stream_busy(const void *stream);

/* Internal streams (GE's own model streams): not user-visible, not counted as user streams. */
aclError sim_stream_create_internal(int32_t device_id, aclrtStream *out);
aclError sim_stream_destroy_internal(aclrtStream stream);

/* The device of the calling thread's current context (107002 when there is none). */
aclError sim_current_device(int32_t *device_id);
/* The device a stream belongs to. */
int32_t sim_stream_device(aclrtStream stream);

/* Device memory without a context (charged to `device_id`), for GE's own blocks. */
aclError sim_device_alloc(int32_t device_id, size_t size, void **out);
aclError sim_device_free(void *ptr);
/* Poisoning (aa_sim_config.poison): is it on, and fill [ptr, ptr+n) with the pattern when it
 * is (a no-op otherwise). common/pool.c reaches sim_poison_fill through a weak reference. */
int sim_poison_enabled(void);
void sim_poison_fill(void *ptr, size_t n);
/* The device's memory capacity in bytes (0 for an unknown device). */
uint64_t sim_device_capacity(int32_t device_id);

/* Is [ptr, ptr+n) inside one live device allocation? 1 yes, 0 not device memory,
 * -1 device memory but out of bounds (message in err). */
int sim_check_device_range(const void *ptr, size_t n, char *err, size_t err_len);

/* This thread's recent ACL error text (aclGetRecentErrMsg). */
void sim_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

uint64_t sim_now_ns(void);
void sim_sleep_us(uint32_t us);
aa_sim_timing sim_timing(void);

#ifdef __cplusplus
}
#endif

#endif /* AA_SIM_RUNTIME_H */
