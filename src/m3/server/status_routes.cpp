// GET /health, /info and /metrics: what orchestrators, people and Prometheus ask.
#include <fmt/format.h>

#include "m3/backend/cuda_devices.h"
#include "m3/core/process_memory.h"
#include "m3/hub/hf_cache.h"
#include "m3/server/json_writer.h"
#include "m3/server/route.h"

namespace m3::server {
namespace {

// TEI's model_dtype names: float32, float16, bfloat16; int8 is m3embed's own.
const char* dtype_label(DType p) {
  switch (p) {
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    case DType::I8: return "int8";
    case DType::F32: break;
  }
  return "float32";
}

// Each CUDA replica's device memory, read now (cudaMemGetInfo) and at its warm-up.
std::vector<DeviceMemoryGauge> device_gauges(const Embedder& embedder) {
  std::vector<DeviceMemoryGauge> gauges;
  for (const WarmupReport& w : embedder.warmup_reports()) {
    if (!w.device) continue;
    DeviceMemoryGauge g{fmt::format("cuda:{}", w.device_index), w.device_total, 0, w.device_free_before,
                        w.device_free_after, w.device_planned};
    try {
      g.free = cuda_memory_info(w.device_index).free;
    } catch (const std::exception&) {
      continue;  // the device cannot answer now; leave it out rather than report a guess
    }
    gauges.push_back(std::move(g));
  }
  return gauges;
}

const char* state_name(ServerState state) {
  switch (state) {
    case ServerState::kLoading: return "loading";
    case ServerState::kReady: return "ready";
    case ServerState::kDraining: return "shutting down";
  }
  return "unknown";
}

void append_plan(std::string& out, const MemoryPlan& plan) {
  fmt::format_to(std::back_inserter(out),
                 "{{\"weights_bytes\":{},\"arena_bytes_per_replica\":{},\"replicas\":{},\"queue_tokens\":{},"
                 "\"queue_bytes\":{},\"output_bytes\":{},\"result_buffer_bytes\":{},\"total_bytes\":{},\"max_batch_tokens\":{},"
                 "\"max_seq_len\":{},\"threads_per_replica\":{},\"device\":\"{}\",",
                 plan.weight_bytes, plan.arena_bytes, plan.inputs.replicas, plan.queue_tokens, plan.queue_bytes,
                 plan.output_bytes, plan.result_buffer_bytes, plan.total_bytes, plan.inputs.max_batch_tokens, plan.inputs.max_seq_len,
                 plan.inputs.threads, plan.inputs.device == DeviceKind::kCuda ? "cuda" : "cpu");
  if (plan.inputs.device == DeviceKind::kCuda) {
    fmt::format_to(std::back_inserter(out), "\"device_bytes_per_replica\":{},\"pinned_bytes_per_replica\":{},"
                   "\"host_bytes\":{},", plan.device_bytes, plan.pinned_bytes, plan.host_bytes);
  }
  out += "\"arena\":[";
  for (size_t i = 0; i < plan.arena.size(); ++i) {
    out += i ? ",{\"name\":" : "{\"name\":";
    append_json_string(out, plan.arena[i].name);
    out += ",\"shape\":";
    append_json_string(out, plan.arena[i].shape);
    fmt::format_to(std::back_inserter(out), ",\"bytes\":{}}}", plan.arena[i].bytes);
  }
  out += "]}";
}

}  // namespace

HttpResponse health_response(const ServerContext& context) {
  const ServerState state = context.state.load();
  HttpResponse response;
  response.status = state == ServerState::kReady ? 200 : 503;
  response.body = fmt::format("{{\"status\":\"{}\"}}", state_name(state));
  // Every replica of a model lost to device faults: that model cannot serve (the log says
  // which device and why).
  if (state != ServerState::kReady) return response;
  for (const ServedModel& m : context.models) {
    const SchedulerStats stats = m.engine->scheduler().stats();
    if (stats.replicas > 0 && stats.replicas_lost >= stats.replicas) {
      response.status = 503;
      response.body = fmt::format("{{\"status\":\"failed\",\"error\":\"all {} replicas of {} lost to device faults\"}}",
                                  stats.replicas, m.name);
    }
  }
  return response;
}

HttpResponse info_response(const ServerContext& context) {
  const Embedder* embedder = context.embedder.load();
  HttpResponse response;
  if (!embedder) {
    response.status = 503;
    response.body =
        fmt::format("{{\"status\":\"{}\",\"version\":\"{}\"}}", state_name(context.state.load()), M3_VERSION);
    return response;
  }
  const ServerOptions& o = context.options;
  const ModelConfig& c = embedder->config();
  const MemoryPlan& plan = embedder->plan();
  std::string& out = response.body;
  out += "{\"model_id\":";
  append_json_string(out, context.model_name);
  // TEI's fields: the snapshot's commit when the model came from the hub cache.
  const std::string snapshot = embedder->model_dir().filename().string();
  out += ",\"model_sha\":";
  if (is_commit_hash(snapshot)) {
    append_json_string(out, snapshot);
  } else {
    out += "null";
  }
  out += ",\"served_model_name\":";
  append_json_string(out, context.model_name);
  fmt::format_to(std::back_inserter(out), ",\"max_batch_requests\":null,\"tokenization_workers\":{},"
                 "\"sha\":null,\"docker_label\":null", context.options.http_threads);
  out += ",\"model_dir\":";
  append_json_string(out, embedder->model_dir().string());
  // TEI's model_type: {"embedding": {"pooling"}}, or a classifier's labels under "reranker"
  // (one label) or "classifier".
  out += ",\"model_type\":";
  if (embedder->is_classifier()) {
    std::string id2label, label2id;
    for (size_t i = 0; i < c.labels.size(); ++i) {
      fmt::format_to(std::back_inserter(id2label), "{}\"{}\":", i ? "," : "", i);
      append_json_string(id2label, c.labels[i]);
      label2id += i ? "," : "";
      append_json_string(label2id, c.labels[i]);
      fmt::format_to(std::back_inserter(label2id), ":{}", i);
    }
    fmt::format_to(std::back_inserter(out), "{{\"{}\":{{\"id2label\":{{{}}},\"label2id\":{{{}}}}}}}",
                   c.num_labels == 1 ? "reranker" : "classifier", id2label, label2id);
  } else {
    fmt::format_to(std::back_inserter(out), "{{\"embedding\":{{\"pooling\":\"{}\"}}}}",
                   pooling_name(embedder->pooling().pooling));
  }
  fmt::format_to(std::back_inserter(out),
                 ",\"model_dtype\":\"{}\","
                 "\"version\":\"{}\",\"status\":\"{}\",\"max_concurrent_requests\":{},\"max_input_length\":{},"
                 "\"max_batch_tokens\":{},\"max_client_batch_size\":{},\"auto_truncate\":{},",
                 dtype_label(plan.inputs.precision), M3_VERSION, state_name(context.state.load()), o.max_concurrent_requests, embedder->max_seq_len(),
                 embedder->max_batch_tokens(), o.max_client_batch_size, o.auto_truncate);
  fmt::format_to(std::back_inserter(out),
                 "\"config\":{{\"vocab_size\":{},\"hidden_size\":{},\"num_hidden_layers\":{},"
                 "\"num_attention_heads\":{},\"intermediate_size\":{},\"max_position_embeddings\":{}}},"
                 "\"outputs\":{{\"dense\":{},\"sparse\":{},\"colbert\":{},\"scores\":{}}},",
                 c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size, c.max_position_embeddings,
                 !embedder->is_classifier(), plan.inputs.sparse_head, plan.inputs.colbert_head, embedder->is_classifier());
  fmt::format_to(std::back_inserter(out),
                 "\"limits\":{{\"payload_limit\":{},\"max_header_bytes\":{},\"max_response_bytes\":{},"
                 "\"max_connections\":{},\"read_timeout_s\":{},\"write_timeout_s\":{},\"shutdown_timeout_s\":{},"
                 "\"http_threads\":{},\"max_queue_tokens\":{}}},\"memory\":{{\"plan\":",
                 o.payload_limit, o.max_header_bytes, o.max_response_bytes, o.max_connections, o.read_timeout_s,
                 o.write_timeout_s, o.shutdown_timeout_s, o.http_threads, plan.queue_tokens);
  append_plan(out, plan);
  fmt::format_to(std::back_inserter(out), ",\"resident_bytes\":{},\"peak_resident_bytes\":{},\"warmup\":[",
                 current_rss_bytes(), peak_rss_bytes());
  const auto& warmups = embedder->warmup_reports();
  for (size_t i = 0; i < warmups.size(); ++i) {
    const WarmupReport& w = warmups[i];
    fmt::format_to(std::back_inserter(out),
                   "{}{{\"replica\":{},\"rss_before\":{},\"rss_after\":{},\"peak_rss\":{},\"seconds\":{}}}",
                   i ? "," : "", i, w.rss_before, w.rss_after, w.peak_rss, w.seconds);
  }
  // CUDA: each device's memory now and before/after its replica's warm-up (the context
  // comes before; the planned allocation and cuBLASLt's kernels after).
  out += "],\"devices\":[";
  const auto devices = device_gauges(*embedder);
  for (size_t i = 0; i < devices.size(); ++i) {
    const DeviceMemoryGauge& d = devices[i];
    fmt::format_to(std::back_inserter(out),
                   "{}{{\"device\":\"{}\",\"total_bytes\":{},\"free_bytes\":{},\"used_bytes\":{},"
                   "\"used_before_warmup_bytes\":{},\"used_after_warmup_bytes\":{},\"planned_bytes\":{}}}",
                   i ? "," : "", d.device, d.total, d.free, d.total - d.free, d.total - d.free_before_warmup,
                   d.total - d.free_after_warmup, d.planned);
  }
  out += "]}";
  // Every served model (the fields above are the first's): what requests route by, its
  // kind and its part of the memory plan.
  out += ",\"models\":[";
  for (size_t i = 0; i < context.models.size(); ++i) {
    const ServedModel& m = context.models[i];
    out += i ? ",{\"name\":" : "{\"name\":";
    append_json_string(out, m.name);
    out += ",\"model_dir\":";
    append_json_string(out, m.engine->model_dir().string());
    out += ",\"describe\":";
    append_json_string(out, m.engine->describe());
    fmt::format_to(std::back_inserter(out),
                   ",\"kind\":\"{}\",\"max_input_length\":{},\"max_batch_tokens\":{},\"model_dtype\":\"{}\","
                   "\"planned_bytes\":{}}}",
                   !m.engine->is_classifier() ? "embedder" : m.engine->config().num_labels == 1 ? "reranker" : "classifier",
                   m.engine->max_seq_len(), m.engine->max_batch_tokens(), dtype_label(m.engine->plan().inputs.precision),
                   m.engine->plan().total_bytes);
  }
  out += "]}";
  return response;
}

HttpResponse metrics_response(const ServerContext& context) {
  RuntimeGauges gauges;
  gauges.ready = context.state.load() == ServerState::kReady;
  gauges.connections = context.connections.load();
  gauges.active_requests = context.limiter.active();
  gauges.response_bytes = context.responses.used();
  gauges.response_bytes_capacity = context.responses.capacity();
  if (Embedder* embedder = context.embedder.load()) {
    gauges.scheduler = embedder->scheduler().stats();
    gauges.plan = &embedder->plan();
    gauges.devices = device_gauges(*embedder);
  }
  gauges.resident_bytes = current_rss_bytes();
  gauges.peak_resident_bytes = peak_rss_bytes();
  gauges.model = context.model_name;
  gauges.version = M3_VERSION;
  if (gauges.ready || context.state.load() == ServerState::kDraining) {
    for (const ServedModel& m : context.models) {
      ModelGauge& model = gauges.models.emplace_back();
      model.name = m.name;
      model.kind = !m.engine->is_classifier() ? "embedder"
                   : m.engine->config().num_labels == 1 ? "reranker"
                                                        : "classifier";
      model.planned_bytes = m.engine->plan().total_bytes;
      model.scheduler = m.engine->scheduler().stats();
    }
  }
  HttpResponse response;
  response.content_type = "text/plain; version=0.0.4; charset=utf-8";
  response.body = context.metrics.render(gauges);
  return response;
}

}  // namespace m3::server
