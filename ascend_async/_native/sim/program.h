/* The lowered graph program: what the device threads execute for a graph (program.c and the
 * kernels_*.c files). Built on the host by the aa_sim_program_* calls (cdefs/sim.h).
 *
 * Thread safety: a finalized program is immutable; infer and execute may run concurrently on
 * any number of threads (the same graph runs on several streams at once). Per-run state lives
 * on the executing thread's stack or heap, never in the program.
 */
#ifndef AA_SIM_PROGRAM_H
#define AA_SIM_PROGRAM_H

#include "sim_api.h"

#ifdef __cplusplus
extern "C" {
#endif

void sim_program_retain(aa_sim_program *program);
int sim_program_is_finalized(const aa_sim_program *program);
size_t sim_program_n_inputs(const aa_sim_program *program);
size_t sim_program_n_outputs(const aa_sim_program *program);
/* Total bytes of initializers (charged to device memory when the graph is loaded). */
size_t sim_program_initializer_bytes(const aa_sim_program *program);

/* Host side, at submit: check the inputs' dtype/rank/dims against the program's inputs and
 * infer every output's dtype, ndim and dims (written into outputs[i]; addr untouched).
 * Returns 0, or -1 with a message naming the input or node in err. */
int sim_program_infer(const aa_sim_program *program, const aa_tensor *inputs, size_t n_inputs,
                      aa_tensor *outputs, size_t n_outputs, char *err, size_t err_len);

/* Device side, on a worker thread: run the program. inputs[i].addr / outputs[i].addr are
 * readable/writable memory of at least the inferred sizes, shapes as inferred.
 * Returns 0, or an aclError code with a message in err. */
int sim_program_execute(const aa_sim_program *program, const aa_tensor *inputs, size_t n_inputs,
                        const aa_tensor *outputs, size_t n_outputs, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* AA_SIM_PROGRAM_H */
