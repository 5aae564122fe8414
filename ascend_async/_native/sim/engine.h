/* The sim's graph engine: onnxruntime's C API behind a small face for session.c.
 *
 * A sim_model is one ONNX model compiled by onnxruntime (an OrtSession on the CPU provider)
 * plus its input/output signature. Models are shared: every graph id of every session on the
 * process that adds the same model (the same bytes, compared, with the same thread count and
 * external-data folder) gets the same compiled model (GE's graph replicas on several streams
 * are one model here), reference counted.
 *
 * Threads: sim_model_get runs on the adding host thread (it can take seconds: onnxruntime
 * parses, optimises and plans the graph there). sim_model_resolve runs on the submitting
 * thread. sim_model_run runs on a device worker thread, several at once on one model
 * (OrtSession::Run is thread-safe); it never touches Python or the GIL. A model is immutable
 * after sim_model_get returns.
 */
#ifndef AA_SIM_ENGINE_H
#define AA_SIM_ENGINE_H

#include "sim_api.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sim_model sim_model;

/* Opens onnxruntime's shared library at `path` (once per process; later calls are no-ops
 * that return 0). Returns 0, or -1 with a message in err. */
int sim_engine_open(const char *path, char *err, size_t err_len);
int sim_engine_is_open(void);

/* The compiled model for these ONNX bytes (shared, with a reference for the caller), or NULL
 * with onnxruntime's message in err. `not_implemented` is set when onnxruntime refused an op
 * it has no kernel for.
 *
 * `data_dir` (NULL: none) is the folder the model's external data is read from; onnxruntime
 * refuses locations that leave it. `data_stamp` (NULL: none) is the caller's description of
 * those files (their sizes and times), so a weight file changed on disk is a new model.
 * Models are shared only when they are the same model: equal SHA-256 digests, equal bytes
 * (compared, never assumed from the digest), thread count, data_dir and data_stamp. */
sim_model *sim_model_get(const void *bytes, size_t size, uint32_t threads, const char *data_dir,
                         const char *data_stamp, int *not_implemented, char *err, size_t err_len);
void sim_model_release(sim_model *model);

size_t sim_model_n_inputs(const sim_model *model);
size_t sim_model_n_outputs(const sim_model *model);
/* 1 when every input and output dim is fixed in the model (GE would compile it as a static
 * graph), 0 otherwise (an unknown dim, or a rank onnxruntime does not know). */
int sim_model_is_static(const sim_model *model);
/* Bytes of the serialized model (the sim charges them to device memory at load). */
size_t sim_model_bytes(const sim_model *model);
/* Input (output = 0) or output `i`: its name (NULL past the end), ge::DataType, rank and dims
 * (-1: symbolic or unknown; `dims` holds AA_MAX_DIMS). For the offline-model container. */
const char *sim_model_io(const sim_model *m, int output, size_t i, int32_t *dtype, uint32_t *ndim, int64_t *dims);

/* Checks the inputs' dtype and dims against the model (symbolic dims bound consistently,
 * element counts that fit in memory) and describes each output: dtype always; ndim and dims
 * when they follow from the inputs' shapes. Returns 0 when every output's shape is known
 * (a static run), 1 when some output's shape depends on values (outputs are placed after the
 * run), -1 with a message in err for bad inputs. */
int sim_model_resolve(const sim_model *model, const aa_tensor *inputs, size_t n_inputs, aa_tensor *outputs,
                      size_t n_outputs, char *err, size_t err_len);

/* Receives one output of a run whose outputs were not bound: `desc` carries dtype, ndim and
 * dims; `data` holds `nbytes` bytes, valid only during the call. Returns 0 or an aclError
 * (message in err). */
typedef int (*sim_place_fn)(void *ctx, size_t index, const aa_tensor *desc, const void *data, size_t nbytes,
                            char *err, size_t err_len);

/* Runs the model once. inputs[i].addr hold the data (shape as in the tensor). When `place` is
 * NULL, outputs[i] describe memory of the resolved shape that receives the results; otherwise
 * onnxruntime allocates them and each one is handed to `place`. Returns 0 or an aclError with
 * onnxruntime's message in err. */
int sim_model_run(const sim_model *model, const aa_tensor *inputs, size_t n_inputs, const aa_tensor *outputs,
                  size_t n_outputs, sim_place_fn place, void *ctx, char *err, size_t err_len);

/* Checked arithmetic for shapes: the byte count of `dtype` x dims, or 0 with *ok = 0 when a
 * dim is negative or the product overflows. */
size_t sim_shape_nbytes(int32_t dtype, uint32_t ndim, const int64_t *dims, int *ok);

#ifdef __cplusplus
}
#endif

#endif /* AA_SIM_ENGINE_H */
