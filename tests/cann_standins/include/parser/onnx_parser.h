/* Stand-in for CANN's parser/onnx_parser.h (hicann/ge inc/parser/external/parser/onnx_parser.h;
 * facts §7), libfmk_onnx_parser.so: aclgrphParseONNXFromMem(buffer, size, parser_params, graph)
 * returning GRAPH_SUCCESS (0) on success. */
#ifndef AA_STANDIN_PARSER_ONNX_PARSER_H
#define AA_STANDIN_PARSER_ONNX_PARSER_H

#include <cstddef>
#include <map>

#include "graph/ascend_string.h"
#include "graph/error_codes.h"
#include "graph/graph.h"

namespace ge {
graphStatus aclgrphParseONNXFromMem(const char *buffer, size_t size,
                                    const std::map<ge::AscendString, ge::AscendString> &parser_params,
                                    ge::Graph &graph);
}  // namespace ge

#endif
