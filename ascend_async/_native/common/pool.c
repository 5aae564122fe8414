/* aa_pool: a caching allocator over aclrtMalloc / aclrtMallocHost (cdefs/support.h).
 *
 * Blocks are rounded to size classes (512 B steps up to 1 MiB, then 1 MiB steps) and kept in
 * per-class free stacks when freed, so the hot path never reaches the runtime's allocator.
 * A block given back with aa_pool_free is idle (the caller's promise: no device work touches
 * it), so its reuse needs no stream ordering.
 *
 * Lanes (aa_pool_lane) are the pool's stream-ordered faces, one per stream, registered as that
 * stream's GE external allocator. GE frees a workspace block right after the host side of a
 * run returns, while the stream may still use it: such a block is cached in its lane and
 * handed out again only through that lane, i.e. to later work on the same stream, which the
 * stream runs after the work still using it. It reaches the shared cache (and other streams)
 * only when the lane is flushed or closed, which the caller does once the stream is idle.
 *
 * `mu` guards everything, lanes included; runtime calls happen outside it.
 *
 * Host memory (../alloc_policy.h): aa_pool_create and aa_pool_lane_open return NULL; a
 * bookkeeping array that cannot grow leaves the block uncached (given back to the runtime)
 * or, for the live table, refuses the allocation (*error = ACL_ERROR_BAD_ALLOC).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../alloc_policy.h"
#include "../ascend_async.h"

/* The sim's poisoning (sim/rt_memory.c, aa_sim_config.poison): a cached block handed out again,
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

/* A stream's face of the pool (see the top). Owned by its pool and freed with it, never
 * earlier: GE (and DeviceTensors) may give a block back through a lane after its stream is
 * gone. A closed lane sends what it gets to the shared cache and may be reopened for another
 * stream. */
struct aa_pool_lane {
    aa_pool *pool;
    bucket *buckets;
    size_t n_buckets, cap_buckets;
    int closed;
    struct aa_pool_lane *next;
};

struct aa_pool {
    pthread_mutex_t mu;
    int32_t kind;
    uint64_t max_cached;
    bucket *buckets;
    size_t n_buckets, cap_buckets;
    aa_pool_lane *lanes; /* every lane made for this pool, open or closed */
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

static int live_put_locked(aa_pool *p, uintptr_t ptr, size_t size);

static void live_grow_locked(aa_pool *p) {
    live_slot *old = p->live;
    size_t old_cap = p->live_cap;
    size_t cap = old_cap ? old_cap * 2 : 256;
    live_slot *grown = cap > old_cap ? calloc(cap, sizeof(live_slot)) : NULL;
    if (!grown) return; /* keep the fuller table: live_put_locked refuses when it is full */
    p->live = grown;
    p->live_cap = cap;
    p->live_n = 0;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].ptr) live_put_locked(p, old[i].ptr, old[i].size);
    free(old);
}

/* Records a live block; 0 when no room could be made (the caller gives the block back). */
static int live_put_locked(aa_pool *p, uintptr_t ptr, size_t size) {
    if ((p->live_n + 1) * 2 > p->live_cap) live_grow_locked(p);
    if (p->live_n + 1 >= p->live_cap) return 0;
    size_t i = hash_ptr(ptr, p->live_cap);
    while (p->live[i].ptr) i = (i + 1) & (p->live_cap - 1);
    p->live[i] = (live_slot){ptr, size};
    p->live_n++;
    return 1;
}

