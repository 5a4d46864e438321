// ClassifierHead: a sequence classifier's tail (transformers' XLMRobertaClassificationHead,
// what a cross-encoder reranker such as bge-reranker-v2-m3 scores pairs with):
// logits = out_proj(tanh(dense(x[<s>]))), written once against the Backend ops.
#pragma once

#include <memory>
#include <vector>

#include "m3/backend/backend.h"
#include "m3/graph/xlmr_encoder.h"
#include "m3/memory/memory_plan.h"
#include "m3/model/m3_output.h"

namespace m3 {

class ClassifierHead {
 public:
  // `weights`, `backend` and the arena must outlive the head; its buffers live in encoder
  // buffers dead after the last layer, its logits where the plan put each pipeline slot's
  // (graph_buffers.h).
  ClassifierHead(const ModelConfig& config, const MemoryPlan& plan, const std::vector<WeightView>& weights,
                 Backend& backend, const TensorView& arena);

  // Queues the head over the batch and the copy of its logits [sequences, labels] to the host.
  const float* forward(const BatchView& batch, const XlmrEncoder::Hidden& hidden);
  // outputs[s].scores = sequence s's logits, from the fetched copy.
  void extract(const PackedBatch& batch, const float* logits, std::vector<M3Output>& outputs) const;
  // Runs the head GEMMs' kernel variants once (warm-up).
  void warm_up();

 private:
  int64_t labels_;
  Backend& backend_;
  std::unique_ptr<PreparedLinear> dense_op_, out_op_;
  TensorView input_, hidden_;
  std::vector<TensorView> logits_;  // per pipeline slot
};

}  // namespace m3
