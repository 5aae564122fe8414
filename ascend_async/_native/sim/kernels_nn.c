/* Neural-network kernels on NCHW tensors: Conv (2-D; pads, strides, dilations, groups,
 * auto_pad; im2col + the blocked GEMM), MaxPool (with its Indices output) and AveragePool (2-D; pads, strides,
 * dilations, ceil_mode, count_include_pad, auto_pad), GlobalAveragePool (any spatial rank) and
 * BatchNormalization (inference mode). fp16 tensors are widened by the program.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

enum { PAD_NOTSET, PAD_SAME_UPPER, PAD_SAME_LOWER, PAD_VALID };

typedef struct win_params {
    int auto_pad;
    int has_kernel;
    int64_t kernel[2], strides[2], dil[2], pads[4];
    int64_t group;
    int ceil_mode, count_include_pad;
} win_params;

static int float_inputs(sim_check *c) {
    for (uint32_t i = 0; i < c->node->n_in; i++) {
        if (c->node->in[i] < 0) continue;
        if (!SIM_IS_FLOAT(c->in_dtype[i])) return sim_check_fail(c, "dtype %s is not supported", sim_dtype_name(c->in_dtype[i]));
        if (c->in_dtype[i] != c->in_dtype[0]) return sim_check_fail(c, "input dtypes differ");
    }
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

/* Declared rank of input i when known at finalize, else -1. */
static int declared_rank(sim_check *c, int i) {
    if ((uint32_t)i >= c->node->n_in || c->node->in[i] < 0) return -1;
    return c->prog->values[c->node->in[i]].ndim;
}

static int parse_ints(sim_check *c, const char *name, int64_t *dst, size_t want, int64_t dflt, int64_t min) {
    size_t n;
    const int64_t *v = sim_attr_ints(c->node, name, &n);
    if (!v) {
        for (size_t i = 0; i < want; i++) dst[i] = dflt;
        return 0;
    }
    if (n != want) return sim_check_fail(c, "'%s' has %zu values; only 2-D (%zu values) is supported", name, n, want);
    for (size_t i = 0; i < n; i++) {
        if (v[i] < min) return sim_check_fail(c, "'%s' value %lld is invalid", name, (long long)v[i]);
        dst[i] = v[i];
    }
    return 0;
}

static int win_check(sim_check *c, int is_conv) {
    win_params *w = sim_params(c, sizeof *w);
    if (!w) return sim_check_fail(c, "out of memory");
    const char *ap = sim_attr_str(c->node, "auto_pad", "NOTSET");
    if (strcmp(ap, "NOTSET") == 0) w->auto_pad = PAD_NOTSET;
    else if (strcmp(ap, "SAME_UPPER") == 0) w->auto_pad = PAD_SAME_UPPER;
    else if (strcmp(ap, "SAME_LOWER") == 0) w->auto_pad = PAD_SAME_LOWER;
    else if (strcmp(ap, "VALID") == 0) w->auto_pad = PAD_VALID;
    else return sim_check_fail(c, "auto_pad='%s' is not supported", ap);
    int rx = declared_rank(c, 0);
    if (rx >= 0 && rx != 4) return sim_check_fail(c, "input rank %d: only 2-D (NCHW) is supported", rx);
    if (is_conv) {
        int rw = declared_rank(c, 1);
        if (rw >= 0 && rw != 4) return sim_check_fail(c, "weight rank %d: only 2-D is supported", rw);
    }
    size_t nk;
    const int64_t *k = sim_attr_ints(c->node, "kernel_shape", &nk);
    if (k) {
        if (nk != 2) return sim_check_fail(c, "kernel_shape has %zu values; only 2-D is supported", nk);
        for (int i = 0; i < 2; i++) {
            if (k[i] < 1) return sim_check_fail(c, "kernel_shape value %lld is invalid", (long long)k[i]);
            w->kernel[i] = k[i];
        }
        w->has_kernel = 1;
    } else if (!is_conv) {
        return sim_check_fail(c, "attribute 'kernel_shape' is required");
    }
    if (parse_ints(c, "strides", w->strides, 2, 1, 1)) return -1;
    if (parse_ints(c, "dilations", w->dil, 2, 1, 1)) return -1;
    if (parse_ints(c, "pads", w->pads, 4, 0, 0)) return -1;
    w->group = sim_attr_int(c->node, "group", 1);
    if (w->group < 1) return sim_check_fail(c, "group must be >= 1");
    int64_t cm = sim_attr_int(c->node, "ceil_mode", 0), cip = sim_attr_int(c->node, "count_include_pad", 0);
    if ((cm != 0 && cm != 1) || (cip != 0 && cip != 1)) return sim_check_fail(c, "ceil_mode/count_include_pad must be 0 or 1");
    w->ceil_mode = (int)cm;
    w->count_include_pad = (int)cip;
    int64_t so = sim_attr_int(c->node, "storage_order", 0);
    if (so != 0 && so != 1) return sim_check_fail(c, "storage_order must be 0 or 1");
    return float_inputs(c);
}

