/* Stand-in for CANN's exe_graph/runtime/shape.h (metadef inc/external/exe_graph/runtime/shape.h).
 * gert::Shape: at most kMaxDimNum = 25 dims; GetDim out of range gives kInvalidDimValue
 * (INT64_MIN); AppendDim is a no-op when full (facts §3.1). Header-only, as the real one. */
#ifndef AA_STANDIN_EXE_GRAPH_SHAPE_H
#define AA_STANDIN_EXE_GRAPH_SHAPE_H

#include <cstddef>
#include <cstdint>
#include <limits>

namespace gert {
class Shape {
 public:
  static constexpr size_t kMaxDimNum = 25;
  static constexpr int64_t kInvalidDimValue = std::numeric_limits<int64_t>::min();

  Shape() : dim_num_(0), dims_{} {}
  size_t GetDimNum() const { return dim_num_; }
  void SetDimNum(const size_t dim_num) { dim_num_ = dim_num; }
  int64_t GetDim(const size_t idx) const { return idx < kMaxDimNum ? dims_[idx] : kInvalidDimValue; }
  void SetDim(const size_t idx, const int64_t value) {
    if (idx < kMaxDimNum) {
      dims_[idx] = value;
    }
  }
  Shape &AppendDim(const int64_t value) {
    if (dim_num_ < kMaxDimNum) {
      dims_[dim_num_++] = value;
    }
    return *this;
  }
  bool IsScalar() const { return dim_num_ == 0; }
  int64_t GetShapeSize() const {
    int64_t n = 1;
    for (size_t i = 0; i < dim_num_; ++i) {
      n *= dims_[i];
    }
    return n;
  }

 private:
  size_t dim_num_;
  int64_t dims_[kMaxDimNum];
};
}  // namespace gert

#endif
