/* Reductions and normalisations along axes: ReduceMean, ReduceSum, ReduceMax (axes as an
 * attribute before opset 18 for Mean/Max, as a constant input from opset 13 for Sum and from
 * 18 for Mean/Max), Softmax, LogSoftmax and LayerNormalization. Sums accumulate in double.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* ------------------------------------------------------------------ Reduce* */

enum { R_MEAN, R_SUM, R_MAX };

typedef struct red_params {
    int kind;
    int keepdims, noop_empty;
    int axes_from_input;
    int n_attr_axes; /* -1: none given */
    int64_t attr_axes[SIM_MAX_DIMS];
} red_params;

static int red_check(sim_check *c) {
    red_params *r = sim_params(c, sizeof *r);
    if (!r) return sim_check_fail(c, "out of memory");
    const char *op = c->node->op_type;
    r->kind = strcmp(op, "ReduceMean") == 0 ? R_MEAN : strcmp(op, "ReduceSum") == 0 ? R_SUM : R_MAX;
    int64_t kd = sim_attr_int(c->node, "keepdims", 1), ne = sim_attr_int(c->node, "noop_with_empty_axes", 0);
    if ((kd != 0 && kd != 1) || (ne != 0 && ne != 1)) return sim_check_fail(c, "keepdims/noop_with_empty_axes must be 0 or 1");
    r->keepdims = (int)kd;
    r->noop_empty = (int)ne;
    r->axes_from_input = r->kind == R_SUM || c->node->opset >= 18;
    size_t n;
    const int64_t *axes = sim_attr_ints(c->node, "axes", &n);
    r->n_attr_axes = -1;
    if (axes) {
        if (r->axes_from_input) return sim_check_fail(c, "attribute 'axes' is not allowed at opset %d", c->node->opset);
        if (n > SIM_MAX_DIMS) return sim_check_fail(c, "too many axes");
        r->n_attr_axes = (int)n;
        memcpy(r->attr_axes, axes, sizeof(int64_t) * n);
    }
    if (c->node->n_in > 1 && c->node->in[1] >= 0) {
        if (!r->axes_from_input) return sim_check_fail(c, "axes input is not allowed at opset %d", c->node->opset);
        if (c->in_dtype[1] != AA_DT_INT64) return sim_check_fail(c, "axes must be int64");
        if (!c->prog->values[c->node->in[1]].has_init) return sim_check_fail(c, "axes input must be a constant initializer");
    }
    int32_t dt = c->in_dtype[0];
    int ok = SIM_IS_FLOAT(dt) || (r->kind != R_MEAN && SIM_IS_INT(dt));
    if (!ok) return sim_check_fail(c, "dtype %s is not supported", sim_dtype_name(dt));
    c->out_dtype[0] = dt;
    return 0;
}

/* Marks reduced dims; returns 1 when the op is a no-op (copy). */
static int red_axes(const sim_node *n, sim_tensor *const *in, char *mask, char *err, size_t len, int *noop) {
    const red_params *r = n->params;
    int nd = in[0]->ndim;
    memset(mask, 0, SIM_MAX_DIMS);
    *noop = 0;
    int64_t cnt = 0;
    const sim_tensor *ax = (n->n_in > 1 && in[1]) ? in[1] : NULL;
    if (r->axes_from_input) cnt = ax ? ax->numel : 0;
    else cnt = r->n_attr_axes < 0 ? 0 : r->n_attr_axes;
    if (cnt == 0) {
        if (r->noop_empty) {
            *noop = 1;
            return 0;
        }
        for (int d = 0; d < nd; d++) mask[d] = 1;
        return 0;
    }
    for (int64_t i = 0; i < cnt; i++) {
        int64_t a = r->axes_from_input ? sim_get_int(ax, i) : r->attr_axes[i], na;
        if (sim_norm_axis(a, nd, &na)) return sim_fail(err, len, "axis %lld out of range", (long long)a);
        mask[na] = 1;
    }
    return 0;
}

static int red_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    const red_params *r = n->params;
    char mask[SIM_MAX_DIMS];
    int noop;
    if (red_axes(n, in, mask, err, len, &noop)) return -1;
    int k = 0;
    for (int d = 0; d < in[0]->ndim; d++) {
        if (noop || !mask[d]) out[0]->dims[k++] = in[0]->dims[d];
        else if (r->keepdims) out[0]->dims[k++] = 1;
    }
    out[0]->ndim = k;
    return 0;
}

