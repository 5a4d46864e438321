// m3bench-workload: one benchmark run of m3embed on a fixed workload, for bench/peers.py.
// Loads a model through the Embedder (plan, arena, warm-up: timed apart), then encodes a
// JSON file of token-id lists as one request (dense + sparse + ColBERT, as FlagEmbedding's
// encode with all three) `--warmup` times untimed and `--repeat` times timed, and reports
// tokens/s, load time and resident memory as JSON. `--outputs` dumps the last run's
// outputs (dense, lexical weights, ColBERT) for bench/fidelity.py.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "m3/core/error.h"
#include "m3/core/precision.h"
#include "m3/core/process_memory.h"
#include "m3/memory/memory_plan.h"
#include "m3/runtime/device_selection.h"
#include "m3/runtime/embedder.h"
#include "device_memory.h"

namespace {

struct Options {
  std::string model, ids, json_out, outputs, dtype = "fp32", device = "cpu";
  int threads = 0, repeat = 3, warmup = 1;
  double budget_s = 0;
  int64_t max_batch_tokens = 16384, max_seq_len = 0;
  bool no_sparse = false, no_colbert = false;
};

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

uint64_t ru_maxrss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;  // kilobytes on Linux
}

std::vector<std::vector<int32_t>> read_ids(const std::string& path) {
  std::ifstream in(path);
  if (!in) m3::fail("cannot open --ids file {}", path);
  nlohmann::json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    m3::fail("{}: not JSON: {}", path, e.what());
  }
  if (!j.is_array() || j.empty()) m3::fail("{}: expected a non-empty JSON list of token-id lists", path);
  std::vector<std::vector<int32_t>> out;
  out.reserve(j.size());
  for (size_t i = 0; i < j.size(); ++i) {
    if (!j[i].is_array() || j[i].empty()) m3::fail("{}: item {} is not a non-empty list of ids", path, i);
    out.push_back(j[i].get<std::vector<int32_t>>());
  }
  return out;
}

// A float32 .npy file (format 1.0) of the given shape.
void write_npy(const std::string& path, const std::vector<float>& data, const std::vector<size_t>& shape) {
  std::string dims;
  for (size_t d : shape) dims += fmt::format("{}, ", d);
  if (shape.size() > 1) dims.resize(dims.size() - 2);
  std::string header = fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims);
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  if (!out) m3::fail("cannot write {}", path);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(reinterpret_cast<const char*>(&len), 2);
  out << header;
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
  if (!out) m3::fail("cannot write {}", path);
}

