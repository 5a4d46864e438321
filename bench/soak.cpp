// m3bench-soak: the memory soak of the planned runtime. Loads a model through the
// same Embedder the CLI uses (plan, arena, warm-up, scheduler, replicas), then sends
// requests whose lengths are log-uniform in 1..max_seq_len from concurrent clients,
// sampling resident memory; reports growth after warm-up and measured peak vs the plan.
#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <random>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "m3/core/error.h"
#include "m3/core/process_memory.h"
#include "m3/memory/memory_plan.h"
#include "m3/runtime/device_selection.h"
#include "m3/runtime/embedder.h"
#include "device_memory.h"

namespace {

struct Options {
  std::string model, json_out, device = "cpu", dtype = "fp32";
  int requests = 2000, clients = 4, replicas = 1, threads = 0, max_texts = 1;
  int64_t max_batch_tokens = 16384, max_seq_len = 0;
  uint64_t seed = 1;
  double max_seconds = 0;
};

std::vector<int32_t> random_sequence(std::mt19937_64& rng, int64_t max_len, int32_t vocab) {
  // log-uniform in [1, max_len], then at least <s></s>
  std::uniform_real_distribution<double> u(0.0, std::log(double(max_len)));
  const int64_t len = std::clamp<int64_t>(std::llround(std::exp(u(rng))), 2, max_len);
  std::uniform_int_distribution<int32_t> token(4, vocab - 2);
  std::vector<int32_t> ids(len);
  ids.front() = 0;
  ids.back() = 2;
  for (int64_t i = 1; i + 1 < len; ++i) ids[i] = token(rng);
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"m3bench-soak: resident memory of m3embed under a long mixed-length load"};
  app.add_option("--model", o.model, "Model directory")->required();
  app.add_option("--requests", o.requests, "Requests to send")->capture_default_str();
  app.add_option("--texts-per-request", o.max_texts, "Texts per request: 1..N, uniform")->capture_default_str();
  app.add_option("--clients", o.clients, "Concurrent clients (closed loop)")->capture_default_str();
  app.add_option("--replicas", o.replicas, "Replicas")->capture_default_str();
  app.add_option("--threads", o.threads, "Threads in all (0: all cores)")->capture_default_str();
  app.add_option("--max-batch-tokens", o.max_batch_tokens, "Tokens per forward pass")->capture_default_str();
  app.add_option("--max-seq-len", o.max_seq_len, "Longest request (0: the model's limit)");
  app.add_option("--seed", o.seed, "Seed of the length mix")->capture_default_str();
  app.add_option("--max-seconds", o.max_seconds, "Stop sending after this long (0: no limit)");
  app.add_option("--device", o.device, "cpu, cuda, cuda:N or auto (CUDA: device memory is sampled too)")
      ->capture_default_str();
  app.add_option("--dtype", o.dtype, "fp32, bf16, fp16 (CUDA) or int8 (CPU)")->capture_default_str();
  app.add_option("--json", o.json_out, "Write the report here as JSON");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_default_logger(spdlog::stderr_color_mt("soak"));
  if (const char* level = std::getenv("M3_LOG_LEVEL")) spdlog::set_level(spdlog::level::from_str(level));

