#include "m3/runtime/cpu_replica.h"

#include <chrono>

#include "m3/backend/cpu/cpu_backend.h"
#include "m3/core/process_memory.h"

namespace m3 {

CpuReplica::CpuReplica(int index, const SharedModel& model, const MemoryPlan& plan, int threads)
    : index_(index), model_(model), plan_(plan), arena_(plan.arena_bytes) {
  CpuBackendOptions options;
  options.threads = threads;
  options.query_tile = plan.inputs.query_tile;
  options.max_rows = plan.inputs.max_batch_tokens;
  options.precision = plan.inputs.precision;
  backend_ = std::make_unique<CpuBackend>(options);
  BackendWorkspace workspace;
  workspace.attention_scratch = arena_.at<float>(plan.attention_scratch_offset);
  workspace.max_seq_len = plan.inputs.max_seq_len;
  workspace.library = arena_.at<void>(plan.library_workspace_offset);
  workspace.library_bytes = plan.inputs.library_workspace_bytes;
  if (plan.gemm_input_bytes > 0) {
    workspace.gemm_input = arena_.at<void>(plan.gemm_input_offset);
    workspace.gemm_input_bytes = plan.gemm_input_bytes;
  }
  if (plan.inputs.precision == Precision::kInt8) {
    workspace.row_scales = arena_.at<float>(plan.row_scales_offset);
    workspace.int8_accumulator = arena_.at<float>(plan.int8_accumulator_offset);
  }
  backend_->bind_workspace(workspace);
  encoder_ = std::make_unique<XlmrEncoder>(model.config, model.encoder, *backend_, plan_, arena_);
  heads_ = std::make_unique<M3Heads>(model.config, model.heads, *backend_, plan_, arena_, model.model_dir);
}

const float* CpuReplica::forward(const PackedBatch& batch, const OutputRequest& request, int layers) {
  const float* hidden = encoder_->forward(batch, layers);
  heads_->forward(batch, hidden, request);
  return hidden;
}

void CpuReplica::extract(const PackedBatch& batch, const float* hidden, const OutputRequest& request,
                      std::vector<M3Output>& outputs) const {
  outputs.resize(batch.sequences());
  for (int32_t s = 0; s < batch.sequences(); ++s) heads_->extract(batch, s, hidden, request, outputs[s]);
}

WarmupReport CpuReplica::warm_up() {
  const auto start = std::chrono::steady_clock::now();
  backend_->attach_thread();
  WarmupReport report;
  report.rss_before = current_rss_bytes();
  reset_peak_rss();
  arena_.touch();

  const OutputRequest all{true, bool(model_.heads.sparse), bool(model_.heads.colbert)};
  std::vector<M3Output> outputs;  // results are copied out too, so their memory is warm as well
  for (const PackedBatch& batch :
       warmup_batches(plan_.inputs.max_seq_len, plan_.inputs.max_batch_tokens,
                      static_cast<int32_t>(model_.config.pad_token_id))) {
    extract(batch, forward(batch, all, 1), all, outputs);
  }
  outputs.clear();

  report.rss_after = current_rss_bytes();
  report.peak_rss = peak_rss_bytes();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace m3