static int conv_check(sim_check *c) { return win_check(c, 1); }
static int pool_check(sim_check *c) {
    if (c->node->n_out > 1 && strcmp(c->node->op_type, "MaxPool") != 0) return sim_check_fail(c, "one output expected");
    if (win_check(c, 0)) return -1;
    c->out_dtype[1] = AA_DT_INT64; /* MaxPool Indices */
    return 0;
}

/* Output extent and begin padding of one spatial dim. */
static int win_dim(const win_params *w, int d, int64_t in, int64_t k, int64_t *out, int64_t *pad_begin, char *err, size_t len) {
    int64_t s = w->strides[d], dk = (k - 1) * w->dil[d] + 1;
    if (w->auto_pad == PAD_NOTSET || w->auto_pad == PAD_VALID) {
        int64_t pb = w->auto_pad == PAD_VALID ? 0 : w->pads[d], pe = w->auto_pad == PAD_VALID ? 0 : w->pads[d + 2];
        int64_t span = in + pb + pe - dk;
        if (span < 0) return sim_fail(err, len, "kernel larger than the padded input");
        int64_t o = w->ceil_mode ? (span + s - 1) / s + 1 : span / s + 1;
        /* ceil mode: the last window must start inside the input or the begin padding */
        if (w->ceil_mode && (o - 1) * s >= in + pb) o--;
        *out = o;
        *pad_begin = pb;
    } else {
        int64_t o = (in + s - 1) / s;
        int64_t total = (o - 1) * s + dk - in;
        if (total < 0) total = 0;
        *out = o;
        *pad_begin = w->auto_pad == PAD_SAME_UPPER ? total / 2 : total - total / 2;
    }
    return 0;
}

/* ------------------------------------------------------------------ Conv */

static int conv_geom(const sim_node *n, sim_tensor *const *in, int64_t *oh, int64_t *ow, int64_t *ph, int64_t *pw, char *err, size_t len) {
    const win_params *w = n->params;
    const sim_tensor *x = in[0], *wt = in[1];
    if (x->ndim != 4 || wt->ndim != 4) return sim_fail(err, len, "only 2-D convolution (rank-4 X and W) is supported");
    int64_t C = x->dims[1], M = wt->dims[0];
    if (C != wt->dims[1] * w->group) return sim_fail(err, len, "channels %lld != W channels %lld * group %lld", (long long)C, (long long)wt->dims[1], (long long)w->group);
    if (M % w->group) return sim_fail(err, len, "output channels not divisible by group");
    if (w->has_kernel && (w->kernel[0] != wt->dims[2] || w->kernel[1] != wt->dims[3])) return sim_fail(err, len, "kernel_shape does not match W");
    if (n->n_in > 2 && in[2] && (in[2]->ndim != 1 || in[2]->dims[0] != M)) return sim_fail(err, len, "bias must be [M]");
    if (win_dim(w, 0, x->dims[2], wt->dims[2], oh, ph, err, len)) return -1;
    return win_dim(w, 1, x->dims[3], wt->dims[3], ow, pw, err, len);
}

static int conv_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    int64_t oh = 0, ow = 0, ph = 0, pw = 0;
    if (conv_geom(n, in, &oh, &ow, &ph, &pw, err, len)) return -1;
    out[0]->ndim = 4;
    out[0]->dims[0] = in[0]->dims[0];
    out[0]->dims[1] = in[1]->dims[0];
    out[0]->dims[2] = oh;
    out[0]->dims[3] = ow;
    return 0;
}

