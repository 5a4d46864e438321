// Views of the graph's buffers in a replica's arena, at the plan's offsets.
#pragma once

#include <cstdint>

#include "m3/core/tensor.h"

namespace m3 {

inline TensorView arena_view(const TensorView& arena, uint64_t offset, DType dtype, int64_t rows, int64_t cols) {
  return tensor_view(static_cast<char*>(arena.data) + offset, dtype, rows, cols, arena.device);
}

}  // namespace m3
