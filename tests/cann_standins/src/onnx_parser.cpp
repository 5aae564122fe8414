/* Stand-in libfmk_onnx_parser.so: aclgrphParseONNXFromMem keeps the raw ONNX bytes in the
 * ge::Graph; the stand-in AddGraph hands them to the sim, which parses them with onnxruntime. */
#include <string>

#include "parser/onnx_parser.h"
#include "standin.h"

namespace ge {
graphStatus aclgrphParseONNXFromMem(const char *buffer, size_t size,
                                    const std::map<ge::AscendString, ge::AscendString> &parser_params,
                                    ge::Graph &graph) {
  (void)parser_params;
  if (buffer == nullptr || size == 0) {
    ge_standin_note_error("stand-in aclgrphParseONNXFromMem: empty model buffer");
    return GRAPH_FAILED;
  }
  GraphUtilsEx::SetModel(graph, buffer, size);
  return GRAPH_SUCCESS;
}
}  // namespace ge
