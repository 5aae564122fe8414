/* Elementwise kernels: ONNX multidirectional broadcasting, the arithmetic (Add, Sub, Mul, Div,
 * Pow), unary math (Sqrt, Neg, Abs, Relu, LeakyRelu, Sigmoid, Tanh, Exp, Log, Erf, Gelu),
 * comparisons (Equal, Less, Greater, LessOrEqual, GreaterOrEqual), Where, Cast and Identity.
 * Float16 tensors are widened to float32 by the program around these kernels (SIM_F16_VIA_F32)
 * except for Identity/Where/Cast, which handle every dtype themselves (Cast also converts
 * from and to float64).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* ------------------------------------------------------------------ broadcasting */

int sim_bcast_shape(sim_tensor *const *in, int k, sim_tensor *out, char *err, size_t len) {
    int nd = 0;
    for (int i = 0; i < k; i++)
        if (in[i]->ndim > nd) nd = in[i]->ndim;
    for (int d = 0; d < nd; d++) {
        int64_t dim = 1;
        for (int i = 0; i < k; i++) {
            int off = nd - in[i]->ndim;
            if (d < off) continue;
            int64_t di = in[i]->dims[d - off];
            if (di == 1) continue;
            if (dim != 1 && dim != di)
                return sim_fail(err, len, "shapes cannot broadcast (dim %d: %lld vs %lld)", d, (long long)dim, (long long)di);
            dim = di;
        }
        /* a zero-size dim against 1 gives 0 */
        for (int i = 0; i < k; i++) {
            int off = nd - in[i]->ndim;
            if (d >= off && in[i]->dims[d - off] == 0) dim = 0;
        }
        out->dims[d] = dim;
    }
    out->ndim = nd;
    sim_set_numel(out);
    return 0;
}



/* Calls fn once per contiguous row of the broadcast iteration space. ptrs[0] is the output,
 * ptrs[1..k] the inputs; strides are in elements (0 where broadcast). */
void sim_bcast_run(const sim_tensor *out, sim_tensor *const *in, int k, const size_t *esize,
                   sim_row_fn fn, void *ctx) {
    int nd = out->ndim;
    if (out->numel == 0) return;
    int64_t dims[SIM_MAX_DIMS], st[4][SIM_MAX_DIMS];
    int m = 0;
    for (int d = 0; d < nd; d++) {
        if (out->dims[d] == 1) continue;
        dims[m] = out->dims[d];
        for (int i = 0; i < k; i++) {
            int off = nd - in[i]->ndim;
            int64_t s = 0;
            if (d >= off && in[i]->dims[d - off] != 1) {
                s = 1;
                for (int e = d - off + 1; e < in[i]->ndim; e++) s *= in[i]->dims[e];
            }
            st[i + 1][m] = s;
        }
        int64_t so = 1;
        for (int e = d + 1; e < nd; e++) so *= out->dims[e];
        st[0][m] = so;
        m++;
    }
    /* merge adjacent dims with compatible strides */
    int q = 0;
    for (int d = 0; d < m; d++) {
        if (q > 0) {
            int ok = 1;
            for (int i = 0; i <= k; i++)
                if (st[i][q - 1] != st[i][d] * dims[d]) ok = 0;
            if (ok) {
                dims[q - 1] *= dims[d];
                for (int i = 0; i <= k; i++) st[i][q - 1] = st[i][d];
                continue;
            }
        }
        dims[q] = dims[d];
        for (int i = 0; i <= k; i++) st[i][q] = st[i][d];
        q++;
    }
    if (q == 0) {
        dims[0] = 1;
        for (int i = 0; i <= k; i++) st[i][0] = 0;
        q = 1;
    }
    char *base[4];
    base[0] = out->data;
    for (int i = 0; i < k; i++) base[i + 1] = in[i]->data;
    int64_t inner = dims[q - 1];
    int64_t istr[4];
    for (int i = 0; i <= k; i++) istr[i] = st[i][q - 1];
    int64_t idx[SIM_MAX_DIMS] = {0};
    int64_t rows = 1;
    for (int d = 0; d < q - 1; d++) rows *= dims[d];
    char *ptrs[4];
    for (int64_t r = 0; r < rows; r++) {
        for (int i = 0; i <= k; i++) {
            int64_t off = 0;
            for (int d = 0; d < q - 1; d++) off += idx[d] * st[i][d];
            ptrs[i] = base[i] + off * (int64_t)esize[i];
        }
        fn(ctx, ptrs, istr, inner);
        for (int d = q - 2; d >= 0; d--) {
            if (++idx[d] < dims[d]) break;
            idx[d] = 0;
        }
    }
}

