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
  if (const auto direction = optional_string(root, "truncation_direction")) {
    if (*direction != "right" && *direction != "Right") {
      reject(422, "truncation_direction", "`truncation_direction` \"{}\" is not supported; only \"right\"", *direction);
    }
  }
  if (optional_string(root, "prompt_name")) reject(422, "prompt_name", "`prompt_name`: this model has no prompts");
}

}  // namespace

TeiEmbedRequest parse_tei_embed_request(std::string_view body, const ApiLimits& limits) {
  const JsonBody json(body);
  const auto root = json.root();
  TeiEmbedRequest request;
  request.inputs = required_inputs(root, limits.input_rules(true, false));
  request.truncate = optional_bool(root, "truncate");
  request.normalize = optional_bool(root, "normalize").value_or(true);
  if (!request.normalize) {
    reject(422, "normalize",
           "`normalize`: false is not supported: BGE-M3's dense output is the L2-normalized CLS vector");
  }
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

TeiTokenizeRequest parse_tei_tokenize_request(std::string_view body, const ApiLimits& limits) {
  const JsonBody json(body);
  const auto root = json.root();
  TeiTokenizeRequest request;
  request.inputs = required_inputs(root, limits.input_rules(false, false));
  request.add_special_tokens = optional_bool(root, "add_special_tokens").value_or(true);
  refuse_unsupported(root);
  return request;
}

std::string tei_embed_response(const std::vector<M3Output>& outputs, int64_t dimensions) {
  std::string out = "[";
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (i) out += ',';
    const std::vector<float> dense = dense_with_dimensions(outputs[i], dimensions);
    append_json_floats(out, dense.data(), dense.size());
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
      fmt::format_to(std::back_inserter(out), ",\"special\":{},\"start\":null,\"stop\":null}}", token.special);
    }
    out += ']';
  }
  out += ']';
  return out;
}

}  // namespace m3::server