static int red_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    const red_params *r = n->params;
    char mask[SIM_MAX_DIMS];
    int noop;
    if (red_axes(n, in, mask, err, len, &noop)) return -1;
    const sim_tensor *x = in[0];
    int nd = x->ndim;
    int32_t dt = x->dtype;
    if (noop) {
        memcpy(out[0]->data, x->data, (size_t)x->numel * sim_dtype_size(dt));
        return 0;
    }
    int64_t on = out[0]->numel;
    double *acc = malloc(sizeof(double) * (size_t)(on ? on : 1));
    int64_t *iacc = malloc(sizeof(int64_t) * (size_t)(on ? on : 1));
    if (!acc || !iacc) {
        free(acc), free(iacc);
        return sim_fail(err, len, "out of memory");
    }
    for (int64_t i = 0; i < on; i++) {
        acc[i] = r->kind == R_MAX ? -INFINITY : 0.0;
        iacc[i] = r->kind == R_MAX ? (dt == AA_DT_INT32 ? INT32_MIN : INT64_MIN) : 0;
    }
    /* output strides over the input's dims (0 on reduced dims) */
    int64_t ost[SIM_MAX_DIMS], s = 1;
    for (int d = nd - 1; d >= 0; d--) {
        if (mask[d]) ost[d] = 0;
        else {
            ost[d] = s;
            s *= x->dims[d];
        }
    }
    int64_t rcount = 1;
    for (int d = 0; d < nd; d++)
        if (mask[d]) rcount *= x->dims[d];
    int64_t idx[SIM_MAX_DIMS] = {0};
    int64_t o = 0;
    for (int64_t i = 0; i < x->numel; i++) {
        if (dt == AA_DT_FLOAT) {
            float v = ((const float *)x->data)[i];
            if (r->kind == R_MAX) {
                if (v > acc[o] || isnan(v)) acc[o] = v;
            } else {
                acc[o] += v;
            }
        } else {
            int64_t v = sim_get_int(x, i);
            if (r->kind == R_MAX) {
                if (v > iacc[o]) iacc[o] = v;
            } else {
                iacc[o] += v;
            }
        }
        for (int d = nd - 1; d >= 0; d--) {
            o += ost[d];
            if (++idx[d] < x->dims[d]) break;
            o -= ost[d] * x->dims[d];
            idx[d] = 0;
        }
    }
    for (int64_t i = 0; i < on; i++) {
        if (dt == AA_DT_FLOAT) {
            double v = acc[i];
            if (r->kind == R_MEAN) v = rcount ? v / (double)rcount : NAN;
            ((float *)out[0]->data)[i] = (float)v;
        } else if (dt == AA_DT_INT32) {
            ((int32_t *)out[0]->data)[i] = (int32_t)iacc[i];
        } else {
            ((int64_t *)out[0]->data)[i] = iacc[i];
        }
    }
    free(acc), free(iacc);
    return 0;
}

/* ------------------------------------------------------------------ Softmax, LogSoftmax */

static int float_check(sim_check *c) {
    for (uint32_t i = 0; i < c->node->n_in; i++) {
        if (c->node->in[i] < 0) continue;
        if (!SIM_IS_FLOAT(c->in_dtype[i])) return sim_check_fail(c, "dtype %s is not supported", sim_dtype_name(c->in_dtype[i]));
    }
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

static int same_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    int64_t a;
    if (sim_norm_axis(sim_attr_int(n, "axis", -1), in[0]->ndim, &a)) return sim_fail(err, len, "axis out of range");
    out[0]->ndim = in[0]->ndim;
    memcpy(out[0]->dims, in[0]->dims, sizeof(int64_t) * (size_t)in[0]->ndim);
    return 0;
}

static int softmax_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)err, (void)len;
    int is_log = strcmp(n->op_type, "LogSoftmax") == 0;
    int64_t axis;
    int nd = in[0]->ndim;
    sim_norm_axis(sim_attr_int(n, "axis", -1), nd, &axis);
    int64_t outer = sim_numel(in[0]->dims, (int)axis), dim = in[0]->dims[axis];
    int64_t inner = sim_numel(in[0]->dims + axis + 1, nd - (int)axis - 1);
    const float *x = in[0]->data;
    float *y = out[0]->data;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            const float *xs = x + o * dim * inner + i;
            float *ys = y + o * dim * inner + i;
            float mx = -INFINITY;
            for (int64_t k = 0; k < dim; k++)
                if (xs[k * inner] > mx) mx = xs[k * inner];
            double sum = 0;
            for (int64_t k = 0; k < dim; k++) {
                float e = expf(xs[k * inner] - mx);
                sum += e;
                if (!is_log) ys[k * inner] = e;
            }
            if (is_log) {
                float ls = (float)log(sum);
                for (int64_t k = 0; k < dim; k++) ys[k * inner] = xs[k * inner] - mx - ls;
            } else {
                float inv = (float)(1.0 / sum);
                for (int64_t k = 0; k < dim; k++) ys[k * inner] *= inv;
            }
        }
    return 0;
}

/* ------------------------------------------------------------------ LayerNormalization */

static int ln_check(sim_check *c) {
    int64_t st = sim_attr_int(c->node, "stash_type", 1);
    if (st != 1) return sim_check_fail(c, "stash_type=%lld is not supported (only 1, float32)", (long long)st);
    if (float_check(c)) return -1;
    for (uint32_t i = 1; i < c->node->n_in; i++)
        if (c->node->in[i] >= 0 && c->in_dtype[i] != c->in_dtype[0]) return sim_check_fail(c, "input dtypes differ");
    c->out_dtype[1] = AA_DT_FLOAT;
    c->out_dtype[2] = AA_DT_FLOAT;
    return 0;
}

