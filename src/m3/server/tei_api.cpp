#include "m3/server/tei_api.h"

#include <algorithm>

#include <fmt/format.h>

#include "m3/server/api_error.h"
#include "m3/server/dense_dimensions.h"
#include "m3/server/json_body.h"
#include "m3/server/json_writer.h"

namespace m3::server {
namespace {

std::vector<Input> required_inputs(simdjson::dom::object root, const InputRules& rules) {
  const auto inputs = field(root, "inputs");
  if (!inputs) reject(422, "inputs", "missing field `inputs`");
  return parse_input_list(*inputs, "inputs", rules);
}

// TEI options m3embed does not implement: refused by name rather than ignored.
void refuse_unsupported(simdjson::dom::object root) {
  if (optional_string(root, "prompt_name")) reject(422, "prompt_name", "`prompt_name`: this model has no prompts");
}

// truncation_direction: "right"/"Right" (the default) or "left"/"Left", as TEI's enum takes
// either spelling; true for left.
bool truncates_left(simdjson::dom::object root) {
  const auto direction = optional_string(root, "truncation_direction");
  if (!direction || *direction == "right" || *direction == "Right") return false;
  if (*direction == "left" || *direction == "Left") return true;
  reject(422, "truncation_direction", "`truncation_direction` must be \"left\" or \"right\", not \"{}\"", *direction);
}

}  // namespace

TeiEmbedRequest parse_tei_embed_request(std::string_view body, const ApiLimits& limits) {
  const JsonBody json(body);
  const auto root = json.root();
  TeiEmbedRequest request;
  request.inputs = required_inputs(root, limits.input_rules(true, false));
  request.truncate = optional_bool(root, "truncate");
  request.truncate_left = truncates_left(root);
  request.normalize = optional_bool(root, "normalize").value_or(true);
  if (const auto dimensions = optional_int(root, "dimensions")) {
    if (*dimensions < 1 || *dimensions > limits.hidden_size) {
      reject(422, "dimensions", "`dimensions` must be between 1 and {} (the model's hidden size), not {}",
             limits.hidden_size, *dimensions);
    }
    request.dimensions = *dimensions;
  }
  refuse_unsupported(root);
  return request;
}

TeiEmbedRequest parse_tei_similarity_request(std::string_view body, const ApiLimits& limits) {
  const JsonBody json(body);
  const auto root = json.root();
  const auto inputs = field(root, "inputs");
  simdjson::dom::object pair;
  if (!inputs || inputs->get(pair) != simdjson::SUCCESS) {
    reject(422, "inputs", "`inputs` must be an object with `source_sentence` and `sentences`");
  }
  const auto source = field(pair, "source_sentence");
  const auto sentences = field(pair, "sentences");
  if (!source || !source->is_string()) reject(422, "inputs.source_sentence", "missing string `source_sentence`");
  if (!sentences || !sentences->is_array()) reject(422, "inputs.sentences", "missing list `sentences`");
  InputRules rules = limits.input_rules(false, false);
  TeiEmbedRequest request;
  request.inputs = parse_input_list(*source, "inputs.source_sentence", rules);
  rules.max_items = rules.max_items > 1 ? rules.max_items - 1 : 1;  // the source takes one
  for (Input& sentence : parse_input_list(*sentences, "inputs.sentences", rules)) {
    request.inputs.push_back(std::move(sentence));
  }
  // TEI reads truncate and truncation_direction from "parameters"; the root is accepted too.
  simdjson::dom::object options = root;
  if (const auto parameters = field(root, "parameters"); parameters && !parameters->is_null()) {
    if (parameters->get(options) != simdjson::SUCCESS) reject(422, "parameters", "`parameters` must be an object");
  }
  request.truncate = optional_bool(options, "truncate");
  request.truncate_left = truncates_left(options);
  refuse_unsupported(options);
  return request;
}

std::string tei_similarity_response(const std::vector<M3Output>& outputs) {
  std::string out = "[";
  for (size_t i = 1; i < outputs.size(); ++i) {
    const std::vector<float>& a = outputs[0].dense;
    const std::vector<float>& b = outputs[i].dense;
    double dot = 0;  // both L2-normalized: the dot product is the cosine
    for (size_t k = 0; k < a.size(); ++k) dot += double(a[k]) * b[k];
    if (i > 1) out += ',';
    append_json_float(out, static_cast<float>(dot));
  }
  out += ']';
  return out;
}

TeiDecodeRequest parse_tei_decode_request(std::string_view body, const ApiLimits& limits) {
  const JsonBody json(body);
  const auto root = json.root();
  const auto ids = field(root, "ids");
  simdjson::dom::array lists;
  if (!ids || ids->get(lists) != simdjson::SUCCESS || lists.size() == 0) {
    reject(422, "ids", "`ids` must be a list of token ids or a list of such lists");
  }
  TeiDecodeRequest request;
  auto read_ids = [&](simdjson::dom::array values, std::string_view param) {
    std::vector<int32_t> out;
    for (auto value : values) {
      int64_t id = 0;
      if (value.get(id) != simdjson::SUCCESS || id < 0 || id >= limits.vocab_size) {
        reject(422, std::string(param), "`{}` holds something that is not a token id in [0, {})", param,
               limits.vocab_size);
      }
      out.push_back(static_cast<int32_t>(id));
    }
    return out;
  };
  if ((*lists.begin()).is_array()) {
    if (lists.size() > limits.max_client_batch_size) {
      reject(413, "ids", "`ids` has {} lists, more than --max-client-batch-size {}", lists.size(),
             limits.max_client_batch_size);
    }
    for (auto list : lists) {
      simdjson::dom::array values;
      if (list.get(values) != simdjson::SUCCESS) reject(422, "ids", "`ids` mixes lists and ids");
      request.ids.push_back(read_ids(values, "ids"));
    }
  } else {
    request.ids.push_back(read_ids(lists, "ids"));
  }
  request.skip_special_tokens = optional_bool(root, "skip_special_tokens").value_or(true);
  return request;
}

TeiTokenizeRequest parse_tei_tokenize_request(std::string_view body, const ApiLimits& limits) {
  const JsonBody json(body);
  const auto root = json.root();
  TeiTokenizeRequest request;
  request.inputs = required_inputs(root, limits.input_rules(false, false));
  request.add_special_tokens = optional_bool(root, "add_special_tokens").value_or(true);
  refuse_unsupported(root);
  return request;
}

std::string tei_embed_response(const std::vector<M3Output>& outputs, int64_t dimensions, bool normalize) {
  std::string out = "[";
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (i) out += ',';
    if (normalize) {
      const std::vector<float> dense = dense_with_dimensions(outputs[i], dimensions);
      append_json_floats(out, dense.data(), dense.size());
      continue;
    }
    // The raw CLS state (TEI's normalize=false), its first `dimensions` values if asked.
    const std::vector<float>& unit = outputs[i].dense;
    const size_t n = dimensions > 0 ? std::min(unit.size(), static_cast<size_t>(dimensions)) : unit.size();
    std::vector<float> raw(n);
    for (size_t k = 0; k < n; ++k) raw[k] = unit[k] * outputs[i].dense_norm;
    append_json_floats(out, raw.data(), raw.size());
  }
  out += ']';
  return out;
}

