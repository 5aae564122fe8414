/* Device and page-locked host memory, the allocation table, copies and memsets (rt_internal.h). */
#define _GNU_SOURCE
#include "rt_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Poisoning (aa_sim_config.poison): every block handed out and every block given back is
 * filled with the bytes F5 FF repeated. The allocator does not know dtypes, so the pattern is
 * one that reads as NaN in every float type a block can hold (float16, bfloat16, float32 and
 * float64 all see an all-ones exponent and a non-zero mantissa at their natural alignment) and
 * as implausible integers otherwise (int8 -11/-1, int32 -655371, ...). A stale read then shows
 * up as a wrong answer, never as plausible data. Fixed when the runtime starts. */
static int g_poison;

void rt_poison_set(int on) { __atomic_store_n(&g_poison, on ? 1 : 0, __ATOMIC_RELAXED); }

int sim_poison_enabled(void) { return __atomic_load_n(&g_poison, __ATOMIC_RELAXED); }

void sim_poison_fill(void *ptr, size_t n) {
    if (!ptr || !__atomic_load_n(&g_poison, __ATOMIC_RELAXED)) return;
    unsigned char *p = ptr;
    const uint64_t word = 0xFFF5FFF5FFF5FFF5ull; /* little-endian bytes F5 FF F5 FF ... */
    size_t i = 0;
    /* Blocks start 64-byte aligned, so the pattern's phase matches every element's alignment. */
    for (; i + 8 <= n; i += 8) memcpy(p + i, &word, 8);
    for (; i < n; i++) p[i] = (i & 1) ? 0xFF : 0xF5;
}

/* ------------------------------------------------------------------------------------------ */
/* Memory                                                                                      */

typedef struct mem_block {
    uintptr_t base;
    size_t size;    /* usable bytes (what the caller asked for) */
    size_t charged; /* round_up(size, 32) + 32, as the runtime reserves */
    int32_t device; /* -1 = page-locked host memory */
} mem_block;

static struct {
    pthread_mutex_t lock;
    mem_block *v; /* sorted by base */
    size_t n, cap;
} g_mem = {.lock = PTHREAD_MUTEX_INITIALIZER};

