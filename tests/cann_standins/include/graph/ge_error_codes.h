/* Stand-in for CANN's graph/ge_error_codes.h (metadef inc/external/graph/ge_error_codes.h):
 * ge::graphStatus and the two values the shim compares against (facts §5.4). */
#ifndef AA_STANDIN_GRAPH_GE_ERROR_CODES_H
#define AA_STANDIN_GRAPH_GE_ERROR_CODES_H

#include <cstdint>

namespace ge {
using graphStatus = uint32_t;
const graphStatus GRAPH_SUCCESS = 0;          /* GRAPH_SUCCESS 0 */
const graphStatus GRAPH_FAILED = 0xFFFFFFFF;  /* GRAPH_FAILED 0xFFFFFFFF */
}  // namespace ge

#endif