/* ------------------------------------------------------------------ binary arithmetic */

enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_POW, OP_EQ, OP_LT, OP_GT, OP_LE, OP_GE };

typedef struct bin_params {
    int op;
} bin_params;

#define BIN_ROW(NAME, TA, TO, EXPR)                                                        \
    static void NAME(void *ctx, char **p, const int64_t *s, int64_t n) {                  \
        (void)ctx;                                                                         \
        TO *restrict o = (TO *)p[0];                                                       \
        const TA *restrict a = (const TA *)p[1];                                           \
        const TA *restrict b = (const TA *)p[2];                                           \
        if (s[1] == 1 && s[2] == 1) {                                                      \
            for (int64_t i = 0; i < n; i++) { TA x = a[i], y = b[i]; o[i] = (EXPR); }      \
        } else if (s[1] == 0 && s[2] == 1) {                                               \
            TA x = a[0];                                                                   \
            for (int64_t i = 0; i < n; i++) { TA y = b[i]; o[i] = (EXPR); }                \
        } else if (s[1] == 1 && s[2] == 0) {                                               \
            TA y = b[0];                                                                   \
            for (int64_t i = 0; i < n; i++) { TA x = a[i]; o[i] = (EXPR); }                \
        } else {                                                                           \
            for (int64_t i = 0; i < n; i++) { TA x = a[i * s[1]], y = b[i * s[2]]; o[i] = (EXPR); } \
        }                                                                                  \
    }