static size_t mem_find_locked(uintptr_t p) {
    /* Index of the last block with base <= p, or (size_t)-1. */
    size_t lo = 0, hi = g_mem.n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (g_mem.v[mid].base <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo ? lo - 1 : (size_t)-1;
}

/* Records a block; 0 when the table could not grow (host memory ran out: nothing changed). */
static int mem_insert(mem_block b) {
    pthread_mutex_lock(&g_mem.lock);
    if (g_mem.n == g_mem.cap) {
        mem_block *grown = aa_grow(g_mem.v, &g_mem.cap, sizeof(mem_block), 256);
        if (!grown) {
            pthread_mutex_unlock(&g_mem.lock);
            return 0;
        }
        g_mem.v = grown;
    }
    size_t i = mem_find_locked(b.base);
    i = (i == (size_t)-1) ? 0 : i + 1;
    memmove(&g_mem.v[i + 1], &g_mem.v[i], (g_mem.n - i) * sizeof(mem_block));
    g_mem.v[i] = b;
    g_mem.n++;
    pthread_mutex_unlock(&g_mem.lock);
    return 1;
}

/* Removes the block starting exactly at p; returns 0 if there is none. */
static int mem_remove(uintptr_t p, int want_host, mem_block *out) {
    pthread_mutex_lock(&g_mem.lock);
    size_t i = mem_find_locked(p);
    int ok = i != (size_t)-1 && g_mem.v[i].base == p && ((g_mem.v[i].device < 0) == want_host);
    if (ok) {
        *out = g_mem.v[i];
        memmove(&g_mem.v[i], &g_mem.v[i + 1], (g_mem.n - i - 1) * sizeof(mem_block));
        g_mem.n--;
    }
    pthread_mutex_unlock(&g_mem.lock);
    return ok;
}

enum { RANGE_UNKNOWN = 0, RANGE_OK = 1, RANGE_OOB = -1 };

/* Classifies [p, p+n) against the allocation containing p. */
static int mem_range(const void *ptr, size_t n, mem_block *blk) {
    uintptr_t p = (uintptr_t)ptr;
    pthread_mutex_lock(&g_mem.lock);
    size_t i = mem_find_locked(p);
    int r = RANGE_UNKNOWN;
    if (i != (size_t)-1 && p < g_mem.v[i].base + g_mem.v[i].charged) {
        *blk = g_mem.v[i];
        r = (p + n <= g_mem.v[i].base + g_mem.v[i].size) ? RANGE_OK : RANGE_OOB;
    }
    pthread_mutex_unlock(&g_mem.lock);
    return r;
}

int sim_check_device_range(const void *ptr, size_t n, char *err, size_t err_len) {
    mem_block b;
    int r = mem_range(ptr, n, &b);
    if (r == RANGE_UNKNOWN || b.device < 0) return 0;
    if (r == RANGE_OOB) {
        snprintf(err, err_len, "%zu bytes at offset %zu overrun the %zu-byte device allocation", n,
                 (size_t)((uintptr_t)ptr - b.base), b.size);
        return -1;
    }
    return 1;
}

/* The largest request whose charge does not wrap around. */
#define MAX_REQUEST (SIZE_MAX - 63)

static size_t charge_of(size_t size) { return ((size + 31) & ~(size_t)31) + 32; }

aclError sim_device_alloc(int32_t device_id, size_t size, void **out) {
    sim_device *d = rt_device_get(device_id);
    if (!d) return rt_no_device("sim_device_alloc", device_id);
    if (size > MAX_REQUEST)
        FAIL(ACL_ERROR_RT_MEMORY_ALLOCATION, "device %d out of memory: %zu bytes requested", (int)device_id, size);
    size_t charged = charge_of(size);
    pthread_mutex_lock(&d->lock);
    if (d->used > d->capacity || charged > d->capacity - d->used) {
        uint64_t used = d->used, cap = d->capacity;
        pthread_mutex_unlock(&d->lock);
        FAIL(ACL_ERROR_RT_MEMORY_ALLOCATION, "device %d out of memory: %zu bytes requested, %llu of %llu in use",
             (int)device_id, size, (unsigned long long)used, (unsigned long long)cap);
    }
    d->used += charged;
    pthread_mutex_unlock(&d->lock);
    void *p = NULL;
    if (posix_memalign(&p, 64, charged)) {
        pthread_mutex_lock(&d->lock);
        d->used -= charged;
        pthread_mutex_unlock(&d->lock);
        FAIL(ACL_ERROR_RT_MEMORY_ALLOCATION, "device %d: host allocation for %zu bytes failed", (int)device_id, size);
    }
    if (!mem_insert((mem_block){(uintptr_t)p, size, charged, device_id})) {
        free(p);
        pthread_mutex_lock(&d->lock);
        d->used -= charged;
        pthread_mutex_unlock(&d->lock);
        FAIL(ACL_ERROR_BAD_ALLOC, "device %d: out of host memory for the allocation table", (int)device_id);
    }
    sim_poison_fill(p, charged);
    SIM_STAT_ADD(device_allocations, 1);
    SIM_STAT_ADD(device_bytes, (int64_t)charged);
    *out = p;
    return ACL_SUCCESS;
}

aclError sim_device_free(void *ptr) {
    mem_block b;
    if (!mem_remove((uintptr_t)ptr, 0, &b))
        FAIL(ACL_ERROR_RT_PARAM_INVALID, "aclrtFree: %p is not a live device allocation", ptr);
    sim_device *d = rt_device_get(b.device);
    pthread_mutex_lock(&d->lock);
    d->used -= b.charged;
    pthread_mutex_unlock(&d->lock);
    SIM_STAT_ADD(device_allocations, -1);
    SIM_STAT_ADD(device_bytes, -(int64_t)b.charged);
    sim_poison_fill(ptr, b.charged);
    free(ptr);
    return ACL_SUCCESS;
}

aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy) {
    if (!devPtr) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtMalloc: devPtr is NULL");
    if (!size) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtMalloc: size is 0");
    if ((int)policy < 0 || (int)policy > ACL_MEM_MALLOC_NORMAL_ONLY_P2P)
        FAIL(ACL_ERROR_INVALID_PARAM, "aclrtMalloc: unknown policy %d", (int)policy);
    if (!rt_tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "aclrtMalloc: no current context on this thread");
    return sim_device_alloc(rt_tls_ctx->dev->id, size, devPtr);
}

