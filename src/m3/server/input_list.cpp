#include "m3/server/input_list.h"

#include <fmt/format.h>

#include "m3/server/api_error.h"
#include "m3/server/json_body.h"

namespace m3::server {
namespace {

constexpr int32_t kBosId = 0;  // <s> (XlmrTokenizer::kCls)
constexpr int32_t kEosId = 2;  // </s> (XlmrTokenizer::kEos)

std::string item_name(std::string_view param, size_t index) { return fmt::format("{}[{}]", param, index); }

Input text_input(simdjson::dom::element value, const std::string& name, const InputRules& rules) {
  Input input;
  input.text = std::string(string_value(value, name));
  if (input.text.empty() && !rules.allow_empty_text) reject(422, name, "`{}` must not be an empty string", name);
  return input;
}

Input ids_input(simdjson::dom::array array, const std::string& name, const InputRules& rules) {
  Input input;
  input.is_ids = true;
  input.ids.reserve(array.size());
  size_t i = 0;
  for (simdjson::dom::element id : array) {
    const std::string id_name = item_name(name, i++);
    const int64_t value = int_value(id, id_name);
    if (value < 0 || value >= rules.vocab_size) {
      reject(422, id_name, "token id {} in `{}` is out of range: ids lie in [0, {})", value, name, rules.vocab_size);
    }
    input.ids.push_back(static_cast<int32_t>(value));
  }
  if (input.ids.size() < 2) {
    reject(422, name, "`{}` has {} token ids; a sequence has at least 2 (<s> and </s>)", name, input.ids.size());
  }
  // Ids are the model's own input, as /tokenize returns it: <s> first, </s> last. Ids from
  // another tokenizer (langchain-openai sends tiktoken's by default) would embed as
  // meaningless XLM-R ids, so they are refused, saying how to send text instead.
  if (input.ids.front() != kBosId || input.ids.back() != kEosId) {
    reject(422, name,
           "`{}` is a list of token ids that does not start with <s> ({}) and end with </s> ({}): ids must be this "
           "model's input as /tokenize returns it. To send text, send strings (langchain-openai: "
           "OpenAIEmbeddings(check_embedding_ctx_length=False); it otherwise sends tiktoken ids)",
           name, kBosId, kEosId);
  }
  return input;
}

void check_count(size_t count, std::string_view param, const InputRules& rules) {
  if (count > rules.max_items) {
    throw ApiError(413,
                   fmt::format("`{}` has {} items, more than the maximum of {} (--max-client-batch-size)", param, count,
                               rules.max_items),
                   std::string(param), "too_many_inputs");
  }
}

}  // namespace

std::vector<Input> parse_input_list(simdjson::dom::element value, std::string_view param, const InputRules& rules) {
  const std::string name(param);
  if (value.is_string()) return {text_input(value, name, rules)};
  simdjson::dom::array array;
  if (value.get_array().get(array)) {
    reject(422, name, "`{}` must be a string or an array{}, not {}", name,
           rules.allow_ids ? " (of strings, or of token ids)" : " of strings", json_type_name(value));
  }
  if (array.size() == 0) reject(422, name, "`{}` must not be an empty list", name);
  const simdjson::dom::element first = array.at(0).value_unsafe();
  std::vector<Input> inputs;
  if (rules.allow_ids && first.is_number()) {  // one list of token ids
    inputs.push_back(ids_input(array, name, rules));
    return inputs;
  }
  check_count(array.size(), param, rules);
  const bool ids = rules.allow_ids && first.is_array();
  inputs.reserve(array.size());
  size_t i = 0;
  for (simdjson::dom::element item : array) {
    const std::string item_param = item_name(param, i++);
    if (ids) {
      simdjson::dom::array list;
      if (item.get_array().get(list)) {
        reject(422, item_param, "`{}` must be a list of token ids like the other items, not {}", item_param,
               json_type_name(item));
      }
      inputs.push_back(ids_input(list, item_param, rules));
    } else {
      if (!item.is_string()) {
        reject(422, item_param, "`{}` must be a string{}, not {}", item_param,
               rules.allow_ids && i == 1 ? " or a list of token ids" : "", json_type_name(item));
      }
      inputs.push_back(text_input(item, item_param, rules));
    }
  }
  return inputs;
}

}  // namespace m3::server
