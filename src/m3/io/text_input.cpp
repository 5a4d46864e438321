#include "m3/io/text_input.h"

#include <fstream>
#include <iostream>
#include <memory>

#include <simdjson.h>

#include "m3/core/error.h"

namespace m3 {
namespace {

// Calls on_line(text, line_number) for each line, without its "\n" or "\r\n".
template <typename F>
void for_each_line(const std::string& path, F&& on_line) {
  std::ifstream file;
  std::istream* in = &std::cin;
  if (path != "-") {
    file.open(path, std::ios::binary);
    if (!file) fail("{}: cannot open input file", path);
    in = &file;
  }
  std::string line;
  size_t number = 0;
  while (std::getline(*in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!simdjson::validate_utf8(line.data(), line.size())) {
      fail("{}:{}: line is not valid UTF-8", path == "-" ? std::string("<stdin>") : path, number);
    }
    on_line(line, number);
  }
  if (in->bad()) fail("{}: read error", path);
}

std::string_view where(const std::string& path) {
  return path == "-" ? std::string_view("<stdin>") : std::string_view(path);
}

bool blank(const std::string& line) { return line.find_first_not_of(" \t") == std::string::npos; }

}  // namespace

InputFormat parse_input_format(const std::string& name) {
  if (name == "auto") return InputFormat::kAuto;
  if (name == "text") return InputFormat::kText;
  if (name == "jsonl") return InputFormat::kJsonl;
  fail("unknown input format \"{}\" (expected auto, text or jsonl)", name);
}

namespace {

InputFormat resolve(const std::string& path, InputFormat format) {
  if (format != InputFormat::kAuto) return format;
  const auto ext = std::filesystem::path(path).extension().string();
  return (ext == ".jsonl" || ext == ".ndjson" || ext == ".json") ? InputFormat::kJsonl : InputFormat::kText;
}

}  // namespace

std::optional<size_t> count_texts(const std::string& path, InputFormat format) {
  std::error_code ec;
  if (path == "-" || !std::filesystem::is_regular_file(path, ec)) return std::nullopt;
  std::ifstream file(path, std::ios::binary);
  if (!file) return std::nullopt;
  const bool jsonl = resolve(path, format) == InputFormat::kJsonl;
  size_t count = 0;
  std::string line;
  while (std::getline(file, line)) count += !jsonl || !blank(line);
  return count;
}

std::vector<std::string> read_texts(const std::string& path, InputFormat format, const std::string& field) {
  std::vector<std::string> texts;
  for_each_text(path, format, field, [&](std::string_view text, size_t) { texts.emplace_back(text); });
  return texts;
}

// Each non-blank line of `path` parsed as JSON, with its line number.
static void for_each_json_line(const std::string& path,
                               const std::function<void(simdjson::dom::element, size_t)>& on_line) {
  simdjson::dom::parser parser;
  for_each_line(path, [&](const std::string& line, size_t number) {
    if (blank(line)) return;
    simdjson::dom::element doc;
    if (auto error = parser.parse(line).get(doc); error) {
      fail("{}:{}: not valid JSON ({})", where(path), number, simdjson::error_message(error));
    }
    on_line(doc, number);
  });
}

void for_each_text(const std::string& path, InputFormat format, const std::string& field,
                   const std::function<void(std::string_view text, size_t line)>& on_text) {
  if (resolve(path, format) == InputFormat::kText) {
    for_each_line(path, [&](const std::string& line, size_t number) { on_text(line, number); });
    return;
  }
  for_each_json_line(path, [&](simdjson::dom::element doc, size_t number) {
    std::string_view text;
    auto value = doc[field];
    if (value.error() == simdjson::INCORRECT_TYPE) fail("{}:{}: expected a JSON object", where(path), number);
    if (value.error() == simdjson::NO_SUCH_FIELD) fail("{}:{}: no \"{}\" field", where(path), number, field);
    if (value.get_string().get(text) != simdjson::SUCCESS) {
      fail("{}:{}: \"{}\" must be a string", where(path), number, field);
    }
    on_text(text, number);
  });
}

std::vector<TextPair> read_pairs(const std::string& path) {
  std::vector<TextPair> pairs;
  for_each_json_line(path, [&](simdjson::dom::element doc, size_t number) {
    std::string_view query, passage;
    bool ok = false;
    if (doc.is_object()) {
      ok = doc["query"].get_string().get(query) == simdjson::SUCCESS &&
           doc["passage"].get_string().get(passage) == simdjson::SUCCESS;
    } else if (doc.is_array() && doc.get_array().size() == 2) {
      ok = doc.at(0).get_string().get(query) == simdjson::SUCCESS &&
           doc.at(1).get_string().get(passage) == simdjson::SUCCESS;
    }
    if (!ok) {
      fail("{}:{}: expected {{\"query\": string, \"passage\": string}} or [query, passage]", where(path), number);
    }
    pairs.push_back({std::string(query), std::string(passage)});
  });
  return pairs;
}

std::vector<RerankLine> read_rerank_lines(const std::string& path) {
  std::vector<RerankLine> lines;
  for_each_json_line(path, [&](simdjson::dom::element doc, size_t number) {
    RerankLine out;
    std::string_view query, passage;
    simdjson::dom::array passages;
    bool ok = false;
    if (doc.is_object() && doc["query"].get_string().get(query) == simdjson::SUCCESS) {
      if (doc["passages"].get_array().get(passages) == simdjson::SUCCESS) {
        ok = passages.size() > 0;
        for (auto p : passages) ok = ok && p.get_string().get(passage) == simdjson::SUCCESS &&
                                     (out.passages.emplace_back(passage), true);
      } else if (doc["passage"].get_string().get(passage) == simdjson::SUCCESS) {
        out.passages.emplace_back(passage);
        out.single = ok = true;
      }
    } else if (doc.is_array() && doc.get_array().size() == 2) {
      ok = doc.at(0).get_string().get(query) == simdjson::SUCCESS &&
           doc.at(1).get_string().get(passage) == simdjson::SUCCESS;
      out.passages.emplace_back(passage);
      out.single = true;
    }
    if (!ok) {
      fail("{}:{}: expected {{\"query\": string, \"passages\": [string, ...]}}, {{\"query\": string, \"passage\": "
           "string}} or [query, passage]",
           where(path), number);
    }
    out.query = query;
    lines.push_back(std::move(out));
  });
  return lines;
}

}  // namespace m3
