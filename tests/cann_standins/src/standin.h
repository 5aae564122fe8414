/* What the stand-in GE libraries share (not part of any CANN header): the Graph body (a lowered
 * sim program), the ONNX lowering hook the tests install, a thread-local error text behind
 * GEGetErrorMsgV3, and leak counters. */
#ifndef AA_STANDIN_H
#define AA_STANDIN_H

#include "standin_rename.h"

#include <cstdint>
#include <string>

#include "graph/graph.h"
#include "sim/sim_api.h" /* the sim's ABI, session functions renamed standin_sim_* */

namespace ge {
class GraphImpl {
 public:
  explicit GraphImpl(aa_sim_program *program) : program_(program) {}
  ~GraphImpl();
  GraphImpl(const GraphImpl &) = delete;
  GraphImpl &operator=(const GraphImpl &) = delete;
  aa_sim_program *program() const { return program_; }

 private:
  aa_sim_program *program_; /* one reference, released by the destructor */
};

class GraphUtilsEx {
 public:
  static aa_sim_program *Program(const Graph &graph);
  /* Takes over one reference to `program`. */
  static void SetProgram(Graph &graph, aa_sim_program *program);
};
}  // namespace ge

extern "C" {
/* Lowers raw ONNX bytes into a finalized sim program (one reference handed over), or returns
 * NULL with a message in err. */
typedef aa_sim_program *(*ge_standin_lowering_fn)(const void *model, size_t size, char *err, size_t err_len);
void ge_standin_set_onnx_lowering(ge_standin_lowering_fn fn);

/* Live GE-owned output tensors handed out by the stand-in GeSession (their TensorData manager
 * has not been told kFreeTensor yet). */
int64_t ge_standin_live_outputs(void);
/* Live MemBlocks the stand-in obtained from registered ge::Allocators and not yet freed. */
int64_t ge_standin_live_blocks(void);

/* libgraph.so: the thread's pending stand-in error text (GEGetErrorMsgV3 takes it). */
void ge_standin_note_error(const char *text);
}

/* Appends this thread's stand-in error text to `out` and clears it. */
void ge_standin_take_error(std::string &out);

#endif
