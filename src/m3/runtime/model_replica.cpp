#include "m3/runtime/model_replica.h"

#include <chrono>

#include "m3/core/error.h"
#include "m3/core/process_memory.h"

namespace m3 {

ModelReplica::ModelReplica(int index, const SharedModel& model, const MemoryPlan& plan, std::unique_ptr<Backend> backend)
    : index_(index), plan_(plan), backend_(std::move(backend)), model_dir_(model.model_dir) {
  backend_->attach_thread();
  weights_ = backend_->place_weights(model.weights);
  const TensorView arena = backend_->arena();
  encoder_ = std::make_unique<XlmrEncoder>(model.config, plan_, weights_, *backend_, arena);
  heads_ = std::make_unique<M3Heads>(model.config, plan_, weights_, *backend_, arena, model.model_dir,
                                     model.pooling.pooling);
  if (model.config.architecture == Architecture::kSequenceClassification) {
    classifier_ = std::make_unique<ClassifierHead>(model.config, plan_, weights_, *backend_, arena);
  }
}

void ModelReplica::check(const OutputRequest& request) const {
  const bool embeds = request.dense || request.sparse || request.colbert;
  if (classifier_ && embeds) {
    fail("{} is a classifier (XLMRobertaForSequenceClassification): it scores pairs (a reranker), it does not embed",
         model_dir_.string());
  }
  if (!classifier_ && request.scores) {
    fail("{} is an embedder: it has no classifier head to score pairs with (a reranker has "
         "architectures [\"XLMRobertaForSequenceClassification\"] in config.json)",
         model_dir_.string());
  }
  heads_->check(request);
}

ModelReplica::Fetched ModelReplica::forward_heads(const BatchView& view, const XlmrEncoder::Hidden& hidden,
                                                  const OutputRequest& request) {
  Fetched f;
  f.heads = heads_->forward(view, hidden, request);
  if (request.scores) f.logits = classifier_->forward(view, hidden);
  return f;
}

void ModelReplica::begin(const PackedBatch& batch, const OutputRequest& request, int slot) {
  check(request);
  const BatchView view = backend_->stage(batch, slot);
  fetched_[slot] = forward_heads(view, encoder_->forward(view), request);
  backend_->submit(slot);
}

void ModelReplica::end(const PackedBatch& batch, const OutputRequest& request, std::vector<M3Output>& outputs,
                       int slot) {
  backend_->finish(slot);
  heads_->extract(batch, fetched_[slot].heads, request, outputs);
  if (request.scores) classifier_->extract(batch, fetched_[slot].logits, outputs);
}

void ModelReplica::run(const PackedBatch& batch, const OutputRequest& request, std::vector<M3Output>& outputs) {
  begin(batch, request, 0);
  end(batch, request, outputs, 0);
}

void ModelReplica::run_layers(const PackedBatch& batch, const OutputRequest& request, int layers,
                              std::vector<M3Output>& outputs) {
  check(request);
  const BatchView view = backend_->stage(batch, 0);
  fetched_[0] = forward_heads(view, encoder_->forward(view, layers), request);
  backend_->submit(0);
  end(batch, request, outputs, 0);
}

WarmupReport ModelReplica::warm_up() {
  const auto start = std::chrono::steady_clock::now();
  backend_->attach_thread();
  WarmupReport report;
  report.rss_before = current_rss_bytes();
  reset_peak_rss();
  backend_->touch_arena();
  // Every GEMM kernel variant once (CUDA loads them now), then the worst cases through one
  // layer and every head: every layer computes in the same buffers. Results are copied
  // out too, so their memory is warm as well.
  encoder_->warm_up();
  heads_->warm_up(encoder_->hidden());
  if (classifier_) classifier_->warm_up();
  OutputRequest all{true, heads_->has_sparse(), heads_->has_colbert()};
  if (classifier_) all = OutputRequest{.dense = false, .scores = true};
  std::vector<M3Output> outputs;
  for (const PackedBatch& batch : warmup_batches(plan_.inputs.max_seq_len, plan_.inputs.max_batch_tokens,
                                                 static_cast<int32_t>(plan_.inputs.config.pad_token_id))) {
    run_layers(batch, all, 1, outputs);
  }
  outputs.clear();
  const Backend::DeviceMemory device = backend_->device_memory();
  report.device = device.device;
  report.device_index = device.index;
  report.device_total = device.total;
  report.device_free_before = device.free_before;
  report.device_free_after = device.free;
  report.device_planned = device.planned;
  report.rss_after = current_rss_bytes();
  report.peak_rss = peak_rss_bytes();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace m3
