// ModelReplica: the model on one device: a Backend (which owns the device memory and the
// staging), the weights it placed, and the one graph (XlmrEncoder + M3Heads, or the
// ClassifierHead of a reranker) computing in its arena. The same class runs the CPU and CUDA; begin/end pipeline two batches where
// the backend has two slots.
#pragma once

#include <memory>
#include <vector>

#include "m3/backend/backend.h"
#include "m3/graph/classifier_head.h"
#include "m3/graph/m3_heads.h"
#include "m3/graph/xlmr_encoder.h"
#include "m3/memory/memory_plan.h"
#include "m3/runtime/replica.h"

namespace m3 {

class ModelReplica final : public Replica {
 public:
  // `model` must outlive the replica; the backend's device must have its plan's memory.
  ModelReplica(int index, const SharedModel& model, const MemoryPlan& plan, std::unique_ptr<Backend> backend);

  int index() const override { return index_; }
  std::string device_name() const override { return backend_->device_name(); }
  std::string backend_name() const override { return backend_->name(); }
  void attach_thread() override { backend_->attach_thread(); }
  void check(const OutputRequest& request) const override;
  WarmupReport warm_up() override;
  void run(const PackedBatch& batch, const OutputRequest& request, std::vector<M3Output>& outputs) override;

  bool pipelined() const override { return backend_->traits().slots > 1; }
  void begin(const PackedBatch& batch, const OutputRequest& request, int slot) override;
  void end(const PackedBatch& batch, const OutputRequest& request, std::vector<M3Output>& outputs, int slot) override;

  Backend& backend() { return *backend_; }
  // The first `layers` layers only (< 0: all), run and extracted at once (tests, warm-up).
  void run_layers(const PackedBatch& batch, const OutputRequest& request, int layers, std::vector<M3Output>& outputs);

 private:
  int index_;
  MemoryPlan plan_;
  std::unique_ptr<Backend> backend_;
  std::vector<WeightView> weights_;
  std::unique_ptr<XlmrEncoder> encoder_;
  std::unique_ptr<M3Heads> heads_;
  std::unique_ptr<ClassifierHead> classifier_;  // a classifier (reranker) only
  std::filesystem::path model_dir_;
  struct Fetched {
    M3Heads::Fetched heads;
    const float* logits = nullptr;
  };
  Fetched fetched_[2];
  // Queues the heads `request` asks for over the encoder's output.
  Fetched forward_heads(const BatchView& view, const XlmrEncoder::Hidden& hidden, const OutputRequest& request);
};

}  // namespace m3
