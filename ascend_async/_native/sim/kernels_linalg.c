/* Linear algebra kernels: MatMul (numpy semantics: 1-D promotion, broadcast batch dims) and
 * Gemm (transA/transB, alpha, beta, C broadcast to [M, N]). Both sit on one float32 GEMM in the
 * Goto/BLIS style: B is packed into KC x 16 column panels, A into 6 x KC row panels, and a 6x16
 * register-blocked micro-kernel (k innermost over the packed panels) accumulates each tile.
 * The micro-kernel is plain C with GCC vector types; on x86-64 an AVX2+FMA build of it (256-bit
 * vectors) is picked at run time (__builtin_cpu_supports), otherwise a baseline build (128-bit
 * vectors, SSE2/NEON) runs, so the default build still runs on any x86-64/aarch64.
 * Large products are split in two halves run on a helper pthread (joined before returning; no
 * global state, so the kernel stays re-entrant across streams). fp16 tensors are widened by the
 * program (SIM_F16_VIA_F32).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define MR 6
#define NR 16
#define KC 256
#define MC 96   /* multiple of MR */
#define NC 2048 /* multiple of NR */
#define SMALL_WORK ((int64_t)1 << 17) /* M*N*K below which packing does not pay */
#define PAR_MIN_WORK ((int64_t)1 << 26) /* M*N*K above which two threads share the product */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Packs A[mc, kc] (row stride lda) into ceil(mc/MR) panels laid out [k][MR], zero-padded. */
static void pack_a(int64_t mc, int64_t kc, const float *A, int64_t lda, float *Ap) {
    for (int64_t i0 = 0; i0 < mc; i0 += MR) {
        int64_t mr = min64(MR, mc - i0);
        float *dst = Ap + i0 * kc;
        if (mr == MR) {
            const float *a0 = A + i0 * lda;
            for (int64_t k = 0; k < kc; k++)
                for (int r = 0; r < MR; r++) dst[k * MR + r] = a0[r * lda + k];
        } else {
            for (int64_t k = 0; k < kc; k++)
                for (int r = 0; r < MR; r++) dst[k * MR + r] = r < mr ? A[(i0 + r) * lda + k] : 0.0f;
        }
    }
}

