/* What the stand-in GE libraries share (not part of any CANN header): the Graph body (the ONNX
 * bytes the parser was given; the sim's AddGraph parses them), a thread-local error text behind
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
  explicit GraphImpl(std::string model) : model_(std::move(model)) {}
  const std::string &model() const { return model_; }

 private:
  std::string model_; /* the serialized ONNX model */
};

class GraphUtilsEx {
 public:
  /* The graph's ONNX bytes, or nullptr for a graph without a body. */
  static const std::string *Model(const Graph &graph);
  static void SetModel(Graph &graph, const char *data, size_t size);
};
}  // namespace ge

extern "C" {
/* Live GE-owned output tensors handed out by the stand-in GeSession (their TensorData manager
 * has not been told kFreeTensor yet). */
int64_t ge_standin_live_outputs(void);
/* Live MemBlocks the stand-in obtained from registered ge::Allocators and not yet freed. */
int64_t ge_standin_live_blocks(void);
/* Dynamic-shape RunGraphWithStreamAsync runs whose outputs the stand-in has not written into the
 * caller's tensors yet (the stream has not reached the run's update task). */
int64_t ge_standin_late_pending(void);

/* libgraph.so: the thread's pending stand-in error text (GEGetErrorMsgV3 takes it). */
void ge_standin_note_error(const char *text);
}

/* Appends this thread's stand-in error text to `out` and clears it. */
void ge_standin_take_error(std::string &out);

#endif
