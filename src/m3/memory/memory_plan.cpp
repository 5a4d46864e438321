#include "m3/memory/memory_plan.h"

#include <cctype>
#include <cmath>
#include <algorithm>
#include <map>
#include <set>

#include <fmt/format.h>

#include "m3/core/error.h"
#include "m3/memory/plan_rules.h"
#include "m3/model/graph_buffers.h"

namespace m3 {
namespace {

constexpr uint64_t kAlignment = 64;
constexpr uint64_t kF32 = 4;

std::string type_label(DType t) { return t == DType::F32 ? "f32" : std::string(precision_name(t)); }

// One plan line per group of tensors (the same tensor of every layer is one line).
void add_weights(MemoryPlan& plan, const PlanRules& rules) {
  std::vector<uint64_t> counts;
  for (const WeightSpec& spec : plan.table.specs) {
    const DType type = rules.weight_type(spec);
    const uint64_t extra = rules.weight_extra_bytes(spec);
    const uint64_t align = rules.weight_alignment;
    const uint64_t bytes = (spec.elements() * dtype_size(type) + extra + align - 1) / align * align;
    const std::string one =
        fmt::format("[{}, {}] {}{}", spec.rows, spec.cols, type_label(type), extra > 0 ? " + scales" : "");
    const std::string group = weight_group_name(spec.name);
    plan.weight_bytes += bytes;
    const auto it = std::find_if(plan.weights.begin(), plan.weights.end(), [&](const PlanItem& i) { return i.name == group; });
    if (it == plan.weights.end()) {
      plan.weights.push_back({group, one, bytes, 0});
      counts.push_back(1);
      continue;
    }
    const auto k = static_cast<size_t>(it - plan.weights.begin());
    it->bytes += bytes;
    it->shape = fmt::format("{} x {}", ++counts[k], one);
  }
}

// The graph's buffers: each at its own offset, or inside one that is dead by then (which
// grows to hold them), or the same memory as another of the same element type. Outputs
// get their own memory, one copy per pipeline slot, where the rules ask for it.
void add_graph_buffers(MemoryPlan& plan, const PlanRules& rules, ArenaLayout& arena,
                       const std::vector<BufferSpec>& specs) {
  const int64_t t = plan.rows;
  auto type_of = [&](const BufferSpec& b) {
    switch (b.type) {
      case BufferType::kF32: return DType::F32;
      case BufferType::kActivation: return rules.activation;
      case BufferType::kGemmOperand: return rules.gemm_operand;
    }
    return DType::F32;
  };
  auto rows_of = [&](const BufferSpec& b) { return b.rows == BufferRows::kTokens ? t : t / 2; };
  auto bytes_of = [&](const BufferSpec& b) {
    return static_cast<uint64_t>(rows_of(b)) * static_cast<uint64_t>(b.cols) * dtype_size(type_of(b));
  };
  auto shape_of = [&](const BufferSpec& b, int64_t cols) {
    return fmt::format("[{}, {}] {}", rows_of(b), cols, type_label(type_of(b)));
  };
  auto per_slot = [&](const BufferSpec& b) { return b.output && rules.output_copies > 0; };
  auto lives_inside = [&](const BufferSpec& b) { return !b.inside.empty() && !per_slot(b); };
  auto find = [&](const std::string& name) {
    for (const auto& b : specs) {
      if (b.name == name) return &b;
    }
    fail("internal: the graph declares no buffer \"{}\"", name);
  };
  // First the room each host buffer needs: its own, or what lives inside it, whichever is more.
  std::map<std::string, uint64_t> size, used;
  std::set<std::string> vacated;  // hosts whose every tenant got memory of its own
  for (const auto& b : specs) {
    if (!lives_inside(b)) size[b.name] = std::max(size[b.name], bytes_of(b));
    if (!b.inside.empty()) vacated.insert(b.inside);
  }
  for (const auto& b : specs) {
    if (!lives_inside(b)) continue;
    vacated.erase(b.inside);
    used[b.inside] += arena.align(bytes_of(b));
    size[b.inside] = std::max(size[b.inside], used[b.inside]);
  }
  used.clear();
  for (const auto& b : specs) {
    if (!b.alias_of.empty() && type_of(b) == type_of(*find(b.alias_of))) {
      plan.buffers[b.name] = plan.buffers.at(b.alias_of);
    } else if (per_slot(b)) {
      const int copies = rules.output_copies;
      const uint64_t stride = arena.align(bytes_of(b));
      const uint64_t offset = arena.add(fmt::format("{}, one per pipeline slot", b.label),
                                        fmt::format("{} x {}", copies, shape_of(b, b.cols)),
                                        stride * static_cast<uint64_t>(copies - 1) + bytes_of(b));
      plan.buffers[b.name] = {offset, stride, copies};
      plan.bytes_per_batch_token += static_cast<uint64_t>(copies) * bytes_of(b) / static_cast<uint64_t>(t);
    } else if (!b.inside.empty()) {
      plan.buffers[b.name] = {plan.buffer(b.inside) + used[b.inside]};
      used[b.inside] += arena.align(bytes_of(b));
    } else {
      // Its label names what was declared inside it only when that still lives there.
      const std::string own = vacated.count(b.name) ? b.label.substr(0, b.label.find(" / ")) : b.label;
      const std::string label = type_of(b) == DType::F32 ? own : fmt::format("{} ({})", own, type_label(type_of(b)));
      // A buffer grown for what lives inside it shows its grown width.
      const uint64_t row_bytes = static_cast<uint64_t>(rows_of(b)) * dtype_size(type_of(b));
      const int64_t cols = size[b.name] % row_bytes == 0 ? static_cast<int64_t>(size[b.name] / row_bytes) : b.cols;
      plan.buffers[b.name] = {arena.add(label, shape_of(b, cols), size[b.name])};
      if (b.rows == BufferRows::kTokens) plan.bytes_per_batch_token += size[b.name] / static_cast<uint64_t>(t);
    }
  }
}

}  // namespace

uint64_t MemoryPlan::buffer(std::string_view name, int slot) const {
  const auto it = buffers.find(name);
  if (it == buffers.end()) fail("internal: the memory plan has no buffer \"{}\"", name);
  const PlacedBuffer& b = it->second;
  if (b.copies == 1) return b.offset;  // every slot shares it
  if (slot < 0 || slot >= b.copies) fail("internal: buffer \"{}\" has no copy for pipeline slot {}", name, slot);
  return b.offset + static_cast<uint64_t>(slot) * b.slot_stride;
}

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
  check_plan_inputs(in);
  const PlanRules rules = in.device == DeviceKind::kCuda ? cuda_plan_rules(in) : cpu_plan_rules(in);
  const auto& c = in.config;
  MemoryPlan plan;
  plan.inputs = in;
  plan.activation = rules.activation;
  plan.gemm_operand = rules.gemm_operand;
  plan.table = xlmr_m3_weight_table(c, in.sparse_head, in.colbert_head);
  add_weights(plan, rules);

