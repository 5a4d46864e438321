// The plan of a CUDA replica: everything one device holds, in one allocation, and the
// pinned host staging its copies go through. Pure C++ (no CUDA), so `m3embed plan
// --device cuda` and the unit tests work on machines without a GPU.
#include <algorithm>

#include <fmt/format.h>

#include "m3/core/error.h"
#include "m3/memory/memory_plan.h"

namespace m3 {
namespace {

// cudaMalloc returns 256-byte aligned memory; every tensor inside keeps that alignment.
constexpr uint64_t kDeviceAlignment = 256;
constexpr uint64_t kF32 = 4;

uint64_t align_device(uint64_t n) { return (n + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment; }

uint64_t element_bytes(Precision p) { return p == Precision::kFp32 ? 4 : 2; }

std::string type_name(Precision p) { return p == Precision::kFp32 ? "f32" : std::string(precision_name(p)); }

struct Builder {
  MemoryPlan& plan;
  uint64_t arena_end = 0;

  // `count` tensors of `elements` each (each aligned on its own, as the uploader places them).
  void weight(std::string name, std::string shape, uint64_t elements, uint64_t element, uint64_t count = 1) {
    const uint64_t bytes = align_device(elements * element) * count;
    plan.weights.push_back({std::move(name), std::move(shape), bytes, 0});
    plan.weight_bytes += bytes;
  }
  uint64_t buffer(std::string name, std::string shape, uint64_t bytes) {
    const uint64_t offset = arena_end;
    plan.arena.push_back({std::move(name), std::move(shape), bytes, offset});
    arena_end += align_device(bytes);
    return offset;
  }
};

}  // namespace

MemoryPlan plan_cuda_memory(const PlanInputs& in) {
  check_plan_inputs(in);
  if (in.precision == Precision::kInt8) fail("--dtype int8 is CPU only; on CUDA use fp16, bf16 or fp32");
  const auto& c = in.config;
  const Precision p = in.precision;
  const uint64_t e = element_bytes(p);
  const std::string t = type_name(p);
  const int64_t h = c.hidden_size, ffn = c.intermediate_size, layers = c.num_layers;
  const auto L = static_cast<uint64_t>(layers), H = static_cast<uint64_t>(h), F = static_cast<uint64_t>(ffn);

  MemoryPlan plan;
  plan.inputs = in;
  Builder b{plan};
  // Weights: linear weights in the GEMM type, embedding tables in float16 for both 16-bit
  // types (more mantissa than bfloat16, same bytes), biases and layer norms float32.
  const std::string embedding_type = p == Precision::kFp32 ? "f32" : "fp16";
  b.weight("embeddings.word_embeddings", fmt::format("[{}, {}] {}", c.vocab_size, h, embedding_type),
           static_cast<uint64_t>(c.vocab_size) * H, e);
  b.weight("embeddings.position_embeddings", fmt::format("[{}, {}] {}", c.max_position_embeddings, h, embedding_type),
           static_cast<uint64_t>(c.max_position_embeddings) * H, e);
  b.weight("embeddings.token_type_embeddings[0] + LayerNorm", fmt::format("3 x [{}] f32", h), H, kF32, 3);
  auto linear = [&](std::string name, uint64_t out, uint64_t inputs, uint64_t count, uint64_t element,
                    const std::string& type) {
    const std::string shape = fmt::format("[{}, {}] {} + [{}] f32", out, inputs, type, out);
    b.weight(name, count > 1 ? fmt::format("{} x ({})", count, shape) : shape, out * inputs, element, count);
    plan.weight_bytes += align_device(out * kF32) * count;  // the biases
    plan.weights.back().bytes += align_device(out * kF32) * count;
  };
  linear("encoder.layer.*.attention.self.{query,key,value} (stacked)", 3 * H, H, L, e, t);
  linear("encoder.layer.*.attention.output.dense", H, H, L, e, t);
  linear("encoder.layer.*.intermediate.dense", F, H, L, e, t);
  linear("encoder.layer.*.output.dense", H, F, L, e, t);
  b.weight("encoder.layer.*.{attention.output,output}.LayerNorm", fmt::format("{} x 4 x [{}] f32", layers, h), H,
           kF32, 4 * L);
  if (in.colbert_head) linear("colbert_linear", H, H, 1, e, t);
  if (in.sparse_head) linear("sparse_linear", 1, H, 1, kF32, "f32");

  // The arena: rows = max_batch_tokens exactly (cuBLASLt takes any row count).
  const int64_t rows = in.max_batch_tokens;
  const auto R = static_cast<uint64_t>(rows);
  plan.rows = rows;
  CudaLayout& l = plan.cuda;
  l.max_sequences = rows / 2;
  l.max_attention_tiles = (rows + in.query_tile - 1) / in.query_tile + l.max_sequences;
  const auto S = static_cast<uint64_t>(l.max_sequences);
  l.weights_offset = 0;
  l.weight_bytes = plan.weight_bytes;
  auto f32_shape = [](int64_t r, int64_t w) { return fmt::format("[{}, {}] f32", r, w); };
  auto t_shape = [&](int64_t r, int64_t w) { return fmt::format("[{}, {}] {}", r, w, t); };
  l.hidden_f32 = b.buffer("hidden (residual stream, f32)", f32_shape(rows, h), R * H * kF32);
  l.hidden_gemm = p == Precision::kFp32 ? l.hidden_f32
                                        : b.buffer(fmt::format("hidden as GEMM input ({})", t), t_shape(rows, h), R * H * e);
  l.qkv = b.buffer("qkv", t_shape(rows, 3 * h), R * 3 * H * e);
  l.context = b.buffer("attention output", t_shape(rows, h), R * H * e);
  l.projection = b.buffer("residual GEMM output / dense vectors (f32)", f32_shape(rows, h), R * H * kF32);
  l.dense = l.projection;
  // After the last layer the FFN buffer holds the head outputs: ColBERT rows, then the
  // sparse weights and their per-token-id maxima.
  const uint64_t head_bytes = R * (H + 2) * kF32;
  const uint64_t ffn_bytes = std::max(R * F * e, align_device(R * H * kF32) + 2 * align_device(R * kF32));
  l.intermediate = b.buffer(fmt::format("FFN intermediate / head outputs (ColBERT, sparse: {} B)", head_bytes),
                            t_shape(rows, ffn), ffn_bytes);
  l.colbert = l.intermediate;
  l.sparse = l.colbert + align_device(R * H * kF32);
  l.lexical = l.sparse + align_device(R * kF32);
  l.token_ids = b.buffer("token ids", fmt::format("[{}] i32", rows), R * 4);
  l.positions = b.buffer("positions", fmt::format("[{}] i32", rows), R * 4);
  l.cu_seqlens = b.buffer("sequence starts", fmt::format("[{}] i32", S + 1), (S + 1) * 4);
  l.attention_tiles = b.buffer(fmt::format("attention tiles ({} query rows each; scores stay in shared memory)", in.query_tile),
                               fmt::format("[{}, 2] i32", l.max_attention_tiles),
                               static_cast<uint64_t>(l.max_attention_tiles) * 2 * 4);
  l.workspace_bytes = in.cublas_workspace_bytes;
  l.workspace = b.buffer("cuBLASLt workspace", "bytes", l.workspace_bytes);
  plan.arena_bytes = b.arena_end;
  plan.bytes_per_batch_token = H * kF32 * 2 + (p == Precision::kFp32 ? 0 : H * e) + 4 * H * e +
                               std::max(F * e, (H + 2) * kF32) + 8;

  // Pinned host staging of one replica (inputs up, outputs down), two slots.
  uint64_t pinned = 0;
  auto stage = [&](uint64_t bytes) {
    const uint64_t offset = pinned;
    pinned += align_device(bytes);
    return offset;
  };
  l.staging_ids = stage(R * 4);
  l.staging_positions = stage(R * 4);
  l.staging_cu_seqlens = stage((S + 1) * 4);
  l.staging_tiles = stage(static_cast<uint64_t>(l.max_attention_tiles) * 2 * 4);
  l.staging_dense = stage(S * H * kF32);
  l.staging_lexical = stage(R * kF32);
  l.staging_colbert = stage(R * H * kF32);
  l.staging_slot_bytes = pinned;
  plan.pinned_bytes = 2 * pinned;

  plan.device_bytes = plan.weight_bytes + plan.arena_bytes;  // the arena includes the workspace
  plan.queue_tokens = in.max_queue_tokens > 0 ? in.max_queue_tokens : 16 * in.max_batch_tokens;
  if (plan.queue_tokens < in.max_seq_len) {
    fail("the request queue ({} tokens) must hold at least one max-length sequence ({})", plan.queue_tokens,
         in.max_seq_len);
  }
  plan.queue_bytes = static_cast<uint64_t>(plan.queue_tokens) * sizeof(int32_t);
  plan.output_bytes = 2 * static_cast<uint64_t>(in.replicas) * R * (H + 2) * kF32;
  plan.result_buffer_bytes = output_memory_for(in, rows);
  plan.host_bytes = plan.queue_bytes + plan.output_bytes + plan.result_buffer_bytes +
                    static_cast<uint64_t>(in.replicas) * plan.pinned_bytes;
  plan.total_bytes = plan.device_bytes;
  return plan;
}

}  // namespace m3
