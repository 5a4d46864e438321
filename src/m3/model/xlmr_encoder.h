// XlmrEncoder: the XLM-RoBERTa forward pass (post-LN BERT layers) over a packed batch,
// written once against the Backend interface.
#pragma once

#include <memory>
#include <vector>

#include "m3/backend/backend.h"
#include "m3/model/model_config.h"
#include "m3/model/weights.h"

namespace m3 {

class XlmrEncoder {
 public:
  // `weights` must outlive the encoder. Activations are sized for `max_batch_tokens` rows.
  XlmrEncoder(const ModelConfig& config, const EncoderWeights& weights, Backend& backend, int64_t max_batch_tokens);

  // Last hidden state [batch.tokens(), hidden]; valid until the next forward.
  const float* forward(const PackedBatch& batch);

  int64_t max_batch_tokens() const { return max_batch_tokens_; }
  const ModelConfig& config() const { return config_; }
  Backend& backend() { return backend_; }

 private:
  struct PreparedLayer {
    std::unique_ptr<PreparedLinear> qkv, attention_out, intermediate, output;
  };

  ModelConfig config_;
  const EncoderWeights& weights_;
  Backend& backend_;
  int64_t max_batch_tokens_;
  std::vector<PreparedLayer> layers_;
  // Buffers reused by every layer: hidden/residual, QKV, attention output, FFN intermediate.
  std::vector<float> hidden_, qkv_, context_, intermediate_;
};

}  // namespace m3