aclError aclrtFree(void *devPtr) {
    if (!devPtr) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtFree: devPtr is NULL");
    return sim_device_free(devPtr);
}

aclError aclrtMallocHost(void **hostPtr, size_t size) {
    if (!hostPtr) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtMallocHost: hostPtr is NULL");
    if (!size) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtMallocHost: size is 0");
    void *p = NULL;
    if (size > MAX_REQUEST || posix_memalign(&p, 64, charge_of(size)))
        FAIL(ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMallocHost: %zu bytes failed", size);
    if (!mem_insert((mem_block){(uintptr_t)p, size, charge_of(size), -1})) {
        free(p);
        FAIL(ACL_ERROR_BAD_ALLOC, "aclrtMallocHost: out of host memory for the allocation table");
    }
    sim_poison_fill(p, charge_of(size));
    SIM_STAT_ADD(host_allocations, 1);
    *hostPtr = p;
    return ACL_SUCCESS;
}

aclError aclrtFreeHost(void *hostPtr) {
    if (!hostPtr) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtFreeHost: hostPtr is NULL");
    mem_block b;
    if (!mem_remove((uintptr_t)hostPtr, 1, &b))
        FAIL(ACL_ERROR_RT_PARAM_INVALID, "aclrtFreeHost: %p is not a live page-locked allocation", hostPtr);
    SIM_STAT_ADD(host_allocations, -1);
    sim_poison_fill(hostPtr, b.charged);
    free(hostPtr);
    return ACL_SUCCESS;
}

/* Checks one side of a copy: device sides must be whole inside a device allocation; host sides
 * inside an acl host allocation must fit it (plain malloc'd host memory cannot be checked). */
static aclError check_side(const void *p, size_t n, int want_device, const char *api, const char *side, int *pinned) {
    mem_block b;
    int r = mem_range(p, n, &b);
    if (pinned) *pinned = (r != RANGE_UNKNOWN && b.device < 0);
    if (want_device) {
        if (r == RANGE_UNKNOWN || b.device < 0)
            FAIL(ACL_ERROR_RT_PARAM_INVALID, "%s: %s %p is not device memory", api, side, p);
    } else if (r != RANGE_UNKNOWN && b.device >= 0) {
        FAIL(ACL_ERROR_RT_PARAM_INVALID, "%s: %s %p is device memory, the copy kind says host", api, side, p);
    }
    if (r == RANGE_OOB)
        FAIL(ACL_ERROR_RT_PARAM_INVALID, "%s: %s range of %zu bytes at offset %zu overruns its %zu-byte allocation",
             api, side, n, (size_t)((uintptr_t)p - b.base), b.size);
    return ACL_SUCCESS;
}

static int is_device_ptr(const void *p) {
    mem_block b;
    return mem_range(p, 1, &b) != RANGE_UNKNOWN && b.device >= 0;
}

static aclError check_copy(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind,
                           const char *api, int *host_pinned) {
    if (!dst || !src) FAIL(ACL_ERROR_INVALID_PARAM, "%s: dst or src is NULL", api);
    if (count > destMax) FAIL(ACL_ERROR_INVALID_PARAM, "%s: count %zu exceeds destMax %zu", api, count, destMax);
    if (kind == ACL_MEMCPY_DEFAULT) {
        int dd = is_device_ptr(dst), sd = is_device_ptr(src);
        kind = dd ? (sd ? ACL_MEMCPY_DEVICE_TO_DEVICE : ACL_MEMCPY_HOST_TO_DEVICE)
                  : (sd ? ACL_MEMCPY_DEVICE_TO_HOST : ACL_MEMCPY_HOST_TO_HOST);
    }
    int dst_dev, src_dev;
    switch (kind) {
        case ACL_MEMCPY_HOST_TO_HOST:
            dst_dev = 0;
            src_dev = 0;
            break;
        case ACL_MEMCPY_HOST_TO_DEVICE:
        case ACL_MEMCPY_HOST_TO_BUF_TO_DEVICE:
            dst_dev = 1;
            src_dev = 0;
            break;
        case ACL_MEMCPY_DEVICE_TO_HOST:
            dst_dev = 0;
            src_dev = 1;
            break;
        case ACL_MEMCPY_DEVICE_TO_DEVICE:
        case ACL_MEMCPY_INNER_DEVICE_TO_DEVICE:
        case ACL_MEMCPY_INTER_DEVICE_TO_DEVICE:
            dst_dev = 1;
            src_dev = 1;
            break;
        default: FAIL(ACL_ERROR_INVALID_PARAM, "%s: unknown copy kind %d", api, (int)kind);
    }
    int dp = 0, sp = 0;
    aclError rc = check_side(dst, count, dst_dev, api, "dst", &dp);
    if (rc) return rc;
    rc = check_side(src, count, src_dev, api, "src", &sp);
    if (rc) return rc;
    /* Is every host side of this copy page-locked (or is there none)? */
    if (host_pinned) *host_pinned = (dst_dev || dp) && (src_dev || sp) && kind != ACL_MEMCPY_HOST_TO_BUF_TO_DEVICE;
    return ACL_SUCCESS;
}

aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind) {
    if (!count) return ACL_SUCCESS;
    aclError rc = check_copy(dst, destMax, src, count, kind, "aclrtMemcpy", NULL);
    if (rc) return rc;
    memmove(dst, src, count);
    return ACL_SUCCESS;
}

