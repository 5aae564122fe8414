/* Shape and data-movement kernels: Transpose, Reshape, Flatten, Squeeze, Unsqueeze, Concat,
 * Slice, Gather. They move elements by size, so every dtype the program allows works, fp16
 * included, without conversion. Shape-determining inputs (Reshape's shape, Slice's
 * starts/ends/axes/steps, Squeeze/Unsqueeze axes) must be constant initializers.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static const int32_t all_types[] = {AA_DT_FLOAT, AA_DT_FLOAT16, AA_DT_INT32, AA_DT_INT64, AA_DT_BOOL, -1};
static const int32_t idx_types[] = {AA_DT_INT32, AA_DT_INT64, -1};

static int data_type_ok(sim_check *c, int i) {
    if (!sim_dtype_in(c->in_dtype[i], all_types))
        return sim_check_fail(c, "dtype %s is not supported", sim_dtype_name(c->in_dtype[i]));
    return 0;
}

/* Copies a strided view of src (element strides st, may be negative) of shape dims into the
 * contiguous dst. */
static void copy_strided(char *dst, const char *src, size_t es, int nd, const int64_t *dims, const int64_t *st) {
    int64_t total = sim_numel(dims, nd);
    if (total == 0) return;
    if (nd == 0) {
        memcpy(dst, src, es);
        return;
    }
    int64_t inner = dims[nd - 1], is = st[nd - 1];
    int64_t idx[SIM_MAX_DIMS] = {0};
    int64_t rows = total / inner;
    for (int64_t r = 0; r < rows; r++) {
        int64_t off = 0;
        for (int d = 0; d < nd - 1; d++) off += idx[d] * st[d];
        const char *s = src + off * (int64_t)es;
        if (is == 1) {
            memcpy(dst, s, (size_t)inner * es);
        } else {
            switch (es) {
            case 1: for (int64_t i = 0; i < inner; i++) ((uint8_t *)dst)[i] = ((const uint8_t *)s)[i * is]; break;
            case 2: for (int64_t i = 0; i < inner; i++) ((uint16_t *)dst)[i] = ((const uint16_t *)s)[i * is]; break;
            case 4: for (int64_t i = 0; i < inner; i++) ((uint32_t *)dst)[i] = ((const uint32_t *)s)[i * is]; break;
            default: for (int64_t i = 0; i < inner; i++) ((uint64_t *)dst)[i] = ((const uint64_t *)s)[i * is]; break;
            }
        }
        dst += inner * (int64_t)es;
        for (int d = nd - 2; d >= 0; d--) {
            if (++idx[d] < dims[d]) break;
            idx[d] = 0;
        }
    }
}

static void contiguous_strides(const int64_t *dims, int nd, int64_t *st) {
    int64_t s = 1;
    for (int d = nd - 1; d >= 0; d--) {
        st[d] = s;
        s *= dims[d];
    }
}

static int copy_check(sim_check *c) {
    if (data_type_ok(c, 0)) return -1;
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

static int copy_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)n, (void)err, (void)len;
    size_t bytes = (size_t)in[0]->numel * sim_dtype_size(in[0]->dtype);
    if (bytes) memcpy(out[0]->data, in[0]->data, bytes);
    return 0;
}

/* ------------------------------------------------------------------ Transpose */

typedef struct perm_params {
    int has_perm;
    int n;
    int64_t perm[SIM_MAX_DIMS];
} perm_params;

