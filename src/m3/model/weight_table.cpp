#include "m3/model/weight_table.h"

#include <cctype>

#include "m3/core/error.h"

namespace m3 {

size_t WeightTable::index(std::string_view name) const {
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].name == name) return i;
  }
  fail("internal: the weight table has no tensor \"{}\"", name);
}

bool WeightTable::has(std::string_view name) const {
  for (const auto& s : specs) {
    if (s.name == name) return true;
  }
  return false;
}

WeightTable xlmr_m3_weight_table(const ModelConfig& c, bool sparse_head, bool colbert_head) {
  WeightTable t;
  const int64_t h = c.hidden_size, ffn = c.intermediate_size;
  auto add = [&](std::string name, int64_t rows, int64_t cols, WeightRole role, std::vector<std::string> sources,
                 std::vector<int64_t> source_shape, int64_t take_rows = 0) {
    WeightSpec s;
    s.name = std::move(name);
    s.rows = rows;
    s.cols = cols;
    s.role = role;
    s.sources = std::move(sources);
    s.source_shape = std::move(source_shape);
    s.take_rows = take_rows;
    t.specs.push_back(std::move(s));
  };
  // A Linear's weight [out, in] and bias [1, out], from `source` (or several, stacked).
  auto linear = [&](const std::string& name, int64_t out, int64_t in, WeightRole role,
                    const std::vector<std::string>& sources, Epilogue epilogue) {
    std::vector<std::string> weights, biases;
    for (const auto& s : sources) {
      weights.push_back(s + ".weight");
      biases.push_back(s + ".bias");
    }
    const auto n = static_cast<int64_t>(sources.size());
    add(name + ".weight", out, in, role, weights, {out / n, in});
    t.specs.back().epilogue = epilogue;
    add(name + ".bias", 1, out, WeightRole::kVector, biases, {out / n});
  };
  auto norm = [&](const std::string& name) {
    add(name + ".weight", 1, h, WeightRole::kVector, {name + ".weight"}, {h});
    add(name + ".bias", 1, h, WeightRole::kVector, {name + ".bias"}, {h});
  };
  add("embeddings.word_embeddings", c.vocab_size, h, WeightRole::kEmbedding, {"embeddings.word_embeddings.weight"},
      {c.vocab_size, h});
  add("embeddings.position_embeddings", c.max_position_embeddings, h, WeightRole::kEmbedding,
      {"embeddings.position_embeddings.weight"}, {c.max_position_embeddings, h});
  add("embeddings.token_type_embeddings[0]", 1, h, WeightRole::kVector, {"embeddings.token_type_embeddings.weight"},
      {c.type_vocab_size, h}, 1);
  norm("embeddings.LayerNorm");
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string l = "encoder.layer." + std::to_string(i) + ".";
    const std::string self = l + "attention.self.";
    linear(self + "qkv", 3 * h, h, WeightRole::kEncoderLinear, {self + "query", self + "key", self + "value"},
           Epilogue::kStore);
    linear(l + "attention.output.dense", h, h, WeightRole::kEncoderLinear, {l + "attention.output.dense"},
           Epilogue::kResidual);
    norm(l + "attention.output.LayerNorm");
    linear(l + "intermediate.dense", ffn, h, WeightRole::kEncoderLinear, {l + "intermediate.dense"}, Epilogue::kGelu);
    linear(l + "output.dense", h, ffn, WeightRole::kEncoderLinear, {l + "output.dense"}, Epilogue::kResidual);
    norm(l + "output.LayerNorm");
  }
  // The heads' files hold bare "weight" and "bias".
  auto head = [&](const std::string& name, const char* file, int64_t out, Epilogue epilogue) {
    add(name + ".weight", out, h, WeightRole::kHeadLinear, {"weight"}, {out, h});
    t.specs.back().epilogue = epilogue;
    add(name + ".bias", 1, out, WeightRole::kVector, {"bias"}, {out});
    for (size_t k = t.specs.size() - 2; k < t.specs.size(); ++k) t.specs[k].file = file;
  };
  if (colbert_head) head("colbert_linear", "colbert_linear.pt", h, Epilogue::kStore);
  if (sparse_head) head("sparse_linear", "sparse_linear.pt", 1, Epilogue::kRelu);  // relu(h . w + b)
  if (c.architecture == Architecture::kSequenceClassification) {
    // transformers' XLMRobertaClassificationHead on <s>: out_proj(tanh(dense(x))).
    const size_t first = t.specs.size();
    linear("classifier.dense", h, h, WeightRole::kFloatHeadLinear, {"classifier.dense"}, Epilogue::kTanh);
    linear("classifier.out_proj", c.num_labels, h, WeightRole::kFloatHeadLinear, {"classifier.out_proj"},
           Epilogue::kStore);
    for (size_t k = first; k < t.specs.size(); ++k) t.specs[k].beside_encoder = true;
  }
  return t;
}

std::string weight_group_name(std::string_view name) {
  std::string out(name);
  const std::string marker = "layer.";
  const size_t at = out.find(marker);
  if (at == std::string::npos) return out;
  size_t end = at + marker.size();
  while (end < out.size() && std::isdigit(static_cast<unsigned char>(out[end]))) ++end;
  if (end == at + marker.size()) return out;
  return out.substr(0, at + marker.size()) + "*" + out.substr(end);
}

}  // namespace m3
