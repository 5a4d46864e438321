// M3Heads: the three BGE-M3 outputs computed from the encoder's last hidden state
// (dense CLS, sparse lexical weights, ColBERT vectors), per M3-SPEC.md.
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "m3/backend/backend.h"
#include "m3/memory/arena.h"
#include "m3/memory/memory_plan.h"
#include "m3/model/m3_output.h"
#include "m3/model/model_config.h"
#include "m3/model/weights.h"

namespace m3 {

class M3Heads {
 public:
  // `weights`, `backend` and `arena` must outlive the heads; `model_dir` names missing
  // head files in errors. Head outputs go to the plan's head buffers in the arena.
  M3Heads(const ModelConfig& config, const HeadWeights& weights, Backend& backend, const MemoryPlan& plan,
          Arena& arena, std::filesystem::path model_dir);

  // Throws m3::Error naming the missing head file when an output cannot be computed.
  void check(const OutputRequest& request) const;

  // The head GEMMs over the whole batch, into the arena.
  void forward(const PackedBatch& batch, const float* hidden, const OutputRequest& request);
  // Copies sequence `s`'s outputs out of the arena (after forward) into `out`.
  void extract(const PackedBatch& batch, int32_t s, const float* hidden, const OutputRequest& request,
               M3Output& out) const;

 private:
  int64_t hidden_size_;
  const HeadWeights& weights_;
  Backend& backend_;
  std::filesystem::path model_dir_;
  std::unique_ptr<PreparedLinear> colbert_, sparse_;
  float* colbert_buffer_;  // [rows, hidden]
  float* sparse_buffer_;   // [rows]
};

// Throws m3::Error naming the missing head file when `request` needs a head that
// `model_dir` lacks (shared by the CPU heads and the CUDA replica).
void check_head_files(const HeadWeights& weights, const std::filesystem::path& model_dir,
                      const OutputRequest& request);

// x / max(||x||, 1e-12), as torch.nn.functional.normalize.
void l2_normalize(float* x, int64_t n);

}  // namespace m3
