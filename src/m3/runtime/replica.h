// Replica: one device's worth of the model, computing batches from the scheduler on its
// own thread, in memory allocated once and sized by the MemoryPlan. ModelReplica
// (model_replica.h) is the one implementation, for every backend; the interface exists
// so the batch loop can be tested with a stand-in.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "m3/model/m3_output.h"
#include "m3/model/model_config.h"
#include "m3/model/weights.h"
#include "m3/model/packed_batch.h"
#include "m3/model/pooling_config.h"

namespace m3 {

struct SharedModel {
  std::filesystem::path model_dir;
  ModelConfig config;
  PoolingConfig pooling;  // an embedder's (modules.json), BGE-M3's when absent
  HostWeights weights;
};

struct WarmupReport {
  uint64_t rss_before = 0;  // resident bytes before the arena was touched
  uint64_t rss_after = 0;   // resident bytes after the worst-case batches
  uint64_t peak_rss = 0;    // peak resident bytes during warm-up
  double seconds = 0;
  // CUDA replicas: cudaMemGetInfo of their device before the replica allocated anything
  // (context created) and after warm-up.
  bool device = false;
  int device_index = 0;
  uint64_t device_total = 0, device_free_before = 0, device_free_after = 0;
  uint64_t device_planned = 0;  // the replica's single allocation (MemoryPlan::device_bytes)
};

class Replica {
 public:
  virtual ~Replica() = default;
  virtual int index() const = 0;
  virtual std::string device_name() const = 0;   // "cpu", "cuda:0"
  virtual std::string backend_name() const = 0;  // e.g. "cpu-onednn", "cuda-cublaslt"

  // Call on the thread that will run batches.
  virtual void attach_thread() = 0;
  // Throws m3::Error naming the missing head file when an output cannot be computed.
  virtual void check(const OutputRequest& request) const = 0;
  // Makes all planned memory resident and runs the worst-case batches (one max_seq_len
  // sequence; a full batch of short ones). Call on the thread that will run batches.
  virtual WarmupReport warm_up() = 0;
  // Forward pass and heads over the batch, then each sequence's outputs copied out:
  // outputs[i] for sequence i.
  virtual void run(const PackedBatch& batch, const OutputRequest& request, std::vector<M3Output>& outputs) = 0;

  // Pipelining (CUDA): begin() stages the batch and queues its work in `slot` (0 or 1)
  // without waiting for it; end() waits for that slot and copies its outputs out. At most
  // two batches are in flight, in different slots, ended in the order they were begun;
  // the batch must stay alive and unchanged until its end(). serve_batches uses these when
  // pipelined() is true; otherwise it calls run().
  virtual bool pipelined() const { return false; }
  virtual void begin(const PackedBatch& /*batch*/, const OutputRequest& /*request*/, int /*slot*/) {}
  virtual void end(const PackedBatch& batch, const OutputRequest& request, std::vector<M3Output>& outputs,
                   int /*slot*/) {
    run(batch, request, outputs);
  }
};

// The worst cases warm-up runs: one sequence of max_seq_len tokens (the largest attention
// extent), then a batch of max_batch_tokens tokens in short sequences (the most rows and
// sequences). Token ids are any inside the vocabulary.
std::vector<PackedBatch> warmup_batches(int64_t max_seq_len, int64_t max_batch_tokens, int32_t pad_token_id);

}  // namespace m3
