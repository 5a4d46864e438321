// Standard base64 (RFC 4648, with padding): OpenAI's encoding_format "base64" carries
// little-endian float32 bytes this way.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace m3::server {

void append_base64(std::string& out, const void* data, size_t size);
// nullopt when `text` is not canonical padded base64 (used by tests and the fuzzer).
std::optional<std::string> decode_base64(std::string_view text);

}  // namespace m3::server