#define BIN_ARITH(T, SFX)                                  \
    BIN_ROW(add_##SFX, T, T, x + y)                        \
    BIN_ROW(sub_##SFX, T, T, x - y)                        \
    BIN_ROW(mul_##SFX, T, T, x * y)                        \
    BIN_ROW(eq_##SFX, T, uint8_t, x == y)                  \
    BIN_ROW(lt_##SFX, T, uint8_t, x < y)                   \
    BIN_ROW(gt_##SFX, T, uint8_t, x > y)                   \
    BIN_ROW(le_##SFX, T, uint8_t, x <= y)                  \
    BIN_ROW(ge_##SFX, T, uint8_t, x >= y)

BIN_ARITH(float, f32)
BIN_ARITH(int32_t, i32)
BIN_ARITH(int64_t, i64)
BIN_ARITH(int8_t, i8)
BIN_ARITH(int16_t, i16)
BIN_ARITH(uint8_t, u8)
BIN_ARITH(uint16_t, u16)
BIN_ARITH(uint32_t, u32)
BIN_ARITH(uint64_t, u64)
BIN_ROW(eq_b, uint8_t, uint8_t, (x != 0) == (y != 0))
BIN_ROW(div_f32, float, float, x / y)
/* integer division truncates toward zero like numpy's astype of the true quotient; a zero
 * divisor gives 0 and INT_MIN / -1 wraps, rather than trapping */
BIN_ROW(div_i32, int32_t, int32_t, y == 0 ? 0 : (y == -1 ? (int32_t)(0u - (uint32_t)x) : x / y))
BIN_ROW(div_i64, int64_t, int64_t, y == 0 ? 0 : (y == -1 ? (int64_t)(0ull - (uint64_t)x) : x / y))
BIN_ROW(div_i8, int8_t, int8_t, y == 0 ? 0 : (int8_t)(x / y))
BIN_ROW(div_i16, int16_t, int16_t, y == 0 ? 0 : (int16_t)(x / y))
BIN_ROW(div_u8, uint8_t, uint8_t, y == 0 ? 0 : x / y)
BIN_ROW(div_u16, uint16_t, uint16_t, y == 0 ? 0 : x / y)
BIN_ROW(div_u32, uint32_t, uint32_t, y == 0 ? 0 : x / y)
BIN_ROW(div_u64, uint64_t, uint64_t, y == 0 ? 0 : x / y)

/* Pow: arbitrary (base, exponent) dtypes through double. */
typedef struct pow_ctx {
    int32_t ta, tb, to;
} pow_ctx;

static double load_d(const char *p, int32_t dt, int64_t i) {
    switch (dt) {
    case AA_DT_FLOAT: return ((const float *)p)[i];
    case AA_DT_INT32: return ((const int32_t *)p)[i];
    case AA_DT_INT64: return (double)((const int64_t *)p)[i];
    default: return 0;
    }
}

static void pow_row(void *ctx, char **p, const int64_t *s, int64_t n) {
    const pow_ctx *c = ctx;
    if (c->ta == AA_DT_FLOAT && c->tb == AA_DT_FLOAT) {
        float *o = (float *)p[0];
        const float *a = (const float *)p[1], *b = (const float *)p[2];
        for (int64_t i = 0; i < n; i++) o[i] = powf(a[i * s[1]], b[i * s[2]]);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        double r = pow(load_d(p[1], c->ta, i * s[1]), load_d(p[2], c->tb, i * s[2]));
        switch (c->to) {
        case AA_DT_FLOAT: ((float *)p[0])[i] = (float)r; break;
        case AA_DT_INT32: ((int32_t *)p[0])[i] = (int32_t)r; break;
        case AA_DT_INT64: ((int64_t *)p[0])[i] = (int64_t)r; break;
        }
    }
}

static const int32_t num_types[] = {AA_DT_FLOAT, AA_DT_FLOAT16, AA_DT_INT32, AA_DT_INT64, -1};
static const int32_t all_types[] = {AA_DT_FLOAT, AA_DT_FLOAT16, AA_DT_INT32, AA_DT_INT64, AA_DT_BOOL, -1};
/* Add/Sub/Mul/Div and the comparisons also take the narrow and unsigned integers */
static const int32_t bin_types[] = {AA_DT_FLOAT, AA_DT_FLOAT16, AA_DT_INT32, AA_DT_INT64, AA_DT_INT8, AA_DT_INT16,
                                    AA_DT_UINT8, AA_DT_UINT16, AA_DT_UINT32, AA_DT_UINT64, -1};
static const int32_t eq_types[] = {AA_DT_FLOAT, AA_DT_FLOAT16, AA_DT_INT32, AA_DT_INT64, AA_DT_INT8, AA_DT_INT16,
                                   AA_DT_UINT8, AA_DT_UINT16, AA_DT_UINT32, AA_DT_UINT64, AA_DT_BOOL, -1};

static int op_code(const char *name) {
    static const char *names[] = {"Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"};
    for (int i = 0; i < 10; i++)
        if (strcmp(names[i], name) == 0) return i;
    return -1;
}

static int bin_check(sim_check *c) {
    bin_params *bp = sim_params(c, sizeof *bp);
    if (!bp) return sim_check_fail(c, "out of memory");
    bp->op = op_code(c->node->op_type);
    int32_t a = c->in_dtype[0], b = c->in_dtype[1];
    if (bp->op == OP_POW) {
        if (!sim_dtype_in(a, num_types) || !sim_dtype_in(b, num_types))
            return sim_check_fail(c, "dtypes %s ** %s are not supported", sim_dtype_name(a), sim_dtype_name(b));
        c->out_dtype[0] = a;
        return 0;
    }
    if (a != b) return sim_check_fail(c, "input dtypes differ (%s, %s)", sim_dtype_name(a), sim_dtype_name(b));
    const int32_t *allowed = bp->op == OP_EQ ? eq_types : bin_types;
    if (!sim_dtype_in(a, allowed)) return sim_check_fail(c, "dtype %s is not supported", sim_dtype_name(a));
    c->out_dtype[0] = bp->op >= OP_EQ ? AA_DT_BOOL : a;
    return 0;
}

static int bin_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)n;
    return sim_bcast_shape(in, 2, out[0], err, len);
}

static sim_row_fn bin_fn(int op, int32_t dt) {
#define BIN_TABLE(SFX) {add_##SFX, sub_##SFX, mul_##SFX, div_##SFX, NULL, eq_##SFX, lt_##SFX, gt_##SFX, le_##SFX, ge_##SFX}
    static const sim_row_fn f32[] = BIN_TABLE(f32), i32[] = BIN_TABLE(i32), i64[] = BIN_TABLE(i64);
    static const sim_row_fn i8[] = BIN_TABLE(i8), i16[] = BIN_TABLE(i16), u8[] = BIN_TABLE(u8);
    static const sim_row_fn u16[] = BIN_TABLE(u16), u32[] = BIN_TABLE(u32), u64[] = BIN_TABLE(u64);
#undef BIN_TABLE
    switch (dt) {
    case AA_DT_FLOAT: return f32[op];
    case AA_DT_INT32: return i32[op];
    case AA_DT_INT64: return i64[op];
    case AA_DT_INT8: return i8[op];
    case AA_DT_INT16: return i16[op];
    case AA_DT_UINT8: return u8[op];
    case AA_DT_UINT16: return u16[op];
    case AA_DT_UINT32: return u32[op];
    case AA_DT_UINT64: return u64[op];
    case AA_DT_BOOL: return op == OP_EQ ? eq_b : NULL;
    default: return NULL;
    }
}

static int bin_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    const bin_params *bp = n->params;
    size_t es[3] = {sim_dtype_size(out[0]->dtype), sim_dtype_size(in[0]->dtype), sim_dtype_size(in[1]->dtype)};
    if (bp->op == OP_POW) {
        pow_ctx pc = {in[0]->dtype, in[1]->dtype, out[0]->dtype};
        sim_bcast_run(out[0], in, 2, es, pow_row, &pc);
        return 0;
    }
    sim_row_fn fn = bin_fn(bp->op, in[0]->dtype);
    if (!fn) return sim_fail(err, len, "no kernel for dtype %s", sim_dtype_name(in[0]->dtype));
    sim_bcast_run(out[0], in, 2, es, fn, NULL);
    return 0;
}

/* ------------------------------------------------------------------ unary */

enum { U_SQRT, U_NEG, U_ABS, U_RELU, U_LEAKY, U_SIGMOID, U_TANH, U_EXP, U_LOG, U_ERF, U_GELU, U_GELU_TANH };

typedef struct un_params {
    int op;
    float alpha;
} un_params;

static int un_check(sim_check *c) {
    static const char *names[] = {"Sqrt", "Neg", "Abs", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Exp", "Log", "Erf", "Gelu"};
    un_params *up = sim_params(c, sizeof *up);
    if (!up) return sim_check_fail(c, "out of memory");
    up->op = -1;
    for (int i = 0; i < 11; i++)
        if (strcmp(names[i], c->node->op_type) == 0) up->op = i;
    up->alpha = (float)sim_attr_float(c->node, "alpha", 0.01);
    if (up->op == U_GELU) {
        const char *ap = sim_attr_str(c->node, "approximate", "none");
        if (strcmp(ap, "tanh") == 0) up->op = U_GELU_TANH;
        else if (strcmp(ap, "none") != 0) return sim_check_fail(c, "approximate='%s' is not supported", ap);
    }
    int32_t dt = c->in_dtype[0];
    int int_ok = up->op == U_NEG || up->op == U_ABS || up->op == U_RELU;
    if (!(SIM_IS_FLOAT(dt) || (int_ok && SIM_IS_INT(dt))))
        return sim_check_fail(c, "dtype %s is not supported", sim_dtype_name(dt));
    c->out_dtype[0] = dt;
    return 0;
}

static int same_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)n, (void)err, (void)len;
    out[0]->ndim = in[0]->ndim;
    memcpy(out[0]->dims, in[0]->dims, sizeof(int64_t) * (size_t)in[0]->ndim);
    return 0;
}

#define UN_INT(T)                                                            \
    static void un_##T(int op, const T *x, T *y, int64_t n) {               \
        for (int64_t i = 0; i < n; i++) {                                    \
            T v = x[i];                                                      \
            y[i] = op == U_NEG ? (T)(0 - v) : op == U_ABS ? (v < 0 ? (T)(0 - v) : v) : (v < 0 ? 0 : v); \
        }                                                                    \
    }
UN_INT(int32_t)
UN_INT(int64_t)

static int un_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)err, (void)len;
    const un_params *up = n->params;
    int64_t cnt = in[0]->numel;
    if (in[0]->dtype == AA_DT_INT32) {
        un_int32_t(up->op, in[0]->data, out[0]->data, cnt);
        return 0;
    }
    if (in[0]->dtype == AA_DT_INT64) {
        un_int64_t(up->op, in[0]->data, out[0]->data, cnt);
        return 0;
    }
    const float *restrict x = in[0]->data;
    float *restrict y = out[0]->data;
    switch (up->op) {
    case U_SQRT: for (int64_t i = 0; i < cnt; i++) y[i] = sqrtf(x[i]); break;
    case U_NEG: for (int64_t i = 0; i < cnt; i++) y[i] = -x[i]; break;
    case U_ABS: for (int64_t i = 0; i < cnt; i++) y[i] = fabsf(x[i]); break;
    case U_RELU: for (int64_t i = 0; i < cnt; i++) y[i] = x[i] > 0 ? x[i] : 0.0f; break;
    case U_LEAKY: {
        float a = up->alpha;
        for (int64_t i = 0; i < cnt; i++) y[i] = x[i] >= 0 ? x[i] : a * x[i];
        break;
    }
    case U_SIGMOID:
        for (int64_t i = 0; i < cnt; i++) {
            float v = x[i];
            y[i] = v >= 0 ? 1.0f / (1.0f + expf(-v)) : expf(v) / (1.0f + expf(v));
        }
        break;
    case U_TANH: for (int64_t i = 0; i < cnt; i++) y[i] = tanhf(x[i]); break;
    case U_EXP: for (int64_t i = 0; i < cnt; i++) y[i] = expf(x[i]); break;
    case U_LOG: for (int64_t i = 0; i < cnt; i++) y[i] = logf(x[i]); break;
    case U_ERF: for (int64_t i = 0; i < cnt; i++) y[i] = erff(x[i]); break;
    case U_GELU:
        for (int64_t i = 0; i < cnt; i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
        break;
    case U_GELU_TANH:
        for (int64_t i = 0; i < cnt; i++) {
            float v = x[i];
            y[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
        }
        break;
    }
    return 0;
}

/* ------------------------------------------------------------------ Identity, Where, Cast */

static int identity_check(sim_check *c) {
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

static int identity_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)n, (void)err, (void)len;
    size_t bytes = (size_t)in[0]->numel * sim_dtype_size(in[0]->dtype);
    if (bytes) memcpy(out[0]->data, in[0]->data, bytes);
    return 0;
}

static int where_check(sim_check *c) {
    if (c->in_dtype[0] != AA_DT_BOOL) return sim_check_fail(c, "condition must be bool, got %s", sim_dtype_name(c->in_dtype[0]));
    if (c->in_dtype[1] != c->in_dtype[2]) return sim_check_fail(c, "X and Y dtypes differ");
    if (!sim_dtype_in(c->in_dtype[1], all_types)) return sim_check_fail(c, "dtype %s is not supported", sim_dtype_name(c->in_dtype[1]));
    c->out_dtype[0] = c->in_dtype[1];
    return 0;
}

static int where_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)n;
    return sim_bcast_shape(in, 3, out[0], err, len);
}

