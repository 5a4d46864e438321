// CpuReplica: the model on the CPU: a oneDNN backend, its arena (allocated once, sized
// by the MemoryPlan) and the encoder and heads computing in it. CPU replicas share the
// host weights; each runs batches on its own threads.
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "m3/backend/backend.h"
#include "m3/memory/arena.h"
#include "m3/memory/memory_plan.h"
#include "m3/model/m3_heads.h"
#include "m3/model/m3_output.h"
#include "m3/model/xlmr_encoder.h"
#include "m3/runtime/replica.h"

namespace m3 {

class CpuReplica final : public Replica {
 public:
  CpuReplica(int index, const SharedModel& model, const MemoryPlan& plan, int threads);

  int index() const override { return index_; }
  std::string device_name() const override { return "cpu"; }
  std::string backend_name() const override { return backend_->name(); }
  void attach_thread() override { backend_->attach_thread(); }
  void run(const PackedBatch& batch, const OutputRequest& request, std::vector<M3Output>& outputs) override {
    extract(batch, forward(batch, request), request, outputs);
  }
  Backend& backend() { return *backend_; }

  // Encoder and head GEMMs over the batch, in the arena (no allocation after warm-up).
  // `layers` < 0: all of them.
  const float* forward(const PackedBatch& batch, const OutputRequest& request, int layers = -1);
  // Copies each sequence's outputs out of the arena: outputs[i] for sequence i.
  void extract(const PackedBatch& batch, const float* hidden, const OutputRequest& request,
               std::vector<M3Output>& outputs) const;
  void check(const OutputRequest& request) const override { heads_->check(request); }

  // Touches the arena and runs the worst cases through one layer and the heads (every
  // layer computes in the same buffers): one max_seq_len sequence, then a full
  // max_batch_tokens batch of short ones. Call on the thread that will run batches.
  WarmupReport warm_up() override;

 private:
  int index_;
  const SharedModel& model_;
  MemoryPlan plan_;
  std::unique_ptr<Backend> backend_;
  Arena arena_;
  std::unique_ptr<XlmrEncoder> encoder_;
  std::unique_ptr<M3Heads> heads_;
};

}  // namespace m3
