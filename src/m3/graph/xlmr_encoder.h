// XlmrEncoder: the XLM-RoBERTa forward pass (post-LN BERT layers) over a packed batch,
// written once against the Backend ops: every device runs this loop, computing in the
// replica's arena at the offsets of its MemoryPlan.
#pragma once

#include <memory>
#include <vector>

#include "m3/backend/backend.h"
#include "m3/memory/memory_plan.h"
#include "m3/model/model_config.h"

namespace m3 {

class XlmrEncoder {
 public:
  // The last hidden state: float32 [rows, hidden], and its copy as GEMM input (the same
  // tensor where the activation type is float32).
  struct Hidden {
    TensorView f32, in;
  };

  // `weights` are the backend's placed tensors in plan.table's order; they, `backend` and
  // the arena must outlive the encoder.
  XlmrEncoder(const ModelConfig& config, const MemoryPlan& plan, const std::vector<WeightView>& weights,
              Backend& backend, const TensorView& arena);

  // Queues the forward pass of `batch` (staged by the backend). `layers` < 0 runs them
  // all; warm-up runs one (every layer uses the same buffers).
  Hidden forward(const BatchView& batch, int layers = -1);
  // Runs every GEMM's kernel variants once (warm-up).
  void warm_up();
  // Where forward leaves the last hidden state.
  const Hidden& hidden() const { return hidden_; }

 private:
  struct Layer {
    LinearRef qkv, attention_out, intermediate, output;
    NormRef attention_norm, output_norm;
    std::unique_ptr<PreparedLinear> qkv_op, attention_out_op, intermediate_op, output_op;
  };

  ModelConfig config_;
  Backend& backend_;
  BackendTraits traits_;
  int64_t max_seq_len_;
  WeightView word_, position_;
  TensorView token_type_;
  NormRef embedding_norm_;
  std::vector<Layer> layers_;
  Hidden hidden_;
  TensorView qkv_, context_, ffn_;
};

// The weights a table entry names, as the backend placed them.
LinearRef linear_ref(const WeightTable& table, const std::vector<WeightView>& weights, const std::string& name);
NormRef norm_ref(const WeightTable& table, const std::vector<WeightView>& weights, const std::string& name);

}  // namespace m3
