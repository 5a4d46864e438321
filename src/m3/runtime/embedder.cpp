#include "m3/runtime/embedder.h"

#include <algorithm>
#include <numeric>

#include <spdlog/spdlog.h>

#include "m3/backend/cpu/cpu_backend.h"
#include "m3/core/error.h"
#include "m3/core/process_memory.h"

namespace m3 {

Embedder::~Embedder() = default;

std::unique_ptr<Embedder> Embedder::load(const std::filesystem::path& model_dir, const EmbedderOptions& options) {
  std::unique_ptr<Embedder> e(new Embedder());
  const uint64_t rss_at_start = current_rss_bytes();
  e->model_.model_dir = model_dir;
  e->model_.config = ModelConfig::load(model_dir);
  const ModelConfig& config = e->model_.config;
  e->tokenizer_ = std::make_unique<XlmrTokenizer>(XlmrTokenizer::load(model_dir));
  if (e->tokenizer_->vocab_size() > config.vocab_size) {
    fail("{}: the tokenizer has {} ids but config.json's vocab_size is {}",
         (model_dir / "sentencepiece.bpe.model").string(), e->tokenizer_->vocab_size(), config.vocab_size);
  }
  if (options.replicas < 1) fail("replicas must be at least 1, got {}", options.replicas);

  // The plan first: a limit that cannot work is refused before any weight is read.
  PlanInputs in;
  in.config = config;
  in.max_seq_len = options.max_seq_len > 0 ? options.max_seq_len : config.max_tokens();
  if (in.max_seq_len > config.max_tokens()) {
    fail("max sequence length {} exceeds the model's limit of {} tokens (max_position_embeddings {})",
         in.max_seq_len, config.max_tokens(), config.max_position_embeddings);
  }
  const int threads = options.threads > 0 ? options.threads : CpuBackend::default_threads();
  in.replicas = options.replicas;
  in.threads = std::max(1, threads / options.replicas);
  in.sparse_head = std::filesystem::exists(model_dir / "sparse_linear.pt");
  in.colbert_head = std::filesystem::exists(model_dir / "colbert_linear.pt");
  in.max_batch_tokens = options.memory_limit > 0 ? in.max_seq_len : options.max_batch_tokens;
  if (options.memory_limit > 0) {
    // The library workspace grows with the rows: size it for the most the limit could allow.
    in.library_workspace_bytes = CpuBackend::library_workspace_bytes(config, 1 << 16);
    in.max_batch_tokens = max_batch_tokens_for_limit(in, options.memory_limit);
  }
  in.library_workspace_bytes = CpuBackend::library_workspace_bytes(config, in.max_batch_tokens);
  e->plan_ = plan_memory(in);
  spdlog::info("memory plan: {} weights + {} x {} arena = {} (max batch {} tokens, max sequence {} tokens)",
               format_bytes(e->plan_.weight_bytes), in.replicas, format_bytes(e->plan_.arena_bytes),
               format_bytes(e->plan_.total_bytes), in.max_batch_tokens, in.max_seq_len);

  e->model_.encoder = load_encoder_weights(model_dir, config);
  e->model_.heads = load_head_weights(model_dir, config);
  for (int r = 0; r < options.replicas; ++r) {
    e->replicas_.push_back(std::make_unique<Replica>(r, e->model_, e->plan_, in.threads));
  }
  spdlog::info("loaded {} ({} layers, hidden {}, {} heads; weights from {}; heads:{}{}) with {} replica(s) x {} threads",
               model_dir.string(), config.num_layers, config.hidden_size, config.num_heads,
               std::filesystem::path(e->model_.encoder.source).filename().string(),
               e->model_.heads.sparse ? " sparse" : "", e->model_.heads.colbert ? " colbert" : "", in.replicas,
               in.threads);
  if (options.warm_up) {
    for (auto& replica : e->replicas_) {
      e->warmups_.push_back(replica->warm_up());
      const auto& w = e->warmups_.back();
      spdlog::info("warm-up of replica {}: {:.2f} s; resident memory grew {} since loading began (planned {}), "
                   "process resident {}, peak during warm-up {}",
                   replica->index(), w.seconds, format_bytes(w.rss_after - std::min(w.rss_after, rss_at_start)),
                   format_bytes(e->plan_.total_bytes), format_bytes(w.rss_after), format_bytes(w.peak_rss));
    }
  }
  return e;
}

void Embedder::check(const OutputRequest& request) const { replicas_.front()->check(request); }

std::vector<int32_t> Embedder::tokenize(std::string_view text, int64_t max_length, bool* truncated) const {
  const int64_t limit = max_length > 0 ? std::min(max_length, max_seq_len()) : max_seq_len();
  return tokenizer_->encode(text, static_cast<size_t>(limit), truncated);
}

std::vector<M3Output> Embedder::encode(const std::vector<std::vector<int32_t>>& sequences,
                                       const OutputRequest& request, const std::function<void(size_t)>& progress) {
  check(request);
  for (size_t i = 0; i < sequences.size(); ++i) {
    const auto len = static_cast<int64_t>(sequences[i].size());
    if (len < 2 || len > max_seq_len()) fail("sequence {} has {} tokens; the limit is {}", i, len, max_seq_len());
  }
  std::lock_guard lock(mutex_);
  Replica& replica = *replicas_.front();
  replica.backend().attach_thread();
  // Longest first, as the reference does; packing by token budget removes the padding.
  std::vector<size_t> order(sequences.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return sequences[a].size() > sequences[b].size(); });

  std::vector<M3Output> results(sequences.size());
  std::vector<M3Output> batch_outputs;
  PackedBatch batch;
  size_t next = 0;
  const int32_t pad = static_cast<int32_t>(config().pad_token_id);
  while (next < order.size()) {
    batch.clear();
    const size_t first = next;
    while (next < order.size() &&
           batch.tokens() + static_cast<int64_t>(sequences[order[next]].size()) <= max_batch_tokens()) {
      batch.add(sequences[order[next]], pad);
      ++next;
    }
    const float* hidden = replica.forward(batch, request);
    replica.extract(batch, hidden, request, batch_outputs);
    for (size_t i = first; i < next; ++i) results[order[i]] = std::move(batch_outputs[i - first]);
    if (progress) progress(next);
  }
  return results;
}

}  // namespace m3