static int ln_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    int nd = in[0]->ndim;
    int64_t axis;
    if (sim_norm_axis(sim_attr_int(n, "axis", -1), nd, &axis)) return sim_fail(err, len, "axis out of range");
    for (uint32_t i = 1; i < n->n_in; i++) {
        if (!in[i]) continue;
        /* Scale and B broadcast to X's normalised shape */
        int rn = nd - (int)axis;
        if (in[i]->ndim > rn) return sim_fail(err, len, "input %u has too many dims", i);
        for (int d = 0; d < in[i]->ndim; d++) {
            int64_t want = in[0]->dims[nd - in[i]->ndim + d];
            if (in[i]->dims[d] != want && in[i]->dims[d] != 1) return sim_fail(err, len, "input %u does not broadcast to X", i);
        }
    }
    out[0]->ndim = nd;
    memcpy(out[0]->dims, in[0]->dims, sizeof(int64_t) * (size_t)nd);
    for (uint32_t k = 1; k < n->n_out; k++) {
        out[k]->ndim = nd;
        for (int d = 0; d < nd; d++) out[k]->dims[d] = d < axis ? in[0]->dims[d] : 1;
    }
    return 0;
}

/* Expands a broadcastable [.., m] parameter into a dense vector of the normalised size. */
static float *ln_param(const sim_tensor *p, const sim_tensor *x, int64_t axis, int64_t m) {
    float *v = malloc(sizeof(float) * (size_t)(m ? m : 1));
    if (!v) return NULL;
    int nd = x->ndim;
    for (int64_t j = 0; j < m; j++) {
        int64_t rem = j, off = 0, st = 1;
        for (int d = nd - 1; d >= axis; d--) {
            int64_t id = rem % x->dims[d];
            rem /= x->dims[d];
            int pd = d - (nd - p->ndim);
            if (pd >= 0) {
                if (p->dims[pd] != 1) off += id * st;
                st *= p->dims[pd];
            }
        }
        v[j] = ((const float *)p->data)[off];
    }
    return v;
}

static int ln_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    int nd = in[0]->ndim;
    int64_t axis;
    sim_norm_axis(sim_attr_int(n, "axis", -1), nd, &axis);
    float eps = (float)sim_attr_float(n, "epsilon", 1e-5);
    int64_t rows = sim_numel(in[0]->dims, (int)axis), m = sim_numel(in[0]->dims + axis, nd - (int)axis);
    float *scale = ln_param(in[1], in[0], axis, m);
    float *bias = n->n_in > 2 && in[2] ? ln_param(in[2], in[0], axis, m) : NULL;
    if (!scale || (n->n_in > 2 && in[2] && !bias)) {
        free(scale), free(bias);
        return sim_fail(err, len, "out of memory");
    }
    const float *x = in[0]->data;
    float *y = out[0]->data;
    float *mean_out = n->n_out > 1 ? out[1]->data : NULL;
    float *istd_out = n->n_out > 2 ? out[2]->data : NULL;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * m;
        float *yr = y + r * m;
        double s = 0;
        for (int64_t j = 0; j < m; j++) s += xr[j];
        float mean = m ? (float)(s / (double)m) : 0.0f;
        double v = 0;
        for (int64_t j = 0; j < m; j++) {
            float d = xr[j] - mean;
            v += (double)d * d;
        }
        float var = m ? (float)(v / (double)m) : 0.0f;
        float istd = 1.0f / sqrtf(var + eps);
        for (int64_t j = 0; j < m; j++) yr[j] = (xr[j] - mean) * istd * scale[j] + (bias ? bias[j] : 0.0f);
        if (mean_out) mean_out[r] = mean;
        if (istd_out) istd_out[r] = istd;
    }
    free(scale), free(bias);
    return 0;
}

static const char *const red_attrs[] = {"keepdims", "noop_with_empty_axes", "axes", NULL};
static const char *const axis_attrs[] = {"axis", NULL};
static const char *const ln_attrs[] = {"axis", "epsilon", "stash_type", NULL};

const sim_op sim_ops_reduce[] = {
    {"ReduceMean", 1, 2, 1, 1, red_attrs, red_check, red_shape, red_exec, SIM_F16_VIA_F32, 0},
    {"ReduceSum", 1, 2, 1, 1, red_attrs, red_check, red_shape, red_exec, SIM_F16_VIA_F32, 0},
    {"ReduceMax", 1, 2, 1, 1, red_attrs, red_check, red_shape, red_exec, SIM_F16_VIA_F32, 0},
    {"Softmax", 1, 1, 1, 1, axis_attrs, float_check, same_shape, softmax_exec, SIM_F16_VIA_F32, 0},
    {"LogSoftmax", 1, 1, 1, 1, axis_attrs, float_check, same_shape, softmax_exec, SIM_F16_VIA_F32, 0},
    {"LayerNormalization", 2, 3, 1, 3, ln_attrs, ln_check, ln_shape, ln_exec, SIM_F16_VIA_F32, 0},
    {NULL, 0, 0, 0, 0, NULL, NULL, NULL, NULL, 0, 0},
};
