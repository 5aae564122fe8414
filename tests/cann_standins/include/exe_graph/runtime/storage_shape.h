/* Stand-in for CANN's exe_graph/runtime/storage_shape.h: origin shape + storage shape
 * (GetOriginShape / GetStorageShape / Mutable*; facts §3.1). Header-only, as the real one. */
#ifndef AA_STANDIN_EXE_GRAPH_STORAGE_SHAPE_H
#define AA_STANDIN_EXE_GRAPH_STORAGE_SHAPE_H

#include "exe_graph/runtime/shape.h"

namespace gert {
class StorageShape {
 public:
  StorageShape() = default;
  const Shape &GetOriginShape() const { return origin_shape_; }
  const Shape &GetStorageShape() const { return storage_shape_; }
  Shape &MutableOriginShape() { return origin_shape_; }
  Shape &MutableStorageShape() { return storage_shape_; }

 private:
  Shape origin_shape_;
  Shape storage_shape_;
};
}  // namespace gert

#endif