#define WHERE_ROW(T)                                                              \
    static void where_##T(void *ctx, char **p, const int64_t *s, int64_t n) {     \
        (void)ctx;                                                                \
        T *o = (T *)p[0];                                                         \
        const uint8_t *c = (const uint8_t *)p[1];                                 \
        const T *x = (const T *)p[2], *y = (const T *)p[3];                       \
        for (int64_t i = 0; i < n; i++) o[i] = c[i * s[1]] ? x[i * s[2]] : y[i * s[3]]; \
    }
WHERE_ROW(uint8_t)
WHERE_ROW(uint16_t)
WHERE_ROW(uint32_t)
WHERE_ROW(uint64_t)

static int where_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)n, (void)err, (void)len;
    size_t e = sim_dtype_size(out[0]->dtype);
    size_t es[4] = {e, 1, e, e};
    sim_row_fn fn = e == 1 ? where_uint8_t : e == 2 ? where_uint16_t : e == 4 ? where_uint32_t : where_uint64_t;
    sim_bcast_run(out[0], in, 3, es, fn, NULL);
    return 0;
}

typedef struct cast_params {
    int32_t to;
} cast_params;

static int32_t onnx_to_ge(int64_t t) {
    switch (t) {
    case 1: return AA_DT_FLOAT;
    case 10: return AA_DT_FLOAT16;
    case 6: return AA_DT_INT32;
    case 7: return AA_DT_INT64;
    case 9: return AA_DT_BOOL;
    case 11: return AA_DT_DOUBLE;
    default: return -1;
    }
}

