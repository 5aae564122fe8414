/* Linear algebra kernels: MatMul (numpy semantics: 1-D promotion, broadcast batch dims) and
 * Gemm (transA/transB, alpha, beta, C broadcast to [M, N]). Both sit on one float32 GEMM,
 * blocked over K and N so a panel of B stays in cache, with a 4-row register micro-kernel the
 * compiler vectorises. fp16 tensors are widened by the program (SIM_F16_VIA_F32).
 */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define KB 128
#define NB 512

/* C[M,N] (row stride ldc) += A[M,K] (lda) * B[K,N] (ldb); C must be initialised. */
void sim_sgemm_acc(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                      int64_t ldb, float *C, int64_t ldc) {
    for (int64_t k0 = 0; k0 < K; k0 += KB) {
        int64_t kn = K - k0 < KB ? K - k0 : KB;
        for (int64_t j0 = 0; j0 < N; j0 += NB) {
            int64_t jn = N - j0 < NB ? N - j0 : NB;
            int64_t i = 0;
            for (; i + 4 <= M; i += 4) {
                float *restrict c0 = C + i * ldc + j0;
                float *restrict c1 = c0 + ldc;
                float *restrict c2 = c1 + ldc;
                float *restrict c3 = c2 + ldc;
                const float *a0 = A + i * lda + k0;
                for (int64_t k = 0; k < kn; k++) {
                    const float *restrict b = B + (k0 + k) * ldb + j0;
                    float x0 = a0[k], x1 = a0[lda + k], x2 = a0[2 * lda + k], x3 = a0[3 * lda + k];
                    for (int64_t j = 0; j < jn; j++) {
                        float bj = b[j];
                        c0[j] += x0 * bj;
                        c1[j] += x1 * bj;
                        c2[j] += x2 * bj;
                        c3[j] += x3 * bj;
                    }
                }
            }
            for (; i < M; i++) {
                float *restrict c0 = C + i * ldc + j0;
                const float *a0 = A + i * lda + k0;
                for (int64_t k = 0; k < kn; k++) {
                    const float *restrict b = B + (k0 + k) * ldb + j0;
                    float x0 = a0[k];
                    for (int64_t j = 0; j < jn; j++) c0[j] += x0 * b[j];
                }
            }
        }
    }
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
