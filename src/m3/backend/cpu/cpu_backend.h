// CpuBackend: float32 reference path. GEMMs are oneDNN matmul primitives with the
// bias, GELU and residual fused as post-ops; attention is tiled over queries so its
// scratch is threads x q_tile x max_seq_len floats, never L x L for a batch.
#pragma once

#include <memory>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "m3/backend/backend.h"

namespace m3 {

struct CpuBackendOptions {
  int threads = 0;         // 0: OpenMP's default (the cores available)
  int64_t query_tile = 64;  // attention rows per tile
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(CpuBackendOptions options = {});
  std::string name() const override { return "cpu-fp32"; }

  std::unique_ptr<PreparedLinear> prepare_linear(const LinearWeights& weights, Epilogue epilogue) override;
  void linear(const PreparedLinear& op, const float* x, int64_t rows, float* y) override;
  void layer_norm(float* x, int64_t rows, const LayerNormWeights& weights, float eps) override;
  void embed(const PackedBatch& batch, const EncoderWeights& weights, float eps, int64_t hidden,
             float* out) override;
  void attention(const PackedBatch& batch, const float* qkv, int64_t heads, int64_t head_dim,
                 float* out) override;

  int threads() const { return threads_; }

 private:
  CpuBackendOptions options_;
  int threads_ = 1;
  dnnl::engine engine_;
  dnnl::stream stream_;
  std::vector<std::vector<float>> score_scratch_;  // one q_tile x max_seq_len block per thread
};

}  // namespace m3
