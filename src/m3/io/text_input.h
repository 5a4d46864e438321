// Reading texts for the CLI: plain text (one text per line) or JSONL objects, from a
// file or standard input ("-"). Every line is checked to be UTF-8; errors name the
// file and line.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace m3 {

enum class InputFormat { kAuto, kText, kJsonl };

// "auto" picks JSONL for .jsonl/.ndjson/.json files, text otherwise.
InputFormat parse_input_format(const std::string& name);

// Streams the texts: on_text(text, line number) for each record, in order, as it is
// read (nothing is held beyond the current line). Same formats and errors as read_texts.
void for_each_text(const std::string& path, InputFormat format, const std::string& field,
                   const std::function<void(std::string_view text, size_t line)>& on_text);
// The number of records in a regular file (a fast pass over it, for a progress bar's
// total); nullopt for standard input or anything that cannot be read twice.
std::optional<size_t> count_texts(const std::string& path, InputFormat format);

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

// A query and the passages to score against it (a line of `m3embed rerank`'s input).
struct RerankLine {
  std::string query;
  std::vector<std::string> passages;
  bool single = false;  // the line held one "passage" (or was [query, passage])
};

// JSONL lines `{"query": ..., "passages": [...]}`, `{"query": ..., "passage": ...}` or
// `[query, passage]`.
std::vector<RerankLine> read_rerank_lines(const std::string& path);

}  // namespace m3
