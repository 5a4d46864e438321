// `m3embed plan`: the memory plan for a model and limits (weights, arena buffers,
// replicas, total), the max_batch_tokens a memory limit allows, and for a corpus its
// token lengths and what padded fixed-size batching would waste. Reads config.json (and
// the tokenizer for --corpus), never the weights.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "m3/backend/cpu/cpu_backend.h"
#include "m3/cli/commands.h"
#include "m3/cli/model_options.h"
#include "m3/cli/model_set.h"
#include "m3/core/error.h"
#include "m3/io/text_input.h"
#include "m3/memory/corpus_stats.h"
#include "m3/memory/memory_plan.h"
#include "m3/model/model_config.h"
#include "m3/runtime/embedder.h"
#include "m3/tokenizer/xlmr_tokenizer.h"

namespace m3::cli {
namespace {

struct PlanOptions {
  std::vector<std::string> models = {"BAAI/bge-m3"};
  int64_t max_seq_len = 0;  // 0: the model's limit
  int64_t max_batch_tokens = 16384;
  bool max_batch_tokens_given = false;
  std::string memory_limit;
  std::string output_memory;
  int threads = 0;  // 0: all available cores
  int replicas = 1;
  std::string dtype = "fp32";
  std::string device = "cpu";  // cpu | cuda | cuda:N (planned without a GPU)
  std::string devices;
  std::string corpus, format = "auto", field = "text";
  int64_t batch_size = 256;
  bool json = false;
};

struct CorpusReport {
  std::string path;
  int64_t truncated = 0;                   // texts longer than max_seq_len
  int64_t longest_before_truncation = 0;   // tokens
  CorpusStats stats;
};

struct LimitReport {
  uint64_t limit_bytes = 0;
  uint64_t minimum_bytes = 0;  // the least a limit must hold: max_batch_tokens = max_seq_len
};

struct Report {
  std::filesystem::path dir;
  int threads = 1;  // all replicas together
  MemoryPlan plan;
  std::optional<LimitReport> limit;
  std::optional<CorpusReport> corpus;
};

// ---- plain-text tables --------------------------------------------------------------

class Table {
 public:
  // `right`: which columns are right-aligned (numbers).
  explicit Table(std::vector<bool> right) : right_(std::move(right)) {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }

