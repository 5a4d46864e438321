#include "m3/server/json_body.h"

#include "m3/server/api_error.h"

namespace m3::server {

JsonBody::JsonBody(std::string_view body) {
  if (body.empty()) reject(400, "", "the request body is empty; expected a JSON object");
  simdjson::dom::element root;
  const auto error = parser_.parse(body.data(), body.size(), true).get(root);
  if (error == simdjson::UTF8_ERROR) reject(422, "", "the request body is not valid UTF-8");
  if (error) reject(400, "", "the request body is not valid JSON: {}", simdjson::error_message(error));
  if (root.get_object().get(root_))
    reject(422, "", "the request body must be a JSON object, not {}", json_type_name(root));
}

std::optional<simdjson::dom::element> field(simdjson::dom::object object, std::string_view key) {
  simdjson::dom::element value;
  if (object.at_key(key).get(value) || value.is_null()) return std::nullopt;
  return value;
}

std::optional<bool> optional_bool(simdjson::dom::object object, std::string_view key) {
  const auto value = field(object, key);
  if (!value) return std::nullopt;
  bool result = false;
  if (value->get_bool().get(result))
    reject(422, std::string(key), "`{}` must be a boolean, not {}", key, json_type_name(*value));
  return result;
}

std::optional<int64_t> optional_int(simdjson::dom::object object, std::string_view key) {
  const auto value = field(object, key);
  if (!value) return std::nullopt;
  return int_value(*value, key);
}

std::optional<double> optional_number(simdjson::dom::object object, std::string_view key) {
  const auto value = field(object, key);
  if (!value) return std::nullopt;
  double result = 0;
  if (value->get_double().get(result))
    reject(422, std::string(key), "`{}` must be a number, not {}", key, json_type_name(*value));
  return result;
}

std::optional<std::string> optional_string(simdjson::dom::object object, std::string_view key) {
  const auto value = field(object, key);
  if (!value) return std::nullopt;
  return std::string(string_value(*value, key));
}

std::string_view string_value(simdjson::dom::element element, std::string_view param) {
  std::string_view text;
  if (element.get_string().get(text))
    reject(422, std::string(param), "`{}` must be a string, not {}", param, json_type_name(element));
  // The document was valid UTF-8; escapes (\u0000..., surrogate pairs) are checked again here.
  if (!simdjson::validate_utf8(text.data(), text.size()))
    reject(422, std::string(param), "`{}` is not valid UTF-8", param);
  return text;
}

int64_t int_value(simdjson::dom::element element, std::string_view param) {
  int64_t result = 0;
  const auto type = element.type();
  if (type == simdjson::dom::element_type::UINT64) {
    reject(422, std::string(param), "`{}` is too large", param);
  }
  if (type != simdjson::dom::element_type::INT64 || element.get_int64().get(result)) {
    reject(422, std::string(param), "`{}` must be an integer, not {}", param, json_type_name(element));
  }
  return result;
}

const char* json_type_name(simdjson::dom::element element) {
  switch (element.type()) {
    case simdjson::dom::element_type::ARRAY: return "an array";
    case simdjson::dom::element_type::OBJECT: return "an object";
    case simdjson::dom::element_type::INT64:
    case simdjson::dom::element_type::UINT64: return "an integer";
    case simdjson::dom::element_type::DOUBLE: return "a number";
    case simdjson::dom::element_type::STRING: return "a string";
    case simdjson::dom::element_type::BOOL: return "a boolean";
    case simdjson::dom::element_type::NULL_VALUE: return "null";
  }
  return "a value";
}

}  // namespace m3::server