// OUT (JSON): lexical weights, ColBERT row counts, token counts and the names of two .npy
// files next to it: OUT-stem.dense.npy [n, hidden] and OUT-stem.colbert.npy [sum rows, hidden].
void write_outputs(const std::string& path, const std::vector<m3::M3Output>& outputs, size_t hidden) {
  std::string stem = path;
  if (stem.size() > 5 && stem.ends_with(".json")) stem.resize(stem.size() - 5);
  const std::string dense_path = stem + ".dense.npy", colbert_path = stem + ".colbert.npy";
  std::vector<float> dense, colbert;
  nlohmann::json lexical = nlohmann::json::array(), rows = nlohmann::json::array(),
                 tokens = nlohmann::json::array();
  size_t total_rows = 0;
  for (const auto& o : outputs) {
    if (!o.dense.empty()) dense.insert(dense.end(), o.dense.begin(), o.dense.end());
    colbert.insert(colbert.end(), o.colbert.begin(), o.colbert.end());
    total_rows += static_cast<size_t>(o.colbert_rows);
    rows.push_back(o.colbert_rows);
    tokens.push_back(o.tokens);
    nlohmann::json lw = nlohmann::json::object();
    for (const auto& [id, w] : o.lexical) lw[std::to_string(id)] = w;
    lexical.push_back(std::move(lw));
  }
  write_npy(dense_path, dense, {dense.size() / hidden, hidden});
  write_npy(colbert_path, colbert, {total_rows, hidden});
  auto file_name = [](const std::string& p) { return std::filesystem::path(p).filename().string(); };
  nlohmann::json j = {{"texts", outputs.size()},
                      {"hidden", hidden},
                      {"dense_npy", file_name(dense_path)},
                      {"colbert_npy", file_name(colbert_path)},
                      {"colbert_rows", rows},
                      {"tokens", tokens},
                      {"lexical_weights", lexical}};
  std::ofstream(path) << j.dump() << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"m3bench-workload: tokens/s and resident memory of m3embed on one workload (bench/peers.py)"};
  app.add_option("--model", o.model, "Model directory")->required();
  app.add_option("--ids", o.ids, "JSON file: a list of token-id lists, sent as one request")->required();
  app.add_option("--dtype", o.dtype, "What the encoder GEMMs compute in: fp32, bf16, fp16 (CUDA), int8 (CPU)")
      ->capture_default_str();
  app.add_option("--device", o.device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  app.add_option("--threads", o.threads, "Threads (0: all cores)")->capture_default_str();
  app.add_option("--max-batch-tokens", o.max_batch_tokens, "Tokens per forward pass")->capture_default_str();
  app.add_option("--max-seq-len", o.max_seq_len, "Longest sequence (0: the model's limit)")->capture_default_str();
  app.add_option("--repeat", o.repeat, "Timed runs of the whole workload")->capture_default_str();
  app.add_option("--warmup", o.warmup, "Untimed runs before them (after the Embedder's own warm-up)")
      ->capture_default_str();
  app.add_option("--budget-s", o.budget_s,
                 "Start no further timed run once the time since start plus the last run would pass this "
                 "(0: no limit; the first timed run always happens)");
  app.add_flag("--no-sparse", o.no_sparse, "Do not compute lexical weights");
  app.add_flag("--no-colbert", o.no_colbert, "Do not compute ColBERT vectors");
  app.add_option("--json", o.json_out, "Write the report here (default: stdout)");
  app.add_option("--outputs", o.outputs,
                 "Dump the last run's outputs: FILE.json (lexical weights, row counts) plus "
                 "FILE.dense.npy and FILE.colbert.npy (float32)");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_default_logger(spdlog::stderr_color_mt("workload"));
  spdlog::set_level(spdlog::level::warn);
  if (const char* level = std::getenv("M3_LOG_LEVEL")) spdlog::set_level(spdlog::level::from_str(level));

  try {
    if (o.repeat < 1) m3::fail("--repeat must be at least 1");
    const auto sequences = read_ids(o.ids);
    int64_t tokens = 0, longest = 0;
    for (const auto& s : sequences) {
      tokens += static_cast<int64_t>(s.size());
      longest = std::max<int64_t>(longest, static_cast<int64_t>(s.size()));
    }

    const auto process_start = Clock::now();
    const uint64_t rss_start = m3::current_rss_bytes();
    m3::EmbedderOptions options;
    options.threads = o.threads;
    options.max_batch_tokens = o.max_batch_tokens;
    options.max_seq_len = o.max_seq_len;
    options.precision = m3::parse_precision(o.dtype);
    options.devices = m3::select_devices(o.device, "");
    const auto load_start = Clock::now();
    auto embedder = m3::Embedder::load(o.model, options);
    const double load_seconds = seconds_since(load_start);
    const uint64_t rss_after_load = m3::current_rss_bytes();
    const uint64_t peak_load = m3::peak_rss_bytes();
    const auto& plan = embedder->plan();
    if (longest > embedder->max_seq_len())
      m3::fail("the workload has a {}-token sequence; the model's limit is {}", longest, embedder->max_seq_len());
    const m3::OutputRequest request{true, !o.no_sparse, !o.no_colbert};
    embedder->check(request);

    const auto warm_start = Clock::now();
    std::vector<m3::M3Output> outputs;
    for (int i = 0; i < o.warmup; ++i) outputs = embedder->encode(sequences, request);
    const double warmup_seconds = seconds_since(warm_start);
    const uint64_t rss_after_warmup = m3::current_rss_bytes();

    m3::reset_peak_rss();
    std::vector<double> seconds;
    for (int i = 0; i < o.repeat; ++i) {
      if (i > 0 && o.budget_s > 0 && seconds_since(process_start) + seconds.back() > o.budget_s) {
        spdlog::warn("budget of {:.0f} s reached: {} of {} timed runs", o.budget_s, i, o.repeat);
        break;
      }
      const auto t = Clock::now();
      outputs = embedder->encode(sequences, request);
      seconds.push_back(seconds_since(t));
      spdlog::info("run {}: {:.3f} s, {:.0f} tokens/s", i + 1, seconds.back(), double(tokens) / seconds.back());
    }
    const uint64_t peak_runs = m3::peak_rss_bytes();
    std::vector<double> sorted = seconds;
    std::sort(sorted.begin(), sorted.end());
    const size_t n = sorted.size();
    const double median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
    std::vector<double> tps;
    for (double s : seconds) tps.push_back(double(tokens) / s);

    if (!o.outputs.empty()) write_outputs(o.outputs, outputs, static_cast<size_t>(embedder->config().hidden_size));

    const uint64_t ru_peak = ru_maxrss_bytes();
    nlohmann::json report = {
        {"engine", "m3embed"},
        {"model", o.model},
        {"dtype", std::string(m3::precision_name(plan.inputs.precision))},  // after any fallback to fp32
        {"dtype_requested", std::string(m3::precision_name(options.precision))},
        {"backend", embedder->replica(0).backend_name()},
        {"threads", o.threads},
        {"max_batch_tokens", plan.inputs.max_batch_tokens},
        {"max_seq_len", embedder->max_seq_len()},
        {"outputs", {{"dense", request.dense}, {"sparse", request.sparse}, {"colbert", request.colbert}}},
        {"texts", sequences.size()},
        {"tokens", tokens},
        {"padded_tokens", tokens},  // packed batches: no padding
        {"repeat", o.repeat},
        {"runs", seconds.size()},
        {"warmup", o.warmup},
        {"seconds", seconds},
        {"median_seconds", median},
        {"tokens_per_second", double(tokens) / median},
        {"tokens_per_second_runs", tps},
        {"load_seconds", load_seconds},
        {"warmup_seconds", warmup_seconds},
        {"rss_before_load_bytes", rss_start},
        {"rss_after_load_bytes", rss_after_load},
        {"rss_after_warmup_bytes", rss_after_warmup},
        {"peak_rss_load_bytes", peak_load},
        {"peak_rss_runs_bytes", peak_runs},
        {"peak_rss_bytes", std::max(ru_peak, std::max(peak_load, peak_runs))},
        {"ru_maxrss_bytes", ru_peak},
        {"plan_total_bytes", plan.total_bytes},
        {"plan_weight_bytes", plan.weight_bytes},
        {"plan_arena_bytes", plan.arena_bytes},
        {"device", embedder->replica(0).device_name()},
        // CUDA: used_now after the timed runs; equal to used_after_warmup when nothing grew.
        {"device_memory", m3::bench::device_memory_json(*embedder)},
    };
    const std::string text = report.dump(2);
    if (o.json_out.empty()) {
      std::cout << text << "\n";
    } else {
      std::ofstream out(o.json_out);
      out << text << "\n";
      if (!out) m3::fail("cannot write {}", o.json_out);
    }
    fmt::print(stderr, "m3bench-workload: {} texts, {} tokens, {:.0f} tokens/s (median of {}), load {:.1f} s, peak RSS {}\n",
               sequences.size(), tokens, double(tokens) / median, n, load_seconds,
               m3::format_bytes(std::max(ru_peak, peak_runs)));
  } catch (const std::exception& e) {
    fmt::print(stderr, "m3bench-workload: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
