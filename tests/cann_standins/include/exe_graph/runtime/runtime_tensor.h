/* Stand-in for CANN's exe_graph/runtime/runtime_tensor.h (facts §3.1-3.2), header-only as the
 * real one. gert::Tensor: the (StorageShape, StorageFormat, DataType) constructor (no data,
 * size 0), SetData(TensorData&&), shape/format/dtype/placement/size accessors and
 * MutableTensorData(). Move-only because TensorData is (no user-declared copy or move). */
#ifndef AA_STANDIN_EXE_GRAPH_RUNTIME_TENSOR_H
#define AA_STANDIN_EXE_GRAPH_RUNTIME_TENSOR_H

#include <utility>

#include "exe_graph/runtime/storage_format.h"
#include "exe_graph/runtime/storage_shape.h"
#include "exe_graph/runtime/tensor_data.h"
#include "graph/ge_error_codes.h"
#include "graph/types.h"

namespace gert {
class Tensor {
 public:
  Tensor() = default;
  Tensor(const StorageShape &storage_shape, const StorageFormat &storage_format, ge::DataType data_type)
      : storage_shape_(storage_shape), storage_format_(storage_format), data_type_(data_type) {}

  void SetData(TensorData &&data) { tensor_data_ = std::move(data); }
  void *GetAddr() { return tensor_data_.GetAddr(); }
  const void *GetAddr() const { return tensor_data_.GetAddr(); }
  size_t GetSize() const { return tensor_data_.GetSize(); }
  void SetSize(const size_t size) { tensor_data_.SetSize(size); }
  ge::DataType GetDataType() const { return data_type_; }
  void SetDataType(const ge::DataType data_type) { data_type_ = data_type; }
  const Shape &GetStorageShape() const { return storage_shape_.GetStorageShape(); }
  Shape &MutableStorageShape() { return storage_shape_.MutableStorageShape(); }
  const Shape &GetOriginShape() const { return storage_shape_.GetOriginShape(); }
  Shape &MutableOriginShape() { return storage_shape_.MutableOriginShape(); }
  ge::Format GetStorageFormat() const { return storage_format_.GetStorageFormat(); }
  void SetStorageFormat(const ge::Format f) { storage_format_.SetStorageFormat(f); }
  ge::Format GetOriginFormat() const { return storage_format_.GetOriginFormat(); }
  void SetOriginFormat(const ge::Format f) { storage_format_.SetOriginFormat(f); }
  TensorPlacement GetPlacement() const { return tensor_data_.GetPlacement(); }
  void SetPlacement(const TensorPlacement placement) { tensor_data_.SetPlacement(placement); }
  const TensorData &GetTensorData() const { return tensor_data_; }
  TensorData &MutableTensorData() { return tensor_data_; }

 private:
  StorageShape storage_shape_;
  StorageFormat storage_format_;
  ge::DataType data_type_{ge::DT_UNDEFINED};
  TensorData tensor_data_;
};
}  // namespace gert

#endif
