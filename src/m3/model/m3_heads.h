// M3Heads: the three BGE-M3 outputs computed from the encoder's last hidden state
// (dense CLS, sparse lexical weights, ColBERT vectors), per M3-SPEC.md.
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "m3/backend/backend.h"
#include "m3/model/m3_output.h"
#include "m3/model/model_config.h"
#include "m3/model/weights.h"

namespace m3 {

class M3Heads {
 public:
  // `weights` must outlive the heads; `model_dir` names missing head files in errors.
  M3Heads(const ModelConfig& config, const HeadWeights& weights, Backend& backend, int64_t max_batch_tokens,
          std::filesystem::path model_dir);

  // Throws m3::Error naming the missing head file when an output cannot be computed.
  void check(const OutputRequest& request) const;

  // One M3Output per sequence of the batch, in batch order.
  void compute(const PackedBatch& batch, const float* hidden, const OutputRequest& request,
               std::vector<M3Output>& outputs);

 private:
  int64_t hidden_size_;
  const HeadWeights& weights_;
  Backend& backend_;
  std::filesystem::path model_dir_;
  std::unique_ptr<PreparedLinear> colbert_, sparse_;
  std::vector<float> colbert_buffer_;  // [max_batch_tokens, hidden]
  std::vector<float> sparse_buffer_;   // [max_batch_tokens]
};

// x / max(||x||, 1e-12), as torch.nn.functional.normalize.
void l2_normalize(float* x, int64_t n);

}  // namespace m3
