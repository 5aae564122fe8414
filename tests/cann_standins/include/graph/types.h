/* Stand-in for CANN's graph/types.h (hicann/metadef inc/external/graph/types.h).
 * Only what the shim uses: the DataType and Format enums. Values as in metadef (facts §3.5);
 * enumerators the shim never names are left out, but each enum keeps an enumerator at the top
 * of the real range so that any value static_cast from aa_tensor is within range. */
#ifndef AA_STANDIN_GRAPH_TYPES_H
#define AA_STANDIN_GRAPH_TYPES_H

#include <cstdint>

namespace ge {
using char_t = char; /* graph/types.h: using char_t = char */

/* graph/types.h: enum DataType (same numbering as aclDataType) */
enum DataType {
  DT_FLOAT = 0,
  DT_FLOAT16 = 1,
  DT_INT8 = 2,
  DT_INT32 = 3,
  DT_UINT8 = 4,
  DT_INT16 = 6,
  DT_UINT16 = 7,
  DT_UINT32 = 8,
  DT_INT64 = 9,
  DT_UINT64 = 10,
  DT_DOUBLE = 11,
  DT_BOOL = 12,
  DT_STRING = 13,
  DT_COMPLEX64 = 16,
  DT_COMPLEX128 = 17,
  DT_BF16 = 27,
  DT_UNDEFINED = 28,
  DT_INT4 = 29,
  DT_MAX_STANDIN = 63 /* stand-in only: keeps the enum's value range at 0..63 */
};

/* graph/types.h: enum Format (same numbering as aclFormat) */
enum Format {
  FORMAT_NCHW = 0,
  FORMAT_NHWC = 1,
  FORMAT_ND = 2,
  FORMAT_NC1HWC0 = 3,
  FORMAT_FRACTAL_Z = 4,
  FORMAT_FRACTAL_NZ = 29,
  FORMAT_RESERVED = 40,
  FORMAT_MAX_STANDIN = 255 /* stand-in only: value range 0..255 */
};
}  // namespace ge

#endif
