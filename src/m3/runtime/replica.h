// Replica: one device's worth of the model: a backend, its arena (allocated once, sized
// by the MemoryPlan) and the encoder and heads computing in it. Replicas share the
// weights; each runs batches on its own thread.
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

namespace m3 {

struct SharedModel {
  std::filesystem::path model_dir;
  ModelConfig config;
  EncoderWeights encoder;
  HeadWeights heads;
};

struct WarmupReport {
  uint64_t rss_before = 0;  // resident bytes before the arena was touched
  uint64_t rss_after = 0;   // resident bytes after the worst-case batches
  uint64_t peak_rss = 0;    // peak resident bytes during warm-up
  double seconds = 0;
};

class Replica {
 public:
  Replica(int index, const SharedModel& model, const MemoryPlan& plan, int threads);

  int index() const { return index_; }
  Backend& backend() { return *backend_; }

  // Encoder and head GEMMs over the batch, in the arena (no allocation after warm-up).
  // `layers` < 0: all of them.
  const float* forward(const PackedBatch& batch, const OutputRequest& request, int layers = -1);
  // Copies each sequence's outputs out of the arena: outputs[i] for sequence i.
  void extract(const PackedBatch& batch, const float* hidden, const OutputRequest& request,
               std::vector<M3Output>& outputs) const;
  void check(const OutputRequest& request) const { heads_->check(request); }

  // Touches the arena and runs the worst cases through one layer and the heads (every
  // layer computes in the same buffers): one max_seq_len sequence, then a full
  // max_batch_tokens batch of short ones. Call on the thread that will run batches.
  WarmupReport warm_up();

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
