// One linear layer on cuBLASLt: y[rows, out] (+)= x[rows, in] W^T (+ bias through the BIAS
// epilogue, which adds the float32 bias exactly as PyTorch does). cuBLASLt's GELU
// epilogue is the tanh approximation, not BERT's erf, so GELU is our own kernel.
// Algorithms are chosen at construction for row buckets (64, 128, ..., max_rows), checked
// for every row count each bucket serves, and run once each at warm-up, so no new kernel
// is loaded, and no memory taken, after it.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "m3/backend/cuda/cuda_kernels.h"

namespace m3::cuda {

class CublasLtLinear {
 public:
  // `weight` [out, in] of `input_type`, `bias` [out] float32 (may be null), both on the
  // device. `want_bias_epilogue`: fuse the bias when cuBLASLt has an algorithm for it
  // (bias_fused() says whether it did; else the caller adds it).
  CublasLtLinear(cublasLtHandle_t handle, int64_t out, int64_t in, int64_t max_rows, DType input_type,
                 DType output_type, const void* weight, const float* bias, bool want_bias_epilogue,
                 void* workspace, uint64_t workspace_bytes);
  ~CublasLtLinear();
  CublasLtLinear(const CublasLtLinear&) = delete;
  CublasLtLinear& operator=(const CublasLtLinear&) = delete;

  bool bias_fused() const { return bias_fused_; }
  int64_t out() const { return out_; }
  // accumulate: y += x W^T (+ bias), the residual connection (beta = 1, y is float32).
  void run(const void* x, int64_t rows, void* y, cudaStream_t stream, bool accumulate = false);
  // Runs every row bucket once on the given buffers (their contents do not matter).
  void warm_up(const void* x, void* y, cudaStream_t stream, bool accumulate = false);

 private:
  static constexpr int kMaxBuckets = 24;
  using Algorithms = std::array<cublasLtMatmulAlgo_t, kMaxBuckets>;
  // What decides the algorithms: device, shape, rows, types, epilogue, workspace.
  using AlgorithmKey = std::tuple<int, int64_t, int64_t, int64_t, DType, DType, bool, uint64_t>;
  static std::map<AlgorithmKey, Algorithms>& chosen();
  static std::mutex& chosen_mutex();
  int bucket_for(int64_t rows) const;
  void choose_algorithms();

  cublasLtHandle_t handle_;
  int64_t out_, in_, max_rows_;
  DType input_type_, output_type_;
  const void* weight_;
  bool bias_fused_ = false;
  void* workspace_;
  uint64_t workspace_bytes_;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t w_layout_ = nullptr, x_layout_ = nullptr, y_layout_ = nullptr;
  int buckets_ = 0;
  std::array<int64_t, kMaxBuckets> bucket_rows_{};
  Algorithms algorithms_{};
};

}  // namespace m3::cuda
