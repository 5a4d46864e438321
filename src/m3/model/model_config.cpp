#include "m3/model/model_config.h"

#include <charconv>
#include <fstream>
#include <optional>
#include <sstream>

#include <simdjson.h>

#include "m3/core/error.h"

namespace m3 {
namespace {

int64_t get_int(simdjson::dom::element& root, const char* key, const std::string& source,
                std::optional<int64_t> fallback = std::nullopt) {
  auto field = root[key];
  if (field.error() == simdjson::NO_SUCH_FIELD) {
    if (fallback) return *fallback;
    fail("{}: missing field \"{}\"", source, key);
  }
  int64_t value;
  if (field.get_int64().get(value) != simdjson::SUCCESS) fail("{}: field \"{}\" is not an integer", source, key);
  return value;
}

// `architectures` (absent: the encoder, as BGE-M3's older snapshots) and, for a
// classifier, its labels.
void parse_architecture(simdjson::dom::element root, const std::string& source, ModelConfig& c) {
  simdjson::dom::array architectures;
  if (root["architectures"].get_array().get(architectures) == simdjson::SUCCESS && architectures.size() > 0) {
    if (architectures.size() > 1) fail("{}: \"architectures\" lists {} models; expected one", source, architectures.size());
    std::string_view name;
    if (architectures.at(0).get_string().get(name) != simdjson::SUCCESS) {
      fail("{}: \"architectures\" must be a list of strings", source);
    }
    if (name == "XLMRobertaForSequenceClassification" || name == "RobertaForSequenceClassification") {
      c.architecture = Architecture::kSequenceClassification;
    } else if (name != "XLMRobertaModel" && name != "RobertaModel") {
      fail("{}: architectures \"{}\" is not supported (expected XLMRobertaModel, an embedder such as BGE-M3 or "
           "multilingual-e5, or XLMRobertaForSequenceClassification, a reranker such as bge-reranker-v2-m3)",
           source, name);
    }
  }
  if (c.architecture != Architecture::kSequenceClassification) return;
  // transformers writes id2label ({"0": "LABEL_0"}) and reads num_labels from it.
  simdjson::dom::object id2label;
  if (root["id2label"].get_object().get(id2label) == simdjson::SUCCESS) {
    c.labels.resize(id2label.size());
    for (auto [key, value] : id2label) {
      size_t index = 0;
      const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), index);
      std::string_view label;
      if (ec != std::errc() || end != key.data() + key.size() || index >= c.labels.size() ||
          value.get_string().get(label) != simdjson::SUCCESS) {
        fail("{}: \"id2label\" must map \"0\"..\"{}\" to label names", source, c.labels.size() - 1);
      }
      c.labels[index] = std::string(label);
    }
    c.num_labels = static_cast<int64_t>(c.labels.size());
  } else {
    c.num_labels = get_int(root, "num_labels", source, 2);  // transformers' default
    for (int64_t i = 0; i < c.num_labels; ++i) c.labels.push_back("LABEL_" + std::to_string(i));
  }
  if (c.num_labels < 1) fail("{}: a classifier needs at least one label (id2label / num_labels)", source);
  std::string_view problem;
  if (root["problem_type"].get_string().get(problem) == simdjson::SUCCESS && problem == "multi_label_classification") {
    c.multi_label = true;
  }
}

}  // namespace

ModelConfig ModelConfig::parse(const std::string& json, const std::string& source) {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (auto error = parser.parse(json).get(root); error) {
    fail("{}: not valid JSON ({})", source, simdjson::error_message(error));
  }
  if (!root.is_object()) fail("{}: expected a JSON object", source);

  std::string_view model_type;
  if (root["model_type"].get_string().get(model_type) == simdjson::SUCCESS &&
      model_type != "xlm-roberta" && model_type != "roberta") {
    fail("{}: model_type \"{}\" is not supported (BGE-M3 is \"xlm-roberta\")", source, model_type);
  }
  std::string_view act = "gelu";
  if (root["hidden_act"].get_string().get(act) != simdjson::SUCCESS) act = "gelu";
  if (act != "gelu") fail("{}: hidden_act \"{}\" is not supported (expected \"gelu\", exact erf)", source, act);
  std::string_view position_type = "absolute";
  if (root["position_embedding_type"].get_string().get(position_type) != simdjson::SUCCESS) position_type = "absolute";
  if (position_type != "absolute") {
    fail("{}: position_embedding_type \"{}\" is not supported (expected \"absolute\")", source, position_type);
  }

  ModelConfig c;
  parse_architecture(root, source, c);
  c.vocab_size = get_int(root, "vocab_size", source);
  c.hidden_size = get_int(root, "hidden_size", source);
  c.num_layers = get_int(root, "num_hidden_layers", source);
  c.num_heads = get_int(root, "num_attention_heads", source);
  c.intermediate_size = get_int(root, "intermediate_size", source);
  c.max_position_embeddings = get_int(root, "max_position_embeddings", source);
  c.type_vocab_size = get_int(root, "type_vocab_size", source, 1);
  c.pad_token_id = get_int(root, "pad_token_id", source, 1);
  double eps;
  if (root["layer_norm_eps"].get_double().get(eps) == simdjson::SUCCESS) c.layer_norm_eps = eps;

  auto positive = [&](int64_t v, const char* name) {
    if (v <= 0) fail("{}: \"{}\" must be positive, got {}", source, name, v);
  };
  positive(c.vocab_size, "vocab_size");
  positive(c.hidden_size, "hidden_size");
  positive(c.num_layers, "num_hidden_layers");
  positive(c.num_heads, "num_attention_heads");
  positive(c.intermediate_size, "intermediate_size");
  positive(c.type_vocab_size, "type_vocab_size");
  if (c.hidden_size % c.num_heads != 0) {
    fail("{}: hidden_size {} is not divisible by num_attention_heads {}", source, c.hidden_size, c.num_heads);
  }
  if (c.pad_token_id < 0 || c.max_tokens() < 2) {
    fail("{}: max_position_embeddings {} leaves no room for tokens after pad_token_id {}", source,
         c.max_position_embeddings, c.pad_token_id);
  }
  if (c.layer_norm_eps <= 0) fail("{}: layer_norm_eps must be positive", source);
  return c;
}

ModelConfig ModelConfig::load(const std::filesystem::path& model_dir) {
  const auto file = model_dir / "config.json";
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("{}: cannot open (is {} a model directory?)", file.string(), model_dir.string());
  std::stringstream text;
  text << in.rdbuf();
  return parse(text.str(), file.string());
}

}  // namespace m3
