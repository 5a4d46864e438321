#include "m3/runtime/embedder.h"

#include <algorithm>
#include <numeric>

#include <spdlog/spdlog.h>

#include "m3/backend/cpu/cpu_backend.h"
#include "m3/core/error.h"

namespace m3 {

std::unique_ptr<Embedder> Embedder::load(const std::filesystem::path& model_dir, const EmbedderOptions& options) {
  std::unique_ptr<Embedder> e(new Embedder());
  e->model_dir_ = model_dir;
  e->config_ = ModelConfig::load(model_dir);
  e->tokenizer_ = std::make_unique<XlmrTokenizer>(XlmrTokenizer::load(model_dir));
  if (e->tokenizer_->vocab_size() > e->config_.vocab_size) {
    fail("{}: the tokenizer has {} ids but config.json's vocab_size is {}",
         (model_dir / "sentencepiece.bpe.model").string(), e->tokenizer_->vocab_size(), e->config_.vocab_size);
  }
  const int64_t model_limit = e->config_.max_tokens();
  e->max_seq_len_ = options.max_seq_len > 0 ? options.max_seq_len : model_limit;
  if (e->max_seq_len_ > model_limit) {
    fail("max sequence length {} exceeds the model's limit of {} tokens (max_position_embeddings {})",
         e->max_seq_len_, model_limit, e->config_.max_position_embeddings);
  }
  if (e->max_seq_len_ < 2) fail("max sequence length must be at least 2, got {}", e->max_seq_len_);
  e->max_batch_tokens_ = options.max_batch_tokens;
  if (e->max_batch_tokens_ < e->max_seq_len_) {
    fail("max batch tokens ({}) must be at least the max sequence length ({})", e->max_batch_tokens_,
         e->max_seq_len_);
  }

  e->encoder_weights_ = load_encoder_weights(model_dir, e->config_);
  e->head_weights_ = load_head_weights(model_dir, e->config_);
  e->backend_ = std::make_unique<CpuBackend>(CpuBackendOptions{.threads = options.threads});
  e->encoder_ = std::make_unique<XlmrEncoder>(e->config_, e->encoder_weights_, *e->backend_, e->max_batch_tokens_);
  e->heads_ = std::make_unique<M3Heads>(e->config_, e->head_weights_, *e->backend_, e->max_batch_tokens_, model_dir);
  spdlog::info("loaded {} ({} layers, hidden {}, {} heads; weights from {}; heads: {}{}) on {} with {} threads",
               model_dir.string(), e->config_.num_layers, e->config_.hidden_size, e->config_.num_heads,
               std::filesystem::path(e->encoder_weights_.source).filename().string(),
               e->head_weights_.sparse ? "sparse " : "", e->head_weights_.colbert ? "colbert" : "",
               e->backend_->name(), static_cast<CpuBackend&>(*e->backend_).threads());
  return e;
}

std::vector<int32_t> Embedder::tokenize(std::string_view text, int64_t max_length, bool* truncated) const {
  const int64_t limit = max_length > 0 ? std::min(max_length, max_seq_len_) : max_seq_len_;
  return tokenizer_->encode(text, static_cast<size_t>(limit), truncated);
}

std::vector<M3Output> Embedder::encode(const std::vector<std::vector<int32_t>>& sequences,
                                       const OutputRequest& request, const std::function<void(size_t)>& progress) {
  check(request);
  for (size_t i = 0; i < sequences.size(); ++i) {
    const auto len = static_cast<int64_t>(sequences[i].size());
    if (len == 0 || len > max_seq_len_) {
      fail("sequence {} has {} tokens; the limit is {}", i, len, max_seq_len_);
    }
  }
  // Longest first, as the reference does; packing by token budget removes the padding.
  std::vector<size_t> order(sequences.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return sequences[a].size() > sequences[b].size(); });

  std::vector<M3Output> results(sequences.size());
  std::vector<M3Output> batch_outputs;
  PackedBatch batch;
  size_t next = 0, done = 0;
  while (next < order.size()) {
    batch.clear();
    const size_t first = next;
    while (next < order.size() &&
           batch.tokens() + static_cast<int64_t>(sequences[order[next]].size()) <= max_batch_tokens_) {
      batch.add(sequences[order[next]], static_cast<int32_t>(config_.pad_token_id));
      ++next;
    }
    const float* hidden = encoder_->forward(batch);
    heads_->compute(batch, hidden, request, batch_outputs);
    for (size_t i = first; i < next; ++i) results[order[i]] = std::move(batch_outputs[i - first]);
    done += next - first;
    if (progress) progress(done);
  }
  return results;
}

}  // namespace m3