/* Packs B[kc, nc] (row stride ldb) into ceil(nc/NR) panels laid out [k][NR], zero-padded. */
static void pack_b(int64_t kc, int64_t nc, const float *B, int64_t ldb, float *Bp) {
    for (int64_t j0 = 0; j0 < nc; j0 += NR) {
        int64_t nr = min64(NR, nc - j0);
        float *dst = Bp + j0 * kc;
        for (int64_t k = 0; k < kc; k++) {
            const float *b = B + k * ldb + j0;
            float *d = dst + k * NR;
            if (nr == NR) memcpy(d, b, sizeof(float) * NR);
            else {
                for (int64_t j = 0; j < nr; j++) d[j] = b[j];
                for (int64_t j = nr; j < NR; j++) d[j] = 0.0f;
            }
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
typedef float v8f __attribute__((vector_size(32)));

/* C[mc, nc] += packed A block * packed B block (256-bit vectors; inlined into the AVX2 build). */
static inline __attribute__((always_inline)) void macro_body(int64_t mc, int64_t nc, int64_t kc, const float *Ap,
                                                             const float *Bp, float *C, int64_t ldc) {
    for (int64_t jr = 0; jr < nc; jr += NR) {
        int64_t nr = min64(NR, nc - jr);
        const float *bp = Bp + jr * kc;
        for (int64_t ir = 0; ir < mc; ir += MR) {
            int64_t mr = min64(MR, mc - ir);
            const float *ap = Ap + ir * kc;
            v8f c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};
            v8f c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
            for (int64_t k = 0; k < kc; k++) {
                v8f b0, b1;
                memcpy(&b0, bp + k * NR, sizeof b0);
                memcpy(&b1, bp + k * NR + 8, sizeof b1);
                const float *a = ap + k * MR;
                v8f x;
                x = (v8f){0} + a[0], c00 += x * b0, c01 += x * b1;
                x = (v8f){0} + a[1], c10 += x * b0, c11 += x * b1;
                x = (v8f){0} + a[2], c20 += x * b0, c21 += x * b1;
                x = (v8f){0} + a[3], c30 += x * b0, c31 += x * b1;
                x = (v8f){0} + a[4], c40 += x * b0, c41 += x * b1;
                x = (v8f){0} + a[5], c50 += x * b0, c51 += x * b1;
            }
            float *cp = C + ir * ldc + jr;
            if (mr == MR && nr == NR) {
#define AA_ACC_ROW(r, x0, x1)                                                                      \
    do {                                                                                           \
        v8f t0, t1;                                                                                \
        memcpy(&t0, cp + (r) * ldc, sizeof t0);                                                    \
        memcpy(&t1, cp + (r) * ldc + 8, sizeof t1);                                                \
        t0 += x0, t1 += x1;                                                                        \
        memcpy(cp + (r) * ldc, &t0, sizeof t0);                                                    \
        memcpy(cp + (r) * ldc + 8, &t1, sizeof t1);                                                \
    } while (0)
                AA_ACC_ROW(0, c00, c01);
                AA_ACC_ROW(1, c10, c11);
                AA_ACC_ROW(2, c20, c21);
                AA_ACC_ROW(3, c30, c31);
                AA_ACC_ROW(4, c40, c41);
                AA_ACC_ROW(5, c50, c51);
#undef AA_ACC_ROW
            } else {
                float t[MR][NR];
                memcpy(t[0], &c00, 32), memcpy(t[0] + 8, &c01, 32);
                memcpy(t[1], &c10, 32), memcpy(t[1] + 8, &c11, 32);
                memcpy(t[2], &c20, 32), memcpy(t[2] + 8, &c21, 32);
                memcpy(t[3], &c30, 32), memcpy(t[3] + 8, &c31, 32);
                memcpy(t[4], &c40, 32), memcpy(t[4] + 8, &c41, 32);
                memcpy(t[5], &c50, 32), memcpy(t[5] + 8, &c51, 32);
                for (int64_t r = 0; r < mr; r++)
                    for (int64_t j = 0; j < nr; j++) cp[r * ldc + j] += t[r][j];
            }
        }
    }
}

#endif

typedef void (*macro_fn)(int64_t, int64_t, int64_t, const float *, const float *, float *, int64_t);

typedef float v4f __attribute__((vector_size(16)));

/* Baseline build (SSE2 on x86-64, NEON on aarch64): the same packed panels, but each 6x16 tile is
 * done as two 6x8 halves of 128-bit vectors so the 12 accumulators fit in 16 registers. */
static void macro_default(int64_t mc, int64_t nc, int64_t kc, const float *Ap, const float *Bp, float *C,
                          int64_t ldc) {
    for (int64_t jr = 0; jr < nc; jr += NR) {
        int64_t nr = min64(NR, nc - jr);
        for (int64_t ir = 0; ir < mc; ir += MR) {
            int64_t mr = min64(MR, mc - ir);
            const float *ap = Ap + ir * kc;
            for (int64_t h = 0; h < NR && h < nr; h += 8) {
                const float *bp = Bp + jr * kc + h;
                v4f c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};
                v4f c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
                for (int64_t k = 0; k < kc; k++) {
                    v4f b0, b1;
                    memcpy(&b0, bp + k * NR, sizeof b0);
                    memcpy(&b1, bp + k * NR + 4, sizeof b1);
                    const float *a = ap + k * MR;
                    v4f x;
                    x = (v4f){0} + a[0], c00 += x * b0, c01 += x * b1;
                    x = (v4f){0} + a[1], c10 += x * b0, c11 += x * b1;
                    x = (v4f){0} + a[2], c20 += x * b0, c21 += x * b1;
                    x = (v4f){0} + a[3], c30 += x * b0, c31 += x * b1;
                    x = (v4f){0} + a[4], c40 += x * b0, c41 += x * b1;
                    x = (v4f){0} + a[5], c50 += x * b0, c51 += x * b1;
                }
                float t[MR][8];
                memcpy(t[0], &c00, 16), memcpy(t[0] + 4, &c01, 16);
                memcpy(t[1], &c10, 16), memcpy(t[1] + 4, &c11, 16);
                memcpy(t[2], &c20, 16), memcpy(t[2] + 4, &c21, 16);
                memcpy(t[3], &c30, 16), memcpy(t[3] + 4, &c31, 16);
                memcpy(t[4], &c40, 16), memcpy(t[4] + 4, &c41, 16);
                memcpy(t[5], &c50, 16), memcpy(t[5] + 4, &c51, 16);
                int64_t w = min64(8, nr - h);
                float *cp = C + ir * ldc + jr + h;
                for (int64_t r = 0; r < mr; r++)
                    for (int64_t j = 0; j < w; j++) cp[r * ldc + j] += t[r][j];
            }
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) static void macro_avx2(int64_t mc, int64_t nc, int64_t kc, const float *Ap,
                                                           const float *Bp, float *C, int64_t ldc) {
    macro_body(mc, nc, kc, Ap, Bp, C, ldc);
}
#endif

static macro_fn pick_macro(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return macro_avx2;
#endif
    return macro_default;
}

/* Single-threaded packed GEMM; -1 when the packing buffers cannot be allocated. */
static int sgemm_serial(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                        float *C, int64_t ldc) {
    if (M <= 0 || N <= 0 || K <= 0) return 0;
    macro_fn macro = pick_macro();
    int64_t kcmax = min64(K, KC);
    int64_t ncmax = (min64(N, NC) + NR - 1) / NR * NR;
    int64_t mcmax = (min64(M, MC) + MR - 1) / MR * MR;
    size_t bbytes = (size_t)(kcmax * ncmax) * sizeof(float), abytes = (size_t)(kcmax * mcmax) * sizeof(float);
    bbytes = (bbytes + 63) / 64 * 64;
    abytes = (abytes + 63) / 64 * 64;
    float *Bp = aligned_alloc(64, bbytes + abytes);
    if (!Bp) return -1;
    float *Ap = Bp + bbytes / sizeof(float);
    for (int64_t jc = 0; jc < N; jc += NC) {
        int64_t nc = min64(NC, N - jc);
        for (int64_t pc = 0; pc < K; pc += KC) {
            int64_t kc = min64(KC, K - pc);
            pack_b(kc, nc, B + pc * ldb + jc, ldb, Bp);
            for (int64_t ic = 0; ic < M; ic += MC) {
                int64_t mc = min64(MC, M - ic);
                pack_a(mc, kc, A + ic * lda + pc, lda, Ap);
                macro(mc, nc, kc, Ap, Bp, C + ic * ldc + jc, ldc);
            }
        }
    }
    free(Bp);
    return 0;
}

/* Unpacked 4-row kernel for small products (no buffers, so it is also the fallback when the
 * packing buffers cannot be allocated): C[M,N] += A*B, j innermost for the vectoriser. */
static inline __attribute__((always_inline)) void direct_body(int64_t M, int64_t N, int64_t K, const float *A,
                                                              int64_t lda, const float *B, int64_t ldb, float *C,
                                                              int64_t ldc) {
    int64_t i = 0;
    for (; i + 4 <= M; i += 4) {
        float *restrict c0 = C + i * ldc;
        float *restrict c1 = c0 + ldc;
        float *restrict c2 = c1 + ldc;
        float *restrict c3 = c2 + ldc;
        const float *a0 = A + i * lda;
        for (int64_t k = 0; k < K; k++) {
            const float *restrict b = B + k * ldb;
            float x0 = a0[k], x1 = a0[lda + k], x2 = a0[2 * lda + k], x3 = a0[3 * lda + k];
            for (int64_t j = 0; j < N; j++) {
                float bj = b[j];
                c0[j] += x0 * bj;
                c1[j] += x1 * bj;
                c2[j] += x2 * bj;
                c3[j] += x3 * bj;
            }
        }
    }
    for (; i < M; i++) {
        float *restrict c0 = C + i * ldc;
        const float *a0 = A + i * lda;
        for (int64_t k = 0; k < K; k++) {
            const float *restrict b = B + k * ldb;
            float x0 = a0[k];
            for (int64_t j = 0; j < N; j++) c0[j] += x0 * b[j];
        }
    }
}

static void direct_default(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                           float *C, int64_t ldc) {
    direct_body(M, N, K, A, lda, B, ldb, C, ldc);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) static void direct_avx2(int64_t M, int64_t N, int64_t K, const float *A,
                                                            int64_t lda, const float *B, int64_t ldb, float *C,
                                                            int64_t ldc) {
    direct_body(M, N, K, A, lda, B, ldb, C, ldc);
}
#endif

static void sgemm_direct(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                         float *C, int64_t ldc) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        direct_avx2(M, N, K, A, lda, B, ldb, C, ldc);
        return;
    }
#endif
    direct_default(M, N, K, A, lda, B, ldb, C, ldc);
}

typedef struct gemm_job {
    int64_t M, N, K, lda, ldb, ldc;
    const float *A, *B;
    float *C;
} gemm_job;

static void gemm_job_run(const gemm_job *j) {
    if (j->M * j->N * j->K < SMALL_WORK || sgemm_serial(j->M, j->N, j->K, j->A, j->lda, j->B, j->ldb, j->C, j->ldc))
        sgemm_direct(j->M, j->N, j->K, j->A, j->lda, j->B, j->ldb, j->C, j->ldc);
}

static void *gemm_job_thread(void *arg) {
    gemm_job_run(arg);
    return NULL;
}

/* C[M,N] (row stride ldc) += A[M,K] (lda) * B[K,N] (ldb); C must be initialised. */
void sim_sgemm_acc(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                      int64_t ldb, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    gemm_job jobs[2] = {{M, N, K, lda, ldb, ldc, A, B, C}, {M, N, K, lda, ldb, ldc, A, B, C}};
    int split = 0;
    if (M * N * K >= PAR_MIN_WORK) {
        if (N >= M && N >= 2 * NR) {
            int64_t n0 = (N / 2 + NR - 1) / NR * NR;
            jobs[0].N = n0;
            jobs[1].N = N - n0;
            jobs[1].B = B + n0;
            jobs[1].C = C + n0;
            split = 1;
        } else if (M >= 2 * MR) {
            int64_t m0 = (M / 2 + MR - 1) / MR * MR;
            jobs[0].M = m0;
            jobs[1].M = M - m0;
            jobs[1].A = A + m0 * lda;
            jobs[1].C = C + m0 * ldc;
            split = 1;
        }
    }
    pthread_t th;
    if (split && pthread_create(&th, NULL, gemm_job_thread, &jobs[1]) == 0) {
        gemm_job_run(&jobs[0]);
        pthread_join(th, NULL);
        return;
    }
    if (split) { /* no helper thread: run both halves here */
        gemm_job_run(&jobs[0]);
        gemm_job_run(&jobs[1]);
        return;
    }
    gemm_job_run(&jobs[0]);
}

/* ------------------------------------------------------------------ MatMul */

static int float_check(sim_check *c) {
    for (uint32_t i = 0; i < c->node->n_in; i++) {
        if (c->node->in[i] < 0) continue;
        if (!SIM_IS_FLOAT(c->in_dtype[i])) return sim_check_fail(c, "dtype %s is not supported", sim_dtype_name(c->in_dtype[i]));
        if (c->in_dtype[i] != c->in_dtype[0]) return sim_check_fail(c, "input dtypes differ");
    }
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

typedef struct mm_plan {
    int64_t M, N, K;
    int a1, b1; /* 1-D operands */
    int nb;     /* batch rank */
    int64_t bdims[SIM_MAX_DIMS], sa[SIM_MAX_DIMS], sb[SIM_MAX_DIMS];
} mm_plan;

static int mm_plan_make(sim_tensor *const *in, mm_plan *p, sim_tensor *out, char *err, size_t len) {
    const sim_tensor *a = in[0], *b = in[1];
    if (a->ndim < 1 || b->ndim < 1) return sim_fail(err, len, "MatMul inputs must have rank >= 1");
    p->a1 = a->ndim == 1;
    p->b1 = b->ndim == 1;
    p->M = p->a1 ? 1 : a->dims[a->ndim - 2];
    p->K = a->dims[a->ndim - 1];
    int64_t kb = p->b1 ? b->dims[0] : b->dims[b->ndim - 2];
    p->N = p->b1 ? 1 : b->dims[b->ndim - 1];
    if (kb != p->K) return sim_fail(err, len, "inner dims differ (%lld vs %lld)", (long long)p->K, (long long)kb);
    int na = p->a1 ? 0 : a->ndim - 2, nbb = p->b1 ? 0 : b->ndim - 2;
    int nb = na > nbb ? na : nbb;
    p->nb = nb;
    int64_t astr = p->M * p->K, bstr = p->K * p->N;
    for (int d = nb - 1; d >= 0; d--) {
        int da = d - (nb - na), db = d - (nb - nbb);
        int64_t x = da >= 0 ? a->dims[da] : 1, y = db >= 0 ? b->dims[db] : 1;
        if (x != y && x != 1 && y != 1) return sim_fail(err, len, "batch dims cannot broadcast");
        p->bdims[d] = x == 1 ? y : x;
        p->sa[d] = x == 1 ? 0 : astr;
        p->sb[d] = y == 1 ? 0 : bstr;
        if (da >= 0) astr *= x;
        if (db >= 0) bstr *= y;
    }
    if (out) {
        int k = 0;
        for (int d = 0; d < nb; d++) out->dims[k++] = p->bdims[d];
        if (!p->a1) out->dims[k++] = p->M;
        if (!p->b1) out->dims[k++] = p->N;
        out->ndim = k;
    }
    return 0;
}

static int matmul_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)n;
    mm_plan p;
    return mm_plan_make(in, &p, out[0], err, len);
}