/* ptr's class size, or 0 if it is not a live block of this pool. */
static size_t live_size_locked(const aa_pool *p, uintptr_t ptr) {
    if (!p->live_cap) return 0;
    size_t mask = p->live_cap - 1, i = hash_ptr(ptr, p->live_cap);
    while (p->live[i].ptr && p->live[i].ptr != ptr) i = (i + 1) & mask;
    return p->live[i].ptr ? p->live[i].size : 0;
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

/* The bucket of class `size` in a bucket array (the shared cache's or a lane's); NULL when
 * absent and `create` is 0, or when memory for it ran out. */
static bucket *bucket_in(bucket **v, size_t *n, size_t *cap, size_t size, int create) {
    for (size_t i = 0; i < *n; i++)
        if ((*v)[i].size == size) return &(*v)[i];
    if (!create) return NULL;
    if (*n == *cap) {
        bucket *nv = aa_grow(*v, cap, sizeof(bucket), 16);
        if (!nv) return NULL;
        *v = nv;
    }
    bucket *b = &(*v)[(*n)++];
    memset(b, 0, sizeof *b);
    b->size = size;
    return b;
}

static bucket *bucket_of_locked(aa_pool *p, size_t size, int create) {
    return bucket_in(&p->buckets, &p->n_buckets, &p->cap_buckets, size, create);
}

/* Pushes ptr onto b; 0 when memory for the stack ran out (the caller frees the block). */
static int bucket_push(bucket *b, void *ptr) {
    if (b->n == b->cap) {
        void **nv = aa_grow(b->v, &b->cap, sizeof(void *), 8);
        if (!nv) return 0;
        b->v = nv;
    }
    b->v[b->n++] = ptr;
    return 1;
}

aa_pool *aa_pool_create(int32_t kind, uint64_t max_cached_bytes) {
    aa_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
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

/* Hands out a cached block of class cls from bucket b (non-empty), under mu. `lane`: the
 * bucket is that lane's. Returns NULL (the block stays cached) when the live table is full. */
static void *take_cached_locked(aa_pool *p, bucket *b, size_t cls, int lane) {
    void *ptr = b->v[b->n - 1];
    if (!live_put_locked(p, (uintptr_t)ptr, cls)) return NULL;
    b->n--;
    if (lane) {
        p->st.stream_cached_blocks--;
        p->st.stream_cached_bytes -= (int64_t)cls;
    } else {
        p->st.cached_blocks--;
        p->st.cached_bytes -= (int64_t)cls;
    }
    p->st.live_blocks++;
    p->st.live_bytes += (int64_t)cls;
    p->st.hits++;
    return ptr;
}

void *aa_pool_alloc(aa_pool *p, size_t size, aclError *error) {
    if (size > SIZE_MAX - (1u << 20)) { /* class_of would wrap */
        if (error) *error = ACL_ERROR_RT_MEMORY_ALLOCATION;
        return NULL;
    }
    size_t cls = class_of(size ? size : 1);
    pthread_mutex_lock(&p->mu);
    bucket *b = bucket_of_locked(p, cls, 0);
    void *ptr = b && b->n ? take_cached_locked(p, b, cls, 0) : NULL;
    if (ptr) {
        pthread_mutex_unlock(&p->mu);
        poison(ptr, cls); /* ours alone now: no other thread holds it */
        if (error) *error = ACL_SUCCESS;
        return ptr;
    }
    p->st.misses++;
    pthread_mutex_unlock(&p->mu);
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
    int recorded = live_put_locked(p, (uintptr_t)ptr, cls);
    if (recorded) {
        p->st.live_blocks++;
        p->st.live_bytes += (int64_t)cls;
    }
    pthread_mutex_unlock(&p->mu);
    if (!recorded) { /* no host memory to track it: give it back rather than lose it */
        raw_free(p, ptr);
        if (error) *error = ACL_ERROR_BAD_ALLOC;
        return NULL;
    }
    if (error) *error = ACL_SUCCESS;
    return ptr;
}

/* Puts an idle block of class cls into the shared cache; 0 when it must be freed instead
 * (over the cache limit, or no memory for the stack): the caller frees it outside mu. */
static int cache_locked(aa_pool *p, void *ptr, size_t cls) {
    if ((uint64_t)p->st.cached_bytes + cls > p->max_cached) return 0;
    bucket *b = bucket_of_locked(p, cls, 1);
    if (!b) return 0;
    poison(ptr, cls); /* under mu: once cached, another thread may take it */
    if (!bucket_push(b, ptr)) return 0;
    p->st.cached_blocks++;
    p->st.cached_bytes += (int64_t)cls;
    return 1;
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
    int cached = cache_locked(p, ptr, cls);
    pthread_mutex_unlock(&p->mu);
    if (!cached) raw_free(p, ptr); /* the runtime poisons what it takes back */
}

void aa_pool_trim(aa_pool *p) {
    pthread_mutex_lock(&p->mu);
    size_t total = 0;
    for (size_t i = 0; i < p->n_buckets; i++) total += p->buckets[i].n;
    void **victims = malloc((total ? total : 1) * sizeof(void *));
    if (!victims) { /* no host memory for the list: keep the cache */
        pthread_mutex_unlock(&p->mu);
        return;
    }
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

/* ---- lanes: the stream-ordered faces (see the top) ---------------------------------------- */

aa_pool_lane *aa_pool_lane_open(aa_pool *p) {
    pthread_mutex_lock(&p->mu);
    aa_pool_lane *l = p->lanes;
    while (l && !l->closed) l = l->next;
    if (l) {
        l->closed = 0; /* a closed lane holds nothing: its stream's blocks went to the cache */
    } else if ((l = calloc(1, sizeof *l))) {
        l->pool = p;
        l->next = p->lanes;
        p->lanes = l;
    }
    pthread_mutex_unlock(&p->mu);
    return l;
}

void *aa_pool_lane_alloc(aa_pool_lane *l, size_t size, aclError *error) {
    aa_pool *p = l->pool;
    if (size <= SIZE_MAX - (1u << 20)) {
        size_t cls = class_of(size ? size : 1);
        pthread_mutex_lock(&p->mu);
        bucket *b = l->closed ? NULL : bucket_in(&l->buckets, &l->n_buckets, &l->cap_buckets, cls, 0);
        void *ptr = b && b->n ? take_cached_locked(p, b, cls, 1) : NULL;
        pthread_mutex_unlock(&p->mu);
        /* No poisoning: the block may still be in use by work this stream runs before the
         * work it is handed to now, and a host-side fill would race that use. */
        if (ptr) {
            if (error) *error = ACL_SUCCESS;
            return ptr;
        }
    }
    return aa_pool_alloc(p, size, error);
}

void aa_pool_lane_free(aa_pool_lane *l, void *ptr) {
    if (!ptr) return;
    aa_pool *p = l->pool;
    pthread_mutex_lock(&p->mu);
    if (l->closed) { /* its stream is gone, and with it every use of the block */
        pthread_mutex_unlock(&p->mu);
        aa_pool_free(p, ptr);
        return;
    }
    size_t cls = live_size_locked(p, (uintptr_t)ptr);
    if (!cls) { /* not ours: ignore rather than corrupt the cache */
        pthread_mutex_unlock(&p->mu);
        return;
    }
    /* The stream may still use it (GE frees a run's workspace as soon as the run is
     * submitted): kept for this lane alone, not poisoned, whatever the cache limit says. Room
     * is made first; without host memory for it the block stays live (freed with the pool)
     * rather than reach anyone early. */
    bucket *b = bucket_in(&l->buckets, &l->n_buckets, &l->cap_buckets, cls, 1);
    if (b && bucket_push(b, ptr)) {
        live_take_locked(p, (uintptr_t)ptr);
        p->st.live_blocks--;
        p->st.live_bytes -= (int64_t)cls;
        p->st.stream_cached_blocks++;
        p->st.stream_cached_bytes += (int64_t)cls;
    }
    pthread_mutex_unlock(&p->mu);
}

/* Moves a lane's blocks to the shared cache (its stream is idle: the caller's promise). */
static void lane_flush(aa_pool_lane *l, int close) {
    aa_pool *p = l->pool;
    pthread_mutex_lock(&p->mu);
    size_t total = 0;
    for (size_t i = 0; i < l->n_buckets; i++) total += l->buckets[i].n;
    void **over = malloc((total ? total : 1) * sizeof(void *));
    size_t k = 0;
    for (size_t i = 0; i < l->n_buckets; i++) {
        bucket *b = &l->buckets[i];
        while (b->n) {
            void *ptr = b->v[b->n - 1];
            if (!cache_locked(p, ptr, b->size)) {
                if (!over) break; /* no room to list it: it stays in the lane */
                over[k++] = ptr;
            }
            b->n--;
            p->st.stream_cached_blocks--;
            p->st.stream_cached_bytes -= (int64_t)b->size;
        }
    }
    if (close) l->closed = 1;
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < k; i++) raw_free(p, over[i]);
    free(over);
}

void aa_pool_lane_flush(aa_pool_lane *l) { lane_flush(l, 0); }

void aa_pool_lane_close(aa_pool_lane *l) {
    if (l) lane_flush(l, 1);
}

static void *lane_ge_alloc(void *ctx, size_t size, void **addr) {
    aclError err = 0;
    void *ptr = aa_pool_lane_alloc(ctx, size, &err);
    if (!ptr) tls_error = err ? err : ACL_ERROR_RT_MEMORY_ALLOCATION;
    *addr = ptr;
    return ptr; /* the block handle is the address itself */
}

static void lane_ge_free(void *ctx, void *block) { aa_pool_lane_free(ctx, block); }

void aa_pool_lane_allocator(aa_pool_lane *l, aa_allocator *out) {
    out->ctx = l;
    out->alloc = lane_ge_alloc;
    out->free = lane_ge_free;
}

int64_t aa_pool_destroy(aa_pool *p) {
    aa_pool_trim(p);
    /* Lanes last: whatever they still cache goes back to the runtime with them. */
    for (aa_pool_lane *l = p->lanes, *next; l; l = next) {
        next = l->next;
        for (size_t i = 0; i < l->n_buckets; i++) {
            for (size_t j = 0; j < l->buckets[i].n; j++) raw_free(p, l->buckets[i].v[j]);
            free(l->buckets[i].v);
        }
        free(l->buckets);
        free(l);
    }
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