static int cast_check(sim_check *c) {
    cast_params *cp = sim_params(c, sizeof *cp);
    if (!cp) return sim_check_fail(c, "out of memory");
    const sim_attr *a = sim_attr_get(c->node, "to");
    if (!a || a->kind != SIM_ATTR_INT) return sim_check_fail(c, "attribute 'to' is required");
    cp->to = onnx_to_ge(a->i);
    if (cp->to < 0) return sim_check_fail(c, "cast to ONNX dtype %lld is not supported", (long long)a->i);
    static const int32_t cast_from[] = {AA_DT_FLOAT, AA_DT_FLOAT16, AA_DT_INT32, AA_DT_INT64, AA_DT_BOOL, AA_DT_DOUBLE, -1};
    if (!sim_dtype_in(c->in_dtype[0], cast_from)) return sim_check_fail(c, "cast from %s is not supported", sim_dtype_name(c->in_dtype[0]));
    c->out_dtype[0] = cp->to;
    return 0;
}

static int cast_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)n, (void)err, (void)len;
    int32_t from = in[0]->dtype, to = out[0]->dtype;
    int64_t cnt = in[0]->numel;
    const void *src = in[0]->data;
    void *dst = out[0]->data;
    if (from == to) {
        memcpy(dst, src, (size_t)cnt * sim_dtype_size(from));
        return 0;
    }
    /* float32 <-> float16 directly (a detour through double would quieten signalling NaNs) */
    if (from == AA_DT_FLOAT16 && to == AA_DT_FLOAT) {
        for (int64_t i = 0; i < cnt; i++) ((float *)dst)[i] = sim_f16_to_f32(((const uint16_t *)src)[i]);
        return 0;
    }
    if (from == AA_DT_FLOAT && to == AA_DT_FLOAT16) {
        for (int64_t i = 0; i < cnt; i++) ((uint16_t *)dst)[i] = sim_f32_to_f16(((const float *)src)[i]);
        return 0;
    }
    int from_int = from == AA_DT_INT32 || from == AA_DT_INT64 || from == AA_DT_BOOL;
    for (int64_t i = 0; i < cnt; i++) {
        double d = 0;
        int64_t iv = 0;
        switch (from) {
        case AA_DT_FLOAT: d = ((const float *)src)[i]; break;
        case AA_DT_FLOAT16: d = sim_f16_to_f32(((const uint16_t *)src)[i]); break;
        case AA_DT_DOUBLE: d = ((const double *)src)[i]; break;
        case AA_DT_INT32: iv = ((const int32_t *)src)[i]; break;
        case AA_DT_INT64: iv = ((const int64_t *)src)[i]; break;
        case AA_DT_BOOL: iv = ((const uint8_t *)src)[i] != 0; break;
        }
        if (from_int) d = (double)iv;
        switch (to) {
        case AA_DT_FLOAT: ((float *)dst)[i] = from_int ? (float)iv : (float)d; break;
        case AA_DT_DOUBLE: ((double *)dst)[i] = from_int ? (double)iv : d; break;
        case AA_DT_FLOAT16: ((uint16_t *)dst)[i] = sim_f32_to_f16(from_int ? (float)iv : (float)d); break;
        case AA_DT_INT32: ((int32_t *)dst)[i] = from_int ? (int32_t)iv : (isfinite(d) ? (int32_t)(int64_t)d : INT32_MIN); break;
        case AA_DT_INT64: ((int64_t *)dst)[i] = from_int ? iv : (isfinite(d) && fabs(d) < 9.2e18 ? (int64_t)d : INT64_MIN); break;
        case AA_DT_BOOL: ((uint8_t *)dst)[i] = from_int ? iv != 0 : d != 0; break;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ table */

static const char *const no_attrs[] = {NULL};
static const char *const leaky_attrs[] = {"alpha", NULL};
static const char *const gelu_attrs[] = {"approximate", NULL};
static const char *const cast_attrs[] = {"to", "saturate", NULL};

#define BIN(name) {name, 2, 2, 1, 1, no_attrs, bin_check, bin_shape, bin_exec, SIM_F16_VIA_F32, 0}
#define UN(name, attrs) {name, 1, 1, 1, 1, attrs, un_check, same_shape, un_exec, SIM_F16_VIA_F32, 0}

const sim_op sim_ops_elementwise[] = {
    {"Identity", 1, 1, 1, 1, no_attrs, identity_check, same_shape, identity_exec, 0, 0},
    BIN("Add"), BIN("Sub"), BIN("Mul"), BIN("Div"), BIN("Pow"),
    BIN("Equal"), BIN("Less"), BIN("Greater"), BIN("LessOrEqual"), BIN("GreaterOrEqual"),
    UN("Sqrt", no_attrs), UN("Neg", no_attrs), UN("Abs", no_attrs), UN("Relu", no_attrs),
    UN("LeakyRelu", leaky_attrs), UN("Sigmoid", no_attrs), UN("Tanh", no_attrs),
    UN("Exp", no_attrs), UN("Log", no_attrs), UN("Erf", no_attrs), UN("Gelu", gelu_attrs),
    {"Where", 3, 3, 1, 1, no_attrs, where_check, where_shape, where_exec, 0, 0},
    {"Cast", 1, 1, 1, 1, cast_attrs, cast_check, same_shape, cast_exec, 0, 0},
    {NULL, 0, 0, 0, 0, NULL, NULL, NULL, NULL, 0, 0},
};
