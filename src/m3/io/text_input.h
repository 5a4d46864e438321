// Reading texts for the CLI: plain text (one text per line) or JSONL objects, from a
// file or standard input ("-"). Every line is checked to be UTF-8; errors name the
// file and line.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace m3 {

enum class InputFormat { kAuto, kText, kJsonl };

// "auto" picks JSONL for .jsonl/.ndjson/.json files, text otherwise.
InputFormat parse_input_format(const std::string& name);

// One text per record. Text format: every line is a text (an empty line is the empty
// text; a trailing newline does not start another). JSONL: each non-blank line is an
// object whose `field` is a string.
std::vector<std::string> read_texts(const std::string& path, InputFormat format, const std::string& field = "text");

struct TextPair {
  std::string query;
  std::string passage;
};

// JSONL lines `{"query": ..., "passage": ...}` or two-element arrays `[query, passage]`.
std::vector<TextPair> read_pairs(const std::string& path);

}  // namespace m3
