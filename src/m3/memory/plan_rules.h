// PlanRules: a backend's part of the memory plan. The plan itself (memory_plan.cpp) is
// written once: the model's weight table, the buffers its graph declares, the host's
// queue and outputs. A backend kind says how it stores them: element types, alignment,
// whether GEMMs compute whole row chunks, its own workspaces and staging, and which
// totals a limit bounds. Pure C++, so `m3embed plan --device cuda` needs no GPU.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "m3/memory/memory_plan.h"

namespace m3 {

// Places buffers one after another in an arena, each at the rules' alignment.
class ArenaLayout {
 public:
  ArenaLayout(MemoryPlan& plan, uint64_t alignment) : plan_(plan), alignment_(alignment) {}
  uint64_t align(uint64_t n) const { return (n + alignment_ - 1) / alignment_ * alignment_; }
  // Appends a plan line; returns its offset.
  uint64_t add(std::string name, std::string shape, uint64_t bytes) {
    const uint64_t offset = end_;
    plan_.arena.push_back({std::move(name), std::move(shape), bytes, offset});
    end_ += align(bytes);
    return offset;
  }
  uint64_t end() const { return end_; }

 private:
  MemoryPlan& plan_;
  uint64_t alignment_;
  uint64_t end_ = 0;
};

struct PlanRules {
  uint64_t alignment = 64;         // of every arena buffer
  uint64_t weight_alignment = 1;   // of every weight tensor (a device upload aligns each)
  DType activation = DType::F32;   // the graph's activation buffers
  DType gemm_operand = DType::F32; // its buffers between two GEMMs (BufferType::kGemmOperand)
  bool gemm_row_chunks = false;    // GEMMs compute whole row chunks (gemm_row_blocks.h): pad rows
  // The graph's outputs (BufferSpec::output). 0: where the graph declares them, inside
  // buffers dead after the last layer (the CPU reads them there once the batch is done).
  // n > 0: each in memory of its own, n copies, one per pipeline slot (CUDA copies a
  // slot's outputs to the host while the next batch's layers compute).
  int output_copies = 0;
  std::function<DType(const WeightSpec&)> weight_type;
  std::function<uint64_t(const WeightSpec&)> weight_extra_bytes;  // beside the elements (int8 scales)
  // The backend's own arena buffers, after the graph's; adds their bytes per batch token.
  std::function<void(MemoryPlan&, ArenaLayout&)> workspaces;
  // Staging and the totals, once the common parts are sized.
  std::function<void(MemoryPlan&)> totals;
};

PlanRules cpu_plan_rules(const PlanInputs& inputs);
PlanRules cuda_plan_rules(const PlanInputs& inputs);

// Floats of attention scratch per CPU thread: its K (and V) of one head of the longest
// sequence, in the kernels' layouts (attention_kernels.h). query_tile x max_seq_len floats
// hold K transposed in float32 (fp32), or K and V in bf16 (bf16 and int8); with bf16
// activations, at least head_dim x max_seq_len rounded up to 16 keys, so every sequence
// takes the bf16 kernels.
int64_t cpu_attention_scratch_floats(const PlanInputs& inputs);

// Whether the CPU's activations between ops (hidden as GEMM input, QKV, attention output)
// are bf16: --dtype bf16 with a head size the bf16 attention kernels take (16, 32, 48, 64),
// which then read Q, K and V and write their output in bf16. Otherwise float32, and each
// low-precision GEMM rounds or quantizes its input itself.
bool cpu_bf16_activations(const PlanInputs& inputs);

// How each stores a weight tensor at --dtype `precision`.
DType cpu_weight_dtype(const WeightSpec& spec, DType precision);
DType cuda_weight_dtype(const WeightSpec& spec, DType precision);

}  // namespace m3
