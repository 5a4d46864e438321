// CpuBackend: float32 reference path. GEMMs are oneDNN matmul primitives with the
// bias, GELU and residual fused as post-ops, compiled at start for the row chunks of
// gemm_row_blocks.h (a batch runs as a few chunks) so a forward pass creates nothing; attention is tiled over queries so its scratch is threads x q_tile x
// max_seq_len floats, never L x L for a batch.
#pragma once

#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "m3/backend/backend.h"
#include "m3/model/model_config.h"

namespace m3 {

struct CpuBackendOptions {
  int threads = 0;           // 0: OpenMP's default (the cores available)
  int64_t query_tile = 64;   // attention rows per tile
  int64_t max_rows = 16384;  // the largest batch, in tokens
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(CpuBackendOptions options = {});
  std::string name() const override { return "cpu-fp32"; }

  // The largest oneDNN scratchpad any GEMM of this model needs up to max_rows rows.
  static uint64_t library_workspace_bytes(const ModelConfig& config, int64_t max_rows);
  static int default_threads();

  void bind_workspace(const BackendWorkspace& workspace) override { workspace_ = workspace; }
  void attach_thread() override;
  std::unique_ptr<PreparedLinear> prepare_linear(const LinearWeights& weights, Epilogue epilogue) override;
  void linear(const PreparedLinear& op, const float* x, int64_t rows, float* y) override;
  void layer_norm(float* x, int64_t rows, const LayerNormWeights& weights, float eps) override;
  void embed(const PackedBatch& batch, const EncoderWeights& weights, float eps, int64_t hidden,
             float* out) override;
  void attention(const PackedBatch& batch, const float* qkv, int64_t heads, int64_t head_dim,
                 float* out) override;

  int threads() const { return threads_; }
  int64_t query_tile() const { return options_.query_tile; }

  // One compiled GEMM per row block for one (out, in, epilogue) shape, shared by every
  // layer; source and destination memory objects are re-pointed per call.
  struct RowBlockKernels {
    std::map<int64_t, size_t> index;  // chunk rows -> position in the vectors below
    std::vector<dnnl::matmul> primitives;
    std::vector<dnnl::memory> src, dst, scratchpad;
  };

 private:
  RowBlockKernels& kernels_for(int64_t out, int64_t in, Epilogue epilogue);

  CpuBackendOptions options_;
  int threads_ = 1;
  dnnl::engine engine_;
  dnnl::stream stream_;
  BackendWorkspace workspace_;
  std::map<std::tuple<int64_t, int64_t, Epilogue>, RowBlockKernels> kernels_;
};

}  // namespace m3
