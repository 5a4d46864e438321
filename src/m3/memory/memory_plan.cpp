#include "m3/memory/memory_plan.h"

#include <cctype>
#include <cmath>

#include <fmt/format.h>

#include "m3/core/error.h"

namespace m3 {
namespace {

constexpr uint64_t kAlignment = 64;
constexpr uint64_t kF32 = 4;

uint64_t align_up(uint64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

std::string shape(std::initializer_list<int64_t> dims) {
  std::string s = "[";
  for (auto it = dims.begin(); it != dims.end(); ++it) s += (it == dims.begin() ? "" : ", ") + std::to_string(*it);
  return s + "] f32";
}

// A Linear layer: weight [out, in] and bias [out], `copies` times (once per layer).
// bf16 weights take 2 bytes, int8 1 byte plus a float scale per output channel; the
// bias stays float32.
void add_linear(MemoryPlan& plan, std::string name, int64_t out, int64_t in, int64_t copies = 1,
                Precision precision = Precision::kFp32) {
  const uint64_t weight_bytes = precision == Precision::kFp32 ? kF32 : precision == Precision::kBf16 ? 2 : 1;
  const uint64_t scales = precision == Precision::kInt8 ? static_cast<uint64_t>(out) * kF32 : 0;
  const uint64_t bytes = (static_cast<uint64_t>(out * in) * weight_bytes + scales + static_cast<uint64_t>(out) * kF32) *
                         static_cast<uint64_t>(copies);
  std::string s = precision == Precision::kFp32
                      ? fmt::format("[{}, {}] + [{}] f32", out, in, out)
                      : fmt::format("[{}, {}] {}{} + [{}] f32", out, in, precision_name(precision),
                                    precision == Precision::kInt8 ? fmt::format(" + [{}] scales", out) : "", out);
  if (copies > 1) s = fmt::format("{} x ({})", copies, s);
  plan.weights.push_back({std::move(name), std::move(s), bytes, 0});
  plan.weight_bytes += bytes;
}

void add_weight(MemoryPlan& plan, std::string name, std::initializer_list<int64_t> dims, int64_t copies = 1) {
  uint64_t elements = 1;
  for (int64_t d : dims) elements *= static_cast<uint64_t>(d);
  const uint64_t bytes = elements * kF32 * static_cast<uint64_t>(copies);
  std::string s = shape(dims);
  if (copies > 1) s = fmt::format("{} x {}", copies, s);
  plan.weights.push_back({std::move(name), std::move(s), bytes, 0});
  plan.weight_bytes += bytes;
}

uint64_t add_buffer(MemoryPlan& plan, std::string name, std::string shape_text, uint64_t bytes) {
  const uint64_t offset = plan.arena_bytes;
  plan.arena.push_back({std::move(name), std::move(shape_text), bytes, offset});
  plan.arena_bytes += align_up(bytes);
  return offset;
}

}  // namespace

void check_plan_inputs(const PlanInputs& in) {
  const auto& c = in.config;
  if (in.max_seq_len < 2 || in.max_seq_len > c.max_tokens()) {
    fail("max sequence length {} is outside 2..{} (the model's positions)", in.max_seq_len, c.max_tokens());
  }
  if (in.max_batch_tokens < in.max_seq_len) {
    fail("max batch tokens {} is less than the max sequence length {}", in.max_batch_tokens, in.max_seq_len);
  }
  if (in.threads < 1 || in.replicas < 1 || in.query_tile < 1) fail("threads, replicas and query tile must be >= 1");
}

MemoryPlan plan_memory(const PlanInputs& in) {
  if (in.device == DeviceKind::kCuda) return plan_cuda_memory(in);
  check_plan_inputs(in);
  const auto& c = in.config;
  MemoryPlan plan;
  plan.inputs = in;
  const int64_t h = c.hidden_size, ffn = c.intermediate_size, layers = c.num_layers;
  add_weight(plan, "embeddings.word_embeddings", {c.vocab_size, h});
  add_weight(plan, "embeddings.position_embeddings", {c.max_position_embeddings, h});
  add_weight(plan, "embeddings.token_type_embeddings[0]", {h});
  add_weight(plan, "embeddings.LayerNorm", {2, h});
  const Precision p = in.precision;
  add_linear(plan, "encoder.layer.*.attention.self.{query,key,value} (stacked)", 3 * h, h, layers, p);
  add_linear(plan, "encoder.layer.*.attention.output.dense", h, h, layers, p);
  add_linear(plan, "encoder.layer.*.intermediate.dense", ffn, h, layers, p);
  add_linear(plan, "encoder.layer.*.output.dense", h, ffn, layers, p);
  add_weight(plan, "encoder.layer.*.{attention.output,output}.LayerNorm", {4, h}, layers);
  if (in.colbert_head) add_linear(plan, "colbert_linear", h, h);
  if (in.sparse_head) add_linear(plan, "sparse_linear", 1, h);

  // Any batch of up to max_batch_tokens rows covers at most this many rows in GEMM chunks.
  int64_t t = in.max_batch_tokens;
  for (int64_t rows = std::max<int64_t>(1, in.max_batch_tokens - kRowGranularity); rows <= in.max_batch_tokens; ++rows) {
    t = std::max(t, padded_rows(rows));
  }
  plan.rows = t;
  auto rows = [&](int64_t width) { return static_cast<uint64_t>(t) * static_cast<uint64_t>(width) * kF32; };
  plan.hidden_offset = add_buffer(plan, "hidden (residual stream)", shape({t, h}), rows(h));
  plan.qkv_offset = add_buffer(plan, "qkv", shape({t, 3 * h}), rows(3 * h));
  plan.context_offset = add_buffer(plan, "attention output", shape({t, h}), rows(h));
  // The FFN buffer is free after the last layer: the heads write their outputs there.
  const int64_t head_width = (in.colbert_head ? h : 0) + (in.sparse_head ? 1 : 0);
  const int64_t shared_width = std::max(ffn, head_width);
  plan.intermediate_offset =
      add_buffer(plan, "FFN intermediate / head outputs", shape({t, shared_width}), rows(shared_width));
  plan.colbert_offset = plan.intermediate_offset;
  plan.sparse_offset = plan.intermediate_offset + (in.colbert_head ? rows(h) : 0);
  const int64_t scratch_rows = static_cast<int64_t>(in.threads) * in.query_tile;
  plan.attention_scratch_offset =
      add_buffer(plan, fmt::format("attention scores ({} threads x {} query rows)", in.threads, in.query_tile),
                 shape({scratch_rows, in.max_seq_len}),
                 static_cast<uint64_t>(scratch_rows) * static_cast<uint64_t>(in.max_seq_len) * kF32);
  plan.library_workspace_offset =
      add_buffer(plan, "GEMM library workspace (oneDNN scratchpad)", "bytes", in.library_workspace_bytes);
  plan.bytes_per_batch_token = static_cast<uint64_t>(h + 3 * h + h + shared_width) * kF32;
  if (p != Precision::kFp32) {
    // The widest GEMM input is the FFN's; GEMM chunks may read up to 63 rows past t.
    const uint64_t element = p == Precision::kBf16 ? 2 : 1;
    const int64_t input_rows = t + kRowGranularity;
    plan.gemm_input_bytes = static_cast<uint64_t>(input_rows) * static_cast<uint64_t>(ffn) * element;
    plan.gemm_input_offset = add_buffer(plan, fmt::format("GEMM inputs ({})", precision_name(p)),
                                        fmt::format("[{}, {}] {}", input_rows, ffn, precision_name(p)),
                                        plan.gemm_input_bytes);
    plan.bytes_per_batch_token += static_cast<uint64_t>(ffn) * element;
    if (p == Precision::kInt8) {
      plan.row_scales_offset = add_buffer(plan, "int8 row scales", shape({input_rows}),
                                          static_cast<uint64_t>(input_rows) * kF32);
      plan.bytes_per_batch_token += kF32;
      plan.int8_accumulator_offset = plan.qkv_offset;  // [t, h] of the [t, 3h] qkv buffer
    }
  }
  plan.queue_tokens = in.max_queue_tokens > 0 ? in.max_queue_tokens : 16 * in.max_batch_tokens;
  if (plan.queue_tokens < in.max_seq_len) {
    fail("the request queue ({} tokens) must hold at least one max-length sequence ({})", plan.queue_tokens,
         in.max_seq_len);
  }
  plan.queue_bytes = static_cast<uint64_t>(plan.queue_tokens) * sizeof(int32_t);
  // Per output row: a ColBERT vector (hidden floats) or a share of the dense vectors
  // (at most rows / 2 sequences), plus a lexical (id, weight) pair.
  plan.output_bytes = 2 * static_cast<uint64_t>(in.replicas) * static_cast<uint64_t>(t) *
                      static_cast<uint64_t>(h + 2) * kF32;
  plan.result_buffer_bytes = output_memory_for(in, t);
  plan.total_bytes = plan.weight_bytes + static_cast<uint64_t>(in.replicas) * plan.arena_bytes + plan.queue_bytes +
                     plan.output_bytes + plan.result_buffer_bytes;
  return plan;
}

uint64_t default_output_memory(const PlanInputs& in, int64_t rows) {
  const auto h = static_cast<uint64_t>(in.config.hidden_size);
  const uint64_t batches = 2 * static_cast<uint64_t>(in.replicas) * static_cast<uint64_t>(rows) * (h + 2) * kF32;
  const uint64_t longest = 2 * response_bytes_for_floats(static_cast<uint64_t>(in.max_seq_len) * (h + 2));
  return std::max(batches, longest);
}

uint64_t output_memory_for(const PlanInputs& in, int64_t rows) {
  if (in.output_memory == 0) return default_output_memory(in, rows);
  // One max-length text with every output, as encode stores it (floats).
  const auto h = static_cast<uint64_t>(in.config.hidden_size);
  const uint64_t longest = static_cast<uint64_t>(in.max_seq_len) * (h + 2) * kF32 + h * kF32 + 4 * kAlignment;
  if (in.output_memory < longest) {
    fail("--output-memory {} cannot hold the results of one {}-token text ({}); raise it or lower the max "
         "sequence length", format_bytes(in.output_memory), in.max_seq_len, format_bytes(longest));
  }
  return in.output_memory;
}

int64_t max_batch_tokens_for_limit(PlanInputs inputs, uint64_t limit_bytes) {
  inputs.max_batch_tokens = inputs.max_seq_len;
  const MemoryPlan smallest = plan_memory(inputs);
  if (smallest.total_bytes > limit_bytes) {
    if (inputs.device == DeviceKind::kCuda) {
      fail("device memory limit {} is too small: one {}-token sequence needs {} per device ({} weights + {} "
           "arena and cuBLASLt workspace); raise the limit or lower the max sequence length",
           format_bytes(limit_bytes), inputs.max_seq_len, format_bytes(smallest.total_bytes),
           format_bytes(smallest.weight_bytes), format_bytes(smallest.total_bytes - smallest.weight_bytes));
    }
    fail("memory limit {} is too small: one {}-token sequence needs {} ({} weights + {} x {} arena + {} queue, "
         "outputs and output memory); raise the limit or lower the max sequence length",
         format_bytes(limit_bytes), inputs.max_seq_len, format_bytes(smallest.total_bytes),
         format_bytes(smallest.weight_bytes), inputs.replicas, format_bytes(smallest.arena_bytes),
         format_bytes(smallest.queue_bytes + smallest.output_bytes + smallest.result_buffer_bytes));
  }
  // The total grows with the tokens per pass: the largest multiple of 64 that fits.
  auto fits = [&](int64_t blocks) {
    inputs.max_batch_tokens = blocks * 64;
    return plan_memory(inputs).total_bytes <= limit_bytes;
  };
  int64_t low = (inputs.max_seq_len + 63) / 64;  // blocks; low - 1 fits (or is below max_seq_len)
  if (!fits(low)) return inputs.max_seq_len;
  int64_t high = low + 1;                         // the first block count known not to fit
  while (high < (int64_t{1} << 18) && fits(high)) {
    low = high;
    high *= 2;
  }
  while (high - low > 1) {
    const int64_t mid = low + (high - low) / 2;
    (fits(mid) ? low : high) = mid;
  }
  return low * 64;
}

std::string format_bytes(uint64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (bytes >= (uint64_t{1} << 30)) return fmt::format("{:.2f} GiB", b / (1 << 30));
  if (bytes >= (uint64_t{1} << 20)) return fmt::format("{:.2f} MiB", b / (1 << 20));
  if (bytes >= (uint64_t{1} << 10)) return fmt::format("{:.2f} KiB", b / (1 << 10));
  return fmt::format("{} B", bytes);
}

uint64_t parse_bytes(const std::string& text) {
  size_t pos = 0;
  double value = 0;
  try {
    value = std::stod(text, &pos);
  } catch (const std::exception&) {
    fail("\"{}\" is not a size (examples: 2147483648, 512MiB, 1.5GiB, 800MB)", text);
  }
  std::string unit;
  for (char ch : text.substr(pos)) {
    if (!std::isspace(static_cast<unsigned char>(ch))) unit += static_cast<char>(std::toupper(ch));
  }
  double scale = 0;
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit == "K" || unit == "KIB") scale = 1024.0;
  else if (unit == "M" || unit == "MIB") scale = 1024.0 * 1024;
  else if (unit == "G" || unit == "GIB") scale = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "TIB") scale = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "KB") scale = 1e3;
  else if (unit == "MB") scale = 1e6;
  else if (unit == "GB") scale = 1e9;
  else if (unit == "TB") scale = 1e12;
  else fail("\"{}\": unknown unit \"{}\" (use B, KiB, MiB, GiB, TiB, K, M, G, or KB, MB, GB)", text, unit);
  if (!(value > 0) || !std::isfinite(value)) fail("\"{}\" must be a positive size", text);
  return static_cast<uint64_t>(std::llround(value * scale));
}

}  // namespace m3
