#include "m3/model/xlmr_encoder.h"

#include "m3/core/error.h"

namespace m3 {

XlmrEncoder::XlmrEncoder(const ModelConfig& config, const EncoderWeights& weights, Backend& backend,
                         int64_t max_batch_tokens)
    : config_(config), weights_(weights), backend_(backend), max_batch_tokens_(max_batch_tokens) {
  for (const auto& l : weights_.layers) {
    PreparedLayer p;
    p.qkv = backend_.prepare_linear(l.qkv, Epilogue::kStore);
    p.attention_out = backend_.prepare_linear(l.attention_out, Epilogue::kAccumulate);
    p.intermediate = backend_.prepare_linear(l.intermediate, Epilogue::kGelu);
    p.output = backend_.prepare_linear(l.output, Epilogue::kAccumulate);
    layers_.push_back(std::move(p));
  }
  const int64_t h = config_.hidden_size;
  hidden_.resize(max_batch_tokens * h);
  qkv_.resize(max_batch_tokens * 3 * h);
  context_.resize(max_batch_tokens * h);
  intermediate_.resize(max_batch_tokens * config_.intermediate_size);
}

const float* XlmrEncoder::forward(const PackedBatch& batch) {
  const int64_t t = batch.tokens();
  if (t > max_batch_tokens_) fail("batch of {} tokens exceeds the planned {} tokens", t, max_batch_tokens_);
  if (batch.max_seq_len > config_.max_tokens()) {
    fail("sequence of {} tokens exceeds the model's {} positions", batch.max_seq_len, config_.max_tokens());
  }
  for (int32_t id : batch.token_ids) {
    if (id < 0 || id >= config_.vocab_size) fail("token id {} is outside the vocabulary of {}", id, config_.vocab_size);
  }
  const auto eps = static_cast<float>(config_.layer_norm_eps);
  float* hidden = hidden_.data();
  backend_.embed(batch, weights_, eps, config_.hidden_size, hidden);
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& w = weights_.layers[i];
    const auto& p = layers_[i];
    backend_.linear(*p.qkv, hidden, t, qkv_.data());
    backend_.attention(batch, qkv_.data(), config_.num_heads, config_.head_dim(), context_.data());
    backend_.linear(*p.attention_out, context_.data(), t, hidden);  // hidden += attention
    backend_.layer_norm(hidden, t, w.attention_norm, eps);
    backend_.linear(*p.intermediate, hidden, t, intermediate_.data());
    backend_.linear(*p.output, intermediate_.data(), t, hidden);  // hidden += FFN
    backend_.layer_norm(hidden, t, w.output_norm, eps);
  }
  return hidden;
}

}  // namespace m3