static int transpose_check(sim_check *c) {
    if (data_type_ok(c, 0)) return -1;
    perm_params *pp = sim_params(c, sizeof *pp);
    if (!pp) return sim_check_fail(c, "out of memory");
    size_t n;
    const int64_t *perm = sim_attr_ints(c->node, "perm", &n);
    if (perm) {
        if (n > SIM_MAX_DIMS) return sim_check_fail(c, "perm too long");
        int seen[SIM_MAX_DIMS] = {0};
        for (size_t i = 0; i < n; i++) {
            if (perm[i] < 0 || perm[i] >= (int64_t)n || seen[perm[i]])
                return sim_check_fail(c, "perm is not a permutation");
            seen[perm[i]] = 1;
            pp->perm[i] = perm[i];
        }
        pp->has_perm = 1;
        pp->n = (int)n;
    }
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

static void get_perm(const perm_params *pp, int nd, int64_t *perm) {
    for (int i = 0; i < nd; i++) perm[i] = pp->has_perm ? pp->perm[i] : nd - 1 - i;
}

static int transpose_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    const perm_params *pp = n->params;
    int nd = in[0]->ndim;
    if (pp->has_perm && pp->n != nd) return sim_fail(err, len, "perm has %d entries, input rank is %d", pp->n, nd);
    int64_t perm[SIM_MAX_DIMS];
    get_perm(pp, nd, perm);
    out[0]->ndim = nd;
    for (int i = 0; i < nd; i++) out[0]->dims[i] = in[0]->dims[perm[i]];
    return 0;
}

static int transpose_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)err, (void)len;
    int nd = in[0]->ndim;
    int64_t perm[SIM_MAX_DIMS], ist[SIM_MAX_DIMS], st[SIM_MAX_DIMS];
    get_perm(n->params, nd, perm);
    contiguous_strides(in[0]->dims, nd, ist);
    for (int i = 0; i < nd; i++) st[i] = ist[perm[i]];
    copy_strided(out[0]->data, in[0]->data, sim_dtype_size(in[0]->dtype), nd, out[0]->dims, st);
    return 0;
}

/* ------------------------------------------------------------------ Reshape, Flatten */

static int reshape_check(sim_check *c) {
    if (data_type_ok(c, 0)) return -1;
    if (c->in_dtype[1] != AA_DT_INT64) return sim_check_fail(c, "shape must be int64");
    int64_t az = sim_attr_int(c->node, "allowzero", 0);
    if (az != 0 && az != 1) return sim_check_fail(c, "allowzero=%lld is invalid", (long long)az);
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

static int reshape_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    const sim_tensor *s = in[1];
    if (s->ndim != 1) return sim_fail(err, len, "shape must be 1-D");
    int64_t k = s->numel;
    if (k > SIM_MAX_DIMS) return sim_fail(err, len, "shape too long");
    int allowzero = (int)sim_attr_int(n, "allowzero", 0);
    int neg = -1;
    int64_t prod = 1;
    for (int64_t i = 0; i < k; i++) {
        int64_t d = sim_get_int(s, i);
        if (d == 0 && !allowzero) {
            if (i >= in[0]->ndim) return sim_fail(err, len, "shape[%lld]=0 copies a missing input dim", (long long)i);
            d = in[0]->dims[i];
        } else if (d == -1) {
            if (neg >= 0) return sim_fail(err, len, "more than one -1 in shape");
            neg = (int)i;
            d = 1;
        } else if (d < 0) {
            return sim_fail(err, len, "invalid shape entry %lld", (long long)d);
        }
        out[0]->dims[i] = d;
        prod *= d;
    }
    if (neg >= 0) {
        if (prod == 0 || in[0]->numel % prod) return sim_fail(err, len, "cannot infer the -1 dim");
        out[0]->dims[neg] = in[0]->numel / prod;
        prod *= out[0]->dims[neg];
    }
    if (prod != in[0]->numel) return sim_fail(err, len, "%lld elements cannot be reshaped to %lld", (long long)in[0]->numel, (long long)prod);
    out[0]->ndim = (int32_t)k;
    return 0;
}

static int flatten_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    int nd = in[0]->ndim;
    int64_t axis = sim_attr_int(n, "axis", 1);
    if (axis < -nd || axis > nd) return sim_fail(err, len, "axis %lld out of range", (long long)axis);
    if (axis < 0) axis += nd;
    out[0]->ndim = 2;
    out[0]->dims[0] = sim_numel(in[0]->dims, (int)axis);
    out[0]->dims[1] = sim_numel(in[0]->dims + axis, nd - (int)axis);
    return 0;
}

