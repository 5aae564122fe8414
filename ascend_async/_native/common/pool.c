/* aa_pool: a caching allocator over aclrtMalloc / aclrtMallocHost (cdefs/support.h).
 *
 * Blocks are rounded to size classes (512 B steps up to 1 MiB, then 1 MiB steps) and kept in
 * per-class free stacks when freed, so the hot path never reaches the runtime's allocator.
 * A block is freed back only once no device work touches it (the caller's promise), so reuse
 * needs no stream ordering. `mu` guards everything; runtime calls happen outside it.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../ascend_async.h"

/* The sim's poisoning (sim/runtime.c, aa_sim_config.poison): a cached block handed out again,
 * and a block given back to the cache, are filled with the poison pattern, as the sim's
 * allocator does for the blocks it hands out and takes back, so a stale read through the pool
 * shows up as a wrong answer. A weak reference: the CANN module has no sim, and nothing is
 * filled there. In the sim, device memory is host memory, so the fill is a plain write. */
extern void sim_poison_fill(void *ptr, size_t n) __attribute__((weak));

static void poison(void *ptr, size_t n) {
    if (sim_poison_fill) sim_poison_fill(ptr, n);
}

typedef struct bucket {
    size_t size;
    void **v;
    size_t n, cap;
} bucket;

typedef struct live_slot {
    uintptr_t ptr; /* 0 = empty */
    size_t size;
} live_slot;

struct aa_pool {
    pthread_mutex_t mu;
    int32_t kind;
    uint64_t max_cached;
    bucket *buckets;
    size_t n_buckets, cap_buckets;
    live_slot *live; /* open addressing, linear probing, power-of-two capacity */
    size_t live_cap, live_n;
    aa_pool_stats st;
};

static size_t class_of(size_t n) {
    if (n <= 512) return 512;
    if (n <= (1u << 20)) return (n + 511) & ~(size_t)511;
    return (n + (1u << 20) - 1) & ~(size_t)((1u << 20) - 1);
}

static size_t hash_ptr(uintptr_t p, size_t cap) { return (size_t)((p >> 6) * 0x9E3779B97F4A7C15ull) & (cap - 1); }

static void live_put_locked(aa_pool *p, uintptr_t ptr, size_t size);

static void live_grow_locked(aa_pool *p) {
    live_slot *old = p->live;
    size_t old_cap = p->live_cap;
    p->live_cap = old_cap ? old_cap * 2 : 256;
    p->live = calloc(p->live_cap, sizeof(live_slot));
    p->live_n = 0;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].ptr) live_put_locked(p, old[i].ptr, old[i].size);
    free(old);
}

static void live_put_locked(aa_pool *p, uintptr_t ptr, size_t size) {
    if ((p->live_n + 1) * 2 > p->live_cap) live_grow_locked(p);
    size_t i = hash_ptr(ptr, p->live_cap);
    while (p->live[i].ptr) i = (i + 1) & (p->live_cap - 1);
    p->live[i] = (live_slot){ptr, size};
    p->live_n++;
}

/* Removes ptr; returns its class size or 0 if unknown (backward-shift deletion). */
static size_t live_take_locked(aa_pool *p, uintptr_t ptr) {
    if (!p->live_cap) return 0;
    size_t mask = p->live_cap - 1, i = hash_ptr(ptr, p->live_cap);
    while (p->live[i].ptr && p->live[i].ptr != ptr) i = (i + 1) & mask;
    if (!p->live[i].ptr) return 0;
    size_t size = p->live[i].size;
    p->live[i].ptr = 0;
    p->live_n--;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!p->live[j].ptr) break;
        size_t home = hash_ptr(p->live[j].ptr, p->live_cap);
        /* Move j back into the hole i if its home is not in (i, j]. */
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            p->live[i] = p->live[j];
            p->live[j].ptr = 0;
            i = j;
        }
    }
    return size;
}

static bucket *bucket_of_locked(aa_pool *p, size_t size, int create) {
    for (size_t i = 0; i < p->n_buckets; i++)
        if (p->buckets[i].size == size) return &p->buckets[i];
    if (!create) return NULL;
    if (p->n_buckets == p->cap_buckets) {
        p->cap_buckets = p->cap_buckets ? p->cap_buckets * 2 : 16;
        p->buckets = realloc(p->buckets, p->cap_buckets * sizeof(bucket));
    }
    bucket *b = &p->buckets[p->n_buckets++];
    memset(b, 0, sizeof *b);
    b->size = size;
    return b;
}

