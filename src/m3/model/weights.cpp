#include "m3/model/weights.h"

#include <spdlog/spdlog.h>

#include "m3/core/error.h"
#include "m3/model/checkpoint.h"

namespace m3 {
namespace {

namespace fs = std::filesystem;

class Reader {
 public:
  Reader(const Checkpoint& checkpoint, std::string prefix) : checkpoint_(checkpoint), prefix_(std::move(prefix)) {}

  std::vector<float> tensor(const std::string& name, std::vector<int64_t> shape) const {
    return checkpoint_.read_f32(prefix_ + name, shape);
  }
  LinearWeights linear(const std::string& name, int64_t out, int64_t in) const {
    LinearWeights l;
    l.out = out;
    l.in = in;
    const std::string dot = name.empty() ? "" : name + ".";  // head files have bare names
    l.weight = tensor(dot + "weight", {out, in});
    l.bias = tensor(dot + "bias", {out});
    return l;
  }
  LayerNormWeights layer_norm(const std::string& name, int64_t dim) const {
    return {tensor(name + ".weight", {dim}), tensor(name + ".bias", {dim})};
  }

 private:
  const Checkpoint& checkpoint_;
  std::string prefix_;
};

// Q, K and V become one GEMM: rows [0,H) query, [H,2H) key, [2H,3H) value.
LinearWeights stack_qkv(const Reader& r, const std::string& base, int64_t hidden) {
  LinearWeights qkv;
  qkv.out = 3 * hidden;
  qkv.in = hidden;
  for (const char* part : {"query", "key", "value"}) {
    auto l = r.linear(base + part, hidden, hidden);
    qkv.weight.insert(qkv.weight.end(), l.weight.begin(), l.weight.end());
    qkv.bias.insert(qkv.bias.end(), l.bias.begin(), l.bias.end());
  }
  return qkv;
}

}  // namespace

EncoderWeights load_encoder_weights(const fs::path& model_dir, const ModelConfig& c, const LinearLoadedHook& on_linear) {
  fs::path file;
  for (const char* name : {"model.safetensors", "pytorch_model.bin"}) {
    if (fs::exists(model_dir / name)) {
      file = model_dir / name;
      break;
    }
  }
  if (file.empty()) {
    fail("{}: no encoder weights (expected model.safetensors or pytorch_model.bin)", model_dir.string());
  }
  auto checkpoint = open_checkpoint(file);

  std::string prefix;
  for (const char* candidate : {"", "roberta.", "model."}) {
    if (checkpoint->has(std::string(candidate) + "embeddings.word_embeddings.weight")) {
      prefix = candidate;
      break;
    }
    if (*candidate == 'm') {
      fail("{}: tensor \"embeddings.word_embeddings.weight\" not found (is this an XLM-RoBERTa checkpoint?)",
           file.string());
    }
  }
  const Reader r(*checkpoint, prefix);
  const int64_t h = c.hidden_size;

  EncoderWeights w;
  w.source = file.string();
  w.word_embeddings = r.tensor("embeddings.word_embeddings.weight", {c.vocab_size, h});
  w.position_embeddings = r.tensor("embeddings.position_embeddings.weight", {c.max_position_embeddings, h});
  auto types = r.tensor("embeddings.token_type_embeddings.weight", {c.type_vocab_size, h});
  w.token_type_embedding.assign(types.begin(), types.begin() + h);
  w.embedding_norm = r.layer_norm("embeddings.LayerNorm", h);
  w.layers.reserve(c.num_layers);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string base = "encoder.layer." + std::to_string(i) + ".";
    EncoderLayerWeights l;
    l.qkv = stack_qkv(r, base + "attention.self.", h);
    l.attention_out = r.linear(base + "attention.output.dense", h, h);
    l.attention_norm = r.layer_norm(base + "attention.output.LayerNorm", h);
    l.intermediate = r.linear(base + "intermediate.dense", c.intermediate_size, h);
    l.output = r.linear(base + "output.dense", h, c.intermediate_size);
    l.output_norm = r.layer_norm(base + "output.LayerNorm", h);
    if (on_linear) {
      for (LinearWeights* linear : {&l.qkv, &l.attention_out, &l.intermediate, &l.output}) on_linear(*linear);
    }
    w.layers.push_back(std::move(l));
  }
  if (checkpoint->has(prefix + "encoder.layer." + std::to_string(c.num_layers) + ".attention.self.query.weight")) {
    fail("{}: has more layers than num_hidden_layers = {} in config.json", file.string(), c.num_layers);
  }
  return w;
}

HeadWeights load_head_weights(const fs::path& model_dir, const ModelConfig& c) {
  HeadWeights heads;
  auto load = [&](const char* name, int64_t out) -> std::optional<LinearWeights> {
    const auto file = model_dir / name;
    if (!fs::exists(file)) return std::nullopt;
    auto checkpoint = open_checkpoint(file);
    return Reader(*checkpoint, "").linear("", out, c.hidden_size);
  };
  heads.colbert = load("colbert_linear.pt", c.hidden_size);
  heads.sparse = load("sparse_linear.pt", 1);
  return heads;
}

}  // namespace m3
