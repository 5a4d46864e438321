#include "m3/server/openai_api.h"

#include <bit>

#include <fmt/format.h>

#include "m3/server/api_error.h"
#include "m3/server/base64.h"
#include "m3/server/dense_dimensions.h"
#include "m3/server/json_body.h"
#include "m3/server/json_writer.h"

namespace m3::server {

static_assert(std::endian::native == std::endian::little, "base64 embeddings are little-endian float32 bytes");

OpenAiEmbeddingRequest parse_openai_embedding_request(std::string_view body, const ApiLimits& limits) {
  const JsonBody json(body);
  const auto root = json.root();
  OpenAiEmbeddingRequest request;
  const auto input = field(root, "input");
  if (!input) reject(422, "input", "missing field `input`");
  request.inputs = parse_input_list(*input, "input", limits.input_rules(true, false));

  const std::string format = optional_string(root, "encoding_format").value_or("float");
  if (format == "base64")
    request.base64 = true;
  else if (format != "float")
    reject(422, "encoding_format", "`encoding_format` must be \"float\" or \"base64\", not \"{}\"", format);

  if (const auto dimensions = optional_int(root, "dimensions")) {
    if (*dimensions < 1 || *dimensions > limits.hidden_size) {
      reject(422, "dimensions", "`dimensions` must be between 1 and {} (the model's hidden size), not {}",
             limits.hidden_size, *dimensions);
    }
    request.dimensions = *dimensions;
  }
  request.model = optional_string(root, "model").value_or("");
  (void)optional_string(root, "user");  // accepted for compatibility; type-checked only
  return request;
}

std::string openai_embedding_response(const std::vector<M3Output>& outputs, const OpenAiEmbeddingRequest& request,
                                      std::string_view model, int64_t prompt_tokens) {
  std::string out;
  out += "{\"object\":\"list\",\"data\":[";
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (i) out += ',';
    fmt::format_to(std::back_inserter(out), "{{\"object\":\"embedding\",\"index\":{},\"embedding\":", i);
    const std::vector<float> dense = dense_with_dimensions(outputs[i], request.dimensions);
    if (request.base64) {
      out += '"';
      append_base64(out, dense.data(), dense.size() * sizeof(float));
      out += '"';
    } else {
      append_json_floats(out, dense.data(), dense.size());
    }
    out += '}';
  }
  out += "],\"model\":";
  append_json_string(out, model);
  fmt::format_to(std::back_inserter(out), ",\"usage\":{{\"prompt_tokens\":{},\"total_tokens\":{}}}}}", prompt_tokens,
                 prompt_tokens);
  return out;
}

std::string openai_models_response(const std::vector<std::string>& models) {
  std::string out = "{\"object\":\"list\",\"data\":[";
  for (size_t i = 0; i < models.size(); ++i) {
    out += i ? ",{\"id\":" : "{\"id\":";
    append_json_string(out, models[i]);
    out += ",\"object\":\"model\",\"created\":0,\"owned_by\":\"m3embed\"}";
  }
  out += "]}";
  return out;
}

}  // namespace m3::server
