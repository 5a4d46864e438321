// Inputs -> model sequences: texts through the XLM-R tokenizer, token id lists as given.
// A sequence longer than `max_length` is cut (text: `<s>` + pieces + `</s>`, ids: the
// first max_length - 1 and the last) when `truncate` is set, else refused with 413.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "m3/server/input_list.h"
#include "m3/tokenizer/xlmr_tokenizer.h"

namespace m3::server {

struct TokenizedInputs {
  std::vector<std::vector<int32_t>> sequences;
  std::vector<char> truncated;  // per sequence
  int64_t tokens = 0;           // sum of the sequence lengths (what usage reports)
};

struct LengthRule {
  int64_t max_length = 0;
  bool truncate = false;
  bool truncate_left = false;  // cut from the start, keeping the end (TEI's truncation_direction "left")
  std::string_view limit_name = "max_seq_len";  // names the limit in the 413 message
  std::string_view hint = "send \"truncate\": true or start the server with --auto-truncate";
};

TokenizedInputs tokenize_inputs(const XlmrTokenizer& tokenizer, const std::vector<Input>& inputs,
                                const LengthRule& rule, std::string_view param);

}  // namespace m3::server
