/* Stand-in for CANN's graph/error_codes.h (metadef inc/external/graph/error_codes.h), which
 * tensor_data.h and parser/onnx_parser.h include for ge::graphStatus. */
#ifndef AA_STANDIN_GRAPH_ERROR_CODES_H
#define AA_STANDIN_GRAPH_ERROR_CODES_H

#include "graph/ge_error_codes.h"

#endif
