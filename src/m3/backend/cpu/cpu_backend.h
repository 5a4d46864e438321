// CpuBackend: GEMMs are oneDNN matmul primitives compiled at start for the row chunks of
// gemm_row_blocks.h (a batch runs as a few chunks), so a forward pass creates nothing.
// A linear whose weights are float32 runs in float32 with the bias, GELU and residual
// fused as post-ops; one whose weights were packed at load (packed_linear_weights.h)
// runs in bf16 (same post-ops, inputs rounded first) or int8 (inputs quantized per
// token, then int8_epilogue). Attention is tiled over queries so its scratch is
// threads x q_tile x max_seq_len floats, never L x L for a batch.
#pragma once

#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "m3/backend/backend.h"
#include "m3/core/precision.h"
#include "m3/model/model_config.h"

namespace m3 {

inline constexpr int64_t kMaxQueryTile = 64;
// Keys per attention block: a 64 x 256 score block and the K and V rows it uses stay
// in L2 between the score GEMM, the softmax and the value GEMM.
inline constexpr int64_t kKeyBlock = 256;

struct CpuBackendOptions {
  int threads = 0;           // 0: OpenMP's default (the cores available)
  int64_t query_tile = 64;   // attention rows per tile
  int64_t max_rows = 16384;  // the largest batch, in tokens
  // --dtype: bf16 also computes attention in bf16 (Q, K, V, softmax numerators) where the
  // CPU has AVX512-BF16; fp32 and int8 compute it in float32.
  Precision precision = Precision::kFp32;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(CpuBackendOptions options = {});
  std::string name() const override { return "cpu"; }

  // The largest oneDNN scratchpad any GEMM of this model needs up to max_rows rows.
  // Encoder linears compute in `precision`, the heads in float32.
  static uint64_t library_workspace_bytes(const ModelConfig& config, int64_t max_rows, Precision precision);
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
  enum class Kernels { kBf16, kFp32, kSgemm };  // which attention path runs
  RowBlockKernels& kernels_for(const LinearWeights& weights, Epilogue epilogue);

  CpuBackendOptions options_;
  int threads_ = 1;
  dnnl::engine engine_;
  dnnl::stream stream_;
  BackendWorkspace workspace_;
  std::map<std::tuple<int64_t, int64_t, Epilogue, Precision>, RowBlockKernels> kernels_;
};

}  // namespace m3
