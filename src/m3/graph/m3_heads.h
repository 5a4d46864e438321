// M3Heads: BGE-M3's three outputs from the encoder's last hidden state, per M3-SPEC.md,
// written once against the Backend ops: dense (the CLS row, or the mean of the rows for a
// mean-pooling embedder such as multilingual-e5, normalized), sparse (relu of a 1-wide
// linear, the largest weight per token id, specials skipped; on request also the weight at
// every position) and ColBERT (a linear over every token, each row normalized, the CLS
// row dropped).
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "m3/backend/backend.h"
#include "m3/graph/xlmr_encoder.h"
#include "m3/memory/memory_plan.h"
#include "m3/model/m3_output.h"

namespace m3 {

class M3Heads {
 public:
  // Host copies of a batch's head outputs, readable once the backend finished its slot.
  struct Fetched {
    const float* dense = nullptr;    // [sequences, hidden]
    const float* dense_norms = nullptr;  // [sequences]: each CLS state's norm
    const float* lexical = nullptr;  // [tokens]: the per-id maxima (0: not a lexical entry)
    const float* colbert = nullptr;  // [tokens, hidden]
    const float* token_weights = nullptr;  // [tokens]: relu(sparse_linear(h)) per position
  };

  // `weights`, `backend` and the arena must outlive the heads; `model_dir` names missing
  // head files in errors. The outputs live where the plan put them for each of the
  // backend's pipeline slots (in encoder buffers dead after the last layer, or per slot).
  // `pooling` makes the dense vector from the last hidden state (BGE-M3: the <s> row).
  M3Heads(const ModelConfig& config, const MemoryPlan& plan, const std::vector<WeightView>& weights, Backend& backend,
          const TensorView& arena, std::filesystem::path model_dir, Pooling pooling = Pooling::kCls);

  // Throws m3::Error naming the missing head file when an output cannot be computed.
  void check(const OutputRequest& request) const;
  // Queues the requested heads over the batch and the copies of their outputs to the host.
  Fetched forward(const BatchView& batch, const XlmrEncoder::Hidden& hidden, const OutputRequest& request);
  // Each sequence's outputs, from the fetched copies: outputs[s] for sequence s.
  void extract(const PackedBatch& batch, const Fetched& fetched, const OutputRequest& request,
               std::vector<M3Output>& outputs) const;
  // Runs the head GEMMs' kernel variants once (warm-up).
  void warm_up(const XlmrEncoder::Hidden& hidden);

  bool has_sparse() const { return sparse_op_ != nullptr; }
  bool has_colbert() const { return colbert_op_ != nullptr; }

 private:
  int64_t hidden_size_;
  Backend& backend_;
  std::filesystem::path model_dir_;
  Pooling pooling_;
  std::unique_ptr<PreparedLinear> colbert_op_, sparse_op_;
  // The ColBERT GEMM reads hidden in its weights' type: the activation copy where they
  // share it (CUDA's 16-bit types, float32 activations), else the float32 stream (the
  // CPU keeps head weights in float32 when its activations are bf16).
  bool colbert_reads_f32_ = false;
  const TensorView& colbert_input(const XlmrEncoder::Hidden& hidden) const {
    return colbert_reads_f32_ ? hidden.f32 : hidden.in;
  }
  struct Outputs {
    TensorView dense, dense_norms, sparse, lexical, colbert;
  };
  std::vector<Outputs> slots_;  // the output buffers of each pipeline slot
};

}  // namespace m3
