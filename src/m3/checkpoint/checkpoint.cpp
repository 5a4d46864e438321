#include "m3/checkpoint/checkpoint.h"

#include <array>
#include <cstring>
#include <fstream>
#include <system_error>

#include "m3/core/error.h"

namespace m3 {

std::string format_shape(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

void check_shape(const Checkpoint& checkpoint, const std::string& name,
                 const std::vector<int64_t>& actual, const std::vector<int64_t>& expected) {
  if (actual != expected)
    fail("{}: tensor '{}' has shape {}, expected {}", checkpoint.path().string(), name,
         format_shape(actual), format_shape(expected));
}

std::unique_ptr<Checkpoint> open_checkpoint(const std::filesystem::path& file) {
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) fail("checkpoint file not found: {}", file.string());
  if (std::filesystem::is_directory(file, ec)) fail("checkpoint {} is a directory, not a file", file.string());
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("cannot open checkpoint {}: {}", file.string(), std::strerror(errno));
  std::array<char, 4> magic{};
  in.read(magic.data(), magic.size());
  const auto got = static_cast<size_t>(in.gcount());
  if (got == 4 && std::memcmp(magic.data(), "PK\x03\x04", 4) == 0) return open_torch_zip(file);
  if (got == 4 && std::memcmp(magic.data(), "PK\x05\x06", 4) == 0) return open_torch_zip(file);  // empty zip
  // Legacy torch.save: a pickle (PROTO 2) starting with LONG1 of 10 bytes, the magic number.
  // As a safetensors header length these bytes would be 177 MB, beyond the allowed 100 MB.
  if (got == 4 && std::memcmp(magic.data(), "\x80\x02\x8a\x0a", 4) == 0)
    fail("{}: a raw pickle (the legacy torch.save format before PyTorch 1.6) is not supported; "
         "re-save it with a recent torch.save or convert it to safetensors", file.string());
  return open_safetensors(file);
}

}  // namespace m3
