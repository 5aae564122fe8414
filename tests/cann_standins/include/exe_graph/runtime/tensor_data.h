/* Stand-in for CANN's exe_graph/runtime/tensor_data.h (facts §3.3), header-only as the real one.
 * Relied on: TensorPlacement kOnDeviceHbm 0, kOnHost 1, kFollowing 2, kOnDeviceP2p 3,
 * kTensorPlacementEnd 4; TensorOperateType kGetTensorAddress 0, kFreeTensor 1,
 * kPlusShareCount 2; TensorAddrManager = graphStatus (*)(addr, op, void **out); copy deleted,
 * move empties the source, destructor and move-assignment Free() through the manager,
 * Release(manager&) gives up ownership and resets the object. */
#ifndef AA_STANDIN_EXE_GRAPH_TENSOR_DATA_H
#define AA_STANDIN_EXE_GRAPH_TENSOR_DATA_H

#include <cstddef>
#include <cstdint>

#include "graph/error_codes.h"

namespace gert {
using TensorAddress = void *;

enum TensorPlacement : int32_t {
  kOnDeviceHbm = 0,
  kOnHost = 1,
  kFollowing = 2,
  kOnDeviceP2p = 3,
  kTensorPlacementEnd = 4
};

enum TensorOperateType : int32_t {
  kGetTensorAddress = 0,
  kFreeTensor = 1,
  kPlusShareCount = 2,
  kTensorOperateType = 3
};

using TensorAddrManager = ge::graphStatus (*)(TensorAddress addr, TensorOperateType operate_type, void **out);

class TensorData {
 public:
  explicit TensorData(TensorAddress addr = nullptr, const TensorAddrManager manager = nullptr)
      : TensorData(addr, manager, 0U, kTensorPlacementEnd) {}
  explicit TensorData(TensorAddress addr, const TensorAddrManager manager, size_t size, TensorPlacement placement)
      : addr_(addr), manager_(manager), size_(size), placement_(placement) {}
  TensorData(const TensorData &) = delete;
  TensorData &operator=(const TensorData &) = delete;
  TensorData(TensorData &&other) noexcept
      : addr_(other.addr_), manager_(other.manager_), size_(other.size_), placement_(other.placement_) {
    other.Reset();
  }
  TensorData &operator=(TensorData &&other) noexcept {
    if (this != &other) {
      static_cast<void>(Free());
      addr_ = other.addr_;
      manager_ = other.manager_;
      size_ = other.size_;
      placement_ = other.placement_;
      other.Reset();
    }
    return *this;
  }
  ~TensorData() noexcept { static_cast<void>(Free()); }

  TensorAddress GetAddr() const {
    if (manager_ == nullptr || addr_ == nullptr) {
      return addr_;
    }
    void *out = nullptr;
    return manager_(addr_, kGetTensorAddress, &out) == ge::GRAPH_SUCCESS ? out : nullptr;
  }
  size_t GetSize() const { return size_; }
  void SetSize(const size_t size) { size_ = size; }
  TensorPlacement GetPlacement() const { return placement_; }
  void SetPlacement(const TensorPlacement placement) { placement_ = placement; }
  ge::graphStatus Free() {
    if (manager_ == nullptr) {
      return ge::GRAPH_SUCCESS;
    }
    const ge::graphStatus ret = manager_(addr_, kFreeTensor, nullptr);
    if (ret == ge::GRAPH_SUCCESS) {
      addr_ = nullptr;
      manager_ = nullptr;
    }
    return ret;
  }
  TensorAddress Release(TensorAddrManager &manager) {
    TensorAddress addr = addr_;
    manager = manager_;
    Reset();
    return addr;
  }

 private:
  void Reset() {
    addr_ = nullptr;
    manager_ = nullptr;
    size_ = 0U;
    placement_ = kTensorPlacementEnd;
  }
  TensorAddress addr_;
  TensorAddrManager manager_;
  size_t size_;
  TensorPlacement placement_;
};
}  // namespace gert

#endif