typedef struct copy_job {
    void *dst;
    const void *src;
    size_t n;
    int set; /* memset: value in `value` */
    int value;
} copy_job;

static int copy_exec(void *payload, char *err, size_t err_len) {
    (void)err;
    (void)err_len;
    copy_job *j = payload;
    if (j->set)
        memset(j->dst, j->value, j->n);
    else
        memmove(j->dst, j->src, j->n);
    return 0;
}

static void copy_cleanup(void *payload, int executed) {
    (void)executed;
    free(payload);
}

static aclError enqueue_copy(copy_job job, sim_stream *s, int host_waits, const char *api) {
    copy_job *j = malloc(sizeof *j);
    sim_task *t = j ? rt_task_new(TASK_EXEC) : NULL;
    if (!t) {
        free(j);
        FAIL(ACL_ERROR_BAD_ALLOC, "%s: out of host memory", api);
    }
    *j = job;
    t->exec = copy_exec;
    t->cleanup = host_waits ? NULL : copy_cleanup; /* a waiting host thread frees its own job */
    t->payload = j;
    sim_device *d = s->dev;
    pthread_mutex_lock(&d->lock);
    rt_enqueue_locked(s, t);
    uint64_t seq = t->seq;
    if (!host_waits) {
        pthread_mutex_unlock(&d->lock);
        return ACL_SUCCESS;
    }
    /* Pageable host memory: the call returns only after this copy ran (or was skipped). */
    while (s->completed < seq) pthread_cond_wait(&d->done_cv, &d->lock);
    aclError rc = (s->fault && s->fault_seq <= seq) ? rt_stream_fault_locked(s, api) : ACL_SUCCESS;
    pthread_mutex_unlock(&d->lock);
    free(j);
    return rc;
}

