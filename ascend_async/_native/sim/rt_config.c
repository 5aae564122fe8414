/* The simulated runtime's errors, clock, configuration and statistics, and aclInit/aclFinalize
 * (the rooms of the runtime: rt_internal.h). */
#define _GNU_SOURCE
#include "rt_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

aa_sim_stats g_sim_stats;

sim_runtime g_rt = {.lock = PTHREAD_MUTEX_INITIALIZER, .cfg = {1, 2, 4ull << 30, 1023, 1}};

__thread sim_context *rt_tls_ctx;

/* ------------------------------------------------------------------------------------------ */
/* Errors                                                                                      */

static __thread char tls_err[512];
static __thread char tls_err_out[512];

void sim_set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_err, sizeof tls_err, fmt, ap);
    va_end(ap);
}

const char *aclGetRecentErrMsg(void) {
    if (!tls_err[0]) return NULL;
    memcpy(tls_err_out, tls_err, sizeof tls_err_out);
    tls_err[0] = 0;
    return tls_err_out;
}

/* ------------------------------------------------------------------------------------------ */
/* Time                                                                                        */

uint64_t sim_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void sim_sleep_us(uint32_t us) {
    if (!us) return;
    struct timespec ts = {us / 1000000u, (long)(us % 1000000u) * 1000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {}
}

void rt_deadline_after_ms(struct timespec *ts, int32_t ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Configuration, timing and statistics                                                        */

int aa_sim_configure(const aa_sim_config *config) {
    pthread_mutex_lock(&g_rt.lock);
    if (g_rt.started) {
        pthread_mutex_unlock(&g_rt.lock);
        return -1;
    }
    g_rt.cfg = *config;
    g_rt.configured = 1;
    if (!g_rt.cfg.device_count) g_rt.cfg.device_count = 1;
    if (!g_rt.cfg.workers) g_rt.cfg.workers = 2;
    if (!g_rt.cfg.memory_bytes) g_rt.cfg.memory_bytes = 4ull << 30;
    if (!g_rt.cfg.max_events) g_rt.cfg.max_events = 1023;
    if (!g_rt.cfg.engine_threads) g_rt.cfg.engine_threads = 1;
    pthread_mutex_unlock(&g_rt.lock);
    return 0;
}

void aa_sim_get_config(aa_sim_config *config) {
    pthread_mutex_lock(&g_rt.lock);
    *config = g_rt.cfg;
    pthread_mutex_unlock(&g_rt.lock);
}

void aa_sim_set_timing(const aa_sim_timing *timing) {
    pthread_mutex_lock(&g_rt.lock);
    g_rt.timing = *timing;
    pthread_mutex_unlock(&g_rt.lock);
}

aa_sim_timing sim_timing(void) {
    pthread_mutex_lock(&g_rt.lock);
    aa_sim_timing t = g_rt.timing;
    pthread_mutex_unlock(&g_rt.lock);
    return t;
}

void aa_sim_get_stats(aa_sim_stats *stats) {
    stats->device_allocations = __atomic_load_n(&g_sim_stats.device_allocations, __ATOMIC_RELAXED);
    stats->device_bytes = __atomic_load_n(&g_sim_stats.device_bytes, __ATOMIC_RELAXED);
    stats->host_allocations = __atomic_load_n(&g_sim_stats.host_allocations, __ATOMIC_RELAXED);
    stats->contexts = __atomic_load_n(&g_sim_stats.contexts, __ATOMIC_RELAXED);
    stats->streams = __atomic_load_n(&g_sim_stats.streams, __ATOMIC_RELAXED);
    stats->events = __atomic_load_n(&g_sim_stats.events, __ATOMIC_RELAXED);
    stats->sessions = __atomic_load_n(&g_sim_stats.sessions, __ATOMIC_RELAXED);
    stats->graphs = __atomic_load_n(&g_sim_stats.graphs, __ATOMIC_RELAXED);
    stats->models = __atomic_load_n(&g_sim_stats.models, __ATOMIC_RELAXED);
    stats->ge_outputs = __atomic_load_n(&g_sim_stats.ge_outputs, __ATOMIC_RELAXED);
    stats->tasks_submitted = __atomic_load_n(&g_sim_stats.tasks_submitted, __ATOMIC_RELAXED);
    stats->tasks_completed = __atomic_load_n(&g_sim_stats.tasks_completed, __ATOMIC_RELAXED);
    stats->tasks_failed = __atomic_load_n(&g_sim_stats.tasks_failed, __ATOMIC_RELAXED);
    stats->graph_runs = __atomic_load_n(&g_sim_stats.graph_runs, __ATOMIC_RELAXED);
    stats->device_spins = __atomic_load_n(&g_sim_stats.device_spins, __ATOMIC_RELAXED);
}

int sim_graph_task_flags(const aa_tensor *inputs, size_t n_inputs) {
    int64_t n = (n_inputs && inputs[0].ndim > 0) ? inputs[0].dims[0] : 1;
    if (n < 1) n = 1;
    if (n > 0x7fffff) n = 0x7fffff;
    return SIM_TASK_GRAPH | (int)(n << SIM_TASK_SAMPLES_SHIFT);
}

/* ------------------------------------------------------------------------------------------ */
/* Init                                                                                        */

aclError aclInit(const char *configPath) {
    (void)configPath;
    aclError rc = rt_start();
    if (rc) return rc;
    pthread_mutex_lock(&g_rt.lock);
    int again = g_rt.acl_inited;
    g_rt.acl_inited = 1;
    pthread_mutex_unlock(&g_rt.lock);
    if (again) FAIL(ACL_ERROR_REPEAT_INITIALIZE, "aclInit: already initialized");
    return ACL_SUCCESS;
}

aclError aclFinalize(void) {
    pthread_mutex_lock(&g_rt.lock);
    int was = g_rt.acl_inited;
    g_rt.acl_inited = 0;
    pthread_mutex_unlock(&g_rt.lock);
    if (!was) FAIL(ACL_ERROR_REPEAT_FINALIZE, "aclFinalize: not initialized");
    return ACL_SUCCESS;
}
