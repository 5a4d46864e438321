#include "m3/server/rerank_api.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "m3/server/api_error.h"
#include "m3/server/json_body.h"
#include "m3/server/json_writer.h"

namespace m3::server {
namespace {

float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

std::string required_text(simdjson::dom::object root, std::string_view key) {
  const auto value = field(root, key);
  if (!value) reject(422, std::string(key), "missing field `{}`", key);
  return std::string(string_value(*value, key));
}

// A list of 1..max texts; Cohere's documents may also be {"text": ...} objects.
std::vector<std::string> text_list(simdjson::dom::object root, std::string_view key, const ApiLimits& limits,
                                   bool allow_objects) {
  const auto value = field(root, key);
  if (!value) reject(422, std::string(key), "missing field `{}`", key);
  simdjson::dom::array items;
  if (value->get_array().get(items) != simdjson::SUCCESS) {
    reject(422, std::string(key), "`{}` must be an array of strings, not {}", key, json_type_name(*value));
  }
  if (items.size() == 0) reject(422, std::string(key), "`{}` cannot be empty", key);
  if (items.size() > limits.max_client_batch_size) {
    throw ApiError(413,
                   fmt::format("`{}` has {} items, more than --max-client-batch-size {}", key, items.size(),
                               limits.max_client_batch_size),
                   std::string(key), "too_many_inputs");
  }
  std::vector<std::string> texts;
  size_t i = 0;
  for (auto item : items) {
    const std::string param = fmt::format("{}[{}]", key, i++);
    simdjson::dom::object object;
    if (allow_objects && item.get_object().get(object) == simdjson::SUCCESS) {
      texts.push_back(required_text(object, "text"));
    } else {
      texts.emplace_back(string_value(item, param));
    }
  }
  return texts;
}

// Pairs are cut on the passage's side only (docs/API.md): a left truncation is refused.
void refuse_left_truncation(simdjson::dom::object root) {
  const auto direction = optional_string(root, "truncation_direction");
  if (!direction || *direction == "right" || *direction == "Right") return;
  if (*direction == "left" || *direction == "Left") {
    reject(422, "truncation_direction",
           "`truncation_direction` \"left\" is not supported for pairs: a pair keeps the query and cuts the end of "
           "the passage, as FlagEmbedding's FlagReranker does");
  }
  reject(422, "truncation_direction", "`truncation_direction` must be \"left\" or \"right\", not \"{}\"", *direction);
}

// Indices ordered by score, highest first (ties keep input order).
std::vector<size_t> ranked(const std::vector<float>& scores) {
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
  return order;
}

}  // namespace

RerankRequest parse_tei_rerank_request(std::string_view body, const ApiLimits& limits) {
  const JsonBody json(body);
  const auto root = json.root();
  RerankRequest request;
  request.query = required_text(root, "query");
  request.texts = text_list(root, "texts", limits, false);
  request.truncate = optional_bool(root, "truncate");
  refuse_left_truncation(root);
  request.raw_scores = optional_bool(root, "raw_scores").value_or(false);
  request.return_text = optional_bool(root, "return_text").value_or(false);
  return request;
}

RerankRequest parse_cohere_rerank_request(std::string_view body, const ApiLimits& limits) {
  const JsonBody json(body);
  const auto root = json.root();
  RerankRequest request;
  request.model = optional_string(root, "model").value_or("");
  request.query = required_text(root, "query");
  request.texts = text_list(root, "documents", limits, true);
  request.return_text = optional_bool(root, "return_documents").value_or(false);
  if (const auto top_n = optional_int(root, "top_n")) {
    if (*top_n < 1) reject(422, "top_n", "`top_n` must be at least 1, not {}", *top_n);
    request.top_n = *top_n;
  }
  request.truncate = optional_bool(root, "truncate");
  if (field(root, "rank_fields")) reject(422, "rank_fields", "`rank_fields` is not supported: send the texts");
  return request;
}

std::string tei_rerank_response(const std::vector<float>& logits, const RerankRequest& request) {
  std::vector<float> scores = logits;
  if (!request.raw_scores) std::transform(scores.begin(), scores.end(), scores.begin(), sigmoid);
  std::string out = "[";
  bool first = true;
  for (size_t i : ranked(scores)) {
    fmt::format_to(std::back_inserter(out), "{}{{\"index\":{}", first ? "" : ",", i);
    if (request.return_text) {
      out += ",\"text\":";
      append_json_string(out, request.texts[i]);
    }
    out += ",\"score\":";
    append_json_float(out, scores[i]);
    out += '}';
    first = false;
  }
  out += ']';
  return out;
}

std::string cohere_rerank_response(const std::vector<float>& logits, const RerankRequest& request,
                                   const RerankResponseInfo& info) {
  std::vector<float> scores(logits.size());
  std::transform(logits.begin(), logits.end(), scores.begin(), sigmoid);
  std::vector<size_t> order = ranked(scores);
  if (request.top_n > 0 && static_cast<size_t>(request.top_n) < order.size()) order.resize(request.top_n);
  std::string out = "{\"id\":";
  append_json_string(out, info.id);
  out += ",\"model\":";
  append_json_string(out, info.model);
  out += ",\"results\":[";
  for (size_t k = 0; k < order.size(); ++k) {
    fmt::format_to(std::back_inserter(out), "{}{{\"index\":{},\"relevance_score\":", k ? "," : "", order[k]);
    append_json_float(out, scores[order[k]]);
    if (request.return_text) {
      out += ",\"document\":{\"text\":";
      append_json_string(out, request.texts[order[k]]);
      out += '}';
    }
    out += '}';
  }
  fmt::format_to(std::back_inserter(out),
                 "],\"usage\":{{\"total_tokens\":{}}},\"meta\":{{\"api_version\":{{\"version\":\"1\"}},"
                 "\"billed_units\":{{\"search_units\":1}}}}}}",
                 info.tokens);
  return out;
}

PredictRequest parse_tei_predict_request(std::string_view body, const ApiLimits& limits) {
  const JsonBody json(body);
  const auto root = json.root();
  PredictRequest request;
  const auto inputs = field(root, "inputs");
  if (!inputs) reject(422, "inputs", "missing field `inputs`");
  // One element: a text, or a [text, text] pair.
  auto one = [](simdjson::dom::element element, const std::string& param) {
    simdjson::dom::array pair;
    if (element.get_array().get(pair) == simdjson::SUCCESS) {
      if (pair.size() != 2) reject(422, param, "`{}` must be a text or a pair [text, text]", param);
      return PredictInput{std::string(string_value(pair.at(0), param + "[0]")),
                          std::string(string_value(pair.at(1), param + "[1]"))};
    }
    return PredictInput{std::string(string_value(element, param)), std::nullopt};
  };
  simdjson::dom::array list;
  if (inputs->get_array().get(list) != simdjson::SUCCESS) {
    request.inputs.push_back(one(*inputs, "inputs"));
  } else if (list.size() == 2 && list.at(0).is_string() && list.at(1).is_string()) {
    request.inputs.push_back(one(*inputs, "inputs"));  // ["a", "b"]: one pair, as TEI reads it
  } else {
    if (list.size() == 0) reject(422, "inputs", "`inputs` cannot be empty");
    if (list.size() > limits.max_client_batch_size) {
      throw ApiError(413,
                     fmt::format("`inputs` has {} items, more than --max-client-batch-size {}", list.size(),
                                 limits.max_client_batch_size),
                     "inputs", "too_many_inputs");
    }
    request.batch = true;
    size_t i = 0;
    for (auto item : list) request.inputs.push_back(one(item, fmt::format("inputs[{}]", i++)));
  }
  request.truncate = optional_bool(root, "truncate");
  refuse_left_truncation(root);
  request.raw_scores = optional_bool(root, "raw_scores").value_or(false);
  return request;
}

std::string tei_predict_response(const std::vector<std::vector<float>>& logits, const std::vector<std::string>& labels,
                                 const PredictRequest& request, bool multi_label) {
  std::string out = request.batch ? "[" : "";
  for (size_t i = 0; i < logits.size(); ++i) {
    std::vector<float> scores = logits[i];
    if (!request.raw_scores) {
      if (scores.size() == 1 || multi_label) {
        std::transform(scores.begin(), scores.end(), scores.begin(), sigmoid);
      } else {
        const float most = *std::max_element(scores.begin(), scores.end());
        double sum = 0;
        for (float& s : scores) sum += (s = std::exp(s - most));
        for (float& s : scores) s = static_cast<float>(s / sum);
      }
    }
    out += i ? ",[" : "[";
    bool first = true;
    for (size_t k : ranked(scores)) {
      out += first ? "{\"score\":" : ",{\"score\":";
      append_json_float(out, scores[k]);
      out += ",\"label\":";
      append_json_string(out, labels[k]);
      out += '}';
      first = false;
    }
    out += ']';
  }
  if (request.batch) out += ']';
  return out;
}

}  // namespace m3::server