/* ------------------------------------------------------------------ Squeeze, Unsqueeze */

static int axes_check(sim_check *c) {
    if (data_type_ok(c, 0)) return -1;
    if (c->node->n_in > 1 && c->node->in[1] >= 0 && c->in_dtype[1] != AA_DT_INT64)
        return sim_check_fail(c, "axes must be int64");
    if (strcmp(c->node->op_type, "Unsqueeze") == 0 && (c->node->n_in < 2 || c->node->in[1] < 0))
        return sim_check_fail(c, "axes input is required");
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

static int squeeze_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    int nd = in[0]->ndim;
    char drop[SIM_MAX_DIMS] = {0};
    if (n->n_in > 1 && in[1]) {
        for (int64_t i = 0; i < in[1]->numel; i++) {
            int64_t a;
            if (sim_norm_axis(sim_get_int(in[1], i), nd, &a)) return sim_fail(err, len, "axis out of range");
            if (in[0]->dims[a] != 1) return sim_fail(err, len, "cannot squeeze dim %lld of size %lld", (long long)a, (long long)in[0]->dims[a]);
            drop[a] = 1;
        }
    } else {
        for (int d = 0; d < nd; d++) drop[d] = in[0]->dims[d] == 1;
    }
    int k = 0;
    for (int d = 0; d < nd; d++)
        if (!drop[d]) out[0]->dims[k++] = in[0]->dims[d];
    out[0]->ndim = k;
    return 0;
}

static int unsqueeze_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)n;
    int on = in[0]->ndim + (int)in[1]->numel;
    if (on > SIM_MAX_DIMS) return sim_fail(err, len, "rank too large");
    char ins[SIM_MAX_DIMS] = {0};
    for (int64_t i = 0; i < in[1]->numel; i++) {
        int64_t a;
        if (sim_norm_axis(sim_get_int(in[1], i), on, &a)) return sim_fail(err, len, "axis out of range");
        if (ins[a]) return sim_fail(err, len, "duplicate axis");
        ins[a] = 1;
    }
    int k = 0;
    for (int d = 0; d < on; d++) out[0]->dims[d] = ins[d] ? 1 : in[0]->dims[k++];
    out[0]->ndim = on;
    return 0;
}

/* ------------------------------------------------------------------ Concat */

static int concat_check(sim_check *c) {
    if (!sim_attr_get(c->node, "axis")) return sim_check_fail(c, "attribute 'axis' is required");
    for (uint32_t i = 0; i < c->node->n_in; i++) {
        if (c->node->in[i] < 0) return sim_check_fail(c, "omitted input");
        if (c->in_dtype[i] != c->in_dtype[0]) return sim_check_fail(c, "input dtypes differ");
    }
    if (data_type_ok(c, 0)) return -1;
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

static int concat_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    int nd = in[0]->ndim;
    int64_t axis;
    if (sim_norm_axis(sim_attr_int(n, "axis", 0), nd, &axis)) return sim_fail(err, len, "axis out of range");
    int64_t total = 0;
    for (uint32_t i = 0; i < n->n_in; i++) {
        if (in[i]->ndim != nd) return sim_fail(err, len, "input ranks differ");
        for (int d = 0; d < nd; d++)
            if (d != axis && in[i]->dims[d] != in[0]->dims[d]) return sim_fail(err, len, "input %u: dim %d differs", i, d);
        total += in[i]->dims[axis];
    }
    out[0]->ndim = nd;
    memcpy(out[0]->dims, in[0]->dims, sizeof(int64_t) * (size_t)nd);
    out[0]->dims[axis] = total;
    return 0;
}

static int concat_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    (void)err, (void)len;
    int nd = out[0]->ndim;
    int64_t axis;
    sim_norm_axis(sim_attr_int(n, "axis", 0), nd, &axis);
    size_t es = sim_dtype_size(out[0]->dtype);
    int64_t outer = sim_numel(out[0]->dims, (int)axis);
    int64_t inner = sim_numel(out[0]->dims + axis + 1, nd - (int)axis - 1);
    int64_t orow = out[0]->dims[axis] * inner;
    int64_t off = 0;
    for (uint32_t i = 0; i < n->n_in; i++) {
        int64_t row = in[i]->dims[axis] * inner;
        for (int64_t o = 0; o < outer; o++)
            memcpy((char *)out[0]->data + (o * orow + off) * (int64_t)es, (const char *)in[i]->data + o * row * (int64_t)es, (size_t)row * es);
        off += row;
    }
    return 0;
}

