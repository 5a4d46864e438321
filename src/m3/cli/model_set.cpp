#include "m3/cli/model_set.h"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "m3/backend/cpu/cpu_backend.h"
#include "m3/core/error.h"
#include "m3/model/pooling_config.h"

namespace m3::cli {

uint64_t planned_total(const std::vector<PlannedModel>& models, int64_t batch_tokens) {
  uint64_t total = 0;
  for (const PlannedModel& m : models) {
    EmbedderOptions options = m.options;
    options.memory_limit = 0;
    options.max_batch_tokens = batch_tokens;
    total += Embedder::plan_for(m.dir, m.config, options).total_bytes;
  }
  return total;
}

// The largest max batch tokens (a multiple of 64, at least every model's longest input)
// at which the models' plans fit `limit` together.
int64_t shared_batch_tokens(const std::vector<PlannedModel>& models, uint64_t limit) {
  int64_t low = 0;
  for (const PlannedModel& m : models) {
    low = std::max(low, m.options.max_seq_len > 0 ? m.options.max_seq_len : default_max_seq_len(m.dir, m.config));
  }
  const uint64_t least = planned_total(models, low);
  if (least > limit) {
    fail("--memory-limit {} cannot hold these {} models together: their plans need at least {} (one max-length "
         "sequence per batch each)",
         format_bytes(limit), models.size(), format_bytes(least));
  }
  int64_t fits = low, high = Embedder::kMaxBatchTokensForLimit;
  while (high - fits > 64) {
    const int64_t mid = (fits + (high - fits) / 2) / 64 * 64;
    if (mid <= fits) break;
    (planned_total(models, mid) <= limit ? fits : high) = mid;
  }
  return fits;
}

ModelSpec parse_model_spec(const std::string& text) {
  const size_t eq = text.find('=');
  std::string name, source = text;
  if (eq != std::string::npos && eq > 0 && text.substr(0, eq).find('/') == std::string::npos) {
    name = text.substr(0, eq);
    source = text.substr(eq + 1);
  }
  if (source.empty()) fail("--model {}: nothing after '='", text);
  if (name.empty()) {
    name = std::filesystem::is_directory(source) ? std::filesystem::path(source).lexically_normal().filename().string()
                                                 : source;
    if (name.empty()) name = std::filesystem::path(source).parent_path().filename().string();
  }
  return {name, source};
}

std::vector<std::unique_ptr<Embedder>> load_model_set(
    const std::vector<ModelSpec>& specs, const ModelOptions& options,
    const std::function<void(EmbedderOptions&, const ModelConfig&)>& adjust) {
  std::vector<PlannedModel> models;
  for (size_t i = 0; i < specs.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (specs[j].name == specs[i].name) fail("two models are named \"{}\": give one another name (name=model)", specs[i].name);
    }
    ModelOptions one = options;
    one.model = specs[i].source;
    PlannedModel m;
    m.dir = resolve_model_dir(one);
    m.config = ModelConfig::load(m.dir);
    m.options = embedder_options(one);
    adjust(m.options, m.config);
    models.push_back(std::move(m));
  }
  const bool on_cpu = models.front().options.devices.empty() ||
                      models.front().options.devices.front().kind == DeviceKind::kCpu;
  if (models.size() > 1 && on_cpu) {
    const int threads = options.threads > 0 ? options.threads : CpuBackend::default_threads();
    const int each = std::max(1, threads / static_cast<int>(models.size()));
    for (PlannedModel& m : models) m.options.threads = each;
    spdlog::info("{} models share {} CPU threads: {} each", models.size(), threads, each);
  }
  if (models.size() > 1 && models.front().options.memory_limit > 0) {
    const uint64_t limit = models.front().options.memory_limit;
    const int64_t tokens = shared_batch_tokens(models, limit);
    for (PlannedModel& m : models) {
      m.options.memory_limit = 0;
      m.options.max_batch_tokens = tokens;
    }
    spdlog::info("--memory-limit {} shared by {} models: {} tokens per batch each, {} planned together",
                 format_bytes(limit), models.size(), tokens, format_bytes(planned_total(models, tokens)));
  }
  std::vector<std::unique_ptr<Embedder>> engines;
  for (const PlannedModel& m : models) engines.push_back(Embedder::load(m.dir, m.options));
  return engines;
}

}  // namespace m3::cli
