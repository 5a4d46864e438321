// What request parsing needs to know about the model and the server's limits; plain
// numbers, so the parsers run (and are fuzzed) without a loaded model.
#pragma once

#include <cstddef>
#include <cstdint>

#include "m3/server/input_list.h"

namespace m3::server {

struct ApiLimits {
  size_t max_client_batch_size = 256;  // inputs (or pairs) per request
  int64_t vocab_size = 250002;
  int64_t hidden_size = 1024;

  InputRules input_rules(bool allow_ids, bool allow_empty_text) const {
    return InputRules{max_client_batch_size, allow_ids, allow_empty_text, vocab_size};
  }
};

}  // namespace m3::server
