// XlmrEncoder: the XLM-RoBERTa forward pass (post-LN BERT layers) over a packed batch,
// written once against the Backend interface, computing in the replica's arena at the
// offsets of its MemoryPlan.
#pragma once

#include <memory>
#include <vector>

#include "m3/backend/backend.h"
#include "m3/memory/arena.h"
#include "m3/memory/memory_plan.h"
#include "m3/model/model_config.h"
#include "m3/model/weights.h"

namespace m3 {

class XlmrEncoder {
 public:
  // `weights`, `backend` and `arena` must outlive the encoder.
  XlmrEncoder(const ModelConfig& config, const EncoderWeights& weights, Backend& backend, const MemoryPlan& plan,
              Arena& arena);

  // Last hidden state [batch.tokens(), hidden] in the arena; valid until the next forward.
  // `layers` < 0 runs them all; warm-up runs one (every layer uses the same buffers).
  const float* forward(const PackedBatch& batch, int layers = -1);

 private:
  struct PreparedLayer {
    std::unique_ptr<PreparedLinear> qkv, attention_out, intermediate, output;
  };

  ModelConfig config_;
  const EncoderWeights& weights_;
  Backend& backend_;
  int64_t max_batch_tokens_;
  int64_t max_seq_len_;
  int64_t rows_;  // rows of every buffer (max_batch_tokens padded to whole row blocks)
  std::vector<PreparedLayer> layers_;
  float* hidden_;        // [rows, hidden]: the residual stream
  float* qkv_;           // [rows, 3 * hidden]
  float* context_;       // [rows, hidden]: attention output
  float* intermediate_;  // [rows, intermediate]
};

}  // namespace m3
