#include "m3/runtime/model_replica.h"

#include <chrono>

#include "m3/core/process_memory.h"

namespace m3 {

ModelReplica::ModelReplica(int index, const SharedModel& model, const MemoryPlan& plan, std::unique_ptr<Backend> backend)
    : index_(index), plan_(plan), backend_(std::move(backend)) {
  backend_->attach_thread();
  weights_ = backend_->place_weights(model.weights);
  const TensorView arena = backend_->arena();
  encoder_ = std::make_unique<XlmrEncoder>(model.config, plan_, weights_, *backend_, arena);
  heads_ = std::make_unique<M3Heads>(model.config, plan_, weights_, *backend_, arena, model.model_dir);
}

void ModelReplica::begin(const PackedBatch& batch, const OutputRequest& request, int slot) {
  heads_->check(request);
  const BatchView view = backend_->stage(batch, slot);
  fetched_[slot] = heads_->forward(view, encoder_->forward(view), request);
  backend_->submit(slot);
}

void ModelReplica::end(const PackedBatch& batch, const OutputRequest& request, std::vector<M3Output>& outputs,
                       int slot) {
  backend_->finish(slot);
  heads_->extract(batch, fetched_[slot], request, outputs);
}

void ModelReplica::run(const PackedBatch& batch, const OutputRequest& request, std::vector<M3Output>& outputs) {
  begin(batch, request, 0);
  end(batch, request, outputs, 0);
}

void ModelReplica::run_layers(const PackedBatch& batch, const OutputRequest& request, int layers,
                              std::vector<M3Output>& outputs) {
  heads_->check(request);
  const BatchView view = backend_->stage(batch, 0);
  fetched_[0] = heads_->forward(view, encoder_->forward(view, layers), request);
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
  const OutputRequest all{true, heads_->has_sparse(), heads_->has_colbert()};
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
