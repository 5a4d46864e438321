// Embedder: one loaded BGE-M3 model: config, tokenizer, shared weights, the memory plan
// and the replicas it sizes. Turns tokenized sequences into M3 outputs, packed without
// padding into batches of at most max_batch_tokens tokens.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <thread>
#include <string>
#include <vector>

#include "m3/core/precision.h"
#include "m3/memory/memory_plan.h"
#include "m3/model/m3_output.h"
#include "m3/model/packed_batch.h"
#include "m3/runtime/replica.h"
#include "m3/core/device.h"
#include "m3/runtime/scheduler.h"
#include "m3/tokenizer/xlmr_tokenizer.h"

namespace m3 {

struct EmbedderOptions {
  int threads = 0;                   // all replicas together; 0: all available cores
  int replicas = 1;                  // CPU replicas sharing one set of weights
  int64_t max_batch_tokens = 16384;  // tokens per forward pass (ignored with memory_limit)
  int64_t max_seq_len = 0;           // 0: the model's limit (max_position_embeddings - 2)
  uint64_t memory_limit = 0;         // bytes; > 0 chooses the largest max_batch_tokens that fits
  uint64_t output_memory = 0;        // results waiting to be written (PlanInputs::output_memory); 0: default
  int64_t max_queue_tokens = 0;      // request queue bound (0: 16 x max_batch_tokens)
  bool warm_up = true;               // run the worst-case batches at load
  DType precision = DType::F32;  // --dtype: what the encoder GEMMs compute in
  // F16/BF16: every weight rounded to that type at load, then computed as `precision` says
  // (FlagEmbedding's use_fp16/use_bf16 on the CPU: half-precision weights, float32 math).
  DType weight_rounding = DType::F32;
  // Where replicas run (select_devices): empty or {cpu}: `replicas` CPU replicas; CUDA
  // devices: one replica on each, and memory_limit bounds each device's allocation.
  std::vector<Device> devices;
  double gpu_memory_fraction = 0;    // (0, 1]: also bound each device's allocation by this share of its memory
  bool test_batch_gate = false;      // TEST ONLY: batches wait at the scheduler's BatchGate (batch_gate.h)
};

class Embedder {
 public:
  // Loads config, tokenizer and weights, plans memory, builds and warms up the replicas.
  static std::unique_ptr<Embedder> load(const std::filesystem::path& model_dir, const EmbedderOptions& options);
  // The plan load() would use, without reading any weights (`m3embed plan` prints it).
  static MemoryPlan plan_for(const std::filesystem::path& model_dir, const ModelConfig& config,
                             const EmbedderOptions& options);
  // --memory-limit never picks more tokens per pass than this.
  static constexpr int64_t kMaxBatchTokensForLimit = 1 << 17;
  ~Embedder();

  const ModelConfig& config() const { return model_.config; }
  const PoolingConfig& pooling() const { return model_.pooling; }
  bool is_classifier() const { return model_.config.architecture == Architecture::kSequenceClassification; }
  // What the model computes, for logs and /info: "classifier, 1 label" or "embedder: mean
  // pooling, normalized; heads: sparse colbert".
  std::string describe() const;
  const XlmrTokenizer& tokenizer() const { return *tokenizer_; }
  const std::filesystem::path& model_dir() const { return model_.model_dir; }
  const MemoryPlan& plan() const { return plan_; }
  const std::vector<WarmupReport>& warmup_reports() const { return warmups_; }
  // The process's fixed baseline, beside the plan: resident bytes before any planned memory
  // existed (libraries, tokenizer, config) plus what building the replicas added before
  // their arenas were touched (compiled GEMM kernels, thread pools).
  uint64_t baseline_rss() const { return baseline_rss_; }
  // The peak resident bytes of this process: loading included (warm-up restarts the
  // kernel's peak mark to measure itself, so the load's peak is kept here).
  uint64_t peak_rss() const;
  int64_t max_seq_len() const { return plan_.inputs.max_seq_len; }
  int64_t max_batch_tokens() const { return plan_.inputs.max_batch_tokens; }
  size_t replica_count() const { return replicas_.size(); }
  Replica& replica(size_t i) { return *replicas_[i]; }
  const Replica& replica(size_t i) const { return *replicas_[i]; }

  // Throws m3::Error when the model cannot produce a requested output (missing head file).
  void check(const OutputRequest& request) const;

  // Tokenizes with truncation to min(max_length, max_seq_len()) tokens.
  std::vector<int32_t> tokenize(std::string_view text, int64_t max_length, bool* truncated = nullptr) const;

  // A reranker's input for a pair (XlmrTokenizer::encode_pair): at most min(max_length,
  // max_seq_len()) tokens (max_length <= 0: max_seq_len()), the query cut to
  // query_max_length pieces (<= 0: 3/4 of that limit, FlagReranker's default).
  std::vector<int32_t> tokenize_pair(std::string_view query, std::string_view passage, int64_t max_length,
                                     int64_t query_max_length, bool* truncated = nullptr) const;

  // The scheduler feeding the replicas (the server submits to it directly).
  Scheduler& scheduler() { return *scheduler_; }

  // Outputs in input order, through the scheduler (split into requests that fit its
  // queue). Every sequence must fit max_seq_len(). `progress`, when set, is called with
  // the number of sequences finished so far, from replica threads.
  std::vector<M3Output> encode(const std::vector<std::vector<int32_t>>& sequences, const OutputRequest& request,
                               const std::function<void(size_t)>& progress = {});

 private:
  Embedder() = default;
  void release_host_weights();

  SharedModel model_;
  std::unique_ptr<XlmrTokenizer> tokenizer_;
  MemoryPlan plan_;
  std::vector<std::unique_ptr<Replica>> replicas_;
  std::vector<WarmupReport> warmups_;
  uint64_t baseline_rss_ = 0;
  uint64_t load_peak_rss_ = 0;
  std::unique_ptr<Scheduler> scheduler_;
  std::vector<std::thread> workers_;  // one per replica: next_batch -> forward -> complete
};

}  // namespace m3
