/* Internal interface between the program (program.c) and the op kernels (kernels_*.c):
 * the program's data structures, the run-time tensor, the op table entry, attribute and
 * dtype helpers, and the fp16 conversions. Not part of any public ABI.
 */
#ifndef AA_SIM_KERNELS_H
#define AA_SIM_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "program.h"

#define SIM_MAX_DIMS AA_MAX_DIMS

/* ---- program structures (built on the host, immutable once finalized) ---- */

enum sim_attr_kind { SIM_ATTR_INT, SIM_ATTR_FLOAT, SIM_ATTR_INTS, SIM_ATTR_FLOATS, SIM_ATTR_STRING, SIM_ATTR_TENSOR };

typedef struct sim_attr {
    char *name;
    int kind;
    int64_t i;
    double f;
    int64_t *ints;
    float *floats;
    size_t n;
    char *s;
    /* tensor attribute */
    int32_t t_dtype;
    uint32_t t_ndim;
    int64_t t_dims[SIM_MAX_DIMS];
    void *t_data;
    size_t t_bytes;
} sim_attr;

typedef struct sim_value {
    char *name;
    int32_t dtype;        /* AA_DT_*, AA_DT_UNDEFINED until finalize infers it */
    int32_t ndim;         /* declared rank, -1 unknown */
    int64_t dims[SIM_MAX_DIMS]; /* declared dims, -1 symbolic */
    void *init;           /* initializer data (owned), or NULL */
    size_t init_bytes;
    int has_init;
    int producer;         /* node index producing it, -1 for inputs/initializers */
    int last_use;         /* position (in exec order) of the last node reading it, -1 none */
    int is_output;
} sim_value;

struct sim_op;

typedef struct sim_node {
    char *op_type;
    char *name;
    int32_t opset;
    uint32_t n_in, n_out;
    int32_t *in, *out;
    sim_attr *attrs;
    size_t n_attrs;
    const struct sim_op *op;
    void *params;         /* op-specific parsed attributes (flat struct, freed with free()) */
} sim_node;

struct aa_sim_program {
    int refcount;
    int finalized;
    int failed;           /* an add call failed: finalize refuses */
    char error[512];
    sim_value *values;
    size_t n_values, cap_values;
    sim_node *nodes;
    size_t n_nodes, cap_nodes;
    int32_t *inputs, *outputs;
    size_t n_inputs, n_outputs, cap_inputs, cap_outputs;
    int32_t *order;       /* execution order (node indices), set by finalize */
    size_t init_bytes;
};

/* ---- run-time tensor ---- */

typedef struct sim_tensor {
    void *data;           /* NULL during shape inference unless the value is a constant */
    int32_t dtype;
    int32_t ndim;
    int64_t dims[SIM_MAX_DIMS];
    int64_t numel;
} sim_tensor;

/* Context handed to an op's check (finalize) function. */
typedef struct sim_check {
    aa_sim_program *prog;
    sim_node *node;
    int32_t in_dtype[16];   /* AA_DT_UNDEFINED for an omitted optional input */
    int32_t out_dtype[8];   /* set by the check function */
    char *err;
    size_t err_len;
} sim_check;

#define SIM_F16_VIA_F32 1u  /* exec sees float32 for every fp16 in/out; results rounded to fp16 */

typedef struct sim_op {
    const char *name;
    int min_in, max_in, min_out, max_out;
    const char *const *attrs;  /* allowed attribute names, NULL-terminated */
    /* finalize: parse attributes into node->params, check dtypes, set out dtypes. 0 or -1. */
    int (*check)(sim_check *c);
    /* infer: output dtype/ndim/dims from inputs (data set only for constants). 0 or -1. */
    int (*shape)(const sim_node *node, sim_tensor *const *in, sim_tensor *const *out, char *err,
                 size_t err_len);
    /* execute: fill outputs (allocated by the caller). 0 or -1. */
    int (*exec)(const sim_node *node, sim_tensor *const *in, sim_tensor *const *out, char *err,
                size_t err_len);
    unsigned flags;
    /* inputs that must be constant initializers (bit i = input i) */
    unsigned const_inputs;
} sim_op;

const sim_op *sim_find_op(const char *name);
extern const sim_op sim_ops_elementwise[];
extern const sim_op sim_ops_shape[];
extern const sim_op sim_ops_linalg[];
extern const sim_op sim_ops_nn[];
extern const sim_op sim_ops_reduce[];

/* ---- helpers (program.c) ---- */

int sim_fail(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int sim_check_fail(sim_check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const sim_attr *sim_attr_get(const sim_node *node, const char *name);
int64_t sim_attr_int(const sim_node *node, const char *name, int64_t dflt);
double sim_attr_float(const sim_node *node, const char *name, double dflt);
const char *sim_attr_str(const sim_node *node, const char *name, const char *dflt);
const int64_t *sim_attr_ints(const sim_node *node, const char *name, size_t *n);
size_t sim_dtype_size(int32_t dtype);
const char *sim_dtype_name(int32_t dtype);
int64_t sim_numel(const int64_t *dims, int ndim);
void sim_set_numel(sim_tensor *t);
/* Reads element i of an integer (int32/int64) tensor as int64. */
int64_t sim_get_int(const sim_tensor *t, int64_t i);
/* Normalizes axis in [-rank, rank-1] (or [-rank, rank] with extra=1); -1 invalid. */
int sim_norm_axis(int64_t axis, int rank, int64_t *out);
/* Checks dtype is one of the listed (terminated by -1). */
int sim_dtype_in(int32_t dtype, const int32_t *allowed);
void *sim_params(sim_check *c, size_t size);

/* broadcasting (kernels_elementwise.c) */
typedef void (*sim_row_fn)(void *ctx, char **ptrs, const int64_t *strides, int64_t n);
int sim_bcast_shape(sim_tensor *const *in, int k, sim_tensor *out, char *err, size_t len);
void sim_bcast_run(const sim_tensor *out, sim_tensor *const *in, int k, const size_t *esize,
                   sim_row_fn fn, void *ctx);

/* C[M,N] (row stride ldc) += A[M,K] (lda) * B[K,N] (ldb), float32 (kernels_linalg.c) */
void sim_sgemm_acc(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                   int64_t ldb, float *C, int64_t ldc);

/* fp16 <-> fp32 (round to nearest even) */
float sim_f16_to_f32(uint16_t h);
uint16_t sim_f32_to_f16(float f);

#define SIM_IS_FLOAT(dt) ((dt) == AA_DT_FLOAT || (dt) == AA_DT_FLOAT16)
#define SIM_IS_INT(dt) ((dt) == AA_DT_INT32 || (dt) == AA_DT_INT64)

#endif /* AA_SIM_KERNELS_H */
