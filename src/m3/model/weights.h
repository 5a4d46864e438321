// Weights read from a snapshot directory by the model's WeightTable: one float32 host
// tensor per table entry, or, for the encoder's GEMM weights on a low-precision CPU
// replica, the packed form a backend made of it at load (the float32 copy is dropped as
// soon as it is packed, so the float32 encoder never sits in memory whole).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "m3/core/dtype.h"
#include "m3/model/model_config.h"
#include "m3/model/weight_table.h"

namespace m3 {

// Weights converted into a backend's own GEMM layout (bf16, int8); opaque here.
struct PackedWeights {
  virtual ~PackedWeights() = default;
  virtual uint64_t bytes() const = 0;
};

struct HostWeights {
  WeightTable table;
  std::vector<std::vector<float>> data;                      // per table entry, [rows, cols] float32
  std::vector<std::shared_ptr<const PackedWeights>> packed;  // per entry, when packed at load
  std::string source;                                        // the encoder checkpoint's path

  const std::vector<float>& at(std::string_view name) const { return data[table.index(name)]; }
  // Drops the float32 copies (a device replica holds its own).
  void release_host_copies();
};

// Rounds each value to the nearest value of `type` (F16 or BF16; F32 leaves them), kept as
// float32: the weights FlagEmbedding computes with after loading in half precision and
// casting back to float32 on the CPU (its use_fp16 there).
void round_weight_values(std::vector<float>& values, DType type);

// Called on each kEncoderLinear tensor as soon as it is read: may pack it (setting
// `packed`) and clear `data`.
using WeightLoadedHook =
    std::function<void(const WeightSpec&, std::vector<float>& data, std::shared_ptr<const PackedWeights>& packed)>;

// Encoder tensors from `model.safetensors` if present, else `pytorch_model.bin` (a
// `roberta.` or `model.` prefix is tolerated; the pooler and `embeddings.position_ids`
// are ignored); head tensors from their own files. A missing or broken file is an error.
HostWeights load_weights(const std::filesystem::path& model_dir, const ModelConfig& config, WeightTable table,
                         const WeightLoadedHook& on_linear = {});

}  // namespace m3
