// Weights of the XLM-R encoder and the two M3 heads, in float32 host memory, read
// from a snapshot directory through the checkpoint readers.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "m3/model/model_config.h"

namespace m3 {

// Weights converted at load into a backend's low-precision GEMM layout (bf16, int8);
// opaque here, each backend knows its own.
struct PackedWeights {
  virtual ~PackedWeights() = default;
  virtual uint64_t bytes() const = 0;
};

// y = x W^T + b with W stored [out, in] as in PyTorch.
struct LinearWeights {
  int64_t out = 0;
  int64_t in = 0;
  std::vector<float> weight;  // [out, in]; empty once `packed` holds the weights
  std::vector<float> bias;    // [out]
  std::shared_ptr<const PackedWeights> packed;
};

// Called on each encoder linear layer as soon as it is read, so a low-precision backend
// can pack it and drop the float32 copy before the next one is read.
using LinearLoadedHook = std::function<void(LinearWeights&)>;

struct LayerNormWeights {
  std::vector<float> gamma;
  std::vector<float> beta;
};

struct EncoderLayerWeights {
  LinearWeights qkv;  // query, key and value stacked into one [3*hidden, hidden] GEMM
  LinearWeights attention_out;
  LayerNormWeights attention_norm;
  LinearWeights intermediate;
  LinearWeights output;
  LayerNormWeights output_norm;
};

struct EncoderWeights {
  std::vector<float> word_embeddings;      // [vocab, hidden]
  std::vector<float> position_embeddings;  // [max_position_embeddings, hidden]
  std::vector<float> token_type_embedding;  // row 0 of token_type_embeddings: [hidden]
  LayerNormWeights embedding_norm;
  std::vector<EncoderLayerWeights> layers;
  std::string source;  // the file they came from
};

struct HeadWeights {
  std::optional<LinearWeights> colbert;  // colbert_linear.pt: Linear(hidden, hidden)
  std::optional<LinearWeights> sparse;   // sparse_linear.pt: Linear(hidden, 1)
};

// `model.safetensors` if present, else `pytorch_model.bin`; tolerates a `roberta.`
// prefix, ignores the pooler and `embeddings.position_ids`.
EncoderWeights load_encoder_weights(const std::filesystem::path& model_dir, const ModelConfig& config,
                                    const LinearLoadedHook& on_linear = {});
// Missing head files leave the head empty; a present but broken file is an error.
HeadWeights load_head_weights(const std::filesystem::path& model_dir, const ModelConfig& config);

}  // namespace m3