static int conv_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    const win_params *w = n->params;
    int64_t OH, OW, ph, pw;
    if (conv_geom(n, in, &OH, &OW, &ph, &pw, err, len)) return -1;
    const sim_tensor *x = in[0], *wt = in[1];
    int64_t N = x->dims[0], C = x->dims[1], H = x->dims[2], W = x->dims[3];
    int64_t M = wt->dims[0], KH = wt->dims[2], KW = wt->dims[3], G = w->group;
    int64_t Cg = C / G, Mg = M / G, P = OH * OW, R = Cg * KH * KW;
    int64_t sh = w->strides[0], sw = w->strides[1], dh = w->dil[0], dw = w->dil[1];
    float *col = malloc(sizeof(float) * (size_t)(R * P > 0 ? R * P : 1));
    if (!col) return sim_fail(err, len, "out of memory");
    const float *X = x->data, *Wt = wt->data;
    const float *bias = n->n_in > 2 && in[2] ? in[2]->data : NULL;
    float *Y = out[0]->data;
    for (int64_t b = 0; b < N; b++)
        for (int64_t g = 0; g < G; g++) {
            for (int64_t c = 0; c < Cg; c++) {
                const float *xc = X + ((b * C) + g * Cg + c) * H * W;
                for (int64_t i = 0; i < KH; i++)
                    for (int64_t j = 0; j < KW; j++) {
                        float *row = col + ((c * KH + i) * KW + j) * P;
                        for (int64_t oy = 0; oy < OH; oy++) {
                            int64_t iy = oy * sh - ph + i * dh;
                            float *r = row + oy * OW;
                            if (iy < 0 || iy >= H) {
                                memset(r, 0, sizeof(float) * (size_t)OW);
                                continue;
                            }
                            const float *xr = xc + iy * W;
                            for (int64_t ox = 0; ox < OW; ox++) {
                                int64_t ix = ox * sw - pw + j * dw;
                                r[ox] = (ix >= 0 && ix < W) ? xr[ix] : 0.0f;
                            }
                        }
                    }
            }
            float *yg = Y + (b * M + g * Mg) * P;
            for (int64_t m = 0; m < Mg; m++) {
                float bv = bias ? bias[g * Mg + m] : 0.0f;
                for (int64_t p = 0; p < P; p++) yg[m * P + p] = bv;
            }
            sim_sgemm_acc(Mg, P, R, Wt + g * Mg * R, R, col, P, yg, P);
        }
    free(col);
    return 0;
}

/* ------------------------------------------------------------------ MaxPool, AveragePool */

static int pool_geom(const sim_node *n, const sim_tensor *x, int64_t *oh, int64_t *ow, int64_t *ph, int64_t *pw, char *err, size_t len) {
    const win_params *w = n->params;
    if (x->ndim != 4) return sim_fail(err, len, "only 2-D pooling (rank-4 input) is supported");
    if (win_dim(w, 0, x->dims[2], w->kernel[0], oh, ph, err, len)) return -1;
    return win_dim(w, 1, x->dims[3], w->kernel[1], ow, pw, err, len);
}

static int pool_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    int64_t oh = 0, ow = 0, ph = 0, pw = 0;
    if (pool_geom(n, in[0], &oh, &ow, &ph, &pw, err, len)) return -1;
    out[0]->ndim = 4;
    out[0]->dims[0] = in[0]->dims[0];
    out[0]->dims[1] = in[0]->dims[1];
    out[0]->dims[2] = oh;
    out[0]->dims[3] = ow;
    if (n->n_out > 1) {
        out[1]->ndim = 4;
        memcpy(out[1]->dims, out[0]->dims, sizeof(int64_t) * 4);
    }
    return 0;
}

