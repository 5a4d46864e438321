#include "m3/server/vllm_api.h"

#include <bit>
#include <cstring>

#include <fmt/format.h>

#include "m3/server/api_error.h"
#include "m3/server/base64.h"
#include "m3/server/json_body.h"
#include "m3/server/json_writer.h"

namespace m3::server {
namespace {

static_assert(std::endian::native == std::endian::little, "endianness \"native\" is little-endian here");

constexpr std::string_view kTasks = R"("embed", "token_classify" and "token_embed")";

PoolingTask parse_task(std::string_view task) {
  if (task == "embed") return PoolingTask::kEmbed;
  if (task == "token_classify") return PoolingTask::kTokenClassify;
  if (task == "token_embed") return PoolingTask::kTokenEmbed;
  if (task == "embed&token_classify" || task == "plugin") {
    reject(422, "task",
           "task \"{}\" needs vLLM's BGE-M3 IO processor plugin, which m3embed does not have; /pooling serves {} "
           "(/m3/encode returns dense, sparse and ColBERT outputs from one pass)",
           task, kTasks);
  }
  reject(422, "task", "unsupported task \"{}\": /pooling serves {} (BGE-M3's dense, sparse and ColBERT outputs)",
         task, kTasks);
}

// vLLM's use_activation; older versions spelled it `normalize` (embed, token_embed) and
// `activation` (classify, token_classify). The first one present wins.
bool parse_activation(simdjson::dom::object root, PoolingTask task) {
  for (const char* name : {"use_activation", "normalize", "activation"}) {
    const std::optional<bool> value = optional_bool(root, name);
    if (!value) continue;
    if (!*value && task != PoolingTask::kEmbed) {
      reject(422, name,
             "`{}: false` is not supported for task \"{}\": the engine applies relu to the sparse weights and "
             "normalizes ColBERT rows on the device",
             name, task == PoolingTask::kTokenClassify ? "token_classify" : "token_embed");
    }
    return *value;
  }
  return true;
}

void append_values(std::string& out, const float* values, size_t count, const VllmPoolingRequest& request) {
  if (!request.base64) {
    append_json_floats(out, values, count);
    return;
  }
  out += '"';
  if (request.big_endian) {
    std::vector<uint32_t> swapped(count);
    std::memcpy(swapped.data(), values, count * sizeof(float));
    for (uint32_t& word : swapped) word = __builtin_bswap32(word);
    append_base64(out, swapped.data(), count * sizeof(float));
  } else {
    append_base64(out, values, count * sizeof(float));
  }
  out += '"';
}

void append_pooled(std::string& out, const M3Output& o, const VllmPoolingRequest& request, int64_t hidden) {
  switch (request.task) {
    case PoolingTask::kEmbed: {
      if (request.activation) return append_values(out, o.dense.data(), o.dense.size(), request);
      std::vector<float> raw(o.dense);  // the CLS state: the unit vector times its norm
      for (float& x : raw) x *= o.dense_norm;
      return append_values(out, raw.data(), raw.size(), request);
    }
    case PoolingTask::kTokenClassify: {
      // Every sequence is framed by <s> ... </s> (input_list.cpp, the tokenizer), so
      // BOSEOSFilter always drops the first and the last position.
      const size_t n = o.token_weights.size();
      return append_values(out, n >= 2 ? o.token_weights.data() + 1 : nullptr, n >= 2 ? n - 2 : 0, request);
    }
    case PoolingTask::kTokenEmbed: {
      // The engine's ColBERT rows already start after <s> and keep </s>, each normalized.
      const auto h = static_cast<size_t>(hidden);
      if (request.base64) return append_values(out, o.colbert.data(), o.colbert.size(), request);
      out += '[';
      for (int64_t r = 0; r < o.colbert_rows; ++r) {
        if (r) out += ',';
        append_json_floats(out, o.colbert.data() + static_cast<size_t>(r) * h, h);
      }
      out += ']';
      return;
    }
  }
}

}  // namespace

VllmPoolingRequest parse_vllm_pooling_request(std::string_view body, const ApiLimits& limits) {
  const JsonBody json(body);
  const auto root = json.root();
  VllmPoolingRequest request;
  if (field(root, "messages")) {
    reject(422, "messages", "chat-style pooling requests (`messages`) are not supported: send `input`");
  }
  const auto input = field(root, "input");
  if (!input) reject(422, "input", "missing field `input`");
  request.inputs = parse_input_list(*input, "input", limits.input_rules(true, false));

  if (const auto task = optional_string(root, "task")) request.task = parse_task(*task);

  const std::string format = optional_string(root, "encoding_format").value_or("float");
  if (format == "base64") {
    request.base64 = true;
  } else if (format != "float") {
    reject(422, "encoding_format", "`encoding_format` must be \"float\" or \"base64\", not \"{}\"", format);
  }
  const std::string dtype = optional_string(root, "embed_dtype").value_or("float32");
  if (dtype != "float32") reject(422, "embed_dtype", "`embed_dtype` must be \"float32\", not \"{}\"", dtype);
  const std::string endianness = optional_string(root, "endianness").value_or("native");
  if (endianness == "big") {
    request.big_endian = true;
  } else if (endianness != "native" && endianness != "little") {
    reject(422, "endianness", "`endianness` must be \"native\", \"little\" or \"big\", not \"{}\"", endianness);
  }
  if (field(root, "dimensions")) reject(422, "dimensions", "`dimensions` is not supported by /pooling (as in vLLM)");
  request.activation = parse_activation(root, request.task);

  if (const auto tokens = optional_int(root, "truncate_prompt_tokens")) {
    if (*tokens != -1 && *tokens < 2) {
      reject(422, "truncate_prompt_tokens",
             "`truncate_prompt_tokens` must be -1 (the longest input) or at least 2 (<s> and </s>), not {}", *tokens);
    }
    request.truncate_prompt_tokens = *tokens;
  }
  if (const auto side = optional_string(root, "truncation_side")) {
    if (*side != "left" && *side != "right") {
      reject(422, "truncation_side", "`truncation_side` must be \"left\" or \"right\", not \"{}\"", *side);
    }
    request.truncate_left = *side == "left";
  }
  if (!optional_bool(root, "add_special_tokens").value_or(true)) {
    reject(422, "add_special_tokens",
           "`add_special_tokens: false` is not supported: BGE-M3 embeds sequences framed by <s> and </s>");
  }
  request.model = optional_string(root, "model").value_or("");
  request.request_id = optional_string(root, "request_id").value_or("");
  (void)optional_string(root, "user");  // accepted for compatibility; type-checked only
  return request;
}

OutputRequest pooling_outputs(PoolingTask task) {
  OutputRequest outputs{false, false, false};
  switch (task) {
    case PoolingTask::kEmbed: outputs.dense = true; break;
    case PoolingTask::kTokenClassify: outputs.token_weights = true; break;
    case PoolingTask::kTokenEmbed: outputs.colbert = true; break;
  }
  return outputs;
}

std::string vllm_pooling_response(const std::vector<M3Output>& outputs, const VllmPoolingRequest& request,
                                  const PoolingResponseInfo& info) {
  std::string out = "{\"id\":";
  append_json_string(out, info.id);
  fmt::format_to(std::back_inserter(out), ",\"object\":\"list\",\"created\":{},\"model\":", info.created);
  append_json_string(out, info.model);
  out += ",\"data\":[";
  for (size_t i = 0; i < outputs.size(); ++i) {
    fmt::format_to(std::back_inserter(out), "{}{{\"index\":{},\"object\":\"pooling\",\"data\":", i ? "," : "", i);
    append_pooled(out, outputs[i], request, info.hidden);
    out += '}';
  }
  fmt::format_to(std::back_inserter(out),
                 "],\"usage\":{{\"prompt_tokens\":{},\"total_tokens\":{},\"completion_tokens\":0,"
                 "\"prompt_tokens_details\":null}}}}",
                 info.prompt_tokens, info.prompt_tokens);
  return out;
}

}  // namespace m3::server
