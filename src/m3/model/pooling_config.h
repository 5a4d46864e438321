// How an embedder turns the last hidden state into its vector, from the snapshot's
// sentence-transformers files: modules.json (Transformer, Pooling, optional Normalize) and
// the Pooling module's config.json. Without modules.json it is BGE-M3's: the <s> row,
// normalized.
#pragma once

#include <cstdint>
#include <filesystem>

#include "m3/model/model_config.h"

namespace m3 {

enum class Pooling {
  kCls,   // the <s> row (BGE-M3, bge-*)
  kMean,  // the mean of every row of the sequence, <s> and </s> included (multilingual-e5)
};

struct PoolingConfig {
  Pooling pooling = Pooling::kCls;
  bool normalize = true;  // a Normalize module (or no modules.json): unit vectors
};

// Reads `<dir>/modules.json` and its Pooling config when present; throws m3::Error naming
// the file and field for anything it cannot compute (another pooling mode, a Dense module).
PoolingConfig load_pooling_config(const std::filesystem::path& model_dir);

const char* pooling_name(Pooling pooling);  // "cls", "mean"

// The tokens a text is cut to by default: the model's positions, or, lower, where
// sentence-transformers truncates: sentence_bert_config.json's max_seq_length, or (version
// 6 files, which drop it there) tokenizer_config.json's model_max_length (multilingual-e5: 512).
int64_t default_max_seq_len(const std::filesystem::path& model_dir, const ModelConfig& config);

}  // namespace m3
