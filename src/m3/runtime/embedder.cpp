#include "m3/runtime/embedder.h"

#include <malloc.h>

#include <algorithm>
#include <condition_variable>
#include <future>
#include <mutex>
#include <numeric>

#include <spdlog/spdlog.h>

#include "m3/backend/cpu/cpu_backend.h"
#include "m3/backend/cuda_devices.h"
#include "m3/runtime/model_replica.h"
#include "m3/runtime/replica_worker.h"
#include "m3/backend/cpu/packed_linear_weights.h"
#include "m3/core/error.h"
#include "m3/core/process_memory.h"

namespace m3 {

Embedder::~Embedder() {
  if (scheduler_) scheduler_->shutdown();
  for (auto& worker : workers_) worker.join();
}

namespace {

// Outputs copied out of the arena live on the heap until their caller is done with them.
// glibc would return large freed blocks to the OS and map them again for the next batch,
// so resident memory would rise and fall with every request. A fixed 32 MiB mmap threshold
// (its maximum: one 8191-token ColBERT result still fits under it) and no trimming keep
// those blocks for reuse: warm-up grows the heap to its working size once.
void keep_freed_memory_for_reuse() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace

std::string Embedder::describe() const {
  const ModelConfig& c = model_.config;
  if (c.architecture == Architecture::kSequenceClassification) {
    return fmt::format("classifier, {} label{}", c.num_labels, c.num_labels == 1 ? "" : "s");
  }
  const PlanInputs& in = plan_.inputs;
  return fmt::format("embedder: {} pooling{}; heads: dense{}{}", pooling_name(model_.pooling.pooling),
                     model_.pooling.normalize ? ", normalized" : "", in.sparse_head ? " sparse" : "",
                     in.colbert_head ? " colbert" : "");
}

std::unique_ptr<Embedder> Embedder::load(const std::filesystem::path& model_dir, const EmbedderOptions& options) {
  std::unique_ptr<Embedder> e(new Embedder());
  keep_freed_memory_for_reuse();
  const uint64_t rss_at_start = current_rss_bytes();
  e->model_.model_dir = model_dir;
  e->model_.config = ModelConfig::load(model_dir);
  const ModelConfig& config = e->model_.config;
  if (config.architecture == Architecture::kEncoder) e->model_.pooling = load_pooling_config(model_dir);
  e->tokenizer_ = std::make_unique<XlmrTokenizer>(XlmrTokenizer::load(model_dir));
  if (e->tokenizer_->vocab_size() > config.vocab_size) {
    fail("{}: the tokenizer has {} ids but config.json's vocab_size is {}",
         (model_dir / "sentencepiece.bpe.model").string(), e->tokenizer_->vocab_size(), config.vocab_size);
  }

  // The plan first: a limit that cannot work is refused before any weight is read.
  e->plan_ = plan_for(model_dir, config, options);
  e->baseline_rss_ = current_rss_bytes();  // libraries, tokenizer: what the plan does not count
  const PlanInputs& in = e->plan_.inputs;
  if (in.device == DeviceKind::kCuda) {
    spdlog::info("memory plan: {} weights + {} arena and workspace = {} on each of {} device(s), {} host (max batch "
                 "{} tokens, max sequence {} tokens)",
                 format_bytes(e->plan_.weight_bytes), format_bytes(e->plan_.arena_bytes),
                 format_bytes(e->plan_.device_bytes), in.replicas, format_bytes(e->plan_.host_bytes),
                 in.max_batch_tokens, in.max_seq_len);
  } else {
    spdlog::info("memory plan: {} weights + {} x {} arena = {} (max batch {} tokens, max sequence {} tokens)",
                 format_bytes(e->plan_.weight_bytes), in.replicas, format_bytes(e->plan_.arena_bytes),
                 format_bytes(e->plan_.total_bytes), in.max_batch_tokens, in.max_seq_len);
  }

  const bool on_cuda = in.device == DeviceKind::kCuda;
  if (in.precision != options.precision) {
    spdlog::warn("--dtype {}: this CPU has no {} instructions (oneDNN reports ISA {}); computing in fp32 instead",
                 precision_name(options.precision),
                 options.precision == DType::BF16 ? "AVX512-BF16/AMX" : "VNNI/AMX int8",
                 static_cast<int>(dnnl::get_effective_cpu_isa()));
  }
  // Low precision on the CPU: each encoder linear is packed as soon as it is read and its
  // float32 copy freed, so the float32 encoder never sits in memory whole. CUDA replicas
  // convert while uploading, then the host copy is dropped.
  WeightLoadedHook pack;
  const DType rounding = options.weight_rounding;
  if (!on_cuda && in.precision != DType::F32) {
    pack = [p = in.precision, rounding](const WeightSpec& spec, std::vector<float>& data,
                                        std::shared_ptr<const PackedWeights>& packed) {
      round_weight_values(data, rounding);
      packed = pack_linear_weights(data, spec.rows, spec.cols, p);
      std::vector<float>().swap(data);
    };
  }
  e->model_.weights = load_weights(model_dir, config, e->plan_.table, pack);
  for (auto& values : e->model_.weights.data) round_weight_values(values, rounding);
  malloc_trim(0);  // what reading the files needed on the way is given back, not kept for reuse
  const uint64_t rss_weights = current_rss_bytes();
  for (int r = 0; r < in.replicas; ++r) {
    std::unique_ptr<Backend> backend = on_cuda ? make_cuda_backend(e->plan_, options.devices[r])
                                               : std::make_unique<CpuBackend>(e->plan_, in.threads);
    e->replicas_.push_back(std::make_unique<ModelReplica>(r, e->model_, e->plan_, std::move(backend)));
  }
  if (on_cuda) e->release_host_weights();
  // The runtime the replicas brought (compiled GEMM kernels, thread pools; their arenas are
  // not touched yet) is fixed too: part of the baseline, beside the plan.
  const uint64_t rss_replicas = current_rss_bytes();
  e->baseline_rss_ += rss_replicas - std::min(rss_replicas, rss_weights);
  spdlog::debug("resident: {} at start, {} with weights, {} with replicas (kernels compiled); baseline {}",
                format_bytes(rss_at_start), format_bytes(rss_weights), format_bytes(rss_replicas),
                format_bytes(e->baseline_rss_));
  std::string where = on_cuda ? " on" : fmt::format(" x {} threads on the CPU", in.threads);
  for (size_t r = 0; on_cuda && r < e->replicas_.size(); ++r) where += (r ? ", " : " ") + e->replicas_[r]->device_name();
  spdlog::info("loaded {} ({} layers, hidden {}, {} heads; weights from {}; {}; {}) with {} replica(s){}",
               model_dir.string(), config.num_layers, config.hidden_size, config.num_heads,
               std::filesystem::path(e->model_.weights.source).filename().string(), e->describe(),
               precision_name(in.precision), in.replicas, where);
  if (!on_cuda) {
    if (const std::string warning = CpuBackend::spin_wait_warning(); !warning.empty()) spdlog::warn(warning);
  }
  e->load_peak_rss_ = peak_rss_bytes();  // before warm-up resets the mark
  SchedulerOptions scheduling;
  scheduling.max_batch_tokens = in.max_batch_tokens;
  scheduling.max_seq_len = in.max_seq_len;
  scheduling.max_queue_tokens = e->plan_.queue_tokens;
  scheduling.test_batch_gate = options.test_batch_gate;
  e->scheduler_ = std::make_unique<Scheduler>(scheduling);
  e->scheduler_->set_replicas(static_cast<int>(e->replicas_.size()));
  std::vector<std::future<WarmupReport>> warmups;
  for (auto& replica : e->replicas_) {
    std::promise<WarmupReport> warmed;
    warmups.push_back(warmed.get_future());
    e->workers_.emplace_back(serve_batches, std::ref(*replica), std::ref(*e->scheduler_), options.warm_up,
                             std::move(warmed));
  }
  for (size_t r = 0; r < warmups.size(); ++r) {
    e->warmups_.push_back(warmups[r].get());  // rethrows a failed warm-up (the destructor stops the threads)
    if (!options.warm_up) continue;
    const auto& w = e->warmups_.back();
    if (w.device) {
      const uint64_t used_before = w.device_total - w.device_free_before, used_after = w.device_total - w.device_free_after;
      spdlog::info("warm-up of replica {} on {}: {:.2f} s; device memory in use {} before the replica (context), {} "
                   "after warm-up: {} more, planned {}",
                   r, e->replicas_[r]->device_name(), w.seconds, format_bytes(used_before), format_bytes(used_after),
                   format_bytes(used_after - std::min(used_after, used_before)), format_bytes(w.device_planned));
      continue;
    }
    spdlog::info("warm-up of replica {}: {:.2f} s; resident memory grew {} since loading began (planned {}), "
                 "process resident {}, peak during warm-up {}",
                 r, w.seconds, format_bytes(w.rss_after - std::min(w.rss_after, rss_at_start)),
                 format_bytes(e->plan_.total_bytes), format_bytes(w.rss_after), format_bytes(w.peak_rss));
  }
  return e;
}

MemoryPlan Embedder::plan_for(const std::filesystem::path& model_dir, const ModelConfig& config,
                              const EmbedderOptions& options) {
  if (options.replicas < 1) fail("replicas must be at least 1, got {}", options.replicas);
  const bool on_cuda = !options.devices.empty() && options.devices.front().kind == DeviceKind::kCuda;
  PlanInputs in;
  in.config = config;
  in.max_seq_len = options.max_seq_len > 0 ? options.max_seq_len : default_max_seq_len(model_dir, config);
  if (in.max_seq_len > config.max_tokens()) {
    fail("max sequence length {} exceeds the model's limit of {} tokens (max_position_embeddings {})",
         in.max_seq_len, config.max_tokens(), config.max_position_embeddings);
  }
  in.sparse_head = std::filesystem::exists(model_dir / "sparse_linear.pt");
  in.colbert_head = std::filesystem::exists(model_dir / "colbert_linear.pt");
  in.max_batch_tokens = options.max_batch_tokens;
  in.max_queue_tokens = options.max_queue_tokens;
  in.output_memory = options.output_memory;
  if (on_cuda) {
    if (options.replicas != 1) {
      fail("--replicas is for CPU replicas; on CUDA there is one replica per device (--devices cuda:0,cuda:1,...)");
    }
    if (options.precision == DType::I8) fail("--dtype int8 is CPU only; on CUDA use fp16, bf16 or fp32");
    in.device = DeviceKind::kCuda;
    in.replicas = static_cast<int>(options.devices.size());
    in.threads = 1;  // a CUDA replica's host thread only stages batches
    in.precision = options.precision;
    uint64_t limit = options.memory_limit;
    if (options.gpu_memory_fraction > 0) {
      uint64_t smallest = UINT64_MAX;
      for (const Device& d : options.devices) smallest = std::min(smallest, cuda_memory_info(d.index).total);
      const auto share = static_cast<uint64_t>(options.gpu_memory_fraction * static_cast<double>(smallest));
      limit = limit > 0 ? std::min(limit, share) : share;
    }
    if (limit > 0) {
      in.max_batch_tokens = std::min(max_batch_tokens_for_limit(in, limit), kMaxBatchTokensForLimit);
    }
    return plan_memory(in);
  }
  if (options.precision == DType::F16) fail("--dtype fp16 is for CUDA devices; on the CPU use bf16");
  if (options.gpu_memory_fraction > 0) fail("--gpu-memory-fraction needs a CUDA device (--device cuda)");
  const int threads = options.threads > 0 ? options.threads : CpuBackend::default_threads();
  in.replicas = options.replicas;
  in.threads = std::max(1, threads / options.replicas);
  in.precision = cpu_supports(options.precision) ? options.precision : DType::F32;
  const WeightTable table = xlmr_m3_weight_table(config, in.sparse_head, in.colbert_head);
  auto workspace = [&](int64_t rows) {
    return CpuBackend::library_workspace_bytes(table, rows, in.precision, in.threads);
  };
  if (options.memory_limit > 0) {
    // The GEMM workspace grows with the rows: search with the most a limit could allow; when
    // even one sequence does not fit that way, again with one sequence's (which names the
    // true minimum when it fails too). Then the chosen rows' own workspace must fit as well.
    in.library_workspace_bytes = workspace(kMaxBatchTokensForLimit);
    int64_t t = 0;
    try {
      t = max_batch_tokens_for_limit(in, options.memory_limit);
    } catch (const Error&) {
      in.library_workspace_bytes = workspace(in.max_seq_len);
      t = max_batch_tokens_for_limit(in, options.memory_limit);
    }
    for (t = std::min(t, kMaxBatchTokensForLimit);; t = std::max(in.max_seq_len, t - 64)) {
      in.max_batch_tokens = t;
      in.library_workspace_bytes = workspace(t);
      if (t <= in.max_seq_len || plan_memory(in).total_bytes <= options.memory_limit) break;
    }
  }
  in.library_workspace_bytes = workspace(in.max_batch_tokens);
  return plan_memory(in);
}

// The CUDA replicas hold their own converted copies; the host float32 weights (2.3 GB
// for BGE-M3) are not read again.
void Embedder::release_host_weights() {
  model_.weights.release_host_copies();
  malloc_trim(0);
}

uint64_t Embedder::peak_rss() const { return std::max(load_peak_rss_, peak_rss_bytes()); }

void Embedder::check(const OutputRequest& request) const { replicas_.front()->check(request); }

std::vector<int32_t> Embedder::tokenize(std::string_view text, int64_t max_length, bool* truncated) const {
  const int64_t limit = max_length > 0 ? std::min(max_length, max_seq_len()) : max_seq_len();
  return tokenizer_->encode(text, static_cast<size_t>(limit), truncated);
}

std::vector<int32_t> Embedder::tokenize_pair(std::string_view query, std::string_view passage, int64_t max_length,
                                            int64_t query_max_length, bool* truncated) const {
  const int64_t limit = max_length > 0 ? std::min(max_length, max_seq_len()) : max_seq_len();
  const int64_t query_limit = query_max_length > 0 ? query_max_length : limit * 3 / 4;
  return tokenizer_->encode_pair(query, passage, static_cast<size_t>(query_limit), static_cast<size_t>(limit),
                                 truncated);
}

std::vector<M3Output> Embedder::encode(const std::vector<std::vector<int32_t>>& sequences,
                                       const OutputRequest& request, const std::function<void(size_t)>& progress) {
  check(request);
  for (size_t i = 0; i < sequences.size(); ++i) {
    const auto len = static_cast<int64_t>(sequences[i].size());
    if (len < 2 || len > max_seq_len()) fail("sequence {} has {} tokens; the limit is {}", i, len, max_seq_len());
  }
  // Requests of at most a quarter of the queue each, so several are in flight at once.
  const int64_t chunk_tokens = std::max(max_seq_len(), plan_.queue_tokens / 4);
  std::vector<M3Output> results(sequences.size());
  std::mutex mutex;
  std::condition_variable done_cv;
  size_t pending = 0, finished = 0;
  std::string error;
  size_t first = 0;
  while (first < sequences.size()) {
    size_t last = first;
    int64_t tokens = 0;
    std::vector<std::vector<int32_t>> chunk;
    while (last < sequences.size() && (chunk.empty() || tokens + int64_t(sequences[last].size()) <= chunk_tokens)) {
      tokens += static_cast<int64_t>(sequences[last].size());
      chunk.push_back(sequences[last++]);
    }
    {
      std::lock_guard lock(mutex);
      ++pending;
    }
    auto on_done = [&, first](RequestResult&& result) {
      std::lock_guard lock(mutex);
      if (!result.error.empty() && error.empty()) error = result.error;
      for (size_t i = 0; i < result.outputs.size(); ++i) results[first + i] = std::move(result.outputs[i]);
      finished += result.outputs.size();
      if (progress) progress(finished);
      --pending;
      done_cv.notify_all();
    };
    try {
      scheduler_->submit_wait(std::move(chunk), request, on_done);
    } catch (const std::exception& e) {  // shutting down: wait for what is queued, then report
      std::lock_guard lock(mutex);
      --pending;
      if (error.empty()) error = e.what();
      break;
    }
    first = last;
  }
  std::unique_lock lock(mutex);
  done_cv.wait(lock, [&] { return pending == 0; });
  if (!error.empty()) fail("{}", error);
  return results;
}

}  // namespace m3