/* ------------------------------------------------------------------ Slice */

static int slice_check(sim_check *c) {
    if (data_type_ok(c, 0)) return -1;
    for (uint32_t i = 1; i < c->node->n_in; i++)
        if (c->node->in[i] >= 0 && !sim_dtype_in(c->in_dtype[i], idx_types))
            return sim_check_fail(c, "input %u must be int32 or int64", i);
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

/* starts/steps in elements per dim of the input */
static int slice_plan(const sim_node *n, sim_tensor *const *in, int64_t *start, int64_t *step, int64_t *count, char *err, size_t len) {
    int nd = in[0]->ndim;
    for (int d = 0; d < nd; d++) {
        start[d] = 0;
        step[d] = 1;
        count[d] = in[0]->dims[d];
    }
    int64_t k = in[1]->numel;
    if (in[2]->numel != k) return sim_fail(err, len, "starts and ends differ in length");
    const sim_tensor *axes = n->n_in > 3 ? in[3] : NULL;
    const sim_tensor *steps = n->n_in > 4 ? in[4] : NULL;
    if ((axes && axes->numel != k) || (steps && steps->numel != k)) return sim_fail(err, len, "axes/steps length differs");
    char seen[SIM_MAX_DIMS] = {0};
    for (int64_t i = 0; i < k; i++) {
        int64_t a = i;
        if (axes && sim_norm_axis(sim_get_int(axes, i), nd, &a)) return sim_fail(err, len, "axis out of range");
        if (!axes && i >= nd) return sim_fail(err, len, "too many starts");
        if (seen[a]) return sim_fail(err, len, "duplicate axis");
        seen[a] = 1;
        int64_t dim = in[0]->dims[a];
        int64_t st = steps ? sim_get_int(steps, i) : 1;
        if (st == 0) return sim_fail(err, len, "step 0");
        int64_t s = sim_get_int(in[1], i), e = sim_get_int(in[2], i);
        if (s < 0) s += dim;
        if (e < 0) e += dim;
        int64_t cnt;
        if (st > 0) {
            s = s < 0 ? 0 : s > dim ? dim : s;
            e = e < 0 ? 0 : e > dim ? dim : e;
            cnt = e > s ? (e - s + st - 1) / st : 0;
        } else {
            s = s < 0 ? -1 : s > dim - 1 ? dim - 1 : s;
            e = e < -1 ? -1 : e > dim - 1 ? dim - 1 : e;
            cnt = s > e ? (s - e + (-st) - 1) / (-st) : 0;
        }
        start[a] = s;
        step[a] = st;
        count[a] = cnt;
    }
    return 0;
}

static int slice_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    int64_t start[SIM_MAX_DIMS], step[SIM_MAX_DIMS];
    if (slice_plan(n, in, start, step, out[0]->dims, err, len)) return -1;
    out[0]->ndim = in[0]->ndim;
    return 0;
}

static int slice_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    int nd = in[0]->ndim;
    int64_t start[SIM_MAX_DIMS], step[SIM_MAX_DIMS], count[SIM_MAX_DIMS], ist[SIM_MAX_DIMS], st[SIM_MAX_DIMS];
    if (slice_plan(n, in, start, step, count, err, len)) return -1;
    if (out[0]->numel == 0) return 0;
    contiguous_strides(in[0]->dims, nd, ist);
    int64_t off = 0;
    for (int d = 0; d < nd; d++) {
        off += start[d] * ist[d];
        st[d] = step[d] * ist[d];
    }
    size_t es = sim_dtype_size(in[0]->dtype);
    copy_strided(out[0]->data, (const char *)in[0]->data + off * (int64_t)es, es, nd, count, st);
    return 0;
}

