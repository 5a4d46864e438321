// Embedder: one loaded BGE-M3 model on one backend. Turns tokenized sequences into
// M3 outputs, packing them by length into batches of at most max_batch_tokens tokens.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "m3/backend/backend.h"
#include "m3/model/m3_heads.h"
#include "m3/model/m3_output.h"
#include "m3/model/model_config.h"
#include "m3/model/weights.h"
#include "m3/model/xlmr_encoder.h"
#include "m3/tokenizer/xlmr_tokenizer.h"

namespace m3 {

struct EmbedderOptions {
  int threads = 0;                  // 0: all available cores
  int64_t max_batch_tokens = 16384;  // tokens per forward pass
  int64_t max_seq_len = 0;          // 0: the model's limit (max_position_embeddings - 2)
};

class Embedder {
 public:
  // Loads config, tokenizer, encoder and head weights from a snapshot directory.
  static std::unique_ptr<Embedder> load(const std::filesystem::path& model_dir, const EmbedderOptions& options);

  const ModelConfig& config() const { return config_; }
  const XlmrTokenizer& tokenizer() const { return *tokenizer_; }
  const std::filesystem::path& model_dir() const { return model_dir_; }
  int64_t max_seq_len() const { return max_seq_len_; }
  int64_t max_batch_tokens() const { return max_batch_tokens_; }
  std::string backend_name() const { return backend_->name(); }

  // Throws m3::Error when the model cannot produce a requested output (missing head file).
  void check(const OutputRequest& request) const { heads_->check(request); }

  // Tokenizes with truncation to min(max_length, max_seq_len()) tokens.
  std::vector<int32_t> tokenize(std::string_view text, int64_t max_length, bool* truncated = nullptr) const;

  // Outputs in input order. Every sequence must fit max_seq_len(). `progress`, when
  // set, is called with the number of sequences finished so far.
  std::vector<M3Output> encode(const std::vector<std::vector<int32_t>>& sequences, const OutputRequest& request,
                               const std::function<void(size_t)>& progress = {});

 private:
  Embedder() = default;

  std::filesystem::path model_dir_;
  ModelConfig config_;
  std::unique_ptr<XlmrTokenizer> tokenizer_;
  EncoderWeights encoder_weights_;
  HeadWeights head_weights_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<XlmrEncoder> encoder_;
  std::unique_ptr<M3Heads> heads_;
  int64_t max_seq_len_ = 0;
  int64_t max_batch_tokens_ = 0;
};

}  // namespace m3