aa_pool *aa_pool_create(int32_t kind, uint64_t max_cached_bytes) {
    aa_pool *p = calloc(1, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    p->kind = kind;
    p->max_cached = max_cached_bytes;
    return p;
}

static aclError raw_alloc(aa_pool *p, size_t size, void **out) {
    return p->kind == AA_POOL_HOST ? aclrtMallocHost(out, size) : aclrtMalloc(out, size, ACL_MEM_MALLOC_HUGE_FIRST);
}

static void raw_free(aa_pool *p, void *ptr) {
    if (p->kind == AA_POOL_HOST)
        aclrtFreeHost(ptr);
    else
        aclrtFree(ptr);
}

void *aa_pool_alloc(aa_pool *p, size_t size, aclError *error) {
    size_t cls = class_of(size ? size : 1);
    pthread_mutex_lock(&p->mu);
    bucket *b = bucket_of_locked(p, cls, 0);
    if (b && b->n) {
        void *ptr = b->v[--b->n];
        p->st.cached_blocks--;
        p->st.cached_bytes -= (int64_t)cls;
        p->st.live_blocks++;
        p->st.live_bytes += (int64_t)cls;
        p->st.hits++;
        live_put_locked(p, (uintptr_t)ptr, cls);
        pthread_mutex_unlock(&p->mu);
        poison(ptr, cls); /* ours alone now: no other thread holds it */
        if (error) *error = ACL_SUCCESS;
        return ptr;
    }
    p->st.misses++;
    pthread_mutex_unlock(&p->mu);
    void *ptr = NULL;
    aclError rc = raw_alloc(p, cls, &ptr);
    if (rc != ACL_SUCCESS) { /* out of memory: give the cache back and try once more */
        aa_pool_trim(p);
        rc = raw_alloc(p, cls, &ptr);
    }
    if (rc != ACL_SUCCESS) {
        if (error) *error = rc;
        return NULL;
    }
    pthread_mutex_lock(&p->mu);
    live_put_locked(p, (uintptr_t)ptr, cls);
    p->st.live_blocks++;
    p->st.live_bytes += (int64_t)cls;
    pthread_mutex_unlock(&p->mu);
    if (error) *error = ACL_SUCCESS;
    return ptr;
}

void aa_pool_free(aa_pool *p, void *ptr) {
    if (!ptr) return;
    pthread_mutex_lock(&p->mu);
    size_t cls = live_take_locked(p, (uintptr_t)ptr);
    if (!cls) { /* not ours: ignore rather than corrupt the cache */
        pthread_mutex_unlock(&p->mu);
        return;
    }
    p->st.live_blocks--;
    p->st.live_bytes -= (int64_t)cls;
    if ((uint64_t)p->st.cached_bytes + cls > p->max_cached) {
        pthread_mutex_unlock(&p->mu);
        raw_free(p, ptr); /* the runtime poisons what it takes back */
        return;
    }
    poison(ptr, cls); /* under mu: once cached, another thread may take it */
    bucket *b = bucket_of_locked(p, cls, 1);
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 8;
        b->v = realloc(b->v, b->cap * sizeof(void *));
    }
    b->v[b->n++] = ptr;
    p->st.cached_blocks++;
    p->st.cached_bytes += (int64_t)cls;
    pthread_mutex_unlock(&p->mu);
}

void aa_pool_trim(aa_pool *p) {
    pthread_mutex_lock(&p->mu);
    size_t total = 0;
    for (size_t i = 0; i < p->n_buckets; i++) total += p->buckets[i].n;
    void **victims = malloc((total ? total : 1) * sizeof(void *));
    size_t k = 0;
    for (size_t i = 0; i < p->n_buckets; i++) {
        for (size_t j = 0; j < p->buckets[i].n; j++) victims[k++] = p->buckets[i].v[j];
        p->buckets[i].n = 0;
    }
    p->st.cached_blocks = 0;
    p->st.cached_bytes = 0;
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < k; i++) raw_free(p, victims[i]);
    free(victims);
}

void aa_pool_get_stats(aa_pool *p, aa_pool_stats *stats) {
    pthread_mutex_lock(&p->mu);
    *stats = p->st;
    pthread_mutex_unlock(&p->mu);
}

static __thread aclError tls_error;

aclError aa_pool_take_error(void) {
    aclError e = tls_error;
    tls_error = 0;
    return e;
}

static void *ge_alloc(void *ctx, size_t size, void **addr) {
    aclError err = 0;
    void *ptr = aa_pool_alloc(ctx, size, &err);
    if (!ptr) tls_error = err ? err : ACL_ERROR_RT_MEMORY_ALLOCATION;
    *addr = ptr;
    return ptr; /* the block handle is the address itself */
}

static void ge_free(void *ctx, void *block) { aa_pool_free(ctx, block); }

void aa_pool_allocator(aa_pool *p, aa_allocator *out) {
    out->ctx = p;
    out->alloc = ge_alloc;
    out->free = ge_free;
}

int64_t aa_pool_destroy(aa_pool *p) {
    aa_pool_trim(p);
    int64_t leaked = 0;
    for (size_t i = 0; i < p->live_cap; i++)
        if (p->live[i].ptr) {
            raw_free(p, (void *)p->live[i].ptr);
            leaked++;
        }
    for (size_t i = 0; i < p->n_buckets; i++) free(p->buckets[i].v);
    free(p->buckets);
    free(p->live);
    pthread_mutex_destroy(&p->mu);
    free(p);
    return leaked;
}