static int matmul_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)n;
    mm_plan p;
    if (mm_plan_make(in, &p, NULL, err, len)) return -1;
    float *o = out[0]->data;
    memset(o, 0, sizeof(float) * (size_t)out[0]->numel);
    int64_t batches = sim_numel(p.bdims, p.nb);
    int64_t idx[SIM_MAX_DIMS] = {0};
    const float *A = in[0]->data, *B = in[1]->data;
    for (int64_t bi = 0; bi < batches; bi++) {
        int64_t oa = 0, ob = 0;
        for (int d = 0; d < p.nb; d++) {
            oa += idx[d] * p.sa[d];
            ob += idx[d] * p.sb[d];
        }
        sim_sgemm_acc(p.M, p.N, p.K, A + oa, p.K, B + ob, p.N, o + bi * p.M * p.N, p.N);
        for (int d = p.nb - 1; d >= 0; d--) {
            if (++idx[d] < p.bdims[d]) break;
            idx[d] = 0;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ Gemm */

typedef struct gemm_params {
    int ta, tb;
    float alpha, beta;
} gemm_params;

static int gemm_check(sim_check *c) {
    gemm_params *g = sim_params(c, sizeof *g);
    if (!g) return sim_check_fail(c, "out of memory");
    int64_t ta = sim_attr_int(c->node, "transA", 0), tb = sim_attr_int(c->node, "transB", 0);
    if ((ta != 0 && ta != 1) || (tb != 0 && tb != 1)) return sim_check_fail(c, "transA/transB must be 0 or 1");
    g->ta = (int)ta;
    g->tb = (int)tb;
    g->alpha = (float)sim_attr_float(c->node, "alpha", 1.0);
    g->beta = (float)sim_attr_float(c->node, "beta", 1.0);
    return float_check(c);
}

static int gemm_dims(const sim_node *n, sim_tensor *const *in, int64_t *M, int64_t *N, int64_t *K, char *err, size_t len) {
    const gemm_params *g = n->params;
    if (in[0]->ndim != 2 || in[1]->ndim != 2) return sim_fail(err, len, "A and B must be 2-D");
    *M = g->ta ? in[0]->dims[1] : in[0]->dims[0];
    *K = g->ta ? in[0]->dims[0] : in[0]->dims[1];
    int64_t kb = g->tb ? in[1]->dims[1] : in[1]->dims[0];
    *N = g->tb ? in[1]->dims[0] : in[1]->dims[1];
    if (kb != *K) return sim_fail(err, len, "inner dims differ (%lld vs %lld)", (long long)*K, (long long)kb);
    if (n->n_in > 2 && in[2]) {
        const sim_tensor *c = in[2];
        if (c->ndim > 2) return sim_fail(err, len, "C has rank > 2");
        int64_t cm = c->ndim == 2 ? c->dims[0] : 1, cn = c->ndim >= 1 ? c->dims[c->ndim - 1] : 1;
        if ((cm != 1 && cm != *M) || (cn != 1 && cn != *N)) return sim_fail(err, len, "C cannot broadcast to [M, N]");
    }
    return 0;
}

static int gemm_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    int64_t M = 0, N = 0, K = 0;
    if (gemm_dims(n, in, &M, &N, &K, err, len)) return -1;
    out[0]->ndim = 2;
    out[0]->dims[0] = M;
    out[0]->dims[1] = N;
    return 0;
}

static float *transposed(const float *x, int64_t rows, int64_t cols) {
    float *t = malloc(sizeof(float) * (size_t)(rows * cols > 0 ? rows * cols : 1));
    if (!t) return NULL;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) t[j * rows + i] = x[i * cols + j];
    return t;
}