aclError aclrtMemcpyAsync(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind,
                          aclrtStream stream) {
    if (!count) return ACL_SUCCESS;
    if (kind == ACL_MEMCPY_HOST_TO_HOST)
        FAIL(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "aclrtMemcpyAsync: HOST_TO_HOST is not supported on this device");
    int pinned = 0;
    aclError rc = check_copy(dst, destMax, src, count, kind, "aclrtMemcpyAsync", &pinned);
    if (rc) return rc;
    sim_stream *s;
    rc = rt_resolve_stream(stream, "aclrtMemcpyAsync", &s);
    if (rc) return rc;
    return enqueue_copy((copy_job){.dst = dst, .src = src, .n = count}, s, !pinned, "aclrtMemcpyAsync");
}

static aclError check_memset(void *devPtr, size_t maxCount, size_t count, const char *api) {
    if (!devPtr) FAIL(ACL_ERROR_INVALID_PARAM, "%s: devPtr is NULL", api);
    if (count > maxCount) FAIL(ACL_ERROR_INVALID_PARAM, "%s: count %zu exceeds maxCount %zu", api, count, maxCount);
    mem_block b;
    int r = mem_range(devPtr, count, &b);
    if (r == RANGE_UNKNOWN) FAIL(ACL_ERROR_RT_PARAM_INVALID, "%s: %p is not memory from an acl allocator", api, devPtr);
    if (r == RANGE_OOB)
        FAIL(ACL_ERROR_RT_PARAM_INVALID, "%s: %zu bytes overrun the %zu-byte allocation", api, count, b.size);
    return ACL_SUCCESS;
}

aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count) {
    if (!count) return ACL_SUCCESS;
    aclError rc = check_memset(devPtr, maxCount, count, "aclrtMemset");
    if (rc) return rc;
    memset(devPtr, value, count);
    return ACL_SUCCESS;
}

aclError aclrtMemsetAsync(void *devPtr, size_t maxCount, int32_t value, size_t count, aclrtStream stream) {
    if (!count) return ACL_SUCCESS;
    aclError rc = check_memset(devPtr, maxCount, count, "aclrtMemsetAsync");
    if (rc) return rc;
    sim_stream *s;
    rc = rt_resolve_stream(stream, "aclrtMemsetAsync", &s);
    if (rc) return rc;
    return enqueue_copy((copy_job){.dst = devPtr, .n = count, .set = 1, .value = value}, s, 0, "aclrtMemsetAsync");
}

aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free_, size_t *total) {
    if (!free_ || !total) FAIL(ACL_ERROR_INVALID_PARAM, "aclrtGetMemInfo: free or total is NULL");
    if (!rt_tls_ctx) FAIL(ACL_ERROR_RT_CONTEXT_NULL, "aclrtGetMemInfo: no current context on this thread");
    sim_device *d = rt_tls_ctx->dev;
    if (attr > ACL_HBM_MEM_NORMAL) {
        *free_ = *total = 0;
        return ACL_SUCCESS;
    }
    pthread_mutex_lock(&d->lock);
    *total = d->capacity;
    *free_ = d->capacity > d->used ? d->capacity - d->used : 0;
    pthread_mutex_unlock(&d->lock);
    return ACL_SUCCESS;
}

aclError aa_sim_set_memory_capacity(int32_t device_id, uint64_t bytes) {
    sim_device *d = rt_device_get(device_id);
    if (!d) return rt_no_device("aa_sim_set_memory_capacity", device_id);
    pthread_mutex_lock(&d->lock);
    d->capacity = bytes;
    pthread_mutex_unlock(&d->lock);
    return ACL_SUCCESS;
}

uint64_t sim_device_capacity(int32_t device_id) {
    sim_device *d = rt_device_get(device_id);
    if (!d) return 0;
    pthread_mutex_lock(&d->lock);
    uint64_t cap = d->capacity;
    pthread_mutex_unlock(&d->lock);
    return cap;
}