  try {
    const uint64_t rss_start = m3::current_rss_bytes();
    m3::EmbedderOptions options;
    options.threads = o.threads;
    options.replicas = o.replicas;
    options.max_batch_tokens = o.max_batch_tokens;
    options.max_seq_len = o.max_seq_len;
    options.devices = m3::select_devices(o.device, "");
    options.precision = m3::parse_precision(o.dtype);
    auto embedder = m3::Embedder::load(o.model, options);
    const auto& plan = embedder->plan();
    // CUDA: device memory in use (one device) after warm-up, and the most seen during the run.
    const bool cuda = plan.inputs.device == m3::DeviceKind::kCuda;
    const int device_index = cuda ? options.devices.front().index : 0;
    const uint64_t device_warm = cuda ? m3::bench::device_used_now(device_index) : 0;
    std::atomic<uint64_t> device_max{device_warm};
    const int64_t max_len = embedder->max_seq_len();
    const auto vocab = static_cast<int32_t>(embedder->config().vocab_size);
    const m3::OutputRequest outputs{true, plan.inputs.sparse_head, plan.inputs.colbert_head};

    const uint64_t rss_warm = m3::current_rss_bytes();
    const uint64_t peak_warmup = m3::peak_rss_bytes();
    m3::reset_peak_rss();
    std::atomic<uint64_t> rss_max{rss_warm};
    std::atomic<bool> running{true};
    std::thread sampler([&] {
      while (running) {
        const uint64_t rss = m3::current_rss_bytes();
        uint64_t seen = rss_max.load();
        while (rss > seen && !rss_max.compare_exchange_weak(seen, rss)) {
        }
        if (cuda) {
          const uint64_t used = m3::bench::device_used_now(device_index);
          uint64_t most = device_max.load();
          while (used > most && !device_max.compare_exchange_weak(most, used)) {
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });

    std::atomic<int> next{0};
    std::atomic<int64_t> tokens{0}, done{0};
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    std::vector<std::thread> clients;
    for (int c = 0; c < o.clients; ++c) {
      clients.emplace_back([&, c] {
        for (int r = next++; r < o.requests; r = next++) {
          if (o.max_seconds > 0 && elapsed() > o.max_seconds) break;
          std::mt19937_64 rng(o.seed * 1000003 + uint64_t(r));
          const int texts = std::uniform_int_distribution<int>(1, std::max(1, o.max_texts))(rng);
          std::vector<std::vector<int32_t>> sequences;
          int64_t n = 0;
          for (int t = 0; t < texts; ++t) {
            sequences.push_back(random_sequence(rng, max_len, vocab));
            n += static_cast<int64_t>(sequences.back().size());
          }
          embedder->scheduler().run(std::move(sequences), outputs);
          tokens += n;
          const int64_t d = ++done;
          if (d % 100 == 0) {
            spdlog::info("{} requests, {} tokens, {:.0f} tokens/s, resident {}", d, tokens.load(),
                         double(tokens.load()) / elapsed(), m3::format_bytes(m3::current_rss_bytes()));
          }
        }
      });
    }
    for (auto& t : clients) t.join();
    const double seconds = elapsed();
    running = false;
    sampler.join();
    const uint64_t rss_end = m3::current_rss_bytes();
    const uint64_t peak_after = std::max(m3::peak_rss_bytes(), rss_max.load());
    const double growth = 100.0 * (double(peak_after) - double(rss_warm)) / double(rss_warm);
    const uint64_t planned_resident = rss_start + plan.total_bytes;
    const double vs_plan = 100.0 * (double(peak_after) - double(planned_resident)) / double(planned_resident);

    nlohmann::json report = {
        {"model", o.model},
        {"requests", done.load()},
        {"tokens", tokens.load()},
        {"seconds", seconds},
        {"tokens_per_second", double(tokens.load()) / seconds},
        {"clients", o.clients},
        {"replicas", o.replicas},
        {"max_batch_tokens", plan.inputs.max_batch_tokens},
        {"max_seq_len", max_len},
        {"plan_total_bytes", plan.total_bytes},
        {"plan_weight_bytes", plan.weight_bytes},
        {"plan_arena_bytes", plan.arena_bytes},
        {"rss_before_load_bytes", rss_start},
        {"rss_after_warmup_bytes", rss_warm},
        {"peak_rss_during_load_and_warmup_bytes", peak_warmup},
        {"peak_rss_after_warmup_bytes", peak_after},
        {"rss_end_bytes", rss_end},
        {"growth_after_warmup_percent", growth},
        {"peak_vs_plan_percent", vs_plan},
        {"device", embedder->replica(0).device_name()},
    };
    if (cuda) {
      const uint64_t device_end = m3::bench::device_used_now(device_index);
      report["device_memory"] = m3::bench::device_memory_json(*embedder);
      report["device_used_after_warmup_bytes"] = device_warm;
      report["device_used_max_after_warmup_bytes"] = device_max.load();
      report["device_growth_after_warmup_bytes"] = device_max.load() - device_warm;
      report["device_used_end_bytes"] = device_end;
      fmt::print("device {}: used {} after warm-up, at most {} during the run ({} bytes of growth); planned "
                 "allocation {}\n", embedder->replica(0).device_name(), m3::format_bytes(device_warm),
                 m3::format_bytes(device_max.load()), device_max.load() - device_warm,
                 m3::format_bytes(plan.device_bytes));
    }
    fmt::print("{} requests, {} tokens in {:.1f} s ({:.0f} tokens/s)\n", done.load(), tokens.load(), seconds,
               double(tokens.load()) / seconds);
    fmt::print("plan {} (+{} process baseline) | after warm-up {} | peak after warm-up {} ({:+.2f}% growth) | "
               "peak vs plan {:+.2f}%\n",
               m3::format_bytes(plan.total_bytes), m3::format_bytes(rss_start), m3::format_bytes(rss_warm),
               m3::format_bytes(peak_after), growth, vs_plan);
    if (!o.json_out.empty()) std::ofstream(o.json_out) << report.dump(2) << "\n";
  } catch (const m3::Error& e) {
    fmt::print(stderr, "m3bench-soak: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