/* ------------------------------------------------------------------ Gather */

static int gather_check(sim_check *c) {
    if (data_type_ok(c, 0)) return -1;
    if (!sim_dtype_in(c->in_dtype[1], idx_types)) return sim_check_fail(c, "indices must be int32 or int64");
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

static int gather_shape(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    int nd = in[0]->ndim;
    int64_t axis;
    if (sim_norm_axis(sim_attr_int(n, "axis", 0), nd, &axis)) return sim_fail(err, len, "axis out of range");
    int on = nd - 1 + in[1]->ndim;
    if (on > SIM_MAX_DIMS) return sim_fail(err, len, "rank too large");
    int k = 0;
    for (int d = 0; d < axis; d++) out[0]->dims[k++] = in[0]->dims[d];
    for (int d = 0; d < in[1]->ndim; d++) out[0]->dims[k++] = in[1]->dims[d];
    for (int d = (int)axis + 1; d < nd; d++) out[0]->dims[k++] = in[0]->dims[d];
    out[0]->ndim = on;
    return 0;
}

static int gather_exec(const sim_node *n, sim_tensor *const *in, sim_tensor *const *out, char *err, size_t len) {
    int nd = in[0]->ndim;
    int64_t axis;
    sim_norm_axis(sim_attr_int(n, "axis", 0), nd, &axis);
    size_t es = sim_dtype_size(in[0]->dtype);
    int64_t outer = sim_numel(in[0]->dims, (int)axis);
    int64_t dim = in[0]->dims[axis];
    int64_t inner = sim_numel(in[0]->dims + axis + 1, nd - (int)axis - 1);
    int64_t ni = in[1]->numel;
    size_t chunk = (size_t)inner * es;
    char *o = out[0]->data;
    for (int64_t j = 0; j < ni; j++) {
        int64_t ix = sim_get_int(in[1], j);
        if (ix < -dim || ix >= dim) return sim_fail(err, len, "index %lld out of range [-%lld, %lld)", (long long)ix, (long long)dim, (long long)dim);
    }
    for (int64_t a = 0; a < outer; a++) {
        const char *src = (const char *)in[0]->data + (size_t)(a * dim) * chunk;
        for (int64_t j = 0; j < ni; j++) {
            int64_t ix = sim_get_int(in[1], j);
            if (ix < 0) ix += dim;
            memcpy(o, src + (size_t)ix * chunk, chunk);
            o += chunk;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ table */

static const char *const no_attrs[] = {NULL};
static const char *const perm_attrs[] = {"perm", NULL};
static const char *const reshape_attrs[] = {"allowzero", NULL};
static const char *const axis_attrs[] = {"axis", NULL};

const sim_op sim_ops_shape[] = {
    {"Transpose", 1, 1, 1, 1, perm_attrs, transpose_check, transpose_shape, transpose_exec, 0, 0},
    {"Reshape", 2, 2, 1, 1, reshape_attrs, reshape_check, reshape_shape, copy_exec, 0, 1u << 1},
    {"Flatten", 1, 1, 1, 1, axis_attrs, copy_check, flatten_shape, copy_exec, 0, 0},
    {"Squeeze", 1, 2, 1, 1, no_attrs, axes_check, squeeze_shape, copy_exec, 0, 1u << 1},
    {"Unsqueeze", 2, 2, 1, 1, no_attrs, axes_check, unsqueeze_shape, copy_exec, 0, 1u << 1},
    {"Concat", 1, 16, 1, 1, axis_attrs, concat_check, concat_shape, concat_exec, 0, 0},
    {"Slice", 3, 5, 1, 1, no_attrs, slice_check, slice_shape, slice_exec, 0, 0xfu << 1},
    {"Gather", 2, 2, 1, 1, axis_attrs, gather_check, gather_shape, gather_exec, 0, 0},
    {NULL, 0, 0, 0, 0, NULL, NULL, NULL, NULL, 0, 0},
};
