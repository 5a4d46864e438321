// The buffers the XLM-R graph with BGE-M3's heads computes in, declared once: the memory
// plan lays them out (with each backend's element types and alignment) and the graph
// (graph/xlmr_encoder.h, graph/m3_heads.h) finds them there by name (and pipeline slot).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "m3/model/model_config.h"

namespace m3 {

enum class BufferType {
  kF32,         // always float32 (the residual stream, the heads' outputs)
  kActivation,  // a GEMM input or output between ops: the backend's activation type
  // Written by one GEMM and read by the next only (the FFN's intermediate): the backend's
  // GEMM operand type, which may be narrower than its activations (CPU bf16: no other op
  // reads it, and the next GEMM would round it to bf16 anyway).
  kGemmOperand,
};

enum class BufferRows {
  kTokens,     // one row per token of a batch (the plan's rows)
  kSequences,  // one row per sequence: at most rows / 2 (every sequence has <s> and </s>)
};

struct BufferSpec {
  std::string name;   // what the graph looks it up by: "hidden", "qkv", ...
  // Its line in `m3embed plan`. A buffer others are declared inside names them after " / "
  // ("qkv / per-id sparse maxima"); the plan drops that part when none of them lives there.
  std::string label;
  int64_t cols = 0;
  BufferType type = BufferType::kF32;
  BufferRows rows = BufferRows::kTokens;
  // The same memory as this buffer when the two have the same element type (the hidden
  // state's GEMM-input copy is the hidden state itself where activations are float32).
  std::string alias_of;
  // Lives inside this buffer, which is dead by the time it is written (the heads run
  // after the last layer): placed after the earlier ones inside it, which grows to fit.
  std::string inside;
  // The host copies it out after the batch (Backend::fetch: the heads' outputs). Where the
  // backend's plan rules ask for it (CUDA, PlanRules::output_copies), such a buffer gets
  // memory of its own, one copy per pipeline slot, instead of living `inside` another.
  bool output = false;
};

std::vector<BufferSpec> xlmr_m3_buffers(const ModelConfig& config, bool sparse_head, bool colbert_head);

}  // namespace m3
