// TensorView: a typed, non-owning view of a row-major [rows, cols] tensor in one device's
// memory: what the backend ops take and return, so the model code never handles raw
// pointers or guesses an element type.
#pragma once

#include <cstdint>

#include "m3/core/device.h"
#include "m3/core/dtype.h"

namespace m3 {

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  DeviceKind device = DeviceKind::kCpu;

  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }
  bool empty() const { return data == nullptr; }
  int64_t elements() const { return rows * cols; }
  uint64_t bytes() const { return static_cast<uint64_t>(elements()) * dtype_size(dtype); }
  // Rows [first, first + count) of this tensor.
  TensorView slice_rows(int64_t first, int64_t count) const {
    TensorView v = *this;
    v.data = static_cast<char*>(data) + static_cast<uint64_t>(first * cols) * dtype_size(dtype);
    v.rows = count;
    return v;
  }
};

inline TensorView tensor_view(const void* data, DType dtype, int64_t rows, int64_t cols,
                              DeviceKind device = DeviceKind::kCpu) {
  return {const_cast<void*>(data), dtype, rows, cols, device};
}

}  // namespace m3