static int pool_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    const win_params *w = n->params;
    int is_max = strcmp(n->op_type, "MaxPool") == 0;
    int64_t OH, OW, ph, pw;
    if (pool_geom(n, in[0], &OH, &OW, &ph, &pw, err, len)) return -1;
    const sim_tensor *x = in[0];
    int64_t NC = x->dims[0] * x->dims[1], H = x->dims[2], W = x->dims[3];
    int64_t KH = w->kernel[0], KW = w->kernel[1], sh = w->strides[0], sw = w->strides[1], dh = w->dil[0], dw = w->dil[1];
    /* padded extent (for count_include_pad): explicit pads, or the auto pads */
    int64_t peh = H + ph + (w->auto_pad == PAD_NOTSET ? w->pads[2] : 0);
    int64_t pew = W + pw + (w->auto_pad == PAD_NOTSET ? w->pads[3] : 0);
    if (w->auto_pad == PAD_SAME_UPPER || w->auto_pad == PAD_SAME_LOWER) {
        int64_t th = (OH - 1) * sh + (KH - 1) * dh + 1 - H, tw = (OW - 1) * sw + (KW - 1) * dw + 1 - W;
        peh = H + (th > 0 ? th : 0);
        pew = W + (tw > 0 ? tw : 0);
    }
    const float *X = x->data;
    float *Y = out[0]->data;
    int64_t *I = n->n_out > 1 ? out[1]->data : NULL; /* MaxPool Indices, flat over N*C*H*W */
    int col_major = sim_attr_int(n, "storage_order", 0) == 1;
    for (int64_t c = 0; c < NC; c++) {
        const float *xc = X + c * H * W;
        float *yc = Y + c * OH * OW;
        for (int64_t oy = 0; oy < OH; oy++)
            for (int64_t ox = 0; ox < OW; ox++) {
                float mx = -INFINITY;
                int64_t arg = -1;
                double sum = 0;
                int64_t cnt = 0, cnt_pad = 0;
                for (int64_t i = 0; i < KH; i++) {
                    int64_t iy = oy * sh - ph + i * dh;
                    for (int64_t j = 0; j < KW; j++) {
                        int64_t ix = ox * sw - pw + j * dw;
                        int64_t py = iy + ph, px = ix + pw;
                        if (py >= 0 && py < peh && px >= 0 && px < pew) cnt_pad++;
                        if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                        float v = xc[iy * W + ix];
                        if (arg < 0 || v > mx || (isnan(v) && !isnan(mx))) { /* first max; NaN wins */
                            mx = v;
                            arg = col_major ? ix * H + iy : iy * W + ix;
                        }
                        sum += v;
                        cnt++;
                    }
                }
                if (is_max) {
                    yc[oy * OW + ox] = mx;
                    if (I) I[c * OH * OW + oy * OW + ox] = c * H * W + (arg < 0 ? 0 : arg);
                }
                else {
                    int64_t div = w->count_include_pad ? cnt_pad : cnt;
                    yc[oy * OW + ox] = div ? (float)(sum / (double)div) : NAN;
                }
            }
    }
    return 0;
}

/* ------------------------------------------------------------------ GlobalAveragePool */

static int gap_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)n;
    if (in[0]->ndim < 2) return sim_fail(err, len, "input rank must be >= 2");
    out[0]->ndim = in[0]->ndim;
    out[0]->dims[0] = in[0]->dims[0];
    out[0]->dims[1] = in[0]->dims[1];
    for (int d = 2; d < in[0]->ndim; d++) out[0]->dims[d] = 1;
    return 0;
}

static int gap_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)n, (void)err, (void)len;
    int64_t NC = in[0]->dims[0] * in[0]->dims[1];
    int64_t S = sim_numel(in[0]->dims + 2, in[0]->ndim - 2);
    const float *X = in[0]->data;
    float *Y = out[0]->data;
    for (int64_t c = 0; c < NC; c++) {
        double s = 0;
        for (int64_t i = 0; i < S; i++) s += X[c * S + i];
        Y[c] = S ? (float)(s / (double)S) : NAN;
    }
    return 0;
}

/* ------------------------------------------------------------------ BatchNormalization */

static int bn_check(sim_check *c) {
    int64_t tm = sim_attr_int(c->node, "training_mode", 0);
    if (tm != 0 && tm != 1) return sim_check_fail(c, "training_mode=%lld is invalid", (long long)tm);
    if (tm == 0 && c->node->n_out > 1) return sim_check_fail(c, "running mean/var outputs need training_mode=1");
    if (float_inputs(c)) return -1;
    c->out_dtype[1] = c->out_dtype[2] = c->in_dtype[3];
    return 0;
}