static int gemm_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    const gemm_params *g = n->params;
    int64_t M = 0, N = 0, K = 0;
    if (gemm_dims(n, in, &M, &N, &K, err, len)) return -1;
    const float *A = in[0]->data, *B = in[1]->data;
    float *ta = NULL, *tb = NULL;
    if (g->ta) A = ta = transposed(A, K, M);
    if (g->tb) B = tb = transposed(B, N, K);
    float *acc = malloc(sizeof(float) * (size_t)(M * N > 0 ? M * N : 1));
    if ((g->ta && !ta) || (g->tb && !tb) || !acc) {
        free(ta), free(tb), free(acc);
        return sim_fail(err, len, "out of memory");
    }
    memset(acc, 0, sizeof(float) * (size_t)(M * N));
    sim_sgemm_acc(M, N, K, A, K, B, N, acc, N);
    float *o = out[0]->data;
    const sim_tensor *c = n->n_in > 2 ? in[2] : NULL;
    const float *C = c ? c->data : NULL;
    int64_t cm = c && c->ndim == 2 ? c->dims[0] : 1, cn = c && c->ndim >= 1 ? c->dims[c->ndim - 1] : 1;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            float v = g->alpha * acc[i * N + j];
            if (C) v += g->beta * C[(cm == 1 ? 0 : i) * cn + (cn == 1 ? 0 : j)];
            o[i * N + j] = v;
        }
    free(ta), free(tb), free(acc);
    return 0;
}

static const char *const no_attrs[] = {NULL};
static const char *const gemm_attrs[] = {"transA", "transB", "alpha", "beta", NULL};

const sim_op sim_ops_linalg[] = {
    {"MatMul", 2, 2, 1, 1, no_attrs, float_check, matmul_shape, matmul_exec, SIM_F16_VIA_F32, 0},
    {"Gemm", 2, 3, 1, 1, gemm_attrs, gemm_check, gemm_shape, gemm_exec, SIM_F16_VIA_F32, 0},
    {NULL, 0, 0, 0, 0, NULL, NULL, NULL, NULL, 0, 0},
};
