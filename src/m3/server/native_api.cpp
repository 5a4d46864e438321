#include "m3/server/native_api.h"

#include "m3/io/output_json.h"

#include <unordered_map>

#include <fmt/format.h>

#include "m3/server/api_error.h"
#include "m3/server/json_body.h"
#include "m3/server/json_writer.h"

namespace m3::server {
namespace {

int64_t length_field(simdjson::dom::object root, std::string_view key, int64_t fallback) {
  const auto value = optional_int(root, key);
  if (!value) return fallback;
  if (*value < 2) reject(422, std::string(key), "`{}` must be at least 2 (<s> and </s>), not {}", key, *value);
  return *value;
}

std::pair<std::string, std::string> parse_pair(simdjson::dom::element item, const std::string& name) {
  simdjson::dom::array array;
  simdjson::dom::object object;
  if (!item.get_array().get(array)) {
    if (array.size() != 2) reject(422, name, "`{}` must be [query, passage], not {} items", name, array.size());
    return {std::string(string_value(array.at(0).value_unsafe(), name + "[0]")),
            std::string(string_value(array.at(1).value_unsafe(), name + "[1]"))};
  }
  if (!item.get_object().get(object)) {
    auto query = optional_string(object, "query");
    auto passage = optional_string(object, "passage");
    if (!query || !passage) reject(422, name, "`{}` needs both \"query\" and \"passage\"", name);
    return {std::move(*query), std::move(*passage)};
  }
  reject(422, name, "`{}` must be [query, passage] or {{\"query\", \"passage\"}}, not {}", name, json_type_name(item));
}

ScoreWeights parse_weights(simdjson::dom::object root) {
  const auto value = field(root, "weights");
  if (!value) return {};
  simdjson::dom::array array;
  if (value->get_array().get(array) || array.size() != 3) {
    reject(422, "weights", "`weights` must be three numbers [dense, sparse, colbert]");
  }
  float w[3];
  for (size_t i = 0; i < 3; ++i) {
    double x = 0;
    if (array.at(i).get_double().get(x) || !(x >= 0) || x > 1e30) {
      reject(422, "weights", "`weights` must be three non-negative numbers [dense, sparse, colbert]");
    }
    w[i] = static_cast<float>(x);
  }
  if (w[0] + w[1] == 0.f) reject(422, "weights", "`weights`: the dense and sparse weights must not both be 0");
  return {w[0], w[1], w[2]};
}

void append_usage(std::string& out, std::string_view model, int64_t tokens) {
  out += "],\"model\":";
  append_json_string(out, model);
  fmt::format_to(std::back_inserter(out), ",\"usage\":{{\"prompt_tokens\":{},\"total_tokens\":{}}}}}", tokens, tokens);
}

}  // namespace

NativeEncodeRequest parse_native_encode_request(std::string_view body, const ApiLimits& limits) {
  const JsonBody json(body);
  const auto root = json.root();
  NativeEncodeRequest request;
  const auto input = field(root, "input");
  if (!input) reject(422, "input", "missing field `input`");
  request.inputs = parse_input_list(*input, "input", limits.input_rules(true, true));
  request.outputs.dense = optional_bool(root, "return_dense").value_or(true);
  request.outputs.sparse = optional_bool(root, "return_sparse").value_or(false);
  request.outputs.colbert = optional_bool(root, "return_colbert_vecs").value_or(false);
  if (!request.outputs.dense && !request.outputs.sparse && !request.outputs.colbert) {
    reject(422, "return_dense", "nothing to return: return_dense, return_sparse and return_colbert_vecs are all false");
  }
  request.truncate = optional_bool(root, "truncate");
  request.max_length = length_field(root, "max_length", 0);
  request.return_tokens = optional_bool(root, "return_tokens").value_or(false);
  request.model = optional_string(root, "model").value_or("");
  return request;
}

NativeScoreRequest parse_native_score_request(std::string_view body, const ApiLimits& limits) {
  const JsonBody json(body);
  const auto root = json.root();
  NativeScoreRequest request;
  const auto pairs = field(root, "pairs");
  if (!pairs) reject(422, "pairs", "missing field `pairs`");
  simdjson::dom::array array;
  if (pairs->get_array().get(array)) reject(422, "pairs", "`pairs` must be an array, not {}", json_type_name(*pairs));
  if (array.size() == 0) reject(422, "pairs", "`pairs` must not be an empty list");
  if (array.size() > limits.max_client_batch_size) {
    throw ApiError(413,
                   fmt::format("`pairs` has {} items, more than the maximum of {} (--max-client-batch-size)",
                               array.size(), limits.max_client_batch_size),
                   "pairs", "too_many_inputs");
  }
  size_t i = 0;
  for (simdjson::dom::element item : array) request.pairs.push_back(parse_pair(item, fmt::format("pairs[{}]", i++)));
  request.weights = parse_weights(root);
  request.max_query_length = length_field(root, "max_query_length", request.max_query_length);
  request.max_passage_length = length_field(root, "max_passage_length", request.max_passage_length);
  request.model = optional_string(root, "model").value_or("");
  return request;
}

std::string native_encode_response(const std::vector<M3Output>& outputs, const std::vector<EncodedInput>& inputs,
                                   const NativeEncodeRequest& request, int64_t hidden, std::string_view model,
                                   int64_t tokens) {
  std::string out = "{\"object\":\"list\",\"data\":[";
  for (size_t i = 0; i < outputs.size(); ++i) {
    const M3Output& o = outputs[i];
    const EncodedInput& input = inputs[i];
    fmt::format_to(std::back_inserter(out), "{}{{\"index\":{}", i ? "," : "", i);
    if (request.outputs.dense) {
      out += ",\"dense_vecs\":";
      append_json_floats(out, o.dense.data(), o.dense.size());
    }
    if (request.outputs.sparse) {
      out += ",\"lexical_weights\":{";
      for (size_t k = 0; k < o.lexical.size(); ++k) {
        fmt::format_to(std::back_inserter(out), "{}\"{}\":", k ? "," : "", o.lexical[k].first);
        append_json_float(out, o.lexical[k].second);
      }
      out += '}';
    }
    if (request.outputs.colbert) {
      out += ",\"colbert_vecs\":[";
      for (int64_t r = 0; r < o.colbert_rows; ++r) {
        if (r) out += ',';
        append_json_floats(out, o.colbert.data() + r * hidden, static_cast<size_t>(hidden));
      }
      out += ']';
    }
    fmt::format_to(std::back_inserter(out), ",\"truncated\":{}", input.truncated);
    if (request.return_tokens && input.ids) {
      fmt::format_to(std::back_inserter(out), ",\"input_ids\":[{}],\"tokens\":[", fmt::join(*input.ids, ","));
      for (size_t k = 0; k < input.pieces.size(); ++k) {
        if (k) out += ',';
        append_json_string(out, input.pieces[k]);
      }
      out += ']';
      if (request.outputs.sparse) {
        // FlagEmbedding's convert_id_to_token: the same weights keyed by token text.
        out += ",\"lexical_tokens\":{";
        std::unordered_map<int32_t, size_t> position;  // id -> its first position
        for (size_t t = input.ids->size(); t-- > 0;) position[(*input.ids)[t]] = t;
        for (size_t k = 0; k < o.lexical.size(); ++k) {
          if (k) out += ',';
          const auto found = position.find(o.lexical[k].first);
          append_json_string(out, found == position.end() ? std::string_view() : input.pieces[found->second]);
          out += ':';
          append_json_float(out, o.lexical[k].second);
        }
        out += '}';
      }
    }
    out += '}';
  }
  append_usage(out, model, tokens);
  return out;
}

std::string native_score_response(const std::vector<PairScores>& scores, std::string_view model, int64_t tokens) {
  std::string out = "{\"object\":\"list\",\"data\":[";
  for (size_t i = 0; i < scores.size(); ++i) {
    const PairScores& s = scores[i];
    fmt::format_to(std::back_inserter(out), "{}{{\"index\":{},", i ? "," : "", i);
    append_score_fields(out, s);  // the keys `m3embed score` writes
    out += '}';
  }
  append_usage(out, model, tokens);
  return out;
}

}  // namespace m3::server
