// A request body as a JSON object (simdjson DOM), and typed reads of its fields that
// refuse with the right status: 400 when the body is not JSON, 422 when it is not UTF-8,
// not an object, or a field has the wrong type. `null` reads as absent everywhere.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <simdjson.h>

namespace m3::server {

class JsonBody {
 public:
  explicit JsonBody(std::string_view body);  // throws ApiError
  JsonBody(const JsonBody&) = delete;
  JsonBody& operator=(const JsonBody&) = delete;

  simdjson::dom::object root() const { return root_; }

 private:
  simdjson::dom::parser parser_;
  simdjson::dom::object root_;
};

// The field, or nullopt when missing or null.
std::optional<simdjson::dom::element> field(simdjson::dom::object object, std::string_view key);

std::optional<bool> optional_bool(simdjson::dom::object object, std::string_view key);
std::optional<int64_t> optional_int(simdjson::dom::object object, std::string_view key);
std::optional<double> optional_number(simdjson::dom::object object, std::string_view key);
std::optional<std::string> optional_string(simdjson::dom::object object, std::string_view key);

// A string element as UTF-8 text (422 naming `param` when it is not a string or, after
// unescaping, not valid UTF-8).
std::string_view string_value(simdjson::dom::element element, std::string_view param);
// An integer element (422 when it is not an integer or does not fit int64).
int64_t int_value(simdjson::dom::element element, std::string_view param);

// "a string", "an array", ... for error messages.
const char* json_type_name(simdjson::dom::element element);

}  // namespace m3::server
