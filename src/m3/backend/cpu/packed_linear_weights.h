// Linear-layer weights packed at load for a low-precision oneDNN GEMM: bfloat16, or int8
// with one scale per output channel (for activations in unsigned bytes: a u8 x s8 GEMM).
// The layout is the one oneDNN's own kernel asks for (format "any"), so no GEMM repacks
// its weights per call, and the float32 copy is dropped once packed: bf16 halves the
// encoder's weight memory, int8 quarters it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "m3/core/precision.h"
#include "m3/model/weights.h"

namespace m3 {

struct CpuPackedWeights final : PackedWeights {
  DType precision = DType::BF16;
  dnnl::memory::desc desc;          // oneDNN's packed layout of W^T [in, out]
  std::shared_ptr<void> data;       // desc.get_size() bytes, 64-byte aligned
  std::vector<float> channel_scales;  // int8: W[c, :] ~= channel_scales[c] * q[c, :]
  std::vector<float> channel_sums;    // int8: channel_scales[c] * sum_k q[c, k] (Int8Channels::sums)
  uint64_t bytes() const override {
    return desc.get_size() + (channel_scales.size() + channel_sums.size()) * sizeof(float);
  }
};

// The packed weight layout the GEMM kernels of every row chunk are created with.
dnnl::memory::desc packed_weights_desc(const dnnl::engine& engine, DType precision, int64_t out, int64_t in);

// `weight` [out, in] (PyTorch's layout) packed for a bf16 or int8 GEMM.
std::shared_ptr<const CpuPackedWeights> pack_linear_weights(const std::vector<float>& weight, int64_t out, int64_t in,
                                                            DType precision);

// Whether this CPU runs the precision in hardware (bf16: AVX512-BF16 or AMX; int8:
// AVX512-VNNI, AVX-VNNI or AMX). Without it oneDNN emulates or refuses.
bool cpu_supports(DType precision);

}  // namespace m3
