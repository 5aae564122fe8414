/* Stand-in for CANN's exe_graph/runtime/storage_format.h: StorageFormat(origin, storage,
 * expand_dims_type) and the accessors the shim reads (facts §3.1). */
#ifndef AA_STANDIN_EXE_GRAPH_STORAGE_FORMAT_H
#define AA_STANDIN_EXE_GRAPH_STORAGE_FORMAT_H

#include "exe_graph/runtime/expand_dims_type.h"
#include "graph/types.h"

namespace gert {
class StorageFormat {
 public:
  StorageFormat() = default;
  StorageFormat(const ge::Format origin_format, const ge::Format storage_format,
                const ExpandDimsType &expand_dims_type)
      : origin_format_(origin_format), storage_format_(storage_format), expand_dims_type_(expand_dims_type) {}
  ge::Format GetOriginFormat() const { return origin_format_; }
  void SetOriginFormat(const ge::Format f) { origin_format_ = f; }
  ge::Format GetStorageFormat() const { return storage_format_; }
  void SetStorageFormat(const ge::Format f) { storage_format_ = f; }

 private:
  ge::Format origin_format_{ge::FORMAT_ND};
  ge::Format storage_format_{ge::FORMAT_ND};
  ExpandDimsType expand_dims_type_{};
};
}  // namespace gert

#endif
