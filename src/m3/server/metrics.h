// Prometheus metrics of the server: counters and histograms it records itself, plus
// gauges read at scrape time (scheduler queue, memory plan, resident memory). Rendered as
// the Prometheus text exposition format (version 0.0.4).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "m3/memory/memory_plan.h"
#include "m3/runtime/scheduler.h"

namespace m3::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  // name_bucket{labels,le="..."}, name_sum{labels}, name_count{labels}; `labels` is
  // empty or `key="value",...` without braces.
  void append(std::string& out, std::string_view name, std::string_view labels = {}) const;

 private:
  mutable std::mutex mutex_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; the last is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

// What /metrics reads from the running server when it is scraped.
// One CUDA device's memory (cudaMemGetInfo) now and around its replica's warm-up.
struct DeviceMemoryGauge {
  std::string device;  // "cuda:0"
  uint64_t total = 0, free = 0, free_before_warmup = 0, free_after_warmup = 0, planned = 0;
};

// One served model's numbers, labelled by its name (several models in one process).
struct ModelGauge {
  std::string name;
  std::string kind;  // "embedder", "reranker", "classifier"
  uint64_t planned_bytes = 0;
  SchedulerStats scheduler;
};

struct RuntimeGauges {
  bool ready = false;
  size_t connections = 0;
  size_t active_requests = 0;
  uint64_t response_bytes = 0;           // reserved by responses in flight
  uint64_t response_bytes_capacity = 0;  // --output-memory
  std::optional<SchedulerStats> scheduler;
  const MemoryPlan* plan = nullptr;
  uint64_t resident_bytes = 0;
  uint64_t peak_resident_bytes = 0;
  std::vector<DeviceMemoryGauge> devices;
  std::string model;
  std::string version;
  std::vector<ModelGauge> models;  // every served model (the unlabelled gauges are the first's)
};

class Metrics {
 public:
  Metrics();

  // One answered HTTP request: `route` is the matched route ("unmatched", "http" for
  // transport errors), `seconds` from the request read to the response ready.
  void record_request(std::string_view route, int status, double seconds);
  // One inference that succeeded: sequences and their tokens.
  void record_inference(size_t sequences, int64_t tokens);
  void record_timing(double queue_seconds, double inference_seconds);
  void record_batch(int64_t tokens);

  std::string render(const RuntimeGauges& gauges) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, std::unique_ptr<Histogram>, std::less<>> durations_;
  uint64_t sequences_ = 0;
  uint64_t tokens_ = 0;
  Histogram queue_seconds_;
  Histogram inference_seconds_;
  Histogram batch_tokens_;
};

// Without the engine's batch observer: batch sizes estimated from successive
// Scheduler::stats() (each batch formed between two samples counts as the mean size).
class BatchSampler {
 public:
  void sample(const SchedulerStats& stats, Metrics& metrics);

 private:
  uint64_t batches_ = 0;
  uint64_t tokens_ = 0;
};

}  // namespace m3::server