std::string tei_sparse_response(const std::vector<M3Output>& outputs) {
  std::string out = "[";
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (i) out += ',';
    out += '[';
    // Ascending token ids, as TEI lists sparse values (M3Output keeps first-occurrence order).
    std::vector<std::pair<int32_t, float>> lexical = outputs[i].lexical;
    std::sort(lexical.begin(), lexical.end());
    for (size_t k = 0; k < lexical.size(); ++k) {
      fmt::format_to(std::back_inserter(out), "{}{{\"index\":{},\"value\":", k ? "," : "", lexical[k].first);
      append_json_float(out, lexical[k].second);
      out += '}';
    }
    out += ']';
  }
  out += ']';
  return out;
}

std::string tei_all_response(const std::vector<M3Output>& outputs, int64_t hidden) {
  std::string out = "[";
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (i) out += ',';
    out += '[';
    for (int64_t r = 0; r < outputs[i].colbert_rows; ++r) {
      if (r) out += ',';
      append_json_floats(out, outputs[i].colbert.data() + r * hidden, static_cast<size_t>(hidden));
    }
    out += ']';
  }
  out += ']';
  return out;
}

std::string tei_tokenize_response(const std::vector<std::vector<TeiToken>>& tokens) {
  std::string out = "[";
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i) out += ',';
    out += '[';
    for (size_t k = 0; k < tokens[i].size(); ++k) {
      const TeiToken& token = tokens[i][k];
      fmt::format_to(std::back_inserter(out), "{}{{\"id\":{},\"text\":", k ? "," : "", token.id);
      append_json_string(out, token.text);
      if (token.offsets) {
        fmt::format_to(std::back_inserter(out), ",\"special\":{},\"start\":{},\"stop\":{}}}", token.special,
                       token.offsets->begin, token.offsets->end);
      } else {
        fmt::format_to(std::back_inserter(out), ",\"special\":{},\"start\":null,\"stop\":null}}", token.special);
      }
    }
    out += ']';
  }
  out += ']';
  return out;
}

}  // namespace m3::server
