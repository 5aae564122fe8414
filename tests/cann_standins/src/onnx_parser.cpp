/* Stand-in libfmk_onnx_parser.so: aclgrphParseONNXFromMem hands the raw ONNX bytes to a
 * lowering hook the test installs (ge_standin_set_onnx_lowering) and keeps the resulting sim
 * program in the ge::Graph. */
#include <atomic>
#include <string>

#include "parser/onnx_parser.h"
#include "standin.h"

namespace {
std::atomic<ge_standin_lowering_fn> g_lowering{nullptr};
}

extern "C" void ge_standin_set_onnx_lowering(ge_standin_lowering_fn fn) { g_lowering.store(fn); }

namespace ge {
graphStatus aclgrphParseONNXFromMem(const char *buffer, size_t size,
                                    const std::map<ge::AscendString, ge::AscendString> &parser_params,
                                    ge::Graph &graph) {
  (void)parser_params;
  const ge_standin_lowering_fn lower = g_lowering.load();
  if (lower == nullptr) {
    ge_standin_note_error("stand-in aclgrphParseONNXFromMem: no ONNX lowering hook installed");
    return GRAPH_FAILED;
  }
  if (buffer == nullptr || size == 0) {
    ge_standin_note_error("stand-in aclgrphParseONNXFromMem: empty model buffer");
    return GRAPH_FAILED;
  }
  char err[512] = {0};
  aa_sim_program *program = lower(buffer, size, err, sizeof(err));
  if (program == nullptr) {
    ge_standin_note_error((std::string("stand-in aclgrphParseONNXFromMem: ") + err).c_str());
    return GRAPH_FAILED;
  }
  GraphUtilsEx::SetProgram(graph, program);
  return GRAPH_SUCCESS;
}
}  // namespace ge
