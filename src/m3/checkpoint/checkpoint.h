// Checkpoint: the named tensors of one weight file (safetensors or PyTorch zip),
// read as untrusted input. Every read is bounds-checked; every error names the file
// and, where there is one, the tensor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "m3/core/dtype.h"

namespace m3 {

struct TensorInfo {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
};

class Checkpoint {
 public:
  virtual ~Checkpoint() = default;

  // The file this checkpoint was read from (used in error messages).
  virtual const std::filesystem::path& path() const = 0;
  virtual bool has(const std::string& name) const = 0;
  virtual std::vector<std::string> names() const = 0;  // sorted
  // Throws m3::Error naming the file and tensor when absent.
  virtual TensorInfo info(const std::string& name) const = 0;

  // The tensor converted to float32, row-major contiguous. Throws m3::Error naming
  // file and tensor when it is missing or its shape differs from `expected_shape`.
  virtual std::vector<float> read_f32(const std::string& name,
                                      const std::vector<int64_t>& expected_shape) const = 0;
};

// `model.safetensors`: header parsed with simdjson, data memory-mapped read-only.
std::unique_ptr<Checkpoint> open_safetensors(const std::filesystem::path& file);
// `pytorch_model.bin` / `*.pt` (torch.save zip format): libzip + a restricted
// unpickler that accepts only what a state dict needs and never executes anything.
std::unique_ptr<Checkpoint> open_torch_zip(const std::filesystem::path& file);
// Picks the reader from the file's first bytes (zip magic -> torch, else safetensors).
std::unique_ptr<Checkpoint> open_checkpoint(const std::filesystem::path& file);

// "[2, 3]": a shape as error messages print it.
std::string format_shape(const std::vector<int64_t>& shape);
// Throws m3::Error naming file, tensor and both shapes when `actual` != `expected`.
void check_shape(const Checkpoint& checkpoint, const std::string& name,
                 const std::vector<int64_t>& actual, const std::vector<int64_t>& expected);

}  // namespace m3
