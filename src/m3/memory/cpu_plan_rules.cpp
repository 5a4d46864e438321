// The CPU's rules: activations in bf16 with --dtype bf16 and a head size the bf16
// attention kernels take (the GEMMs and those kernels read and write them), float32
// otherwise (int8 and the other bf16 GEMMs quantize or round their inputs themselves), GEMMs over whole row chunks, encoder weights at --dtype, and per replica the
// attention scratch (per thread), the oneDNN scratchpad and the low-precision GEMM inputs.
#include <algorithm>

#include <fmt/format.h>

#include "m3/core/precision.h"
#include "m3/memory/plan_rules.h"

namespace m3 {

// The encoder's GEMM weights at --dtype; the heads, embeddings and vectors float32.
DType cpu_weight_dtype(const WeightSpec& spec, DType precision) {
  return spec.role == WeightRole::kEncoderLinear ? precision : DType::F32;
}

bool cpu_bf16_activations(const PlanInputs& in) {
  const int64_t head_dim = in.config.head_dim();
  return in.precision == DType::BF16 && head_dim % 16 == 0 && head_dim >= 16 && head_dim <= 64;
}

int64_t cpu_attention_scratch_floats(const PlanInputs& in) {
  const int64_t floats = in.query_tile * in.max_seq_len;
  if (!cpu_bf16_activations(in)) return floats;
  return std::max(floats, in.config.head_dim() * ((in.max_seq_len + 15) / 16 * 16));
}

PlanRules cpu_plan_rules(const PlanInputs& in) {
  constexpr uint64_t kF32 = 4;
  PlanRules r;
  r.alignment = 64;
  r.activation = cpu_bf16_activations(in) ? DType::BF16 : DType::F32;
  r.gemm_operand = in.precision == DType::BF16 ? DType::BF16 : DType::F32;
  r.gemm_row_chunks = true;
  const DType p = in.precision;
  r.weight_type = [p](const WeightSpec& s) { return cpu_weight_dtype(s, p); };
  r.weight_extra_bytes = [p](const WeightSpec& s) {
    // int8: each output channel's scale and scaled sum (CpuPackedWeights).
    return s.role == WeightRole::kEncoderLinear && p == DType::I8 ? 2 * static_cast<uint64_t>(s.rows) * kF32 : 0;
  };
  r.workspaces = [in](MemoryPlan& plan, ArenaLayout& arena) {
    const int64_t t = plan.rows, ffn = in.config.intermediate_size;
    const int64_t per_thread = cpu_attention_scratch_floats(in);
    plan.attention_scratch_offset =
        arena.add(fmt::format("attention scratch ({} threads x {} query rows)", in.threads, in.query_tile),
                  fmt::format("[{}, {}] f32", static_cast<int64_t>(in.threads) * per_thread / in.max_seq_len,
                              in.max_seq_len),
                  static_cast<uint64_t>(in.threads) * static_cast<uint64_t>(per_thread) * kF32);
    plan.library_workspace_offset =
        arena.add("GEMM library workspace (oneDNN scratchpad)", "bytes", in.library_workspace_bytes);
    const DType p = in.precision;
    if (p == DType::F32 || cpu_bf16_activations(in)) return;  // bf16 activations: every input is bf16
    // The widest float32 GEMM input: the FFN's with int8; with bf16 the FFN's arrives in
    // bf16 (gemm_operand) and the widest is hidden. GEMM chunks may read 63 rows past t.
    const uint64_t element = dtype_size(p);
    const int64_t input_rows = t + kRowGranularity;
    const int64_t widest = p == DType::BF16 ? in.config.hidden_size : ffn;
    plan.gemm_input_bytes = static_cast<uint64_t>(input_rows) * static_cast<uint64_t>(widest) * element;
    plan.gemm_input_offset = arena.add(fmt::format("GEMM inputs ({})", precision_name(p)),
                                       fmt::format("[{}, {}] {}", input_rows, widest, precision_name(p)),
                                       plan.gemm_input_bytes);
    plan.bytes_per_batch_token += static_cast<uint64_t>(widest) * element;
    if (p == DType::I8) {
      plan.row_scales_offset = arena.add("int8 row scales", fmt::format("[{}] f32", input_rows),
                                         static_cast<uint64_t>(input_rows) * kF32);
      plan.row_minima_offset = arena.add("int8 row minima", fmt::format("[{}] f32", input_rows),
                                         static_cast<uint64_t>(input_rows) * kF32);
      plan.bytes_per_batch_token += 2 * kF32;
      // The residual GEMMs' accumulators: [t, hidden] of the qkv buffer, dead while they run.
      plan.int8_accumulator_offset = plan.buffer("qkv");
    }
  };
  r.totals = [in](MemoryPlan& plan) {
    plan.total_bytes = plan.weight_bytes + static_cast<uint64_t>(in.replicas) * plan.arena_bytes + plan.queue_bytes +
                       plan.output_bytes + plan.result_buffer_bytes;
  };
  return r;
}

}  // namespace m3