  std::string render(const std::string& indent = "  ") const {
    std::vector<size_t> width(right_.size(), 0);
    for (const auto& row : rows_) {
      for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
    }
    std::string out;
    for (const auto& row : rows_) {
      std::string line = indent;
      for (size_t c = 0; c < row.size(); ++c) {
        if (c > 0) line += "  ";
        const std::string pad(width[c] - row[c].size(), ' ');
        line += right_[c] ? pad + row[c] : row[c] + pad;
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      out += line + "\n";
    }
    return out;
  }

 private:
  std::vector<bool> right_;
  std::vector<std::vector<std::string>> rows_;
};

std::string percent(double fraction) { return fmt::format("{:.1f}%", 100.0 * fraction); }

std::string heads_text(const PlanInputs& in) {
  std::string s = "dense";
  if (in.sparse_head) s += ", sparse";
  if (in.colbert_head) s += ", colbert";
  return s;
}

// ---- the report ---------------------------------------------------------------------

std::string render_text(const Report& report) {
  const auto& [dir, threads, plan, limit, corpus] = report;
  const auto& in = plan.inputs;
  const auto& c = in.config;
  const bool cuda = in.device == DeviceKind::kCuda;
  std::string out = fmt::format("m3embed memory plan for {} ({}, {})\n\nInputs\n", dir.string(),
                                precision_name(in.precision), cuda ? "CUDA" : "CPU");
  Table inputs({false, false});
  inputs.add({"hidden size", std::to_string(c.hidden_size)});
  inputs.add({"layers", std::to_string(c.num_layers)});
  inputs.add({"attention heads", fmt::format("{} (head dim {})", c.num_heads, c.head_dim())});
  inputs.add({"FFN size", std::to_string(c.intermediate_size)});
  inputs.add({"vocabulary", std::to_string(c.vocab_size)});
  inputs.add({"positions", fmt::format("{} (sequences up to {} tokens)", c.max_position_embeddings, c.max_tokens())});
  inputs.add({"output heads", heads_text(in)});
  inputs.add({"max sequence length", std::to_string(in.max_seq_len)});
  inputs.add({"max batch tokens", std::to_string(in.max_batch_tokens) + (limit ? " (chosen for the memory limit)" : "")});
  if (!cuda) inputs.add({"threads", fmt::format("{} ({} per replica)", threads, in.threads)});
  inputs.add({"attention query tile", std::to_string(in.query_tile)});
  inputs.add({"replicas", cuda ? fmt::format("{} (one per device)", in.replicas) : std::to_string(in.replicas)});
  out += inputs.render();

  out += cuda ? "\nWeights (a copy on each device, in its one allocation; 256-byte aligned tensors)\n"
              : "\nWeights (shared by all replicas)\n";
  Table weights({false, false, true, true});
  weights.add({"tensor", "shape", "bytes", "size"});
  for (const auto& w : plan.weights) weights.add({w.name, w.shape, std::to_string(w.bytes), format_bytes(w.bytes)});
  weights.add({"total", "", std::to_string(plan.weight_bytes), format_bytes(plan.weight_bytes)});
  out += weights.render();

  out += cuda ? "\nArena (one per device, after its weights; 256-byte aligned offsets)\n"
              : "\nArena (one per replica; 64-byte aligned offsets)\n";
  Table arena({false, true, false, true, true});
  arena.add({"buffer", "offset", "shape", "bytes", "size"});
  for (const auto& a : plan.arena) {
    arena.add({a.name, std::to_string(a.offset), a.shape, std::to_string(a.bytes), format_bytes(a.bytes)});
  }
  arena.add({"total per replica", "", "", std::to_string(plan.arena_bytes), format_bytes(plan.arena_bytes)});
  out += arena.render();
  out += fmt::format("  ({} bytes per batch token, plus {})\n", plan.bytes_per_batch_token,
                     cuda ? "the cuBLASLt workspace" : "the attention scratch and the GEMM workspace");

  if (cuda) {
    out += "\nTotal\n";
    Table total({false, true, true});
    total.add({"per device: one cudaMalloc (weights + arena)", std::to_string(plan.device_bytes),
               format_bytes(plan.device_bytes)});
    total.add({fmt::format("host: pinned staging ({} x {})", in.replicas, format_bytes(plan.pinned_bytes)),
               std::to_string(in.replicas * plan.pinned_bytes), format_bytes(in.replicas * plan.pinned_bytes)});
    total.add({fmt::format("host: request queue ({} tokens)", plan.queue_tokens), std::to_string(plan.queue_bytes),
               format_bytes(plan.queue_bytes)});
    total.add({fmt::format("host: outputs in flight (2 batches x {} replica(s))", in.replicas),
               std::to_string(plan.output_bytes), format_bytes(plan.output_bytes)});
    total.add({"host: results waiting to be written (--output-memory)", std::to_string(plan.result_buffer_bytes),
               format_bytes(plan.result_buffer_bytes)});
    total.add({"host total", std::to_string(plan.host_bytes), format_bytes(plan.host_bytes)});
    out += total.render();
    out += "  (the CUDA context and cuBLASLt's kernels come on top of the device figure; /info reports both)\n";
  } else {
  out += "\nTotal\n";
  Table total({false, true, true});
  const uint64_t arenas = static_cast<uint64_t>(in.replicas) * plan.arena_bytes;
  total.add({"weights", std::to_string(plan.weight_bytes), format_bytes(plan.weight_bytes)});
  total.add({fmt::format("arenas ({} x {})", in.replicas, format_bytes(plan.arena_bytes)), std::to_string(arenas),
             format_bytes(arenas)});
  total.add({fmt::format("request queue ({} tokens)", plan.queue_tokens), std::to_string(plan.queue_bytes),
             format_bytes(plan.queue_bytes)});
  total.add({fmt::format("outputs in flight (2 batches x {} replica(s))", in.replicas),
             std::to_string(plan.output_bytes), format_bytes(plan.output_bytes)});
  total.add({"results waiting to be written (--output-memory)", std::to_string(plan.result_buffer_bytes),
             format_bytes(plan.result_buffer_bytes)});
  total.add({"total", std::to_string(plan.total_bytes), format_bytes(plan.total_bytes)});
  out += total.render();
  }

  if (limit) {
    out += "\nMemory limit\n";
    Table t({false, false});
    t.add({"limit", fmt::format("{} ({} bytes)", format_bytes(limit->limit_bytes), limit->limit_bytes)});
    t.add({"minimum", fmt::format("{} (one {}-token sequence per pass)", format_bytes(limit->minimum_bytes),
                                  in.max_seq_len)});
    t.add({"chosen max batch tokens", std::to_string(in.max_batch_tokens)});
    t.add({"used", fmt::format("{} ({:.2f}% of the limit; {} left)", format_bytes(plan.total_bytes),
                               100.0 * static_cast<double>(plan.total_bytes) / static_cast<double>(limit->limit_bytes),
                               format_bytes(limit->limit_bytes - plan.total_bytes))});
    out += t.render();
  }

  if (corpus) {
    const auto& s = corpus->stats;
    const auto& l = s.lengths;
    out += fmt::format("\nCorpus {}: {} texts, {} tokens (after truncation to {})\n", corpus->path, l.count,
                       l.total_tokens, in.max_seq_len);
    out += fmt::format("  truncated at {} tokens: {} texts (longest before truncation: {} tokens)\n",
                       in.max_seq_len, corpus->truncated, corpus->longest_before_truncation);
    out += "\n  Tokens per text\n";
    Table p({true, true, true, true, true, true, true, true});
    const auto& q = l.percentiles;
    p.add({"min", "p50", "p90", "p95", "p99", "p99.9", "max", "mean"});
    p.add({std::to_string(l.min), std::to_string(q.p50), std::to_string(q.p90), std::to_string(q.p95),
           std::to_string(q.p99), std::to_string(q.p999), std::to_string(l.max), fmt::format("{:.1f}", l.mean)});
    out += p.render("    ");

    out += "\n  Length histogram\n";
    Table h({true, true, true, false});
    h.add({"tokens", "texts", "token sum", ""});
    int64_t most = 1;
    size_t first = l.histogram.size(), last = 0;
    for (size_t k = 0; k < l.histogram.size(); ++k) {
      if (l.histogram[k].texts == 0) continue;
      most = std::max(most, l.histogram[k].texts);
      first = std::min(first, k);
      last = k;
    }
    constexpr int64_t kBar = 40;
    for (size_t k = first; k <= last && k < l.histogram.size(); ++k) {
      const auto& b = l.histogram[k];
      const int64_t bar = b.texts == 0 ? 0 : std::max<int64_t>(1, b.texts * kBar / most);
      h.add({fmt::format("{}-{}", b.min_len, b.max_len), std::to_string(b.texts), std::to_string(b.tokens),
             std::string(static_cast<size_t>(bar), '#')});
    }
    out += h.render("    ");

    out += fmt::format("\n  FlagEmbedding: batches of {} texts, each padded to its longest\n",
                       s.reference_sorted.batch_size);
    Table r({false, true, true, true, true, true});
    r.add({"order", "batches", "real tokens", "padded tokens", "waste", "largest batch"});
    for (const auto* b : {&s.reference_sorted, &s.reference_unsorted}) {
      r.add({b == &s.reference_sorted ? "longest first (reference)" : "input order", std::to_string(b->batches),
             std::to_string(b->real_tokens), std::to_string(b->padded_tokens), percent(b->waste_fraction()),
             std::to_string(b->largest_batch_tokens)});
    }
    out += r.render("    ");
    out += fmt::format("\n  m3embed: packed longest first, at most {} tokens per pass, no padding\n",
                       s.m3embed.max_batch_tokens);
    Table m({false, false});
    m.add({"passes", fmt::format("{} (the reference runs {} batches)", s.m3embed.passes, s.reference_sorted.batches)});
    m.add({"tokens computed", fmt::format("{} (the reference computes {})", s.m3embed.tokens,
                                          s.reference_sorted.padded_tokens)});
    m.add({"pass fill", percent(s.m3embed.fill_fraction())});
    out += m.render("    ");
  }
  return out;
}

nlohmann::ordered_json batching_json(const PaddedBatching& b) {
  return {{"batches", b.batches},
          {"real_tokens", b.real_tokens},
          {"padded_tokens", b.padded_tokens},
          {"largest_batch_tokens", b.largest_batch_tokens},
          {"waste_fraction", b.waste_fraction()}};
}

nlohmann::ordered_json render_json(const Report& report) {
  const auto& [dir, threads, plan, limit, corpus] = report;
  using json = nlohmann::ordered_json;
  const auto& in = plan.inputs;
  const auto& c = in.config;
  json heads = json::array({"dense"});
  if (in.sparse_head) heads.push_back("sparse");
  if (in.colbert_head) heads.push_back("colbert");

  json j;
  j["model"] = {{"path", dir.string()},
                {"hidden_size", c.hidden_size},
                {"num_layers", c.num_layers},
                {"num_heads", c.num_heads},
                {"intermediate_size", c.intermediate_size},
                {"vocab_size", c.vocab_size},
                {"max_position_embeddings", c.max_position_embeddings},
                {"max_tokens", c.max_tokens()},
                {"heads", heads}};
  j["limits"] = {{"dtype", std::string(precision_name(in.precision))},
                 {"device", in.device == DeviceKind::kCuda ? "cuda" : "cpu"},
                 {"max_seq_len", in.max_seq_len},
                 {"max_batch_tokens", in.max_batch_tokens},
                 {"threads", threads},
                 {"threads_per_replica", in.threads},
                 {"query_tile", in.query_tile},
                 {"replicas", in.replicas}};
  json weights = json::array();
  for (const auto& w : plan.weights) weights.push_back({{"name", w.name}, {"shape", w.shape}, {"bytes", w.bytes}});
  j["weights"] = {{"items", weights}, {"total_bytes", plan.weight_bytes}};
  json arena = json::array();
  for (const auto& a : plan.arena) {
    arena.push_back({{"name", a.name}, {"shape", a.shape}, {"offset", a.offset}, {"bytes", a.bytes}});
  }
  j["arena"] = {{"items", arena},
                {"total_bytes", plan.arena_bytes},
                {"bytes_per_batch_token", plan.bytes_per_batch_token}};
  j["replicas"] = in.replicas;
  j["queue"] = {{"tokens", plan.queue_tokens}, {"bytes", plan.queue_bytes}};
  j["output_bytes"] = plan.output_bytes;
  j["result_buffer_bytes"] = plan.result_buffer_bytes;
  j["total_bytes"] = plan.total_bytes;
  if (in.device == DeviceKind::kCuda) {
    j["device_bytes"] = plan.device_bytes;
    j["pinned_bytes_per_replica"] = plan.pinned_bytes;
    j["host_bytes"] = plan.host_bytes;
  }

  j["memory_limit"] = nullptr;
  if (limit) {
    j["memory_limit"] = {{"limit_bytes", limit->limit_bytes},
                         {"minimum_bytes", limit->minimum_bytes},
                         {"max_batch_tokens", in.max_batch_tokens},
                         {"used_bytes", plan.total_bytes},
                         {"used_fraction", static_cast<double>(plan.total_bytes) /
                                               static_cast<double>(limit->limit_bytes)}};
  }

  j["corpus"] = nullptr;
  if (corpus) {
    const auto& s = corpus->stats;
    const auto& l = s.lengths;
    json histogram = json::array();
    for (const auto& b : l.histogram) {
      histogram.push_back({{"min", b.min_len}, {"max", b.max_len}, {"texts", b.texts}, {"tokens", b.tokens}});
    }
    j["corpus"] = {
        {"path", corpus->path},
        {"texts", l.count},
        {"tokens", l.total_tokens},
        {"max_seq_len", in.max_seq_len},
        {"truncated", corpus->truncated},
        {"longest_before_truncation", corpus->longest_before_truncation},
        {"min", l.min},
        {"max", l.max},
        {"mean", l.mean},
        {"percentiles",
         {{"p50", l.percentiles.p50},
          {"p90", l.percentiles.p90},
          {"p95", l.percentiles.p95},
          {"p99", l.percentiles.p99},
          {"p99.9", l.percentiles.p999}}},
        {"histogram", histogram},
        {"reference",
         {{"batch_size", s.reference_sorted.batch_size},
          {"sorted", batching_json(s.reference_sorted)},
          {"unsorted", batching_json(s.reference_unsorted)}}},
        {"m3embed",
         {{"max_batch_tokens", s.m3embed.max_batch_tokens},
          {"passes", s.m3embed.passes},
          {"tokens", s.m3embed.tokens},
          {"fill_fraction", s.m3embed.fill_fraction()}}}};
  }
  return j;
}

// ---- the command --------------------------------------------------------------------

CorpusReport measure_corpus(const std::filesystem::path& dir, const PlanOptions& o, int64_t max_seq_len,
                            int64_t max_batch_tokens) {
  const auto tokenizer = XlmrTokenizer::load(dir);
  CorpusReport report;
  report.path = o.corpus;
  std::vector<int64_t> lengths;
  for_each_text(o.corpus, parse_input_format(o.format), o.field, [&](std::string_view text, size_t) {
    const auto full = static_cast<int64_t>(tokenizer.encode(text).size());
    report.longest_before_truncation = std::max(report.longest_before_truncation, full);
    if (full > max_seq_len) ++report.truncated;
    lengths.push_back(std::min(full, max_seq_len));
  });
  report.stats = corpus_stats(lengths, o.batch_size, max_batch_tokens);
  return report;
}

// The options Embedder::load would get for this model from `plan`'s flags (threads split
// between several models as serve splits them).
EmbedderOptions plan_options(const PlanOptions& o, const std::filesystem::path& dir, const ModelConfig& config) {
  EmbedderOptions options;
  const int threads = o.threads > 0 ? o.threads : CpuBackend::default_threads();
  options.threads = std::max(1, threads / static_cast<int>(o.models.size()));
  options.replicas = o.replicas;
  options.precision = parse_precision(o.dtype);
  // Planned, not opened: `plan --device cuda` works on a machine without a GPU.
  options.devices = !o.devices.empty() ? parse_device_list(o.devices) : std::vector<Device>{parse_device(o.device)};
  options.max_seq_len = o.max_seq_len > 0 ? o.max_seq_len : default_max_seq_len(dir, config);
  // The default budget grows to one full sequence for models longer than 16384 tokens.
  options.max_batch_tokens =
      o.max_batch_tokens_given ? o.max_batch_tokens : std::max(o.max_batch_tokens, options.max_seq_len);
  if (!o.output_memory.empty()) options.output_memory = parse_bytes(o.output_memory);
  return options;
}

// One model's report; `batch_tokens` > 0 fixes its budget (several models sharing a limit).
Report plan_one(const PlanOptions& o, const std::filesystem::path& dir, int64_t batch_tokens) {
  // The plan Embedder::load makes with these options: what a replica allocates.
  const ModelConfig config = ModelConfig::load(dir);
  EmbedderOptions options = plan_options(o, dir, config);
  std::optional<LimitReport> limit;
  if (batch_tokens > 0) {
    options.max_batch_tokens = batch_tokens;
  } else if (!o.memory_limit.empty()) {
    limit = LimitReport{};
    limit->limit_bytes = options.memory_limit = parse_bytes(o.memory_limit);
  }
  const MemoryPlan plan = Embedder::plan_for(dir, config, options);
  const PlanInputs& in = plan.inputs;
  if (limit) {
    // What the limit is checked against: one full sequence per pass, with the workspace
    // sized for the largest budget a limit may choose.
    PlanInputs smallest = in;
    smallest.max_batch_tokens = in.max_seq_len;
    // (CUDA plans have no oneDNN workspace; asking oneDNN for a CUDA-only type would fail.)
    smallest.library_workspace_bytes = in.device == DeviceKind::kCuda ? 0
                                       : CpuBackend::library_workspace_bytes(plan.table, in.max_seq_len, in.precision,
                                                                             in.threads);
    limit->minimum_bytes = plan_memory(smallest).total_bytes;
  }
  Report report{dir, options.threads, plan, limit, std::nullopt};
  if (!o.corpus.empty()) report.corpus = measure_corpus(dir, o, in.max_seq_len, in.max_batch_tokens);
  return report;
}

void run_plan(const PlanOptions& o) {
  std::vector<ModelSpec> specs;
  std::vector<PlannedModel> models;
  for (const std::string& text : o.models) {
    specs.push_back(parse_model_spec(text));
    ModelOptions model;
    model.model = specs.back().source;
    PlannedModel m;
    m.dir = resolve_model_dir(model);
    m.config = ModelConfig::load(m.dir);
    m.options = plan_options(o, m.dir, m.config);
    models.push_back(std::move(m));
  }
  if (models.size() == 1) {
    const Report report = plan_one(o, models.front().dir, 0);
    const std::string out = o.json ? render_json(report).dump(2) + "\n" : render_text(report);
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);
    return;
  }
  // Several models in one process (`serve --model A --model B`): the threads split between
  // them, and a limit shared at one batch size, as serve does.
  int64_t tokens = 0;
  if (!o.memory_limit.empty()) tokens = shared_batch_tokens(models, parse_bytes(o.memory_limit));
  std::string text;
  nlohmann::ordered_json json;
  json["models"] = nlohmann::ordered_json::array();
  uint64_t total = 0;
  for (size_t i = 0; i < models.size(); ++i) {
    const Report report = plan_one(o, models[i].dir, tokens);
    total += report.plan.total_bytes;
    text += fmt::format("== model {} ({}) ==\n", specs[i].name, models[i].dir.string()) + render_text(report) + "\n";
    nlohmann::ordered_json one = render_json(report);
    one["name"] = specs[i].name;
    json["models"].push_back(std::move(one));
  }
  text += fmt::format("together: {} models, {} planned{}\n", models.size(), format_bytes(total),
                      o.memory_limit.empty() ? ""
                                             : fmt::format(" of --memory-limit {} ({} tokens per batch each)",
                                                           o.memory_limit, tokens));
  json["total_bytes"] = total;
  if (tokens > 0) json["shared_max_batch_tokens"] = tokens;
  const std::string out = o.json ? json.dump(2) + "\n" : text;
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
}

constexpr const char* kFooter =
    "Counts f32 weights (every tensor, heads whose .pt file is present) and one activation arena per replica "
    "(rows = max batch tokens rounded up to 64: hidden, qkv, attention output, FFN intermediate reused "
    "for the head outputs; attention scratch threads x 64 x max-seq-len floats; the oneDNN GEMM scratchpad); see docs/memory.md. Reads config.json (and sentencepiece.bpe.model with --corpus), "
    "never the weights.\n\n"
    "--json keys: model {path, hidden_size, num_layers, num_heads, intermediate_size, vocab_size, "
    "max_position_embeddings, max_tokens, heads[]}; limits {dtype, max_seq_len, max_batch_tokens, threads, "
    "threads_per_replica, query_tile, replicas}; weights {items[] {name, shape, bytes}, total_bytes}; arena {items[] {name, shape, "
    "offset, bytes}, total_bytes (per replica), bytes_per_batch_token}; replicas; queue {tokens, bytes}; output_bytes; result_buffer_bytes (--output-memory); total_bytes (outputs + "
    "result buffer + queue + weights + replicas x arena); memory_limit (null without --memory-limit) {limit_bytes, minimum_bytes, "
    "max_batch_tokens, used_bytes, used_fraction}; corpus (null without --corpus) {path, texts, tokens, "
    "max_seq_len, truncated, longest_before_truncation, min, max, mean, percentiles {p50, p90, p95, p99, "
    "p99.9}, histogram[] {min, max, texts, tokens}, reference {batch_size, sorted, unsorted: {batches, "
    "real_tokens, padded_tokens, largest_batch_tokens, waste_fraction}}, m3embed {max_batch_tokens, passes, "
    "tokens, fill_fraction}}. Token counts include <s> and </s>; percentiles are nearest-rank. With several "
    "--model: {models[] (each report above, plus name), total_bytes, shared_max_batch_tokens (with "
    "--memory-limit)}.";

}  // namespace

void add_plan_command(CLI::App& app) {
  auto o = std::make_shared<PlanOptions>();
  auto* cmd = app.add_subcommand(
      "plan", "Print the memory plan (weights, activation arena, total) for a model and limits, without loading "
              "weights; with --corpus, its token lengths and the padding fixed-size batches would waste");
  cmd->footer(kFooter);
  cmd->add_option("-m,--model", o->models,
                  "Model: a local snapshot directory (needs config.json; head files colbert_linear.pt / "
                  "sparse_linear.pt are counted when present; sentencepiece.bpe.model for --corpus) or a Hugging "
                  "Face hub id. Give it again for several models in one process, as `serve` runs them: their "
                  "plans side by side, the threads split and --memory-limit shared")
      ->envname("M3_MODEL")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->expected(1)
      ->capture_default_str();
  cmd->add_option("--max-seq-len", o->max_seq_len,
                  "Longest sequence in tokens, <s> and </s> included (default: the model's limit, 8192 for BGE-M3)")
      ->check(CLI::PositiveNumber);
  auto* tokens = cmd->add_option("--max-batch-tokens", o->max_batch_tokens,
                                 "Tokens per forward pass: the rows of every activation buffer")
                     ->check(CLI::PositiveNumber)
                     ->capture_default_str();
  auto* limit = cmd->add_option("--memory-limit", o->memory_limit,
                                "Memory for weights and all arenas (CUDA: for each device's allocation; e.g. 6GiB, 800MB, 2147483648): plans the largest "
                                "max batch tokens (a multiple of 64) that fits, or fails naming the minimum");
  tokens->excludes(limit);
  cmd->add_option("--output-memory", o->output_memory, kOutputMemoryHelp);
  cmd->add_option("--dtype", o->dtype, kDtypeHelp)
      ->check(CLI::IsMember({"fp32", "bf16", "fp16", "int8"}))
      ->capture_default_str();
  auto* device = cmd->add_option("--device", o->device,
                                 "Plan for: cpu, or cuda / cuda:N (one device's allocation; no GPU is needed to plan)")
                     ->capture_default_str();
  cmd->add_option("--devices", o->devices, "Plan one CUDA replica on each of these devices: cuda:0,cuda:1,...")
      ->excludes(device);
  cmd->add_option("-t,--threads", o->threads, "Threads in all, shared among the replicas; each has its own attention scratch (0: all cores)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--replicas", o->replicas, "Model replicas: they share the weights, each has its own arena")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  auto* corpus = cmd->add_option("--corpus", o->corpus,
                                 "Texts to measure (text lines or JSONL, - for standard input): token lengths, "
                                 "histogram, truncation, padding waste of the reference's batches, m3embed's passes");
  cmd->add_option("--format", o->format, "Corpus format: auto, text or jsonl")
      ->check(CLI::IsMember({"auto", "text", "jsonl"}))
      ->needs(corpus)
      ->capture_default_str();
  cmd->add_option("--field", o->field, "JSONL field holding the text")->needs(corpus)->capture_default_str();
  cmd->add_option("--batch-size", o->batch_size, "The reference's (FlagEmbedding's) batch size, for the waste figures")
      ->check(CLI::PositiveNumber)
      ->needs(corpus)
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "Print one JSON object (keys below) instead of tables");
  cmd->callback([o, tokens] {
    o->max_batch_tokens_given = tokens->count() > 0;
    run_plan(*o);
  });
}

}  // namespace m3::cli
