// Appending JSON to a string: escaped strings and floats in their shortest round-trip
// form (fmt, as the CLI's output_json), so the server and `m3embed encode` print the
// same digits for the same numbers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace m3::server {

// `"..."` with the escapes JSON requires; `text` must be valid UTF-8 (the server checks
// every input it echoes).
void append_json_string(std::string& out, std::string_view text);
// Shortest round-trip decimal; non-finite values (never produced by the model) as null.
void append_json_float(std::string& out, float value);
void append_json_floats(std::string& out, const float* values, size_t count);  // [a,b,...]

}  // namespace m3::server
