// ModelConfig: the fields of a Hugging Face XLM-RoBERTa `config.json` that the
// encoder needs, validated so that an unsupported model is refused at load.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace m3 {

// config.json's `architectures`: the encoder alone (an embedder), or the encoder with a
// classification head on <s> (a cross-encoder reranker such as bge-reranker-v2-m3).
enum class Architecture { kEncoder, kSequenceClassification };

struct ModelConfig {
  Architecture architecture = Architecture::kEncoder;
  // kSequenceClassification: the head's outputs and their names (id2label, "LABEL_i" when absent).
  int64_t num_labels = 0;
  std::vector<std::string> labels;
  bool multi_label = false;  // problem_type "multi_label_classification": sigmoid per label, not softmax
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t intermediate_size = 0;
  int64_t max_position_embeddings = 0;
  int64_t type_vocab_size = 1;
  int64_t pad_token_id = 1;
  double layer_norm_eps = 1e-5;

  int64_t head_dim() const { return hidden_size / num_heads; }
  // RoBERTa positions start at pad_token_id + 1, so this many real tokens fit the table.
  int64_t max_tokens() const { return max_position_embeddings - pad_token_id - 1; }

  // Parses and validates `<dir>/config.json`; throws m3::Error naming the file and field.
  static ModelConfig load(const std::filesystem::path& model_dir);
  static ModelConfig parse(const std::string& json, const std::string& source);
};

}  // namespace m3
