// The `input` / `inputs` field shared by the embedding routes: one string, a list of
// strings, one list of token ids, or a list of token id lists (OpenAI's four shapes).
// Token ids are the exact model input, `<s>` ... `</s>` included, as /tokenize returns them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <simdjson.h>

namespace m3::server {

struct Input {
  std::string text;
  std::vector<int32_t> ids;
  bool is_ids = false;
};

struct InputRules {
  size_t max_items = 256;         // more: 413 (--max-client-batch-size)
  bool allow_ids = true;          // token id lists accepted
  bool allow_empty_text = false;  // "" accepted (FlagEmbedding encodes it as <s></s>)
  int64_t vocab_size = 0;         // ids must lie in [0, vocab_size)
};

// Throws ApiError: 422 for wrong types, empty lists, empty strings (unless allowed), ids
// out of range or fewer than 2; 413 for more than max_items inputs.
std::vector<Input> parse_input_list(simdjson::dom::element value, std::string_view param, const InputRules& rules);

}  // namespace m3::server
