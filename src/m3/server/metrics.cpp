#include "m3/server/metrics.h"

#include <iterator>

#include <fmt/format.h>

namespace m3::server {
namespace {

const std::vector<double> kLatencyBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                             0.5,   1,      2.5,   5,    10,    30,   60};
const std::vector<double> kBatchTokenBuckets = {16,   32,   64,   128,   256,   512,   1024,
                                                2048, 4096, 8192, 16384, 32768, 65536, 131072};

template <typename... Args>
void line(std::string& out, fmt::format_string<Args...> format, Args&&... args) {
  fmt::format_to(std::back_inserter(out), format, std::forward<Args>(args)...);
  out += '\n';
}

void header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  line(out, "# HELP {} {}", name, help);
  line(out, "# TYPE {} {}", name, type);
}

void gauge(std::string& out, std::string_view name, std::string_view help, double value) {
  header(out, name, "gauge", help);
  line(out, "{} {}", name, value);
}

void counter(std::string& out, std::string_view name, std::string_view help, uint64_t value) {
  header(out, name, "counter", help);
  line(out, "{} {}", name, value);
}

// Label values are route names and numbers of ours, but escape anyway.
std::string label_value(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  size_t bucket = 0;
  while (bucket < bounds_.size() && value > bounds_[bucket]) ++bucket;
  std::lock_guard lock(mutex_);
  ++counts_[bucket];
  sum_ += value;
  ++count_;
}

void Histogram::append(std::string& out, std::string_view name, std::string_view labels) const {
  std::lock_guard lock(mutex_);
  const std::string prefix = labels.empty() ? std::string() : fmt::format("{},", labels);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    line(out, "{}_bucket{{{}le=\"{}\"}} {}", name, prefix, bounds_[i], cumulative);
  }
  line(out, "{}_bucket{{{}le=\"+Inf\"}} {}", name, prefix, count_);
  const std::string braces = labels.empty() ? std::string() : fmt::format("{{{}}}", labels);
  line(out, "{}_sum{} {}", name, braces, sum_);
  line(out, "{}_count{} {}", name, braces, count_);
}

Metrics::Metrics()
    : queue_seconds_(kLatencyBuckets), inference_seconds_(kLatencyBuckets), batch_tokens_(kBatchTokenBuckets) {}

void Metrics::record_request(std::string_view route, int status, double seconds) {
  Histogram* histogram = nullptr;
  {
    std::lock_guard lock(mutex_);
    ++requests_[{std::string(route), status}];
    auto it = durations_.find(route);
    if (it == durations_.end()) {
      it = durations_.emplace(std::string(route), std::make_unique<Histogram>(kLatencyBuckets)).first;
    }
    histogram = it->second.get();  // never erased: the pointer stays valid
  }
  histogram->observe(seconds);
}

void Metrics::record_inference(size_t sequences, int64_t tokens) {
  std::lock_guard lock(mutex_);
  sequences_ += sequences;
  tokens_ += static_cast<uint64_t>(tokens);
}

void Metrics::record_timing(double queue_seconds, double inference_seconds) {
  queue_seconds_.observe(queue_seconds);
  inference_seconds_.observe(inference_seconds);
}

void Metrics::record_batch(int64_t tokens) { batch_tokens_.observe(static_cast<double>(tokens)); }

