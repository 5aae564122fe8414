/* Stand-in for CANN's exe_graph/runtime/expand_dims_type.h: only the default constructor
 * (no dimension expansion), which the shim passes to StorageFormat. */
#ifndef AA_STANDIN_EXE_GRAPH_EXPAND_DIMS_TYPE_H
#define AA_STANDIN_EXE_GRAPH_EXPAND_DIMS_TYPE_H

#include <cstdint>

namespace gert {
class ExpandDimsType {
 public:
  ExpandDimsType() = default;

 private:
  int64_t mask_{0};
};
}  // namespace gert

#endif
