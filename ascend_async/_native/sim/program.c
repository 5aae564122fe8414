/* The lowered graph program: the builder (aa_sim_program_* in cdefs/sim.h), finalize
 * (topological order, per-node op/attribute/dtype validation), shape inference at submit time
 * (sim_program_infer) and execution on a device thread (sim_program_execute), reference
 * counting, and the small helpers the kernels share (attributes, dtypes, fp16 conversion).
 *
 * A finalized program is never written again; infer and execute keep all per-run state in
 * heap blocks they own, so any number of threads may run the same program at once.
 */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "stats.h"

/* ------------------------------------------------------------------ helpers */

int sim_fail(char *err, size_t len, const char *fmt, ...) {
    if (err && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, len, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int sim_check_fail(sim_check *c, const char *fmt, ...) {
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(c->err, c->err_len, "%s (node '%s'): %s", c->node->op_type, c->node->name, msg);
    return -1;
}

static char *dupstr(const char *s) {
    if (!s) s = "";
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

const sim_attr *sim_attr_get(const sim_node *node, const char *name) {
    for (size_t i = 0; i < node->n_attrs; i++)
        if (strcmp(node->attrs[i].name, name) == 0) return &node->attrs[i];
    return NULL;
}

int64_t sim_attr_int(const sim_node *node, const char *name, int64_t dflt) {
    const sim_attr *a = sim_attr_get(node, name);
    return (a && a->kind == SIM_ATTR_INT) ? a->i : dflt;
}

double sim_attr_float(const sim_node *node, const char *name, double dflt) {
    const sim_attr *a = sim_attr_get(node, name);
    if (!a) return dflt;
    if (a->kind == SIM_ATTR_FLOAT) return a->f;
    if (a->kind == SIM_ATTR_INT) return (double)a->i;
    return dflt;
}

const char *sim_attr_str(const sim_node *node, const char *name, const char *dflt) {
    const sim_attr *a = sim_attr_get(node, name);
    return (a && a->kind == SIM_ATTR_STRING) ? a->s : dflt;
}

const int64_t *sim_attr_ints(const sim_node *node, const char *name, size_t *n) {
    const sim_attr *a = sim_attr_get(node, name);
    if (!a || a->kind != SIM_ATTR_INTS) {
        *n = 0;
        return NULL;
    }
    *n = a->n;
    return a->ints;
}

size_t sim_dtype_size(int32_t dtype) {
    switch (dtype) {
    case AA_DT_FLOAT: case AA_DT_INT32: case AA_DT_UINT32: return 4;
    case AA_DT_FLOAT16: case AA_DT_INT16: case AA_DT_UINT16: case AA_DT_BF16: return 2;
    case AA_DT_INT8: case AA_DT_UINT8: case AA_DT_BOOL: return 1;
    case AA_DT_INT64: case AA_DT_UINT64: case AA_DT_DOUBLE: return 8;
    default: return 0;
    }
}

const char *sim_dtype_name(int32_t dtype) {
    switch (dtype) {
    case AA_DT_FLOAT: return "float32";
    case AA_DT_FLOAT16: return "float16";
    case AA_DT_INT8: return "int8";
    case AA_DT_INT32: return "int32";
    case AA_DT_UINT8: return "uint8";
    case AA_DT_INT16: return "int16";
    case AA_DT_UINT16: return "uint16";
    case AA_DT_UINT32: return "uint32";
    case AA_DT_INT64: return "int64";
    case AA_DT_UINT64: return "uint64";
    case AA_DT_DOUBLE: return "float64";
    case AA_DT_BOOL: return "bool";
    case AA_DT_BF16: return "bfloat16";
    default: return "undefined";
    }
}

int64_t sim_numel(const int64_t *dims, int ndim) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= dims[i];
    return n;
}

void sim_set_numel(sim_tensor *t) { t->numel = sim_numel(t->dims, t->ndim); }

int64_t sim_get_int(const sim_tensor *t, int64_t i) {
    if (t->dtype == AA_DT_INT64) return ((const int64_t *)t->data)[i];
    if (t->dtype == AA_DT_INT32) return ((const int32_t *)t->data)[i];
    return 0;
}

int sim_norm_axis(int64_t axis, int rank, int64_t *out) {
    if (axis < -rank || axis >= rank) return -1;
    *out = axis < 0 ? axis + rank : axis;
    return 0;
}

int sim_dtype_in(int32_t dtype, const int32_t *allowed) {
    for (; *allowed >= 0; allowed++)
        if (*allowed == dtype) return 1;
    return 0;
}

void *sim_params(sim_check *c, size_t size) {
    free(c->node->params);
    c->node->params = calloc(1, size);
    return c->node->params;
}

float sim_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while ((man & 0x400u) == 0);
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13); /* NaN payloads kept, as numpy does */
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t sim_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
    {
        uint32_t payload = absx > 0x7f800000u ? ((absx >> 13) & 0x3ffu) : 0;
        if (absx > 0x7f800000u && payload == 0) payload = 1; /* keep it a NaN */
        return (uint16_t)(sign | 0x7c00u | payload);
    }
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (absx < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        if (absx < 0x33000000u) return (uint16_t)sign; /* < 2^-25: rounds to 0 */
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14 - (e - 127) + 13 - 1 ... yields the half mantissa */
        /* value = m * 2^(e-150); half subnormal unit = 2^-24 -> q = m >> (126 - e) */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t h = ((absx >> 13) - ((127 - 15) << 10));
    uint32_t rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

/* ------------------------------------------------------------------ builder */

static int prog_error(aa_sim_program *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int prog_error(aa_sim_program *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->error, sizeof p->error, fmt, ap);
    va_end(ap);
    p->failed = 1;
    return -1;
}

aa_sim_program *aa_sim_program_new(void) {
    aa_sim_program *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->refcount = 1;
    SIM_STAT_ADD(programs, 1);
    return p;
}

void sim_program_retain(aa_sim_program *program) {
    if (program) __atomic_add_fetch(&program->refcount, 1, __ATOMIC_RELAXED);
}

static void free_node(sim_node *n) {
    free(n->op_type);
    free(n->name);
    free(n->in);
    free(n->out);
    for (size_t i = 0; i < n->n_attrs; i++) {
        sim_attr *a = &n->attrs[i];
        free(a->name);
        free(a->ints);
        free(a->floats);
        free(a->s);
        free(a->t_data);
    }
    free(n->attrs);
    free(n->params);
}

void aa_sim_program_release(aa_sim_program *p) {
    if (!p) return;
    if (__atomic_sub_fetch(&p->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    for (size_t i = 0; i < p->n_values; i++) {
        free(p->values[i].name);
        free(p->values[i].init);
    }
    for (size_t i = 0; i < p->n_nodes; i++) free_node(&p->nodes[i]);
    free(p->values);
    free(p->nodes);
    free(p->inputs);
    free(p->outputs);
    free(p->order);
    free(p);
    SIM_STAT_ADD(programs, -1);
}

const char *aa_sim_program_error(const aa_sim_program *p) { return p ? p->error : "no program"; }

int sim_program_is_finalized(const aa_sim_program *p) { return p && p->finalized; }
size_t sim_program_n_inputs(const aa_sim_program *p) { return p->n_inputs; }
size_t sim_program_n_outputs(const aa_sim_program *p) { return p->n_outputs; }
size_t sim_program_initializer_bytes(const aa_sim_program *p) { return p->init_bytes; }

static int grow(void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap * 2 : 16;
    while (nc < need) nc *= 2;
    void *na = realloc(*arr, nc * elem);
    if (!na) return -1;
    memset((char *)na + *cap * elem, 0, (nc - *cap) * elem);
    *arr = na;
    *cap = nc;
    return 0;
}

static int builder_ok(aa_sim_program *p) {
    if (!p) return 0;
    if (p->finalized) {
        prog_error(p, "program is already finalized");
        return 0;
    }
    return 1;
}

int32_t aa_sim_program_add_value(aa_sim_program *p, const char *name, int32_t dtype, int32_t ndim,
                                 const int64_t *dims) {
    if (!builder_ok(p)) return -1;
    if (ndim > SIM_MAX_DIMS) return prog_error(p, "value '%s': rank %d exceeds %d", name ? name : "", ndim, SIM_MAX_DIMS);
    if (dtype != AA_DT_UNDEFINED && sim_dtype_size(dtype) == 0)
        return prog_error(p, "value '%s': unsupported dtype %d", name ? name : "", dtype);
    if (ndim > 0 && !dims) return prog_error(p, "value '%s': dims missing", name ? name : "");
    if (grow((void **)&p->values, &p->cap_values, p->n_values + 1, sizeof(sim_value)))
        return prog_error(p, "out of memory");
    sim_value *v = &p->values[p->n_values];
    memset(v, 0, sizeof *v);
    v->name = dupstr(name);
    v->dtype = dtype;
    v->ndim = ndim < 0 ? -1 : ndim;
    for (int i = 0; i < ndim; i++) {
        if (dims[i] < -1) return prog_error(p, "value '%s': invalid dim %lld", v->name, (long long)dims[i]);
        v->dims[i] = dims[i];
    }
    v->producer = -1;
    v->last_use = -1;
    return (int32_t)p->n_values++;
}

static sim_value *get_value(aa_sim_program *p, int32_t id) {
    if (id < 0 || (size_t)id >= p->n_values) return NULL;
    return &p->values[id];
}

int aa_sim_program_set_initializer(aa_sim_program *p, int32_t value, const void *data, size_t nbytes) {
    if (!builder_ok(p)) return -1;
    sim_value *v = get_value(p, value);
    if (!v) return prog_error(p, "set_initializer: invalid value id %d", value);
    if (v->ndim < 0 || v->dtype == AA_DT_UNDEFINED)
        return prog_error(p, "initializer '%s': dtype and shape must be known", v->name);
    int64_t n = sim_numel(v->dims, v->ndim);
    for (int i = 0; i < v->ndim; i++)
        if (v->dims[i] < 0) return prog_error(p, "initializer '%s': symbolic dim", v->name);
    if ((size_t)n * sim_dtype_size(v->dtype) != nbytes)
        return prog_error(p, "initializer '%s': %zu bytes given, %lld expected", v->name, nbytes,
                          (long long)((size_t)n * sim_dtype_size(v->dtype)));
    free(v->init);
    v->init = malloc(nbytes ? nbytes : 1);
    if (!v->init) return prog_error(p, "out of memory");
    if (nbytes) memcpy(v->init, data, nbytes);
    v->init_bytes = nbytes;
    v->has_init = 1;
    return 0;
}

int aa_sim_program_add_input(aa_sim_program *p, int32_t value) {
    if (!builder_ok(p)) return -1;
    sim_value *v = get_value(p, value);
    if (!v) return prog_error(p, "add_input: invalid value id %d", value);
    if (v->dtype == AA_DT_UNDEFINED || v->ndim < 0)
        return prog_error(p, "input '%s': dtype and rank must be known", v->name);
    if (grow((void **)&p->inputs, &p->cap_inputs, p->n_inputs + 1, sizeof(int32_t)))
        return prog_error(p, "out of memory");
    p->inputs[p->n_inputs++] = value;
    return 0;
}

int aa_sim_program_add_output(aa_sim_program *p, int32_t value) {
    if (!builder_ok(p)) return -1;
    sim_value *v = get_value(p, value);
    if (!v) return prog_error(p, "add_output: invalid value id %d", value);
    if (grow((void **)&p->outputs, &p->cap_outputs, p->n_outputs + 1, sizeof(int32_t)))
        return prog_error(p, "out of memory");
    p->outputs[p->n_outputs++] = value;
    v->is_output = 1;
    return 0;
}

int32_t aa_sim_program_add_node(aa_sim_program *p, const char *op_type, const char *name, int32_t opset,
                                uint32_t n_inputs, const int32_t *inputs, uint32_t n_outputs,
                                const int32_t *outputs) {
    if (!builder_ok(p)) return -1;
    if (!op_type) return prog_error(p, "add_node: op_type missing");
    for (uint32_t i = 0; i < n_inputs; i++)
        if (inputs[i] != -1 && !get_value(p, inputs[i]))
            return prog_error(p, "%s (node '%s'): invalid input value id %d", op_type, name ? name : "", inputs[i]);
    for (uint32_t i = 0; i < n_outputs; i++)
        if (!get_value(p, outputs[i]))
            return prog_error(p, "%s (node '%s'): invalid output value id %d", op_type, name ? name : "", outputs[i]);
    if (grow((void **)&p->nodes, &p->cap_nodes, p->n_nodes + 1, sizeof(sim_node)))
        return prog_error(p, "out of memory");
    sim_node *n = &p->nodes[p->n_nodes];
    memset(n, 0, sizeof *n);
    n->op_type = dupstr(op_type);
    n->name = dupstr(name);
    n->opset = opset;
    n->n_in = n_inputs;
    n->n_out = n_outputs;
    n->in = malloc(sizeof(int32_t) * (n_inputs ? n_inputs : 1));
    n->out = malloc(sizeof(int32_t) * (n_outputs ? n_outputs : 1));
    if (!n->op_type || !n->name || !n->in || !n->out) return prog_error(p, "out of memory");
    if (n_inputs) memcpy(n->in, inputs, sizeof(int32_t) * n_inputs);
    if (n_outputs) memcpy(n->out, outputs, sizeof(int32_t) * n_outputs);
    return (int32_t)p->n_nodes++;
}

static sim_attr *new_attr(aa_sim_program *p, int32_t node, const char *name, int kind) {
    if (!builder_ok(p)) return NULL;
    if (node < 0 || (size_t)node >= p->n_nodes) {
        prog_error(p, "attribute '%s': invalid node id %d", name ? name : "", node);
        return NULL;
    }
    sim_node *n = &p->nodes[node];
    for (size_t i = 0; i < n->n_attrs; i++)
        if (strcmp(n->attrs[i].name, name) == 0) {
            prog_error(p, "%s (node '%s'): duplicate attribute '%s'", n->op_type, n->name, name);
            return NULL;
        }
    sim_attr *na = realloc(n->attrs, sizeof(sim_attr) * (n->n_attrs + 1));
    if (!na) {
        prog_error(p, "out of memory");
        return NULL;
    }
    n->attrs = na;
    sim_attr *a = &na[n->n_attrs++];
    memset(a, 0, sizeof *a);
    a->name = dupstr(name);
    a->kind = kind;
    return a;
}

int aa_sim_program_attr_int(aa_sim_program *p, int32_t node, const char *name, int64_t v) {
    sim_attr *a = new_attr(p, node, name, SIM_ATTR_INT);
    if (!a) return -1;
    a->i = v;
    return 0;
}

int aa_sim_program_attr_float(aa_sim_program *p, int32_t node, const char *name, double v) {
    sim_attr *a = new_attr(p, node, name, SIM_ATTR_FLOAT);
    if (!a) return -1;
    a->f = v;
    return 0;
}

int aa_sim_program_attr_ints(aa_sim_program *p, int32_t node, const char *name, const int64_t *v, size_t n) {
    sim_attr *a = new_attr(p, node, name, SIM_ATTR_INTS);
    if (!a) return -1;
    a->ints = malloc(sizeof(int64_t) * (n ? n : 1));
    if (!a->ints) return prog_error(p, "out of memory");
    if (n) memcpy(a->ints, v, sizeof(int64_t) * n);
    a->n = n;
    return 0;
}

int aa_sim_program_attr_floats(aa_sim_program *p, int32_t node, const char *name, const float *v, size_t n) {
    sim_attr *a = new_attr(p, node, name, SIM_ATTR_FLOATS);
    if (!a) return -1;
    a->floats = malloc(sizeof(float) * (n ? n : 1));
    if (!a->floats) return prog_error(p, "out of memory");
    if (n) memcpy(a->floats, v, sizeof(float) * n);
    a->n = n;
    return 0;
}

int aa_sim_program_attr_string(aa_sim_program *p, int32_t node, const char *name, const char *v) {
    sim_attr *a = new_attr(p, node, name, SIM_ATTR_STRING);
    if (!a) return -1;
    a->s = dupstr(v);
    return 0;
}

int aa_sim_program_attr_tensor(aa_sim_program *p, int32_t node, const char *name, int32_t dtype,
                               uint32_t ndim, const int64_t *dims, const void *data, size_t nbytes) {
    sim_attr *a = new_attr(p, node, name, SIM_ATTR_TENSOR);
    if (!a) return -1;
    if (ndim > SIM_MAX_DIMS) return prog_error(p, "attribute '%s': rank too large", name);
    a->t_dtype = dtype;
    a->t_ndim = ndim;
    for (uint32_t i = 0; i < ndim; i++) a->t_dims[i] = dims[i];
    a->t_data = malloc(nbytes ? nbytes : 1);
    if (!a->t_data) return prog_error(p, "out of memory");
    if (nbytes) memcpy(a->t_data, data, nbytes);
    a->t_bytes = nbytes;
    return 0;
}

/* ------------------------------------------------------------------ finalize */

static const sim_op *const *op_tables(void) {
    static const sim_op *const tables[] = {sim_ops_elementwise, sim_ops_shape, sim_ops_linalg,
                                           sim_ops_nn, sim_ops_reduce, NULL};
    return tables;
}

const sim_op *sim_find_op(const char *name) {
    for (const sim_op *const *t = op_tables(); *t; t++)
        for (const sim_op *op = *t; op->name; op++)
            if (strcmp(op->name, name) == 0) return op;
    return NULL;
}

static int check_node(aa_sim_program *p, sim_node *n) {
    const sim_op *op = sim_find_op(n->op_type);
    if (!op) return prog_error(p, "unsupported op type '%s' (node '%s')", n->op_type, n->name);
    n->op = op;
    if (n->opset < 13) return prog_error(p, "%s (node '%s'): opset %d is not supported (13 or newer)", n->op_type, n->name, n->opset);
    if ((int)n->n_in < op->min_in || (int)n->n_in > op->max_in)
        return prog_error(p, "%s (node '%s'): %u inputs given, %d to %d supported", n->op_type, n->name, n->n_in, op->min_in, op->max_in);
    if ((int)n->n_out < op->min_out || (int)n->n_out > op->max_out)
        return prog_error(p, "%s (node '%s'): %u outputs given, %d to %d supported", n->op_type, n->name, n->n_out, op->min_out, op->max_out);
    for (size_t i = 0; i < n->n_attrs; i++) {
        int ok = 0;
        for (const char *const *a = op->attrs; a && *a; a++)
            if (strcmp(*a, n->attrs[i].name) == 0) ok = 1;
        if (!ok) return prog_error(p, "%s (node '%s'): unsupported attribute '%s'", n->op_type, n->name, n->attrs[i].name);
    }
    sim_check c;
    memset(&c, 0, sizeof c);
    c.prog = p;
    c.node = n;
    c.err = p->error;
    c.err_len = sizeof p->error;
    for (uint32_t i = 0; i < n->n_in && i < 16; i++) {
        if (n->in[i] < 0) {
            c.in_dtype[i] = AA_DT_UNDEFINED;
            if (op->const_inputs & (1u << i)) continue;
            continue;
        }
        sim_value *v = &p->values[n->in[i]];
        if (v->dtype == AA_DT_UNDEFINED)
            return prog_error(p, "%s (node '%s'): dtype of input '%s' unknown", n->op_type, n->name, v->name);
        c.in_dtype[i] = v->dtype;
        if ((op->const_inputs & (1u << i)) && !v->has_init)
            return prog_error(p, "%s (node '%s'): input %u ('%s') determines the output shape and must be a constant initializer", n->op_type, n->name, i, v->name);
    }
    for (uint32_t i = 0; i < 8; i++) c.out_dtype[i] = AA_DT_UNDEFINED;
    if (op->check(&c)) {
        p->failed = 1;
        return -1;
    }
    for (uint32_t i = 0; i < n->n_out; i++) {
        sim_value *v = &p->values[n->out[i]];
        int32_t dt = i < 8 ? c.out_dtype[i] : AA_DT_UNDEFINED;
        if (dt == AA_DT_UNDEFINED)
            return prog_error(p, "%s (node '%s'): output %u is not supported", n->op_type, n->name, i);
        if (v->dtype != AA_DT_UNDEFINED && v->dtype != dt)
            return prog_error(p, "%s (node '%s'): output '%s' declared %s but the op gives %s", n->op_type, n->name, v->name, sim_dtype_name(v->dtype), sim_dtype_name(dt));
        v->dtype = dt;
    }
    return 0;
}

int aa_sim_program_finalize(aa_sim_program *p) {
    if (!p) return -1;
    if (p->finalized) return 0;
    if (p->failed) return -1;
    /* producers */
    for (size_t i = 0; i < p->n_values; i++) p->values[i].producer = -1;
    for (size_t i = 0; i < p->n_inputs; i++) {
        sim_value *v = &p->values[p->inputs[i]];
        for (size_t j = 0; j < i; j++)
            if (p->inputs[j] == p->inputs[i]) return prog_error(p, "input '%s' listed twice", v->name);
    }
    for (size_t k = 0; k < p->n_nodes; k++) {
        sim_node *n = &p->nodes[k];
        for (uint32_t i = 0; i < n->n_out; i++) {
            sim_value *v = &p->values[n->out[i]];
            if (v->producer >= 0 || v->has_init)
                return prog_error(p, "%s (node '%s'): value '%s' is assigned more than once", n->op_type, n->name, v->name);
            for (size_t j = 0; j < p->n_inputs; j++)
                if (p->inputs[j] == n->out[i])
                    return prog_error(p, "%s (node '%s'): output '%s' is a graph input", n->op_type, n->name, v->name);
            v->producer = (int)k;
        }
    }
    /* Kahn's algorithm, keeping the given order where possible */
    free(p->order);
    p->order = malloc(sizeof(int32_t) * (p->n_nodes ? p->n_nodes : 1));
    char *done = calloc(p->n_nodes ? p->n_nodes : 1, 1);
    char *ready = calloc(p->n_values ? p->n_values : 1, 1);
    if (!p->order || !done || !ready) {
        free(done);
        free(ready);
        return prog_error(p, "out of memory");
    }
    for (size_t i = 0; i < p->n_values; i++) ready[i] = p->values[i].producer < 0;
    for (size_t i = 0; i < p->n_values; i++) {
        sim_value *v = &p->values[i];
        if (v->producer < 0 && !v->has_init) {
            int is_in = 0;
            for (size_t j = 0; j < p->n_inputs; j++) is_in |= p->inputs[j] == (int32_t)i;
            if (!is_in) ready[i] = 0;
        }
    }
    size_t n_done = 0;
    int progress = 1;
    while (n_done < p->n_nodes && progress) {
        progress = 0;
        for (size_t k = 0; k < p->n_nodes; k++) {
            if (done[k]) continue;
            sim_node *n = &p->nodes[k];
            int ok = 1;
            for (uint32_t i = 0; i < n->n_in; i++)
                if (n->in[i] >= 0 && !ready[n->in[i]]) ok = 0;
            if (!ok) continue;
            done[k] = 1;
            p->order[n_done++] = (int32_t)k;
            for (uint32_t i = 0; i < n->n_out; i++) ready[n->out[i]] = 1;
            progress = 1;
        }
    }
    if (n_done < p->n_nodes) {
        for (size_t k = 0; k < p->n_nodes; k++) {
            if (done[k]) continue;
            sim_node *n = &p->nodes[k];
            for (uint32_t i = 0; i < n->n_in; i++)
                if (n->in[i] >= 0 && !ready[n->in[i]] && p->values[n->in[i]].producer < 0) {
                    sim_value *v = &p->values[n->in[i]];
                    free(done);
                    free(ready);
                    return prog_error(p, "%s (node '%s'): input '%s' is not a graph input, initializer or node output", n->op_type, n->name, v->name);
                }
        }
        free(done);
        free(ready);
        return prog_error(p, "the graph has a cycle");
    }
    for (size_t i = 0; i < p->n_outputs; i++)
        if (!ready[p->outputs[i]]) {
            free(done);
            free(ready);
            return prog_error(p, "output '%s' is not produced", p->values[p->outputs[i]].name);
        }
    free(done);
    free(ready);
    /* validate nodes in order (dtypes propagate) */
    for (size_t k = 0; k < p->n_nodes; k++)
        if (check_node(p, &p->nodes[p->order[k]])) return -1;
    for (size_t i = 0; i < p->n_outputs; i++) {
        sim_value *v = &p->values[p->outputs[i]];
        if (v->dtype == AA_DT_UNDEFINED) return prog_error(p, "output '%s': dtype unknown", v->name);
    }
    /* last uses */
    for (size_t i = 0; i < p->n_values; i++) p->values[i].last_use = -1;
    for (size_t k = 0; k < p->n_nodes; k++) {
        sim_node *n = &p->nodes[p->order[k]];
        for (uint32_t i = 0; i < n->n_in; i++)
            if (n->in[i] >= 0) p->values[n->in[i]].last_use = (int)k;
    }
    p->init_bytes = 0;
    for (size_t i = 0; i < p->n_values; i++) p->init_bytes += p->values[i].init_bytes;
    p->error[0] = 0;
    p->finalized = 1;
    return 0;
}

/* ------------------------------------------------------------------ infer / execute */

/* Fills t[] (one per value) with shapes; input data pointers taken from inputs[i].addr when
 * with_data is set. Initializers always carry their data. */
static int run_shapes(const aa_sim_program *p, const aa_tensor *inputs, size_t n_inputs,
                      sim_tensor *t, int with_data, char *err, size_t err_len) {
    if (!p->finalized) return sim_fail(err, err_len, "program is not finalized");
    if (n_inputs != p->n_inputs)
        return sim_fail(err, err_len, "%zu inputs given, the graph takes %zu", n_inputs, p->n_inputs);
    for (size_t i = 0; i < p->n_values; i++) {
        const sim_value *v = &p->values[i];
        t[i].dtype = AA_DT_UNDEFINED;
        t[i].ndim = -1;
        t[i].data = NULL;
        if (v->has_init) {
            t[i].dtype = v->dtype;
            t[i].ndim = v->ndim;
            memcpy(t[i].dims, v->dims, sizeof(int64_t) * (size_t)v->ndim);
            t[i].data = v->init;
            sim_set_numel(&t[i]);
        }
    }
    for (size_t i = 0; i < n_inputs; i++) {
        const sim_value *v = &p->values[p->inputs[i]];
        const aa_tensor *in = &inputs[i];
        if (in->dtype != v->dtype)
            return sim_fail(err, err_len, "input '%s': dtype %s given, %s expected", v->name, sim_dtype_name(in->dtype), sim_dtype_name(v->dtype));
        if ((int32_t)in->ndim != v->ndim)
            return sim_fail(err, err_len, "input '%s': rank %u given, %d expected", v->name, in->ndim, v->ndim);
        for (int d = 0; d < v->ndim; d++) {
            if (in->dims[d] < 0) return sim_fail(err, err_len, "input '%s': negative dim %d", v->name, d);
            if (v->dims[d] >= 0 && in->dims[d] != v->dims[d])
                return sim_fail(err, err_len, "input '%s': dim %d is %lld, %lld expected", v->name, d, (long long)in->dims[d], (long long)v->dims[d]);
        }
        sim_tensor *ti = &t[p->inputs[i]];
        ti->dtype = v->dtype;
        ti->ndim = v->ndim;
        memcpy(ti->dims, in->dims, sizeof(int64_t) * (size_t)v->ndim);
        sim_set_numel(ti);
        ti->data = with_data ? in->addr : (v->has_init ? v->init : NULL);
        if (with_data && ti->numel > 0 && !in->addr)
            return sim_fail(err, err_len, "input '%s': no data", v->name);
        if (with_data && in->size && in->size < (size_t)ti->numel * sim_dtype_size(ti->dtype))
            return sim_fail(err, err_len, "input '%s': %zu bytes given, %lld needed", v->name, in->size, (long long)((size_t)ti->numel * sim_dtype_size(ti->dtype)));
    }
    for (size_t k = 0; k < p->n_nodes; k++) {
        const sim_node *n = &p->nodes[p->order[k]];
        sim_tensor *ins[16] = {0}, *outs[8] = {0};
        for (uint32_t i = 0; i < n->n_in && i < 16; i++) ins[i] = n->in[i] >= 0 ? &t[n->in[i]] : NULL;
        for (uint32_t i = 0; i < n->n_out && i < 8; i++) {
            outs[i] = &t[n->out[i]];
            outs[i]->dtype = p->values[n->out[i]].dtype;
        }
        char msg[384];
        msg[0] = 0;
        if (n->op->shape(n, ins, outs, msg, sizeof msg))
            return sim_fail(err, err_len, "%s (node '%s'): %s", n->op_type, n->name, msg);
        for (uint32_t i = 0; i < n->n_out; i++) {
            if (outs[i]->ndim < 0 || outs[i]->ndim > SIM_MAX_DIMS)
                return sim_fail(err, err_len, "%s (node '%s'): output rank unknown", n->op_type, n->name);
            sim_set_numel(outs[i]);
        }
    }
    return 0;
}

int sim_program_infer(const aa_sim_program *p, const aa_tensor *inputs, size_t n_inputs,
                      aa_tensor *outputs, size_t n_outputs, char *err, size_t err_len) {
    if (!p) return sim_fail(err, err_len, "no program");
    if (n_outputs < p->n_outputs)
        return sim_fail(err, err_len, "%zu output slots given, the graph has %zu outputs", n_outputs, p->n_outputs);
    sim_tensor *t = calloc(p->n_values ? p->n_values : 1, sizeof(sim_tensor));
    if (!t) return sim_fail(err, err_len, "out of memory");
    int rc = run_shapes(p, inputs, n_inputs, t, 0, err, err_len);
    if (rc == 0) {
        for (size_t i = 0; i < p->n_outputs; i++) {
            const sim_tensor *o = &t[p->outputs[i]];
            outputs[i].dtype = o->dtype;
            outputs[i].ndim = (uint32_t)o->ndim;
            memcpy(outputs[i].dims, o->dims, sizeof(int64_t) * (size_t)o->ndim);
        }
    }
    free(t);
    return rc;
}

/* Runs one node; fp16 tensors are widened to float32 around kernels that compute in float. */
static int exec_node(const sim_node *n, sim_tensor *const *ins, sim_tensor *const *outs, char *msg, size_t len) {
    int need = 0;
    if (n->op->flags & SIM_F16_VIA_F32) {
        for (uint32_t i = 0; i < n->n_in; i++) need |= ins[i] && ins[i]->dtype == AA_DT_FLOAT16;
        for (uint32_t i = 0; i < n->n_out; i++) need |= outs[i]->dtype == AA_DT_FLOAT16;
    }
    if (!need) return n->op->exec(n, ins, outs, msg, len);
    sim_tensor wi[16], wo[8];
    sim_tensor *pi[16] = {0}, *po[8] = {0};
    int rc = 0;
    for (uint32_t i = 0; i < n->n_in; i++) {
        if (!ins[i]) continue;
        wi[i] = *ins[i];
        pi[i] = &wi[i];
        if (ins[i]->dtype == AA_DT_FLOAT16) {
            float *f = malloc(sizeof(float) * (size_t)(ins[i]->numel ? ins[i]->numel : 1));
            if (!f) rc = -1;
            else {
                const uint16_t *h = ins[i]->data;
                for (int64_t j = 0; j < ins[i]->numel; j++) f[j] = sim_f16_to_f32(h[j]);
            }
            wi[i].data = f;
            wi[i].dtype = AA_DT_FLOAT;
        }
    }
    for (uint32_t i = 0; i < n->n_out; i++) {
        wo[i] = *outs[i];
        po[i] = &wo[i];
        if (outs[i]->dtype == AA_DT_FLOAT16) {
            wo[i].data = malloc(sizeof(float) * (size_t)(outs[i]->numel ? outs[i]->numel : 1));
            wo[i].dtype = AA_DT_FLOAT;
            if (!wo[i].data) rc = -1;
        }
    }
    if (rc) sim_fail(msg, len, "out of memory");
    else rc = n->op->exec(n, pi, po, msg, len);
    for (uint32_t i = 0; i < n->n_out; i++) {
        if (outs[i]->dtype != AA_DT_FLOAT16) continue;
        if (rc == 0) {
            const float *f = wo[i].data;
            uint16_t *h = outs[i]->data;
            for (int64_t j = 0; j < outs[i]->numel; j++) h[j] = sim_f32_to_f16(f[j]);
        }
        free(wo[i].data);
    }
    for (uint32_t i = 0; i < n->n_in; i++)
        if (ins[i] && ins[i]->dtype == AA_DT_FLOAT16) free(wi[i].data);
    return rc;
}

int sim_program_execute(const aa_sim_program *p, const aa_tensor *inputs, size_t n_inputs,
                        const aa_tensor *outputs, size_t n_outputs, char *err, size_t err_len) {
    if (!p) return sim_fail(err, err_len, "no program"), ACL_ERROR_INVALID_PARAM;
    if (n_outputs < p->n_outputs) {
        sim_fail(err, err_len, "%zu output slots given, the graph has %zu outputs", n_outputs, p->n_outputs);
        return ACL_ERROR_INVALID_PARAM;
    }
    size_t nv = p->n_values ? p->n_values : 1;
    sim_tensor *t = calloc(nv, sizeof(sim_tensor));
    char *owned = calloc(nv, 1);           /* 1: malloc'ed here, free after last use */
    int32_t *out_slot = malloc(sizeof(int32_t) * nv); /* output slot bound to a value, or -1 */
    if (!t || !owned || !out_slot) {
        free(t);
        free(owned);
        free(out_slot);
        sim_fail(err, err_len, "out of host memory");
        return ACL_ERROR_BAD_ALLOC;
    }
    int rc = 0;
    if (run_shapes(p, inputs, n_inputs, t, 1, err, err_len)) {
        rc = ACL_ERROR_INVALID_PARAM;
        goto done;
    }
    for (size_t i = 0; i < nv; i++) out_slot[i] = -1;
    for (size_t i = 0; i < p->n_outputs; i++) {
        int32_t v = p->outputs[i];
        const sim_tensor *o = &t[v];
        size_t need = (size_t)o->numel * sim_dtype_size(o->dtype);
        if (need && !outputs[i].addr) {
            sim_fail(err, err_len, "output '%s': no memory", p->values[v].name);
            rc = ACL_ERROR_INVALID_PARAM;
            goto done;
        }
        if (outputs[i].size && outputs[i].size < need) {
            sim_fail(err, err_len, "output '%s': %zu bytes given, %zu needed", p->values[v].name, outputs[i].size, need);
            rc = ACL_ERROR_INVALID_PARAM;
            goto done;
        }
        if (p->values[v].producer >= 0 && out_slot[v] < 0) out_slot[v] = (int32_t)i;
    }
    for (size_t k = 0; k < p->n_nodes; k++) {
        const sim_node *n = &p->nodes[p->order[k]];
        sim_tensor *ins[16] = {0}, *outs[8] = {0};
        for (uint32_t i = 0; i < n->n_in && i < 16; i++) ins[i] = n->in[i] >= 0 ? &t[n->in[i]] : NULL;
        for (uint32_t i = 0; i < n->n_out && i < 8; i++) {
            int32_t v = n->out[i];
            outs[i] = &t[v];
            if (out_slot[v] >= 0) {
                outs[i]->data = outputs[out_slot[v]].addr;
            } else {
                size_t bytes = (size_t)t[v].numel * sim_dtype_size(t[v].dtype);
                outs[i]->data = malloc(bytes ? bytes : 1);
                if (!outs[i]->data) {
                    sim_fail(err, err_len, "%s (node '%s'): out of host memory", n->op_type, n->name);
                    rc = ACL_ERROR_BAD_ALLOC;
                    goto done;
                }
                owned[v] = 1;
            }
        }
        char msg[384];
        msg[0] = 0;
        if (exec_node(n, ins, outs, msg, sizeof msg)) {
            sim_fail(err, err_len, "%s (node '%s'): %s", n->op_type, n->name, msg);
            rc = ACL_ERROR_RT_AICORE_EXCEPTION;
            goto done;
        }
        for (uint32_t i = 0; i < n->n_in; i++) {
            int32_t v = n->in[i];
            if (v >= 0 && owned[v] && p->values[v].last_use == (int)k) {
                free(t[v].data);
                t[v].data = NULL;
                owned[v] = 0;
            }
        }
    }
    /* outputs not bound to a node's result (graph inputs, initializers, repeats) */
    for (size_t i = 0; i < p->n_outputs; i++) {
        int32_t v = p->outputs[i];
        const sim_tensor *o = &t[v];
        size_t bytes = (size_t)o->numel * sim_dtype_size(o->dtype);
        if (bytes && o->data && outputs[i].addr != o->data) memcpy(outputs[i].addr, o->data, bytes);
    }
done:
    for (size_t i = 0; i < p->n_values; i++)
        if (owned[i]) free(t[i].data);
    free(t);
    free(owned);
    free(out_slot);
    return rc;
}