std::string Metrics::render(const RuntimeGauges& g) const {
  std::string out;
  header(out, "m3_info", "gauge", "Server version and model name (always 1).");
  line(out, "m3_info{{version=\"{}\",model=\"{}\"}} 1", label_value(g.version), label_value(g.model));
  gauge(out, "m3_ready", "1 once the model is loaded and warmed up, 0 while loading or shutting down.", g.ready);
  gauge(out, "m3_http_connections", "Open HTTP connections.", static_cast<double>(g.connections));
  gauge(out, "m3_http_active_requests", "Requests admitted and not yet answered (--max-concurrent-requests).",
        static_cast<double>(g.active_requests));
  gauge(out, "m3_response_bytes_in_flight",
        "Memory reserved by responses being computed or written (estimated; bounded by --output-memory).",
        static_cast<double>(g.response_bytes));
  gauge(out, "m3_response_bytes_capacity", "Memory for responses in flight (--output-memory; in the memory plan).",
        static_cast<double>(g.response_bytes_capacity));
  {
    std::lock_guard lock(mutex_);
    header(out, "m3_http_requests_total", "counter", "HTTP requests answered, by route and status.");
    for (const auto& [key, count] : requests_) {
      line(out, "m3_http_requests_total{{route=\"{}\",status=\"{}\"}} {}", label_value(key.first), key.second, count);
    }
    header(out, "m3_http_request_duration_seconds", "histogram",
           "Total latency by route: request read to response ready (queue and inference included).");
    for (const auto& [route, histogram] : durations_) {
      histogram->append(out, "m3_http_request_duration_seconds", fmt::format("route=\"{}\"", label_value(route)));
    }
    counter(out, "m3_sequences_total", "Sequences (texts or token lists) embedded.", sequences_);
    counter(out, "m3_tokens_total", "Tokens processed by the model, <s> and </s> included.", tokens_);
  }
  header(out, "m3_request_queue_seconds", "histogram", "Time a request waited before its first sequence ran.");
  queue_seconds_.append(out, "m3_request_queue_seconds");
  header(out, "m3_request_inference_seconds", "histogram",
         "Time from a request's first sequence running to its last output.");
  inference_seconds_.append(out, "m3_request_inference_seconds");
  header(out, "m3_batch_tokens", "histogram", "Tokens per batch (forward pass) formed by the scheduler.");
  batch_tokens_.append(out, "m3_batch_tokens");

  if (g.scheduler) {
    const SchedulerStats& s = *g.scheduler;
    gauge(out, "m3_queue_requests", "Requests with sequences waiting in the scheduler queue.",
          static_cast<double>(s.queued_requests));
    gauge(out, "m3_queue_sequences", "Sequences waiting in the scheduler queue.",
          static_cast<double>(s.queued_sequences));
    gauge(out, "m3_queue_tokens", "Tokens waiting in the scheduler queue.", static_cast<double>(s.queued_tokens));
    gauge(out, "m3_in_flight_sequences", "Sequences in batches the replicas are running.",
          static_cast<double>(s.in_flight_sequences));
    counter(out, "m3_batches_total", "Batches formed.", s.batches_formed);
    counter(out, "m3_batched_tokens_total", "Tokens taken into batches.", s.tokens_batched);
    header(out, "m3_scheduler_requests_total", "counter", "Scheduler requests by outcome.");
    line(out, "m3_scheduler_requests_total{{outcome=\"submitted\"}} {}", s.requests_submitted);
    line(out, "m3_scheduler_requests_total{{outcome=\"completed\"}} {}", s.requests_completed);
    line(out, "m3_scheduler_requests_total{{outcome=\"failed\"}} {}", s.requests_failed);
    line(out, "m3_scheduler_requests_total{{outcome=\"cancelled\"}} {}", s.requests_cancelled);
    line(out, "m3_scheduler_requests_total{{outcome=\"rejected\"}} {}", s.requests_rejected);
    header(out, "m3_replica_faults_total", "counter",
           "Replicas taken out of service after a device fault (their batches went to the others).");
    line(out, "m3_replica_faults_total {}", static_cast<uint64_t>(s.replicas_lost));
    gauge(out, "m3_replicas_live", "Replicas serving the queue.",
          static_cast<double>(s.replicas - s.replicas_lost));
    header(out, "m3_batches_requeued_total", "counter", "Batches a faulted replica gave back to the queue.");
    line(out, "m3_batches_requeued_total {}", s.batches_requeued);
  }
  if (g.plan) {
    const MemoryPlan& p = *g.plan;
    gauge(out, "m3_queue_max_tokens", "The scheduler queue's bound in tokens (429 beyond it).",
          static_cast<double>(p.queue_tokens));
    header(out, "m3_memory_planned_bytes", "gauge", "The memory plan, by part (arenas: all replicas).");
    line(out, "m3_memory_planned_bytes{{part=\"weights\"}} {}", p.weight_bytes);
    line(out, "m3_memory_planned_bytes{{part=\"arenas\"}} {}",
         p.arena_bytes * static_cast<uint64_t>(p.inputs.replicas));
    line(out, "m3_memory_planned_bytes{{part=\"queue\"}} {}", p.queue_bytes);
    line(out, "m3_memory_planned_bytes{{part=\"outputs\"}} {}", p.output_bytes);
    line(out, "m3_memory_planned_bytes{{part=\"responses\"}} {}", p.result_buffer_bytes);
    line(out, "m3_memory_planned_bytes{{part=\"total\"}} {}", p.total_bytes);
  }
  if (!g.models.empty()) {
    header(out, "m3_model_info", "gauge", "Each served model and its kind (always 1).");
    for (const ModelGauge& m : g.models) {
      line(out, "m3_model_info{{model=\"{}\",kind=\"{}\"}} 1", label_value(m.name), m.kind);
    }
    header(out, "m3_model_memory_planned_bytes", "gauge", "Each model's memory plan (its part of --memory-limit).");
    for (const ModelGauge& m : g.models) {
      line(out, "m3_model_memory_planned_bytes{{model=\"{}\"}} {}", label_value(m.name), m.planned_bytes);
    }
    header(out, "m3_model_queue_tokens", "gauge", "Tokens waiting in each model's scheduler queue.");
    for (const ModelGauge& m : g.models) {
      line(out, "m3_model_queue_tokens{{model=\"{}\"}} {}", label_value(m.name), m.scheduler.queued_tokens);
    }
    header(out, "m3_model_batched_tokens_total", "counter", "Tokens each model has taken into batches.");
    for (const ModelGauge& m : g.models) {
      line(out, "m3_model_batched_tokens_total{{model=\"{}\"}} {}", label_value(m.name), m.scheduler.tokens_batched);
    }
  }
  gauge(out, "m3_memory_resident_bytes", "Resident memory of the process (VmRSS).",
        static_cast<double>(g.resident_bytes));
  gauge(out, "m3_memory_resident_peak_bytes", "Peak resident memory of the process (VmHWM).",
        static_cast<double>(g.peak_resident_bytes));
  if (!g.devices.empty()) {
    auto per_device = [&](const char* name, const char* help, auto value) {
      header(out, name, "gauge", help);
      for (const auto& d : g.devices) line(out, "{}{{device=\"{}\"}} {}", name, d.device, value(d));
    };
    per_device("m3_device_memory_total_bytes", "GPU memory (cudaMemGetInfo total).",
               [](const DeviceMemoryGauge& d) { return d.total; });
    per_device("m3_device_memory_used_bytes", "GPU memory in use now, by every process (total - free).",
               [](const DeviceMemoryGauge& d) { return d.total - d.free; });
    per_device("m3_device_memory_used_before_warmup_bytes",
               "GPU memory in use before the replica allocated (its CUDA context created).",
               [](const DeviceMemoryGauge& d) { return d.total - d.free_before_warmup; });
    per_device("m3_device_memory_used_after_warmup_bytes", "GPU memory in use after the replica's warm-up.",
               [](const DeviceMemoryGauge& d) { return d.total - d.free_after_warmup; });
    per_device("m3_device_memory_planned_bytes", "The replica's one planned allocation (weights, arena, workspace).",
               [](const DeviceMemoryGauge& d) { return d.planned; });
  }
  return out;
}

void BatchSampler::sample(const SchedulerStats& stats, Metrics& metrics) {
  const uint64_t batches = stats.batches_formed - batches_;
  const uint64_t tokens = stats.tokens_batched - tokens_;
  batches_ = stats.batches_formed;
  tokens_ = stats.tokens_batched;
  if (batches == 0) return;
  const auto mean = static_cast<int64_t>((tokens + batches / 2) / batches);
  for (uint64_t i = 0; i < batches; ++i) metrics.record_batch(mean);
}

}  // namespace m3::server
