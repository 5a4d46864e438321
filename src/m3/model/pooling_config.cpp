#include "m3/model/pooling_config.h"

#include <algorithm>
#include <string>
#include <string_view>

#include <simdjson.h>

#include "m3/core/error.h"

namespace m3 {
namespace {

namespace fs = std::filesystem;

simdjson::dom::element load_json(simdjson::dom::parser& parser, const fs::path& file) {
  simdjson::dom::element root;
  if (auto error = parser.load(file.string()).get(root); error) {
    fail("{}: cannot read as JSON ({})", file.string(), simdjson::error_message(error));
  }
  return root;
}

// The class name at the end of a module type ("sentence_transformers.models.Pooling").
std::string_view class_name(std::string_view type) {
  const size_t dot = type.rfind('.');
  return dot == std::string_view::npos ? type : type.substr(dot + 1);
}

// 1_Pooling/config.json: one of the pooling_mode_* flags (or sentence-transformers'
// newer "pooling_mode" string); only cls and mean can be computed.
Pooling read_pooling(const fs::path& file) {
  simdjson::dom::parser parser;
  const auto root = load_json(parser, file);
  std::string_view mode;
  if (root["pooling_mode"].get_string().get(mode) == simdjson::SUCCESS) {
    if (mode == "cls") return Pooling::kCls;
    if (mode == "mean") return Pooling::kMean;
    fail("{}: pooling_mode \"{}\" is not supported (cls or mean)", file.string(), mode);
  }
  simdjson::dom::object fields;
  if (root.get_object().get(fields) != simdjson::SUCCESS) fail("{}: expected a JSON object", file.string());
  std::string chosen;
  for (auto [key, value] : fields) {
    bool on = false;
    if (key.rfind("pooling_mode_", 0) != 0 || value.get_bool().get(on) != simdjson::SUCCESS || !on) continue;
    if (!chosen.empty()) fail("{}: both {} and {} are set; one pooling mode is supported", file.string(), chosen, key);
    chosen = std::string(key);
  }
  if (chosen == "pooling_mode_cls_token") return Pooling::kCls;
  if (chosen == "pooling_mode_mean_tokens") return Pooling::kMean;
  if (chosen.empty()) fail("{}: no pooling_mode_* field is true", file.string());
  fail("{}: {} is not supported (pooling_mode_cls_token or pooling_mode_mean_tokens)", file.string(), chosen);
}

}  // namespace

PoolingConfig load_pooling_config(const fs::path& model_dir) {
  const fs::path modules_file = model_dir / "modules.json";
  PoolingConfig config;
  if (!fs::exists(modules_file)) return config;
  simdjson::dom::parser parser;
  simdjson::dom::array modules;
  if (load_json(parser, modules_file).get_array().get(modules) != simdjson::SUCCESS) {
    fail("{}: expected a list of modules", modules_file.string());
  }
  bool pooling_seen = false;
  config.normalize = false;
  for (auto module : modules) {
    std::string_view type, path;
    if (module["type"].get_string().get(type) != simdjson::SUCCESS) {
      fail("{}: a module without a \"type\"", modules_file.string());
    }
    if (module["path"].get_string().get(path) != simdjson::SUCCESS) path = "";
    const std::string_view name = class_name(type);
    if (name == "Transformer") continue;
    if (name == "Pooling") {
      config.pooling = read_pooling(model_dir / std::string(path) / "config.json");
      pooling_seen = true;
    } else if (name == "Normalize") {
      config.normalize = true;
    } else {
      fail("{}: module \"{}\" is not supported (Transformer, Pooling and Normalize are)", modules_file.string(), type);
    }
  }
  if (!pooling_seen) fail("{}: no Pooling module", modules_file.string());
  return config;
}

const char* pooling_name(Pooling pooling) { return pooling == Pooling::kMean ? "mean" : "cls"; }

int64_t default_max_seq_len(const fs::path& model_dir, const ModelConfig& config) {
  // sentence-transformers up to 5 keeps max_seq_length in sentence_bert_config.json;
  // version 6 drops it there and truncates at the tokenizer's model_max_length.
  simdjson::dom::parser parser;
  int64_t limit = 0;
  const fs::path sbert = model_dir / "sentence_bert_config.json", tokenizer = model_dir / "tokenizer_config.json";
  if (fs::exists(sbert) && load_json(parser, sbert)["max_seq_length"].get_int64().get(limit) == simdjson::SUCCESS) {
    if (limit < 2) fail("{}: max_seq_length {} leaves no room for <s> and </s>", sbert.string(), limit);
  } else if (fs::exists(model_dir / "modules.json") && fs::exists(tokenizer) &&
             load_json(parser, tokenizer)["model_max_length"].get_int64().get(limit) == simdjson::SUCCESS) {
    if (limit < 2) fail("{}: model_max_length {} leaves no room for <s> and </s>", tokenizer.string(), limit);
  } else {
    return config.max_tokens();
  }
  return std::min(limit, config.max_tokens());
}

}  // namespace m3
