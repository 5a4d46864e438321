#include "m3/server/tokenize_inputs.h"

#include <fmt/format.h>

#include "m3/server/api_error.h"

namespace m3::server {

TokenizedInputs tokenize_inputs(const XlmrTokenizer& tokenizer, const std::vector<Input>& inputs,
                                const LengthRule& rule, std::string_view param) {
  TokenizedInputs result;
  result.sequences.reserve(inputs.size());
  result.truncated.reserve(inputs.size());
  const auto limit = static_cast<size_t>(rule.max_length);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Input& input = inputs[i];
    std::vector<int32_t> ids;
    bool cut = false;
    if (input.is_ids) {
      ids = input.ids;
      cut = ids.size() > limit;
      if (cut && rule.truncate) {
        if (rule.truncate_left) {  // the first id (<s>) and the last limit - 1
          ids.erase(ids.begin() + 1, ids.end() - static_cast<ptrdiff_t>(limit - 1));
        } else {
          const int32_t last = ids.back();
          ids.resize(limit - 1);
          ids.push_back(last);
        }
      }
    } else {
      ids = tokenizer.encode(input.text, limit, &cut, rule.truncate_left);
    }
    if (cut && !rule.truncate) {
      const size_t full = input.is_ids ? input.ids.size() : tokenizer.encode(input.text).size();
      const std::string name = inputs.size() == 1 ? std::string(param) : fmt::format("{}[{}]", param, i);
      throw ApiError(413,
                     fmt::format("`{}` has {} tokens, more than the maximum of {} ({}); {}", name, full,
                                 rule.max_length, rule.limit_name, rule.hint),
                     name, "input_too_long");
    }
    result.tokens += static_cast<int64_t>(ids.size());
    result.sequences.push_back(std::move(ids));
    result.truncated.push_back(cut);
  }
  return result;
}

}  // namespace m3::server