  // Rows of every token buffer: CPU GEMM chunks of any batch up to max_batch_tokens cover
  // at most this many (gemm_row_blocks.h); cuBLASLt takes the batch as it is.
  int64_t t = in.max_batch_tokens;
  if (rules.gemm_row_chunks) {
    for (int64_t r = std::max<int64_t>(1, in.max_batch_tokens - kRowGranularity); r <= in.max_batch_tokens; ++r) {
      t = std::max(t, padded_rows(r));
    }
  }
  plan.rows = t;
  ArenaLayout arena(plan, rules.alignment);
  add_graph_buffers(plan, rules, arena, xlmr_m3_buffers(c, in.sparse_head, in.colbert_head));
  rules.workspaces(plan, arena);
  plan.arena_bytes = arena.end();

  plan.queue_tokens = in.max_queue_tokens > 0 ? in.max_queue_tokens : 16 * in.max_batch_tokens;
  if (plan.queue_tokens < in.max_seq_len) {
    fail("the request queue ({} tokens) must hold at least one max-length sequence ({})", plan.queue_tokens,
         in.max_seq_len);
  }
  plan.queue_bytes = static_cast<uint64_t>(plan.queue_tokens) * sizeof(int32_t);
  // Per output row: a ColBERT vector (hidden floats) or a share of the dense vectors
  // (at most rows / 2 sequences), plus a lexical (id, weight) pair and a per-position
  // sparse weight (vLLM's token_classify).
  plan.output_bytes = 2 * static_cast<uint64_t>(in.replicas) * static_cast<uint64_t>(t) *
                      static_cast<uint64_t>(c.hidden_size + 3) * kF32;
  plan.result_buffer_bytes = output_memory_for(in, t);
  rules.totals(plan);
  return plan;
}

uint64_t default_output_memory(const PlanInputs& in, int64_t rows) {
  const auto h = static_cast<uint64_t>(in.config.hidden_size);
  const uint64_t batches = 2 * static_cast<uint64_t>(in.replicas) * static_cast<uint64_t>(rows) * (h + 3) * kF32;
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
