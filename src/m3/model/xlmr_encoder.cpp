#include "m3/model/xlmr_encoder.h"

#include <cstring>

#include "m3/core/error.h"

namespace m3 {

XlmrEncoder::XlmrEncoder(const ModelConfig& config, const EncoderWeights& weights, Backend& backend,
                         const MemoryPlan& plan, Arena& arena)
    : config_(config),
      weights_(weights),
      backend_(backend),
      max_batch_tokens_(plan.inputs.max_batch_tokens),
      max_seq_len_(plan.inputs.max_seq_len),
      rows_(plan.rows),
      hidden_(arena.at<float>(plan.hidden_offset)),
      qkv_(arena.at<float>(plan.qkv_offset)),
      context_(arena.at<float>(plan.context_offset)),
      intermediate_(arena.at<float>(plan.intermediate_offset)) {
  for (const auto& l : weights_.layers) {
    PreparedLayer p;
    p.qkv = backend_.prepare_linear(l.qkv, Epilogue::kStore);
    p.attention_out = backend_.prepare_linear(l.attention_out, Epilogue::kAccumulate);
    p.intermediate = backend_.prepare_linear(l.intermediate, Epilogue::kGelu);
    p.output = backend_.prepare_linear(l.output, Epilogue::kAccumulate);
    layers_.push_back(std::move(p));
  }
}

const float* XlmrEncoder::forward(const PackedBatch& batch, int layers) {
  const int64_t t = batch.tokens();
  if (t > max_batch_tokens_) fail("batch of {} tokens exceeds the planned {} tokens", t, max_batch_tokens_);
  if (batch.max_seq_len > max_seq_len_) {
    fail("sequence of {} tokens exceeds the planned {}", batch.max_seq_len, max_seq_len_);
  }
  for (int32_t id : batch.token_ids) {
    if (id < 0 || id >= config_.vocab_size) fail("token id {} is outside the vocabulary of {}", id, config_.vocab_size);
  }
  const auto eps = static_cast<float>(config_.layer_norm_eps);
  const int64_t h = config_.hidden_size;
  // GEMMs run on whole row blocks; the rows past the batch start from zeros so they stay finite.
  const int64_t padded = std::min(padded_rows(t), rows_);
  std::memset(hidden_ + t * h, 0, (padded - t) * h * sizeof(float));
  std::memset(context_ + t * h, 0, (padded - t) * h * sizeof(float));

  backend_.embed(batch, weights_, eps, h, hidden_);
  const size_t count = layers < 0 ? layers_.size() : std::min(layers_.size(), static_cast<size_t>(layers));
  for (size_t i = 0; i < count; ++i) {
    const auto& w = weights_.layers[i];
    const auto& p = layers_[i];
    backend_.linear(*p.qkv, hidden_, t, qkv_);
    backend_.attention(batch, qkv_, config_.num_heads, config_.head_dim(), context_);
    backend_.linear(*p.attention_out, context_, t, hidden_);  // hidden += attention
    backend_.layer_norm(hidden_, t, w.attention_norm, eps);
    backend_.linear(*p.intermediate, hidden_, t, intermediate_);
    backend_.linear(*p.output, intermediate_, t, hidden_);  // hidden += FFN
    backend_.layer_norm(hidden_, t, w.output_norm, eps);
  }
  return hidden_;
}

}  // namespace m3
