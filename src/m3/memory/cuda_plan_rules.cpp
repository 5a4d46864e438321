// CUDA's rules: everything a device holds is one allocation (weights, each tensor 256-byte
// aligned as cudaMalloc returns, then the arena); activations between GEMMs are stored in
// the GEMM type; the graph's outputs have one copy per pipeline slot (a copy stream reads
// a slot's while the next batch computes); the arena also holds the batch inputs, the
// attention tiles and the cuBLASLt workspace; a pinned host block in two slots stages each
// batch's inputs up and its outputs down. A limit bounds each device's allocation; host
// memory is reported apart.
#include <fmt/format.h>

#include "m3/core/error.h"
#include "m3/core/precision.h"
#include "m3/memory/plan_rules.h"

namespace m3 {

DType cuda_weight_dtype(const WeightSpec& spec, DType precision) {
  switch (spec.role) {
    // Embedding tables in float16 for both 16-bit types: their values are small, and
    // float16 keeps 3 more mantissa bits than bfloat16 for the same bytes.
    case WeightRole::kEmbedding: return precision == DType::F32 ? DType::F32 : DType::F16;
    case WeightRole::kEncoderLinear: return precision;
    // The sparse head's one row is a dot product per token, in float32, not a GEMM.
    case WeightRole::kHeadLinear: return spec.rows == 1 ? DType::F32 : precision;
    case WeightRole::kFloatHeadLinear: return DType::F32;
    case WeightRole::kVector: return DType::F32;
  }
  return DType::F32;
}

// kAttentionQueryTile of cuda_kernels.h, which this pure-C++ file cannot include.
constexpr int64_t kCudaQueryTile = 64;

PlanRules cuda_plan_rules(const PlanInputs& in) {
  if (in.precision == DType::I8) fail("--dtype int8 is CPU only; on CUDA use fp16, bf16 or fp32");
  constexpr uint64_t kF32 = 4;
  PlanRules r;
  r.alignment = 256;
  r.weight_alignment = 256;
  r.activation = in.precision;
  r.gemm_operand = in.precision;
  r.gemm_row_chunks = false;  // cuBLASLt takes any row count
  r.output_copies = kCudaPipelineSlots;
  const DType p = in.precision;
  r.weight_type = [p](const WeightSpec& s) { return cuda_weight_dtype(s, p); };
  r.weight_extra_bytes = [](const WeightSpec&) { return uint64_t{0}; };
  r.workspaces = [in](MemoryPlan& plan, ArenaLayout& arena) {
    CudaLayout& l = plan.cuda;
    const int64_t rows = plan.rows;
    const auto R = static_cast<uint64_t>(rows);
    l.max_sequences = rows / 2;
    l.max_attention_tiles = (rows + kCudaQueryTile - 1) / kCudaQueryTile + l.max_sequences;
    const auto S = static_cast<uint64_t>(l.max_sequences);
    l.token_ids = arena.add("token ids", fmt::format("[{}] i32", rows), R * 4);
    l.positions = arena.add("positions", fmt::format("[{}] i32", rows), R * 4);
    l.cu_seqlens = arena.add("sequence starts", fmt::format("[{}] i32", S + 1), (S + 1) * 4);
    l.attention_tiles = arena.add(
        fmt::format("attention tiles ({} query rows each; scores stay in shared memory)", kCudaQueryTile),
        fmt::format("[{}, 2] i32", l.max_attention_tiles), static_cast<uint64_t>(l.max_attention_tiles) * 2 * 4);
    l.workspace_bytes = in.cublas_workspace_bytes;
    l.workspace = arena.add("cuBLASLt workspace", "bytes", l.workspace_bytes);
    plan.bytes_per_batch_token += 8;  // ids and positions
  };
  r.totals = [in](MemoryPlan& plan) {
    CudaLayout& l = plan.cuda;
    const auto R = static_cast<uint64_t>(plan.rows), H = static_cast<uint64_t>(in.config.hidden_size);
    const auto S = static_cast<uint64_t>(l.max_sequences);
    l.weights_offset = 0;
    l.weight_bytes = plan.weight_bytes;
    // Pinned host staging of one replica (inputs up, outputs down), one block per slot.
    ArenaLayout slot(plan, 256);
    uint64_t pinned = 0;
    auto stage = [&](uint64_t bytes) {
      const uint64_t offset = pinned;
      pinned += slot.align(bytes);
      return offset;
    };
    l.staging_ids = stage(R * 4);
    l.staging_positions = stage(R * 4);
    l.staging_cu_seqlens = stage((S + 1) * 4);
    l.staging_tiles = stage(static_cast<uint64_t>(l.max_attention_tiles) * 2 * 4);
    l.staging_outputs = pinned;
    stage(S * H * kF32);  // dense vectors
    stage(S * kF32);      // their norms
    stage(R * kF32);      // per-id sparse maxima
    stage(R * kF32);      // per-position sparse weights (vLLM's token_classify)
    stage(R * H * kF32);  // ColBERT rows
    l.staging_slot_bytes = pinned;
    plan.pinned_bytes = kCudaPipelineSlots * pinned;
    plan.device_bytes = plan.weight_bytes + plan.arena_bytes;  // the arena includes the workspace
    plan.host_bytes = plan.queue_bytes + plan.output_bytes + plan.result_buffer_bytes +
                      static_cast<uint64_t>(in.replicas) * plan.pinned_bytes;
    plan.total_bytes = plan.device_bytes;
  };
  return r;
}

}  // namespace m3
