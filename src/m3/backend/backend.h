// Backend: the few operations the XLM-R encoder and the M3 heads are written against.
// The model code (XlmrEncoder, M3Heads) never knows which device runs them; CPU
// implements them with oneDNN and its own loops, CUDA with cuBLASLt and kernels.
// A backend computes in memory it is given (the replica's arena): after set-up it
// allocates nothing of its own.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "m3/model/weights.h"
#include "m3/runtime/packed_batch.h"

namespace m3 {

// What happens to x W^T + b before it is stored in y.
enum class Epilogue {
  kStore,       // y = x W^T + b
  kGelu,        // y = gelu_erf(x W^T + b)
  kAccumulate,  // y += x W^T + b   (the residual connection: y holds the residual)
};

// A linear layer prepared for one backend (weights bound, kernels compiled).
class PreparedLinear {
 public:
  virtual ~PreparedLinear() = default;
};

// Scratch memory the backend computes in, carved from the replica's arena.
struct BackendWorkspace {
  float* attention_scratch = nullptr;  // threads x query_tile x max_seq_len floats
  int64_t max_seq_len = 0;
  void* library = nullptr;  // GEMM library scratchpad
  uint64_t library_bytes = 0;
  // Low-precision GEMMs: their inputs rounded to bf16 or quantized to int8 (rows x the
  // widest input), the int8 per-row scales, and the int8 accumulators of the linears
  // that add into the residual (rows x hidden; it may alias a buffer free at that time).
  void* gemm_input = nullptr;
  uint64_t gemm_input_bytes = 0;
  float* row_scales = nullptr;
  float* int8_accumulator = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  virtual void bind_workspace(const BackendWorkspace& workspace) = 0;
  // Call on the thread that will run this backend's operations (sets its thread pool).
  virtual void attach_thread() = 0;

  // `weights` must outlive the returned object. Linear calls may compute whole row
  // chunks (padded_rows(rows) rows, gemm_row_blocks.h): x and y must have that many rows.
  virtual std::unique_ptr<PreparedLinear> prepare_linear(const LinearWeights& weights, Epilogue epilogue) = 0;
  // y[rows, out] (epilogue) x[rows, in] W^T + b.
  virtual void linear(const PreparedLinear& op, const float* x, int64_t rows, float* y) = 0;
  // In place over rows of width gamma.size().
  virtual void layer_norm(float* x, int64_t rows, const LayerNormWeights& weights, float eps) = 0;
  // out[t] = word[ids[t]] + position[positions[t]] + token_type, then layer-norm.
  virtual void embed(const PackedBatch& batch, const EncoderWeights& weights, float eps, int64_t hidden,
                     float* out) = 0;
  // Multi-head self-attention of each sequence of the packed batch over itself.
  // qkv: [T, 3*hidden] (query | key | value), out: [T, hidden].
  virtual void attention(const PackedBatch& batch, const float* qkv, int64_t heads, int64_t head_dim,
                         float* out) = 0;
};

}  // namespace m3