static int bn_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)n;
    if (in[0]->ndim < 2) return sim_fail(err, len, "input rank must be >= 2");
    int64_t C = in[0]->dims[1];
    for (int i = 1; i < 5; i++)
        if (in[i]->ndim != 1 || in[i]->dims[0] != C) return sim_fail(err, len, "input %d must be [C]", i);
    out[0]->ndim = in[0]->ndim;
    memcpy(out[0]->dims, in[0]->dims, sizeof(int64_t) * (size_t)in[0]->ndim);
    for (uint32_t k = 1; k < n->n_out; k++) {
        out[k]->ndim = 1;
        out[k]->dims[0] = C;
    }
    return 0;
}

static int bn_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)err, (void)len;
    float eps = (float)sim_attr_float(n, "epsilon", 1e-5);
    int64_t N = in[0]->dims[0], C = in[0]->dims[1], S = sim_numel(in[0]->dims + 2, in[0]->ndim - 2);
    const float *X = in[0]->data, *sc = in[1]->data, *B = in[2]->data, *mean = in[3]->data, *var = in[4]->data;
    float *Y = out[0]->data;
    float *bmean = NULL, *bvar = NULL;
    if (sim_attr_int(n, "training_mode", 0)) {
        /* batch statistics over N and the spatial dims; running stats blended with momentum */
        float mom = (float)sim_attr_float(n, "momentum", 0.9);
        bmean = malloc(sizeof(float) * (size_t)(C > 0 ? C : 1));
        bvar = malloc(sizeof(float) * (size_t)(C > 0 ? C : 1));
        if (!bmean || !bvar) {
            free(bmean), free(bvar);
            return sim_fail(err, len, "out of memory");
        }
        double cnt = (double)(N * S);
        for (int64_t c = 0; c < C; c++) {
            double s = 0, q = 0;
            for (int64_t b = 0; b < N; b++)
                for (int64_t i = 0; i < S; i++) s += X[(b * C + c) * S + i];
            double m = cnt > 0 ? s / cnt : 0;
            for (int64_t b = 0; b < N; b++)
                for (int64_t i = 0; i < S; i++) {
                    double d = X[(b * C + c) * S + i] - m;
                    q += d * d;
                }
            bmean[c] = (float)m;
            bvar[c] = cnt > 0 ? (float)(q / cnt) : 0.0f;
            if (n->n_out > 1) ((float *)out[1]->data)[c] = mean[c] * mom + bmean[c] * (1.0f - mom);
            if (n->n_out > 2) ((float *)out[2]->data)[c] = var[c] * mom + bvar[c] * (1.0f - mom);
        }
        mean = bmean;
        var = bvar;
    }
    for (int64_t b = 0; b < N; b++)
        for (int64_t c = 0; c < C; c++) {
            float a = sc[c] / sqrtf(var[c] + eps);
            float k = B[c] - mean[c] * a;
            const float *x = X + (b * C + c) * S;
            float *y = Y + (b * C + c) * S;
            for (int64_t i = 0; i < S; i++) y[i] = x[i] * a + k;
        }
    free(bmean), free(bvar);
    return 0;
}

static const char *const no_attrs[] = {NULL};
static const char *const conv_attrs[] = {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides", NULL};
static const char *const maxpool_attrs[] = {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides", NULL};
static const char *const avgpool_attrs[] = {"auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads", "strides", NULL};
static const char *const bn_attrs[] = {"epsilon", "momentum", "training_mode", NULL};

static int gap_check(sim_check *c) { return float_inputs(c); }

const sim_op sim_ops_nn[] = {
    {"Conv", 2, 3, 1, 1, conv_attrs, conv_check, conv_shape, conv_exec, SIM_F16_VIA_F32, 0},
    {"MaxPool", 1, 1, 1, 2, maxpool_attrs, pool_check, pool_shape, pool_exec, SIM_F16_VIA_F32, 0},
    {"AveragePool", 1, 1, 1, 1, avgpool_attrs, pool_check, pool_shape, pool_exec, SIM_F16_VIA_F32, 0},
    {"GlobalAveragePool", 1, 1, 1, 1, no_attrs, gap_check, gap_shape, gap_exec, SIM_F16_VIA_F32, 0},
    {"BatchNormalization", 5, 5, 1, 3, bn_attrs, bn_check, bn_shape, bn_exec, SIM_F16_VIA_F32, 0},
    {NULL, 0, 0, 0, 0, NULL, NULL, NULL, NULL, 0, 0},
};
